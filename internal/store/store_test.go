package store

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/banger/banger/internal/errdefs"
	"github.com/banger/banger/internal/model"
)

func openTest(t *testing.T) *Store {
	t.Helper()
	s, err := Open(filepath.Join(t.TempDir(), "banger.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

var t0 = time.Date(2025, 3, 4, 5, 6, 7, 890000000, time.UTC)

func testVM(id, name string, n int) model.VM {
	started := t0.Add(time.Minute)
	return model.VM{
		ID: id, Name: name, ImageID: "img1", KernelID: "k1", CPUs: 2, MemoryMiB: 1024, DiskBytes: 4 << 30,
		DesiredState: model.VMRunning, State: model.VMRunning, VMM: "qemu", Accel: "tcg", CowStrategy: "qcow2",
		GuestIP: fmt.Sprintf("172.16.0.%d", n), GuestMAC: "02:fc:00:00:00:02", DNSName: name + ".vm",
		CID: uint32(100 + n), Dir: "/s/vms/" + id, APISocket: "/s/api.sock", VsockSocket: "/s/v.sock",
		LogPath: "/s/log", ConsolePath: "/s/console", MetricsPath: "/s/metrics", SystemDisk: "/s/sys.qcow2",
		WorkDisk: "/s/work.ext4", LastError: "", CreatedAt: t0.Add(time.Duration(n) * time.Second),
		UpdatedAt: t0, StartedAt: &started, Net: model.NetPolicy{Mode: model.NetInternet},
		HostKey: "ssh-ed25519 AAAA" + id, Labels: map[string]string{"app": name, "example.com/n": fmt.Sprint(n)},
	}
}

func TestVMExpiry(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	vm := testVM("exp12345", "exp", 2)
	at := t0.Add(time.Hour)
	vm.ExpiresAt, vm.ExpireAction = &at, model.TTLStop
	if err := s.CreateVM(ctx, vm); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetVM(ctx, "exp")
	if err != nil || got.ExpiresAt == nil || !got.ExpiresAt.Equal(at) || got.ExpireAction != model.TTLStop {
		t.Fatalf("created deadline = %v %q, %v", got.ExpiresAt, got.ExpireAction, err)
	}
	// A whole-record update made from an older copy keeps the deadline.
	later := t0.Add(2 * time.Hour)
	if err := s.SetVMExpiry(ctx, vm.ID, &later, model.TTLDelete); err != nil {
		t.Fatal(err)
	}
	vm.State = model.VMStopped
	if err := s.UpdateVM(ctx, vm); err != nil {
		t.Fatal(err)
	}
	got, _ = s.GetVM(ctx, "exp")
	if got.State != model.VMStopped || got.ExpiresAt == nil || !got.ExpiresAt.Equal(later) || got.ExpireAction != model.TTLDelete {
		t.Fatalf("after UpdateVM: %s %v %q", got.State, got.ExpiresAt, got.ExpireAction)
	}
	if err := s.SetVMExpiry(ctx, vm.ID, nil, model.TTLStop); err != nil {
		t.Fatal(err)
	}
	got, _ = s.GetVM(ctx, "exp")
	if got.ExpiresAt != nil || got.ExpireAction != "" {
		t.Fatalf("cleared deadline = %v %q", got.ExpiresAt, got.ExpireAction)
	}
	if err := s.SetVMExpiry(ctx, "nope", nil, ""); !errors.Is(err, ErrNotFound) {
		t.Fatalf("SetVMExpiry of no vm: %v", err)
	}
}

func TestImagesCRUD(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	im := model.Image{ID: "abcdef0123", Name: "default", Path: "/s/images/x.ext4", SizeBytes: 1 << 30,
		Checksum: "sha256:00", Source: "build", Init: "fast", Recipe: `{"v":1}`, RecipeKey: "rk", HostKey: "ssh-ed25519 AAA", CreatedAt: t0}
	if err := s.CreateImage(ctx, im); err != nil {
		t.Fatal(err)
	}
	for _, ref := range []string{"abcdef0123", "default", "abcd"} {
		got, err := s.GetImage(ctx, ref)
		if err != nil {
			t.Fatalf("GetImage(%q): %v", ref, err)
		}
		if !reflect.DeepEqual(got, im) {
			t.Fatalf("GetImage(%q) = %+v, want %+v", ref, got, im)
		}
	}
	dup := im
	dup.ID = "ffff"
	if err := s.CreateImage(ctx, dup); !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "name") {
		t.Fatalf("duplicate name: got %v, want ErrConflict naming the name", err)
	}
	im2 := im
	im2.ID, im2.Name = "0000aaaa", "alpha"
	if err := s.CreateImage(ctx, im2); err != nil {
		t.Fatal(err)
	}
	l, err := s.ListImages(ctx)
	if err != nil || len(l) != 2 || l[0].Name != "alpha" || l[1].Name != "default" {
		t.Fatalf("ListImages = %v, %v; want alpha, default", l, err)
	}
	if err := s.DeleteImage(ctx, im.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetImage(ctx, "default"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("after delete: %v, want ErrNotFound", err)
	}
	if err := s.DeleteImage(ctx, im.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second delete: %v, want ErrNotFound", err)
	}
}

func TestKernelsCRUD(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	k := model.Kernel{ID: "k1k1k1k1", Name: "debian", Version: "6.1", VmlinuxPath: "/k/vmlinux", BzImagePath: "/k/bz",
		InitrdPath: "/k/initrd", Cmdline: "console=ttyS0", Source: "import", Checksums: `{"vmlinux":"sha256:1"}`, CreatedAt: t0}
	if err := s.CreateKernel(ctx, k); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetKernel(ctx, "debian")
	if err != nil || !reflect.DeepEqual(got, k) {
		t.Fatalf("GetKernel = %+v, %v; want %+v", got, err, k)
	}
	k2 := k
	k2.ID = "k2k2"
	if err := s.CreateKernel(ctx, k2); !errors.Is(err, ErrConflict) {
		t.Fatalf("duplicate kernel name: %v", err)
	}
	l, err := s.ListKernels(ctx)
	if err != nil || len(l) != 1 {
		t.Fatalf("ListKernels = %v, %v", l, err)
	}
	if err := s.DeleteKernel(ctx, k.ID); err != nil {
		t.Fatal(err)
	}
	if l, _ := s.ListKernels(ctx); l == nil || len(l) != 0 {
		t.Fatalf("ListKernels after delete = %#v, want empty non-nil", l)
	}
}

func TestVMsCRUDAndUniqueness(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	a := testVM("aaaa1111", "alpha", 2)
	a.StartedAt = nil
	if err := s.CreateVM(ctx, a); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetVM(ctx, "alpha")
	if err != nil || !reflect.DeepEqual(got, a) {
		t.Fatalf("GetVM = %+v, %v\nwant %+v", got, err, a)
	}
	for _, tc := range []struct {
		name   string
		mutate func(*model.VM)
		col    string
	}{
		{"name", func(v *model.VM) { v.Name = "alpha" }, "name"},
		{"ip", func(v *model.VM) { v.GuestIP = a.GuestIP }, "guest_ip"},
		{"cid", func(v *model.VM) { v.CID = a.CID }, "cid"},
		{"id", func(v *model.VM) { v.ID = a.ID }, "id"},
	} {
		b := testVM("bbbb2222", "beta", 3)
		tc.mutate(&b)
		err := s.CreateVM(ctx, b)
		if !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), tc.col) {
			t.Errorf("duplicate %s: got %v, want ErrConflict naming %s", tc.name, err, tc.col)
		}
	}
	b := testVM("bbbb2222", "beta", 3)
	b.ImageID = "img2"
	if err := s.CreateVM(ctx, b); err != nil {
		t.Fatal(err)
	}
	// Created later but listed by created_at.
	c := testVM("cccc3333", "gamma", 1)
	if err := s.CreateVM(ctx, c); err != nil {
		t.Fatal(err)
	}
	l, err := s.ListVMs(ctx)
	if err != nil || len(l) != 3 || l[0].Name != "gamma" || l[1].Name != "alpha" || l[2].Name != "beta" {
		t.Fatalf("ListVMs order = %v, %v; want gamma alpha beta", names(l), err)
	}
	u, err := s.VMsUsingImage(ctx, "img1")
	if err != nil || len(u) != 2 {
		t.Fatalf("VMsUsingImage(img1) = %v, %v; want 2", names(u), err)
	}
	u, err = s.VMsUsingKernel(ctx, "k1")
	if err != nil || len(u) != 3 {
		t.Fatalf("VMsUsingKernel(k1) = %v, %v; want 3", names(u), err)
	}
	if u, _ := s.VMsUsingImage(ctx, "none"); len(u) != 0 {
		t.Fatalf("VMsUsingImage(none) = %v", names(u))
	}

	before := time.Now()
	a.State = model.VMFailed
	a.LastError = "boom"
	now := time.Now()
	a.StartedAt = &now
	if err := s.UpdateVM(ctx, a); err != nil {
		t.Fatal(err)
	}
	got, _ = s.GetVM(ctx, a.ID)
	if got.State != model.VMFailed || got.LastError != "boom" || got.StartedAt == nil || !got.StartedAt.Equal(now) ||
		got.HostKey != a.HostKey {
		t.Fatalf("after update: %+v", got)
	}
	if got.UpdatedAt.Before(before.Add(-time.Millisecond)) {
		t.Fatalf("UpdatedAt not set: %v < %v", got.UpdatedAt, before)
	}
	a.GuestIP = b.GuestIP
	if err := s.UpdateVM(ctx, a); !errors.Is(err, ErrConflict) {
		t.Fatalf("update to a taken IP: %v, want ErrConflict", err)
	}
	// The network policy round-trips; the default is stored as ''.
	c.Net = model.NetPolicy{Mode: "none", Allow: []string{"10.0.0.5:5432", "192.168.1.0/24"}, Deny: []string{"203.0.113.0/24"}, AllowVMs: []string{"beta"}}
	if err := s.UpdateVM(ctx, c); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.GetVM(ctx, c.ID); !reflect.DeepEqual(got.Net, c.Net) {
		t.Fatalf("net policy = %+v, want %+v", got.Net, c.Net)
	}
	var raw string
	if err := s.db.QueryRowContext(ctx, "SELECT net_policy FROM vms WHERE id = ?", b.ID).Scan(&raw); err != nil || raw != "" {
		t.Fatalf("default policy stored as %q, %v; want ''", raw, err)
	}
	if _, err := s.db.ExecContext(ctx, "UPDATE vms SET net_policy = ? WHERE id = ?", `{"allow":["10.0.0.5"]}`, b.ID); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.GetVM(ctx, b.ID); got.Net.Mode != model.NetInternet || len(got.Net.Allow) != 1 {
		t.Fatalf("policy without a mode read as %+v, want internet with its allow", got.Net)
	}
	ghost := testVM("dddd4444", "ghost", 9)
	if err := s.UpdateVM(ctx, ghost); !errors.Is(err, ErrNotFound) {
		t.Fatalf("update of missing VM: %v, want ErrNotFound", err)
	}
}

func names(vms []model.VM) []string {
	var out []string
	for _, v := range vms {
		out = append(out, v.Name)
	}
	return out
}

func TestRefResolution(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	for i, id := range []string{"abc12345", "abc19999", "fedc0000"} {
		if err := s.CreateVM(ctx, testVM(id, fmt.Sprintf("vm%d", i), i+2)); err != nil {
			t.Fatal(err)
		}
	}
	// A VM named like another's id prefix: the name wins over the prefix.
	if err := s.CreateVM(ctx, testVM("99990000", "fedc", 9)); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		ref    string
		wantID string
		err    error
	}{
		{"abc12345", "abc12345", nil},
		{"vm1", "abc19999", nil},
		{"abc1", "", ErrAmbiguous},
		{"abc12", "abc12345", nil},
		{"abc", "", ErrNotFound}, // prefix too short
		{"fedc", "99990000", nil},
		{"fedc0", "fedc0000", nil},
		{"zzzz", "", ErrNotFound},
		{"", "", ErrNotFound},
		{"abc1%", "", ErrNotFound},
	} {
		got, err := s.GetVM(ctx, tc.ref)
		if tc.err != nil {
			if !errors.Is(err, tc.err) {
				t.Errorf("GetVM(%q) err = %v, want %v", tc.ref, err, tc.err)
			}
			continue
		}
		if err != nil || got.ID != tc.wantID {
			t.Errorf("GetVM(%q) = %q, %v; want %q", tc.ref, got.ID, err, tc.wantID)
		}
	}
	_, err := s.GetVM(ctx, "nope")
	if err == nil || err.Error() != `vm "nope": not found` {
		t.Errorf("not found message = %v", err)
	}
}

