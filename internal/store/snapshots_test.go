package store

import (
	"context"
	"errors"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/banger/banger/internal/model"
)

func TestSnapshots(t *testing.T) {
	ctx := context.Background()
	s, err := Open(filepath.Join(t.TempDir(), "banger.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	vm := testVM("vm1aaaaa", "one", 2)
	if err := s.CreateVM(ctx, vm); err != nil {
		t.Fatal(err)
	}
	sn := model.Snapshot{ID: "snap1aaaaaaa", Name: "s1", VMID: vm.ID, VMName: vm.Name, ImageID: vm.ImageID, KernelID: vm.KernelID,
		CPUs: 2, MemoryMiB: 1024, DiskBytes: 4 << 30, VMM: "qemu", CowStrategy: "qcow2", GuestIP: "172.16.0.2",
		GuestMAC: "02:00:ac:10:00:02", Dir: "/s/snap1", State: model.SnapshotCreating, CreatedAt: t0,
		Net: model.NetPolicy{Mode: model.NetInternet, Deny: []string{"203.0.113.0/24"}, AllowVMs: []string{"db"}}}
	if err := s.CreateSnapshot(ctx, sn); err != nil {
		t.Fatal(err)
	}
	dup := sn
	dup.ID = "snap2bbbbbbb"
	if err := s.CreateSnapshot(ctx, dup); !errors.Is(err, ErrConflict) {
		t.Fatalf("duplicate name: %v, want conflict", err)
	}
	sn.State, sn.SizeBytes = model.SnapshotReady, 123
	if err := s.UpdateSnapshot(ctx, sn); err != nil {
		t.Fatal(err)
	}
	for _, ref := range []string{"s1", sn.ID, "snap1aaa"} {
		got, err := s.GetSnapshot(ctx, ref)
		if err != nil || !reflect.DeepEqual(got, sn) {
			t.Fatalf("GetSnapshot(%q) = %+v, %v; want %+v", ref, got, err, sn)
		}
	}
	if _, err := s.GetSnapshot(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing: %v", err)
	}
	if names, err := s.SnapshotsUsingArtifact(ctx, vm.ImageID); err != nil || !reflect.DeepEqual(names, []string{"s1"}) {
		t.Fatalf("SnapshotsUsingArtifact = %v, %v", names, err)
	}
	// A template keeps its key and inputs, and is not one of the
	// snapshots that hold an image (its image's removal removes it).
	tm := sn
	tm.ID, tm.Name, tm.Template, tm.TemplateInputs = "tmpl1aaaaaaa", "warm-1", "0a1b", `{"cpus":1}`
	tm.BaseID = sn.ID
	if err := s.CreateSnapshot(ctx, tm); err != nil {
		t.Fatal(err)
	}
	if got, err := s.GetSnapshot(ctx, tm.ID); err != nil || !reflect.DeepEqual(got, tm) {
		t.Fatalf("template = %+v, %v; want %+v", got, err, tm)
	}
	if names, err := s.SnapshotsUsingArtifact(ctx, vm.ImageID); err != nil || !reflect.DeepEqual(names, []string{"s1"}) {
		t.Fatalf("SnapshotsUsingArtifact with a template = %v, %v", names, err)
	}
	if err := s.DeleteSnapshot(ctx, tm.ID); err != nil {
		t.Fatal(err)
	}

	// A VM made from it holds it; the VM's deletion lets it go.
	if err := s.AddSnapshotUser(ctx, sn.ID, vm.ID); err != nil {
		t.Fatal(err)
	}
	if id, err := s.SnapshotOf(ctx, vm.ID); err != nil || id != sn.ID {
		t.Fatalf("SnapshotOf = %q, %v; want %q", id, err, sn.ID)
	}
	if id, err := s.SnapshotOf(ctx, "other"); err != nil || id != "" {
		t.Fatalf("SnapshotOf a vm not made from one = %q, %v", id, err)
	}
	if err := s.AddSnapshotUser(ctx, "nope", vm.ID); err == nil {
		t.Fatal("user of a missing snapshot recorded")
	}
	if users, err := s.SnapshotUsers(ctx, sn.ID); err != nil || !reflect.DeepEqual(users, []string{"one"}) {
		t.Fatalf("SnapshotUsers = %v, %v", users, err)
	}
	// Pending until its guest has taken its own identity.
	if ids, err := s.PendingSnapshotUsers(ctx); err != nil || !reflect.DeepEqual(ids, []string{vm.ID}) {
		t.Fatalf("PendingSnapshotUsers = %v, %v", ids, err)
	}
	if err := s.IdentifiedSnapshotUser(ctx, vm.ID); err != nil {
		t.Fatal(err)
	}
	if ids, err := s.PendingSnapshotUsers(ctx); err != nil || len(ids) != 0 {
		t.Fatalf("PendingSnapshotUsers after identity = %v, %v", ids, err)
	}
	if err := s.IdentifiedSnapshotUser(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("IdentifiedSnapshotUser of a vm made from none: %v", err)
	}
	if err := s.DeleteSnapshot(ctx, sn.ID); err == nil {
		t.Fatal("a snapshot in use was deleted")
	}
	if err := s.DeleteVM(ctx, vm.ID); err != nil {
		t.Fatal(err)
	}
	if users, err := s.SnapshotUsers(ctx, sn.ID); err != nil || len(users) != 0 {
		t.Fatalf("SnapshotUsers after the VM went = %v, %v", users, err)
	}
	if err := s.DeleteSnapshot(ctx, sn.ID); err != nil {
		t.Fatal(err)
	}
	if all, err := s.ListSnapshots(ctx); err != nil || len(all) != 0 {
		t.Fatalf("ListSnapshots = %v, %v", all, err)
	}
	if err := s.DeleteSnapshot(ctx, sn.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second delete: %v", err)
	}
}

// TestMigrationSnapshotBase: schema 16 gives each snapshot the snapshot
// its VM was made from as its base, "" for a VM made from none, and
// unknown where the VM is gone; a snapshot recorded as unknown stays so.
func TestMigrationSnapshotBase(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "banger.db")
	old := openOldWithVMs(t, path, 15, "booted12", "forked12")
	// Snapshots with schema 15's columns: of the booted VM, of the VM
	// forked from it, and of a VM deleted since.
	for _, sn := range [][2]string{{"origin", "booted12"}, {"ofkid", "forked12"}, {"orphan", "gone1234"}} {
		if _, err := old.db.ExecContext(ctx, `INSERT INTO snapshots (id, name, vm_id, vm_name, image_id, kernel_id, cpus, memory_mib, disk_bytes,
			vmm, cow_strategy, guest_ip, guest_mac, dir, size_bytes, state, created_at)
			VALUES (?, ?, ?, 'x', 'img1', 'k1', 1, 512, 1, 'qemu', 'qcow2', '', '', '/s', 0, 'ready', '2026-01-01T00:00:00Z')`, sn[0], sn[0], sn[1]); err != nil {
			t.Fatal(err)
		}
	}
	if err := old.AddSnapshotUser(ctx, "origin", "forked12"); err != nil {
		t.Fatal(err)
	}
	old.Close()
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for id, want := range map[string]string{"origin": "", "ofkid": "origin", "orphan": model.SnapshotBaseUnknown} {
		if got, err := s.GetSnapshot(ctx, id); err != nil || got.BaseID != want {
			t.Errorf("base of %s after upgrade = %q, %v; want %q", id, got.BaseID, err, want)
		}
	}
	sn, err := s.GetSnapshot(ctx, "orphan")
	if err != nil {
		t.Fatal(err)
	}
	sn.ID, sn.Name = "orphan2", "orphan2"
	if err := s.CreateSnapshot(ctx, sn); err != nil {
		t.Fatal(err)
	}
	if got, err := s.GetSnapshot(ctx, "orphan2"); err != nil || got.BaseID != model.SnapshotBaseUnknown {
		t.Fatalf("an unknown base recorded again = %q, %v", got.BaseID, err)
	}
}
