package vms

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/banger/banger/internal/api"
	"github.com/banger/banger/internal/errdefs"
	"github.com/banger/banger/internal/model"
	"github.com/banger/banger/internal/storage"
)

// Snapshots with a fake driver: the files, the guest resumed and its
// clock set, a failed save leaving nothing, the refusals, a fork refused
// by a driver without a control channel, and removal.
func TestSnapshotWithFakes(t *testing.T) {
	f, snap, clocks := snapFixture(t)
	ctx := context.Background()
	vm := startVM(t, f, "dev")
	// The fake strategy keeps its disk elsewhere; the record's file is
	// what a snapshot captures: an overlay over the image, as made.
	overlay := func(backing string) { t.Helper(); writeOverlay(t, vm.SystemDisk, backing) }
	overlay("/var/lib/banger/images/base.img")
	sn, err := f.m.CreateSnapshot(ctx, "dev", "s1")
	if err != nil {
		t.Fatal(err)
	}
	if sn.State != model.SnapshotReady || sn.VMName != "dev" || sn.SizeBytes <= 0 || !strings.HasPrefix(sn.Dir, f.m.SnapshotsDir()) {
		t.Fatalf("snapshot = %+v", sn)
	}
	for _, p := range []string{"state/fake.state", "system.qcow2", "work.ext4"} {
		if _, err := os.Stat(filepath.Join(sn.Dir, p)); err != nil {
			t.Fatalf("snapshot file %s: %v", p, err)
		}
	}
	if len(snap.Paused) != 0 || *clocks != 1 {
		t.Fatalf("after a snapshot: paused %v, clock set %d times", snap.Paused, *clocks)
	}
	if got, _ := f.m.Get(ctx, "dev"); got.State != model.VMRunning || !f.m.Alive(got) {
		t.Fatalf("vm after a snapshot: %s", got.State)
	}

	snap.SaveErr = errors.New("disk full")
	if _, err := f.m.CreateSnapshot(ctx, "dev", "s2"); err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("failed save: %v", err)
	}
	snap.SaveErr = nil
	if all, _ := f.m.ListSnapshots(ctx); len(all) != 1 {
		t.Fatalf("a failed snapshot was kept: %+v", all)
	}
	if ents, _ := os.ReadDir(f.m.SnapshotsDir()); len(ents) != 1 {
		t.Fatalf("snapshot dirs after a failed one: %v", ents)
	}
	if got, _ := f.m.Get(ctx, "dev"); got.State != model.VMRunning || len(snap.Paused) != 0 {
		t.Fatalf("vm after a failed snapshot: %s, paused %v", got.State, snap.Paused)
	}

	for _, c := range []struct {
		name string
		err  error
		code string
		want string
	}{
		{"taken name", func() error { _, err := f.m.CreateSnapshot(ctx, "dev", "s1"); return err }(), errdefs.CodeConflict, "already exists"},
		{"bad name", func() error { _, err := f.m.CreateSnapshot(ctx, "dev", "a b"); return err }(), errdefs.CodeInvalid, "snapshot name"},
		{"missing vm", func() error { _, err := f.m.CreateSnapshot(ctx, "nope", ""); return err }(), errdefs.CodeNotFound, "nope"},
		{"fork count", func() error { _, err := f.m.Fork(ctx, api.ForkRequest{Source: "s1", Count: 0}, nil); return err }(), errdefs.CodeInvalid, "invalid count 0"},
		{"fork missing", func() error { _, err := f.m.Fork(ctx, api.ForkRequest{Source: "nope", Count: 1}, nil); return err }(), errdefs.CodeNotFound, `no snapshot or vm named "nope"`},
		{"fork without control channel", func() error {
			_, err := f.m.Fork(ctx, api.ForkRequest{Source: "s1", Count: 2, NamePrefix: "kid"}, nil)
			return err
		}(), errdefs.CodeUnavailable, "no control channel"},
		{"from a missing snapshot", func() error {
			_, err := f.m.Create(ctx, api.CreateVMRequest{Name: "x", FromSnapshot: "nope"}, nil)
			return err
		}(), errdefs.CodeNotFound, `no snapshot named "nope"`},
		{"from a snapshot with a size", func() error {
			_, err := f.m.Create(ctx, api.CreateVMRequest{Name: "x", FromSnapshot: "s1", Memory: "2G"}, nil)
			return err
		}(), errdefs.CodeInvalid, "--memory does not go with --from-snapshot"},
		{"from a snapshot, cold", func() error {
			_, err := f.m.Create(ctx, api.CreateVMRequest{Name: "x", FromSnapshot: "s1", Cold: true}, nil)
			return err
		}(), errdefs.CodeInvalid, "--cold does not go with --from-snapshot"},
		{"from a snapshot, bad ttl", func() error {
			_, err := f.m.Create(ctx, api.CreateVMRequest{Name: "x", FromSnapshot: "s1", TTL: "forever"}, nil)
			return err
		}(), errdefs.CodeInvalid, "ttl"},
		{"from a snapshot without control channel", func() error {
			_, err := f.m.Create(ctx, api.CreateVMRequest{Name: "x", FromSnapshot: "s1"}, nil)
			return err
		}(), errdefs.CodeUnavailable, "no control channel"},
		{"cold without start", func() error {
			_, err := f.m.Create(ctx, api.CreateVMRequest{Name: "x", Cold: true}, nil)
			return err
		}(), errdefs.CodeInvalid, "cold is for a create that boots"},
		{"warm without control channel", func() error { _, err := f.m.WarmImage(ctx, api.WarmRequest{}, nil); return err }(), errdefs.CodeUnavailable, "no control channel"},
		{"template of a snapshot", f.m.RemoveTemplate(ctx, "s1"), errdefs.CodeNotFound, "s1 is a snapshot, not a template"},
	} {
		if errdefs.CodeOf(c.err) != c.code || !strings.Contains(c.err.Error(), c.want) {
			t.Errorf("%s: %v (code %s), want %s with %q", c.name, c.err, errdefs.CodeOf(c.err), c.code, c.want)
		}
	}
	if all, _ := f.m.List(ctx); len(all) != 1 {
		t.Fatalf("a refused fork left vms: %d", len(all))
	}

	// A paused VM: the state its pause saved and its disks are captured
	// as they are, its VMM (gone) is asked for nothing, and it stays
	// paused. A saved state with anything but regular files is refused
	// and leaves nothing.
	if _, err := f.m.Pause(ctx, "dev"); err != nil {
		t.Fatal(err)
	}
	clocksBefore := *clocks
	sp, err := f.m.CreateSnapshot(ctx, "dev", "p1")
	if err != nil {
		t.Fatalf("snapshot of a paused vm: %v", err)
	}
	for _, p := range []string{"state/fake.state", "system.qcow2", "work.ext4"} {
		if _, err := os.Stat(filepath.Join(sp.Dir, p)); err != nil {
			t.Fatalf("paused vm's snapshot file %s: %v", p, err)
		}
	}
	if got, _ := f.m.Get(ctx, "dev"); got.State != model.VMPaused || *clocks != clocksBefore {
		t.Fatalf("after a snapshot of a paused vm: %s, clock set %d times", got.State, *clocks-clocksBefore)
	}
	// The saved state is linked, not copied: the same file under both
	// names.
	vmState, _ := os.Stat(filepath.Join(StateDir(vm.Dir), "fake.state"))
	snState, _ := os.Stat(filepath.Join(sp.Dir, "state/fake.state"))
	if vmState == nil || snState == nil || !os.SameFile(vmState, snState) {
		t.Fatalf("paused vm's saved state was not linked into its snapshot: %v %v", vmState, snState)
	}
	odd := filepath.Join(StateDir(vm.Dir), "odd")
	if err := os.Symlink("/etc/passwd", odd); err != nil {
		t.Fatal(err)
	}
	if _, err := f.m.CreateSnapshot(ctx, "dev", "p2"); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Fatalf("snapshot of a paused vm with a symlink in its state: %v", err)
	}
	if all, _ := f.m.ListSnapshots(ctx); len(all) != 2 {
		t.Fatalf("a refused snapshot of a paused vm was kept: %+v", all)
	}
	if ents, _ := os.ReadDir(f.m.SnapshotsDir()); len(ents) != 2 {
		t.Fatalf("snapshot dirs after a refused one: %v", ents)
	}
	os.Remove(odd)
	if err := f.m.RemoveSnapshot(ctx, "p1"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(StateDir(vm.Dir), "fake.state")); err != nil {
		t.Fatalf("removing the snapshot took the paused vm's saved state: %v", err)
	}

	// A snapshot of a VM made from s1 captures an overlay over s1's
	// system disk: s1 must outlive it. (The fakes make no forks: the
	// VM's overlay is pointed at s1's by hand.)
	if _, err := f.m.Resume(ctx, "dev", nil); err != nil {
		t.Fatal(err)
	}
	overlay(filepath.Join(sn.Dir, "system.qcow2"))
	if _, err := f.m.CreateSnapshot(ctx, "dev", "s3"); err != nil {
		t.Fatal(err)
	}
	if err := f.m.RemoveSnapshot(ctx, "s1"); errdefs.CodeOf(err) != errdefs.CodeConflict || !strings.Contains(err.Error(), "snapshot s1 is the base of snapshot s3") {
		t.Fatalf("remove a snapshot another one reads through: %v", err)
	}
	if _, err := os.Stat(sn.Dir); err != nil {
		t.Fatalf("a refused remove touched the snapshot: %v", err)
	}
	if err := f.m.RemoveSnapshot(ctx, "s3"); err != nil {
		t.Fatal(err)
	}

	if _, err := f.m.Stop(ctx, "dev", api.StopVMRequest{}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.m.CreateSnapshot(ctx, "dev", ""); errdefs.CodeOf(err) != errdefs.CodeConflict || !strings.Contains(err.Error(), "only a running or paused vm can be snapshotted") {
		t.Fatalf("snapshot of a stopped vm: %v", err)
	}
	if err := f.m.RemoveSnapshot(ctx, "s1"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(sn.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("snapshot dir left: %v", err)
	}
	if err := f.m.RemoveSnapshot(ctx, "s1"); errdefs.CodeOf(err) != errdefs.CodeNotFound {
		t.Fatalf("second remove: %v", err)
	}
}

// Reconcile deletes the VMs a daemon that stopped left half made: one
// made from a snapshot that never took its identity (pending) and the VM
// a template was being made from; a VM made from a snapshot that did
// take it, and an ordinary one, stay.
func TestReconcileDeletesHalfMadeVMs(t *testing.T) {
	f, _, _ := snapFixture(t)
	ctx := context.Background()
	dev := startVM(t, f, "dev")
	if err := os.WriteFile(dev.SystemDisk, []byte("overlay"), 0o600); err != nil {
		t.Fatal(err)
	}
	sn, err := f.m.CreateSnapshot(ctx, "dev", "s1")
	if err != nil {
		t.Fatal(err)
	}
	half := startVM(t, f, "half")
	done := startVM(t, f, "done")
	build, err := f.m.Create(ctx, api.CreateVMRequest{Name: "warm-build-1", Disk: "64M", Labels: map[string]string{warmBuildLabel: "1"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []model.VM{half, done} {
		if err := f.st.AddSnapshotUser(ctx, sn.ID, v.ID); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.st.IdentifiedSnapshotUser(ctx, done.ID); err != nil {
		t.Fatal(err)
	}

	f.m.Reconcile(ctx)
	for _, gone := range []model.VM{half, build} {
		if _, err := f.m.Get(ctx, gone.ID); !errdefs.IsNotFound(err) {
			t.Errorf("%s after reconcile: %v", gone.Name, err)
		}
		if _, err := os.Stat(gone.Dir); !os.IsNotExist(err) {
			t.Errorf("%s's directory left: %v", gone.Name, err)
		}
	}
	for _, kept := range []string{"dev", "done"} {
		if _, err := f.m.Get(ctx, kept); err != nil {
			t.Errorf("%s after reconcile: %v", kept, err)
		}
	}
	if users, _ := f.st.SnapshotUsers(ctx, sn.ID); len(users) != 1 || users[0] != "done" {
		t.Errorf("snapshot users after reconcile: %v", users)
	}
}

// Templates with a fake driver: hidden from the snapshot commands,
// listed fresh, stale once banger's guest side changes (and no longer
// picked), and removed with their image unless a VM made from one
// exists.
func TestTemplatesWithFakes(t *testing.T) {
	f, _, _ := snapFixture(t)
	ctx := context.Background()
	dev := startVM(t, f, "dev")
	if err := os.WriteFile(dev.SystemDisk, []byte("overlay"), 0o600); err != nil {
		t.Fatal(err)
	}
	im, err := f.st.GetImage(ctx, dev.ImageID)
	if err != nil {
		t.Fatal(err)
	}
	k, err := f.st.GetKernel(ctx, dev.KernelID)
	if err != nil {
		t.Fatal(err)
	}
	shape := vmShape{Image: im, Kernel: k, CPUs: dev.CPUs, MemoryMiB: dev.MemoryMiB, DiskBytes: dev.DiskBytes, VMM: dev.VMM, Strategy: dev.CowStrategy}
	in := inputsOf(shape, f.m.guestSide())
	tm, err := f.m.createSnapshot(ctx, "dev", "warm-x", &in)
	if err != nil {
		t.Fatal(err)
	}
	if all, _ := f.m.ListSnapshots(ctx); len(all) != 0 {
		t.Fatalf("vm snapshot list shows the template: %+v", all)
	}
	if _, err := f.m.GetSnapshot(ctx, "warm-x"); !errdefs.IsNotFound(err) || !strings.Contains(err.Error(), "warm-start template") {
		t.Fatalf("snapshot show of a template: %v", err)
	}
	if _, err := f.m.Fork(ctx, api.ForkRequest{Source: "warm-x", Count: 1}, nil); !errdefs.IsNotFound(err) {
		t.Fatalf("fork of a template: %v", err)
	}
	ts, err := f.m.ListTemplates(ctx)
	if err != nil || len(ts) != 1 || ts[0].Stale != "" || ts[0].ImageName != im.Name {
		t.Fatalf("templates = %+v, %v", ts, err)
	}
	all, _ := f.st.ListSnapshots(ctx)
	if got, ok := pickTemplate(all, inputsOf(shape, f.m.guestSide())); !ok || got.ID != tm.ID {
		t.Fatalf("the fresh template was not picked")
	}

	f.m.guestInit = func() string { return "sha256:another-banger-init" }
	ts, _ = f.m.ListTemplates(ctx)
	if len(ts) != 1 || !strings.Contains(ts[0].Stale, "guest side changed") {
		t.Fatalf("templates after a guest side change = %+v", ts)
	}
	if _, ok := pickTemplate(all, inputsOf(shape, f.m.guestSide())); ok {
		t.Fatal("a stale template was picked")
	}

	// A VM made from it holds it, and holds its image's removal up.
	if err := f.st.AddSnapshotUser(ctx, tm.ID, dev.ID); err != nil {
		t.Fatal(err)
	}
	for name, err := range map[string]error{
		"unwarm":          f.m.RemoveTemplate(ctx, "warm-x"),
		"image's removal": f.m.DropTemplates(ctx, im.ID),
	} {
		if errdefs.CodeOf(err) != errdefs.CodeConflict || !strings.Contains(err.Error(), "template warm-x is used by vm dev") {
			t.Errorf("%s of a template in use: %v", name, err)
		}
	}
	if err := f.m.Delete(ctx, "dev", true); err != nil {
		t.Fatal(err)
	}
	if err := f.m.DropTemplates(ctx, im.ID); err != nil {
		t.Fatal(err)
	}
	if ts, _ := f.m.ListTemplates(ctx); len(ts) != 0 {
		t.Fatalf("templates after their image's removal: %+v", ts)
	}
	if _, err := os.Stat(tm.Dir); !os.IsNotExist(err) {
		t.Fatalf("template directory left: %v", err)
	}
}

// TestStartRefusesForeignBacking: a system disk whose qcow2 header (the
// VMM wrote it; a guest may own the VMM) names another backing file than
// the VM's image or a snapshot's, or an external data file, is refused
// before any VMM opens it, with nothing left running.
func TestStartRefusesForeignBacking(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	vm := startVM(t, f, "dev")
	if _, err := f.m.Stop(ctx, "dev", api.StopVMRequest{}); err != nil {
		t.Fatal(err)
	}
	sys := filepath.Join(vm.Dir, "system.fake")
	good, err := os.ReadFile(sys)
	if err != nil {
		t.Fatal(err)
	}
	hostile, err := storage.Qcow2Overlay("/dev/sda", 512)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(sys, hostile, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := f.m.Start(ctx, "dev", nil); err == nil || !strings.Contains(err.Error(), `backing file "/dev/sda" is not the vm's image or the system disk of a snapshot it descends from`) {
		t.Fatalf("start over /dev/sda: %v", err)
	}
	if got, _ := f.m.Get(ctx, "dev"); f.m.Alive(got) || len(f.taps.Made) != 0 {
		t.Fatalf("a refused start left a vmm (%v) or taps %v", f.m.Alive(got), f.taps.Made)
	}
	if err := os.WriteFile(sys, good, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := f.m.Start(ctx, "dev", nil); err != nil {
		t.Fatalf("start with its own overlay back: %v", err)
	}
}

// TestStartRefusesAnotherLineage: a system disk may read through the
// snapshots it descends from, never another VM's snapshot, which holds
// that VM's data; a snapshot records the snapshot its VM was made from
// as its base, which keeps that one.
func TestStartRefusesAnotherLineage(t *testing.T) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("qemu-img not installed")
	}
	f, _, _ := snapFixture(t)
	ctx := context.Background()
	dev := startVM(t, f, "dev")
	other := startVM(t, f, "other")
	// What a snapshot captures is the record's file (the fake strategy
	// keeps its disk elsewhere): an overlay over the image.
	im, err := f.m.store.GetImage(ctx, other.ImageID)
	if err != nil {
		t.Fatal(err)
	}
	writeOverlay(t, other.SystemDisk, im.Path)
	theirs, err := f.m.CreateSnapshot(ctx, "other", "theirs")
	if err != nil {
		t.Fatal(err)
	}
	if theirs.BaseID != "" {
		t.Fatalf("base of a snapshot of a booted vm = %q", theirs.BaseID)
	}
	if _, err := f.m.Stop(ctx, "dev", api.StopVMRequest{}); err != nil {
		t.Fatal(err)
	}
	// An overlay over theirs as a fork of it has (-u: the fixture's image
	// is not there to open).
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", filepath.Join(theirs.Dir, "system.qcow2"), "-F", "qcow2",
		filepath.Join(dev.Dir, "system.fake"), "512").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img: %v: %s", err, out)
	}
	if _, err := f.m.Start(ctx, "dev", nil); err == nil || !strings.Contains(err.Error(), "is not the vm's image or the system disk of a snapshot it descends from") {
		t.Fatalf("start over another vm's snapshot: %v", err)
	}
	if got, _ := f.m.Get(ctx, "dev"); f.m.Alive(got) || len(f.taps.Made) != 1 {
		t.Fatalf("a refused start left a vmm (%v) or taps %v", f.m.Alive(got), f.taps.Made)
	}
	// Made from it (the fakes make no forks: the record is written by
	// hand), dev may read through it.
	if err := f.m.store.AddSnapshotUser(ctx, theirs.ID, dev.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := f.m.Start(ctx, "dev", nil); err != nil {
		t.Fatalf("start over the snapshot it was made from: %v", err)
	}
	b, err := os.ReadFile(filepath.Join(dev.Dir, "system.fake"))
	if err == nil {
		err = os.WriteFile(dev.SystemDisk, b, 0o600)
	}
	if err != nil {
		t.Fatal(err)
	}
	mine, err := f.m.CreateSnapshot(ctx, "dev", "mine")
	if err != nil {
		t.Fatal(err)
	}
	if mine.BaseID != theirs.ID {
		t.Fatalf("base of a snapshot of a vm made from %s = %q", theirs.ID, mine.BaseID)
	}
	if got, err := f.m.GetSnapshot(ctx, "mine"); err != nil || got.BaseID != theirs.ID || got.Base != "theirs" {
		t.Fatalf("recorded base = %q (%q), %v", got.BaseID, got.Base, err)
	}
	// Its base is kept by the record even where the header (written by
	// a VMM) does not say.
	if err := f.m.Delete(ctx, "dev", true); err != nil {
		t.Fatal(err)
	}
	writeOverlay(t, filepath.Join(mine.Dir, "system.qcow2"), im.Path)
	if err := f.m.RemoveSnapshot(ctx, "theirs"); errdefs.CodeOf(err) != errdefs.CodeConflict || !strings.Contains(err.Error(), "snapshot theirs is the base of snapshot mine") {
		t.Fatalf("remove the base of another snapshot: %v", err)
	}
}

func TestLineageDisks(t *testing.T) {
	snap := func(id, base string, state model.SnapshotState) model.Snapshot {
		return model.Snapshot{ID: id, BaseID: base, CowStrategy: "qcow2", State: state, Dir: "/s/" + id}
	}
	all := []model.Snapshot{
		snap("a", "", model.SnapshotReady),
		snap("b", "a", model.SnapshotReady),
		snap("c", "b", model.SnapshotReady),
		snap("x", "", model.SnapshotReady),
		snap("half", "", model.SnapshotCreating),
		snap("failed", "a", model.SnapshotFailed),
		snap("old", model.SnapshotBaseUnknown, model.SnapshotReady),
		snap("gone", "missing", model.SnapshotReady),
		{ID: "ref", CowStrategy: "reflink", State: model.SnapshotReady, Dir: "/s/ref"},
		snap("loop1", "loop2", model.SnapshotReady),
		snap("loop2", "loop1", model.SnapshotReady),
	}
	files := func(ids ...string) map[string]string {
		m := map[string]string{"/img": "raw"}
		for _, id := range ids {
			m["/s/"+id+"/system.qcow2"] = "qcow2"
		}
		return m
	}
	for _, c := range []struct {
		base string
		want map[string]string
	}{
		{"", files()},
		{"a", files("a")},
		{"c", files("c", "b", "a")},
		{"x", files("x")},
		{"half", files()},
		{"failed", files("failed", "a")}, // its vm reads through it until copied up
		{"gone", files("gone")},
		{"nope", files()},
		{"old", files("a", "b", "c", "x", "failed", "old", "gone", "loop1", "loop2")},
		{"loop1", files("loop1", "loop2")},
	} {
		if got := lineageDisks("/img", c.base, all); !reflect.DeepEqual(got, c.want) {
			t.Errorf("lineageDisks(%q) = %v, want %v", c.base, got, c.want)
		}
	}
}

// writeOverlay writes at path an empty qcow2 overlay over the raw file
// backing, as the daemon makes a VM's.
func writeOverlay(t *testing.T, path, backing string) {
	t.Helper()
	b, err := storage.Qcow2Overlay(backing, 512) // the fixture image's size
	if err == nil {
		err = os.WriteFile(path, b, 0o600)
	}
	if err != nil {
		t.Fatal(err)
	}
}