func TestSessions(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	v1, v2 := testVM("v1v1v1v1", "one", 2), testVM("v2v2v2v2", "two", 3)
	for _, v := range []model.VM{v1, v2} {
		if err := s.CreateVM(ctx, v); err != nil {
			t.Fatal(err)
		}
	}
	code := 3
	ended := t0.Add(time.Hour)
	ss := model.Session{ID: "s1s1s1s1", VMID: v1.ID, Name: "agent", Command: "python3", Args: []string{"-u", "a b"},
		Env: map[string]string{"K": "V"}, Cwd: "/root", StdinMode: model.StdinPipe, Require: []string{"git"},
		Status: model.SessionExited, GuestPID: 42, ExitCode: &code, Attachable: true, Reattachable: true,
		AttachMode: "exclusive", AttachBackend: "fifo", StateDir: "/root/.local/state/banger/sessions/s1",
		CreatedAt: t0, UpdatedAt: t0, StartedAt: &t0, EndedAt: &ended}
	if err := s.CreateSession(ctx, ss); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetSession(ctx, v1.ID, "agent")
	if err != nil || !reflect.DeepEqual(got, ss) {
		t.Fatalf("GetSession = %+v, %v\nwant %+v", got, err, ss)
	}
	// Same name in another VM is fine, in the same VM a conflict.
	other := ss
	other.ID, other.VMID = "s2s2s2s2", v2.ID
	other.ExitCode, other.Args, other.Env, other.Require, other.StartedAt, other.EndedAt = nil, nil, nil, nil, nil, nil
	if err := s.CreateSession(ctx, other); err != nil {
		t.Fatal(err)
	}
	got, err = s.GetSession(ctx, v2.ID, "s2s2")
	if err != nil || !reflect.DeepEqual(got, other) {
		t.Fatalf("GetSession(nil fields) = %+v, %v\nwant %+v", got, err, other)
	}
	dup := ss
	dup.ID = "s3s3s3s3"
	if err := s.CreateSession(ctx, dup); !errors.Is(err, ErrConflict) {
		t.Fatalf("duplicate session name: %v", err)
	}
	orphan := ss
	orphan.ID, orphan.VMID = "s4s4s4s4", "missing"
	if err := s.CreateSession(ctx, orphan); !errors.Is(err, ErrNotFound) {
		t.Fatalf("session of missing VM: %v, want ErrNotFound", err)
	}
	if _, err := s.GetSession(ctx, v2.ID, ss.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("session of another VM resolved: %v", err)
	}
	ss.Status = model.SessionFailed
	ss.Error = "vm gone"
	if err := s.UpdateSession(ctx, ss); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.GetSession(ctx, v1.ID, ss.ID); got.Status != model.SessionFailed || got.Error != "vm gone" {
		t.Fatalf("after update: %+v", got)
	}
	l, err := s.ListSessions(ctx, v1.ID)
	if err != nil || len(l) != 1 {
		t.Fatalf("ListSessions = %v, %v", l, err)
	}
	if err := s.DeleteVM(ctx, v1.ID); err != nil {
		t.Fatal(err)
	}
	if l, _ := s.ListSessions(ctx, v1.ID); len(l) != 0 {
		t.Fatalf("sessions survive their VM: %v", l)
	}
	if err := s.DeleteSession(ctx, other.ID); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteSession(ctx, other.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second DeleteSession: %v", err)
	}
	if err := s.DeleteVM(ctx, v1.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second DeleteVM: %v", err)
	}
}

func TestMigrations(t *testing.T) {
	ctx := context.Background()
	for from := 0; from <= len(migrations); from++ {
		t.Run(fmt.Sprintf("from%d", from), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "banger.db")
			old, err := openAt(path, from)
			if err != nil {
				t.Fatal(err)
			}
			if v, _ := old.SchemaVersion(ctx); v != from {
				t.Fatalf("old version = %d, want %d", v, from)
			}
			if from >= 1 {
				// Version-1 data must survive every later step. Inserted
				// with version 1's columns: later ones do not exist yet.
				if err := insertV1VM(ctx, old, testVM("keep1234", "keep", 2)); err != nil {
					t.Fatal(err)
				}
			}
			old.Close()
			s, err := Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if v, _ := s.SchemaVersion(ctx); v != len(migrations) {
				t.Fatalf("version = %d, want %d", v, len(migrations))
			}
			if from >= 1 {
				vm, err := s.GetVM(ctx, "keep")
				if err != nil {
					t.Fatalf("data lost in upgrade: %v", err)
				}
				// A VM made before network policies has the default; one made
				// before its own host key has none and pins its image's.
				// One made before deadlines has none.
				want := testVM("keep1234", "keep", 2)
				want.HostKey = ""
				want.ExpiresAt, want.ExpireAction = nil, ""
				want.Labels = nil
				if !reflect.DeepEqual(vm, want) {
					t.Fatalf("upgraded vm = %+v\nwant %+v", vm, want)
				}
				if vm.PinnedHostKey(model.Image{HostKey: "ssh-ed25519 IMG"}) != "ssh-ed25519 IMG" {
					t.Fatalf("upgraded vm pins %q", vm.PinnedHostKey(model.Image{HostKey: "ssh-ed25519 IMG"}))
				}
			}
			// A new VM keeps its host key.
			nv := testVM("new12345", "new", 3)
			if err := s.CreateVM(ctx, nv); err != nil {
				t.Fatal(err)
			}
			if got, err := s.GetVM(ctx, "new"); err != nil || got.HostKey != nv.HostKey || got.PinnedHostKey(model.Image{}) != nv.HostKey {
				t.Fatalf("host key after upgrade = %q, %v; want %q", got.HostKey, err, nv.HostKey)
			}
			// The upgraded schema works.
			if err := s.CreateImage(ctx, model.Image{ID: "i1", Name: "x", CreatedAt: t0}); err != nil {
				t.Fatal(err)
			}
			var n int
			if err := s.db.QueryRowContext(ctx, "SELECT count(*) FROM sqlite_master WHERE type='index' AND name='vms_image_id'").Scan(&n); err != nil || n != 1 {
				t.Fatalf("index vms_image_id: %d, %v", n, err)
			}
			// Forwards of upgraded and new VMs are recorded.
			for _, id := range []string{"new12345", "keep1234"}[:1+min(from, 1)] {
				f := model.Forward{VMID: id, HostAddr: "127.0.0.1", HostPort: 8000 + len(id) + int(id[0]), GuestPort: 80, Proto: "tcp", CreatedAt: t0}
				if err := s.CreateForward(ctx, f); err != nil {
					t.Fatalf("forward of %s after upgrade: %v", id, err)
				}
			}
		})
	}
}

// openOldWithVMs opens a database at path at schema version v, holding
// VMs with these ids (and names), recorded with version 1's columns.
func openOldWithVMs(t *testing.T, path string, v int, ids ...string) *Store {
	t.Helper()
	old, err := openAt(path, v)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		if err := insertV1VM(context.Background(), old, testVM(id, id, len(id)+int(id[0]))); err != nil {
			t.Fatal(err)
		}
	}
	return old
}

// insertV1VM records vm with the columns of schema version 1.
func insertV1VM(ctx context.Context, s *Store, vm model.VM) error {
	const n = 28 // vmCols of version 1: every column before net_policy, host_key and the deadline's
	cols := strings.Join(strings.Split(vmCols, ", ")[:n], ", ")
	_, err := s.db.ExecContext(ctx, "INSERT INTO vms ("+cols+") VALUES ("+placeholders(n)+")", vmArgs(vm)[:n]...)
	return err
}

// TestMigrationE2BMetadataToLabels: a sandbox's metadata kept by schema
// 8 becomes its VM's e2b.meta/ labels.
func TestMigrationE2BMetadataToLabels(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "banger.db")
	old := openOldWithVMs(t, path, 8, "meta1234", "none1234")
	if _, err := old.db.ExecContext(ctx, `INSERT INTO e2b_sandboxes VALUES
		('meta1234', 'base', 'tok', '{"team":"a","note":"x y"}', '{}', '2026-01-01T00:00:00Z'),
		('none1234', 'base', 'tok', '{}', '{}', '2026-01-01T00:00:00Z')`); err != nil {
		t.Fatal(err)
	}
	old.Close()
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	vm, err := s.GetVM(ctx, "meta1234")
	if err != nil || !reflect.DeepEqual(vm.Labels, map[string]string{"e2b.meta/team": "a", "e2b.meta/note": "x y"}) {
		t.Fatalf("labels after upgrade = %v, %v", vm.Labels, err)
	}
	if vm, err := s.GetVM(ctx, "none1234"); err != nil || vm.Labels != nil {
		t.Fatalf("labels of a sandbox without metadata = %v, %v", vm.Labels, err)
	}
	if sb, err := s.E2BSandbox(ctx, "meta1234"); err != nil || sb.Token != "tok" {
		t.Fatalf("sandbox after upgrade = %+v, %v", sb, err)
	}
}

// TestUpdateVMKeepsLabels: a whole-record save does not write labels.
func TestUpdateVMKeepsLabels(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	vm := testVM("lab12345", "lab", 4)
	if err := s.CreateVM(ctx, vm); err != nil {
		t.Fatal(err)
	}
	stale := vm
	stale.Labels = map[string]string{"other": "x"}
	if err := s.UpdateVM(ctx, stale); err != nil {
		t.Fatal(err)
	}
	if got, err := s.GetVM(ctx, "lab"); err != nil || !reflect.DeepEqual(got.Labels, vm.Labels) {
		t.Fatalf("labels = %v, %v; want %v", got.Labels, err, vm.Labels)
	}
}

func TestRefusesNewerSchema(t *testing.T) {
	path := filepath.Join(t.TempDir(), "banger.db")
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.db.Exec(fmt.Sprintf("PRAGMA user_version = %d", len(migrations)+1)); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if _, err := Open(path); err == nil || !strings.Contains(err.Error(), "newer") {
		t.Fatalf("Open of a newer schema: %v, want a refusal", err)
	}
}

func TestPragmas(t *testing.T) {
	s := openTest(t)
	var mode string
	var fk, busy int
	if err := s.db.QueryRow("PRAGMA journal_mode").Scan(&mode); err != nil || mode != "wal" {
		t.Fatalf("journal_mode = %q, %v", mode, err)
	}
	if err := s.db.QueryRow("PRAGMA foreign_keys").Scan(&fk); err != nil || fk != 1 {
		t.Fatalf("foreign_keys = %d, %v", fk, err)
	}
	if err := s.db.QueryRow("PRAGMA busy_timeout").Scan(&busy); err != nil || busy != 5000 {
		t.Fatalf("busy_timeout = %d, %v", busy, err)
	}
	// 2 is FULL: a commit is on disk when it returns.
	var sync int
	if err := s.db.QueryRow("PRAGMA synchronous").Scan(&sync); err != nil || sync != 2 {
		t.Fatalf("synchronous = %d, %v, want 2 (FULL)", sync, err)
	}
}

// Two Stores on one file (as two processes would be) writing at once: WAL
// and the busy timeout make every write succeed.
func TestConcurrentWriters(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "banger.db")
	a, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	const per = 40
	var wg sync.WaitGroup
	errs := make(chan error, 4*per)
	for w, st := range []*Store{a, b, a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < per; i++ {
				n := w*per + i
				vm := testVM(fmt.Sprintf("id%06d", n), fmt.Sprintf("vm-%d", n), n)
				vm.GuestIP = fmt.Sprintf("ip-%d", n)
				if err := st.CreateVM(ctx, vm); err != nil {
					errs <- err
					return
				}
				vm.State = model.VMStopped
				if err := st.UpdateVM(ctx, vm); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	l, err := b.ListVMs(ctx)
	if err != nil || len(l) != 4*per {
		t.Fatalf("ListVMs = %d, %v; want %d", len(l), err, 4*per)
	}
}

func TestDescribe(t *testing.T) {
	for _, tc := range []struct {
		err  error
		code string
		msg  string
	}{
		{fmt.Errorf("vm %q: %w", "x", ErrNotFound), errdefs.CodeNotFound, `vm "x" not found`},
		{fmt.Errorf("vm %q: %w", "a", ErrAmbiguous), errdefs.CodeInvalid, "ambiguous"},
		{fmt.Errorf("vm with this name: %w", ErrConflict), errdefs.CodeConflict, "vm with this name"},
	} {
		err := Describe("vm", "x", tc.err)
		if errdefs.CodeOf(err) != tc.code || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("Describe(%v) = %v (%s), want %s with %q", tc.err, err, errdefs.CodeOf(err), tc.code, tc.msg)
		}
	}
	if Describe("vm", "x", nil) != nil {
		t.Error("Describe(nil) != nil")
	}
	other := errors.New("disk on fire")
	if Describe("vm", "x", other) != other {
		t.Error("Describe changed an unrelated error")
	}
}
