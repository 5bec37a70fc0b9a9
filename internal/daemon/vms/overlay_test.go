package vms

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/banger/banger/internal/api"
	"github.com/banger/banger/internal/daemon/vms/vmstest"
	"github.com/banger/banger/internal/errdefs"
	"github.com/banger/banger/internal/model"
	"github.com/banger/banger/internal/storage"
	"github.com/banger/banger/internal/testenv"
	"github.com/banger/banger/internal/vmm"
)

// overlayDriver is a SnapDriver with the Overlayer ability: Overlay
// records the file put on top (or fails with err), Stream runs stream.
type overlayDriver struct {
	*vmstest.SnapDriver
	mu        sync.Mutex
	err       error
	backupErr error
	overlays  []string
	drops     int
	mirrors   int
	mirrorErr error
	stream    func(base string) error
	// work: Overlay takes the work disk too (else refuses it, as a VMM
	// that opened it by path), failing with workErr when set.
	work    bool
	workErr error
}

var _ vmm.Overlayer = (*overlayDriver)(nil)

func (d *overlayDriver) Overlay(ctx context.Context, h vmm.Handle, diskID, path string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.err != nil {
		return d.err
	}
	switch {
	case diskID == workDiskID && !d.work:
		return fmt.Errorf("%w: disk %s opened by path", vmm.ErrNoOverlay, diskID)
	case diskID == workDiskID && d.workErr != nil:
		return d.workErr
	case diskID != rootDisk && diskID != workDiskID:
		return fmt.Errorf("overlay of disk %q", diskID)
	}
	d.overlays = append(d.overlays, path)
	return nil
}

func (d *overlayDriver) Stream(ctx context.Context, h vmm.Handle, diskID, base string) error {
	return d.stream(base)
}

// StartBackup writes "backup" into the file, as the copy of the disk.
func (d *overlayDriver) StartBackup(ctx context.Context, h vmm.Handle, diskID, path string) (string, error) {
	if diskID != "work" {
		return "", fmt.Errorf("backup of disk %q", diskID)
	}
	return "job", os.WriteFile(path, []byte("backup"), 0o600)
}

// Mirror copies the overlay's bytes into path, as the switch.
func (d *overlayDriver) Mirror(ctx context.Context, h vmm.Handle, diskID, path string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.mirrors++
	if d.mirrorErr != nil {
		return d.mirrorErr
	}
	return os.WriteFile(path, []byte("mirrored"), 0o600)
}

// DropBackups counts its calls.
func (d *overlayDriver) DropBackups(ctx context.Context, h vmm.Handle) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.drops++
	return 0, nil
}

func (d *overlayDriver) WaitBackup(ctx context.Context, h vmm.Handle, job string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.backupErr
}

// overlayFixture is snapFixture with an overlayDriver, background work
// started (StartFlatten) and a VM "dev" running over the image, whose
// system disk's header names the image.
func overlayFixture(t *testing.T) (*fixture, *overlayDriver, model.VM, string) {
	t.Helper()
	f, snap, _ := snapFixture(t)
	ov := &overlayDriver{SnapDriver: snap}
	deps := Deps{
		Config: f.m.cfg, Store: f.m.store, Log: f.m.log, Now: time.Now,
		Drivers: vmm.NewRegistry(ov), Strategies: f.m.strategies,
		Taps: f.taps, Subnet: f.m.subnet, AuthorizedKey: f.m.authorizedKey, Artifacts: f.art,
		WaitGuest:     func(context.Context, model.VM, func() bool) error { return nil },
		SetGuestClock: func(context.Context, model.VM) error { return nil },
	}
	f.m = New(deps)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); f.m.StopFlatten() })
	f.m.StartFlatten(ctx)
	vm := startVM(t, f, "dev")
	im, err := f.st.GetImage(ctx, vm.ImageID)
	if err != nil {
		t.Fatal(err)
	}
	img, _ := filepath.Abs(im.Path)
	writeOverlay(t, vm.SystemDisk, img)
	return f, ov, vm, img
}

func backingOf(t *testing.T, p string) string {
	t.Helper()
	b, err := storage.Qcow2Backing(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestSnapshotOverlaid: a snapshot takes the VM's system disk file and
// puts the VM on an overlay over it (no copy); the VM reads through the
// snapshot until the copy up, after which it reads through the image
// and the snapshot goes freely. A removal waits for the copy. A VMM that
// cannot overlay, or fails to, gets a copy and no dependency.
func TestSnapshotOverlaid(t *testing.T) {
	f, ov, vm, img := overlayFixture(t)
	ctx := context.Background()
	release := make(chan struct{})
	ov.stream = func(base string) error {
		<-release
		writeOverlay(t, vm.SystemDisk, base)
		return nil
	}
	sn, err := f.m.CreateSnapshot(ctx, "dev", "s1")
	if err != nil {
		t.Fatal(err)
	}
	snapFile := filepath.Join(sn.Dir, "system.qcow2")
	if len(ov.overlays) != 1 || ov.overlays[0] != vm.SystemDisk+nextSuffix {
		t.Fatalf("overlays = %v", ov.overlays)
	}
	if b := backingOf(t, vm.SystemDisk); b != snapFile {
		t.Fatalf("vm's disk reads through %q, want the snapshot's %s", b, snapFile)
	}
	if b := backingOf(t, snapFile); b != img {
		t.Fatalf("snapshot's disk reads through %q, want the image", b)
	}
	if _, err := os.Stat(vm.SystemDisk + nextSuffix); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("overlay left under its scratch name: %v", err)
	}
	if rd, ok, _ := f.m.readerOf(ctx, vm.ID); !ok || rd.ID != sn.ID {
		t.Fatalf("vm not recorded reading through its snapshot")
	}
	if b, err := os.ReadFile(filepath.Join(sn.Dir, "work.ext4")); err != nil || string(b) != "backup" {
		t.Fatalf("the snapshot's work disk is not the vmm's copy: %q, %v", b, err)
	}
	if _, err := os.Stat(filepath.Join(sn.Dir, partialMark)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a whole snapshot marked partial: %v", err)
	}

	// The removal waits for the copy up.
	removed := make(chan error, 1)
	go func() { removed <- f.m.RemoveSnapshot(ctx, "s1") }()
	select {
	case err := <-removed:
		t.Fatalf("removal did not wait for the copy up: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	close(release)
	if err := <-removed; err != nil {
		t.Fatal(err)
	}
	if b := backingOf(t, vm.SystemDisk); b != img {
		t.Fatalf("after the copy up the vm reads through %q", b)
	}
	if _, ok, _ := f.m.readerOf(ctx, vm.ID); ok {
		t.Fatal("vm still recorded reading through a snapshot")
	}
	if _, err := os.Stat(sn.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("snapshot dir left: %v", err)
	}

	for _, c := range []struct {
		name string
		err  error
	}{
		{"cannot", fmt.Errorf("%w: opened by path", vmm.ErrNoOverlay)},
		{"fails", errors.New("qmp blockdev-snapshot: no")},
	} {
		ov.err = c.err
		sn, err := f.m.CreateSnapshot(ctx, "dev", "copy-"+c.name)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if b := backingOf(t, vm.SystemDisk); b != img {
			t.Fatalf("%s: vm reads through %q", c.name, b)
		}
		if b := backingOf(t, filepath.Join(sn.Dir, "system.qcow2")); b != img {
			t.Fatalf("%s: the copy reads through %q", c.name, b)
		}
		if _, ok, _ := f.m.readerOf(ctx, vm.ID); ok {
			t.Fatalf("%s: vm recorded reading through a copy", c.name)
		}
		if _, err := os.Stat(vm.SystemDisk + nextSuffix); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("%s: overlay left: %v", c.name, err)
		}
		if err := f.m.RemoveSnapshot(ctx, sn.Name); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
	}

	// The work disk's copy fails after the system disk was taken in
	// place: the snapshot is kept, failed, holding only that file, until
	// the vm is copied up from it; then it goes by itself.
	ov.err = nil
	ov.backupErr = errors.New("no space left on device")
	fail := make(chan struct{})
	ov.stream = func(base string) error {
		<-fail
		writeOverlay(t, vm.SystemDisk, base)
		return nil
	}
	if _, err := f.m.CreateSnapshot(ctx, "dev", "s-fail"); err == nil || !errors.Is(err, ov.backupErr) && !strings.Contains(err.Error(), "no space left") {
		t.Fatalf("snapshot with its work disk's copy failing: %v", err)
	}
	ov.backupErr = nil
	failed, err := f.m.GetSnapshot(ctx, "s-fail")
	if err != nil || failed.State != model.SnapshotFailed {
		t.Fatalf("after a failed work disk copy: %+v, %v", failed, err)
	}
	for _, p := range []string{"state", "work.ext4"} {
		if _, err := os.Stat(filepath.Join(failed.Dir, p)); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("a failed snapshot keeps its %s (%v)", p, err)
		}
	}
	if _, err := f.m.Fork(ctx, api.ForkRequest{Source: "s-fail", Count: 1}, nil); err == nil {
		t.Fatal("fork of a failed snapshot")
	}
	close(fail)
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err := f.m.GetSnapshot(ctx, "s-fail"); errdefs.IsNotFound(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the failed snapshot was not removed after the copy up")
		}
	}
	if b := backingOf(t, vm.SystemDisk); b != img {
		t.Fatalf("after the failed snapshot went, the vm reads through %q", b)
	}

	// A VMM that holds the file writable after the switch (one taken
	// over before it can have kept a descriptor; here the test process
	// plays it): the snapshot gets a copy, not the file the VMM can write.
	ov.err = nil
	hold := make(chan struct{})
	defer close(hold)
	ov.stream = func(string) error { <-hold; return errors.New("not now") }
	held := holdAsVMM(t, f, ov, vm, vm.SystemDisk)
	sn, err = f.m.CreateSnapshot(ctx, "dev", "s-held")
	if err != nil {
		t.Fatal(err)
	}
	snapFile = filepath.Join(sn.Dir, "system.qcow2")
	hi, _ := held.Stat()
	if si, err := os.Stat(snapFile); err != nil || os.SameFile(hi, si) {
		t.Fatalf("the snapshot kept the file its vmm holds writable (%v)", err)
	}
	if b := backingOf(t, snapFile); b != img {
		t.Fatalf("the snapshot's copy reads through %q", b)
	}
	if b := backingOf(t, vm.SystemDisk); b != snapFile {
		t.Fatalf("vm reads through %q, want the snapshot's", b)
	}
}

// holdAsVMM makes the test process vm's VMM, holding the file at path
// open read-write until the test ends; it returns that file.
func holdAsVMM(t *testing.T, f *fixture, ov *overlayDriver, vm model.VM, path string) *os.File {
	t.Helper()
	held, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { held.Close() })
	h, _ := f.m.handles.get(vm.ID)
	ov.SnapDriver.Procs[vm.APISocket] = os.Getpid()
	h.PID = os.Getpid()
	if err := f.m.handles.set(vm.ID, vm.Dir, h); err != nil {
		t.Fatal(err)
	}
	return held
}

// halfSnapshot records a snapshot "half" of vm, creating, with its
// directory, as a daemon stopped in the middle of a capture leaves it.
func halfSnapshot(t *testing.T, f *fixture, vm model.VM) model.Snapshot {
	t.Helper()
	sn := model.Snapshot{ID: model.NewID(), Name: "half", VMID: vm.ID, VMName: vm.Name, ImageID: vm.ImageID, KernelID: vm.KernelID,
		CPUs: vm.CPUs, MemoryMiB: vm.MemoryMiB, DiskBytes: vm.DiskBytes, VMM: vm.VMM, CowStrategy: vm.CowStrategy,
		State: model.SnapshotCreating, CreatedAt: time.Now().UTC()}
	sn.Dir = filepath.Join(f.m.SnapshotsDir(), sn.ID)
	if err := f.st.CreateSnapshot(context.Background(), sn); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(sn.Dir, 0o700); err != nil {
		t.Fatal(err)
	}
	return sn
}

// TestSettleSwitch: a daemon that stopped in the middle of a switch
// leaves an overlay beside the VM's disk. Recorded a reader of its
// snapshot, the switch was decided: the next daemon switches the live
// VMM, renames the overlay over the disk and keeps the snapshot, ready.
// Not recorded, the overlay goes and so does the half-made snapshot. One
// whose work disk was still being copied is kept failed, not ready.
func TestSettleSwitch(t *testing.T) {
	for _, c := range []struct{ decided, partial, noWork bool }{{true, false, false}, {true, true, false}, {true, false, true}, {false, false, false}} {
		decided, partial, noWork := c.decided, c.partial, c.noWork
		t.Run(fmt.Sprintf("decided=%v,partial=%v,noWork=%v", decided, partial, noWork), func(t *testing.T) {
			f, ov, vm, img := overlayFixture(t)
			ov.stream = func(string) error { return errors.New("not now") }
			ctx := context.Background()
			sn := halfSnapshot(t, f, vm)
			snapFile := filepath.Join(sn.Dir, "system.qcow2")
			if err := os.Link(vm.SystemDisk, snapFile); err != nil {
				t.Fatal(err)
			}
			writeOverlay(t, vm.SystemDisk+nextSuffix, snapFile)
			// The work disk is captured after the switch: a daemon that
			// stopped before that leaves none.
			if !noWork {
				if err := os.WriteFile(filepath.Join(sn.Dir, snapWorkName), []byte("backup"), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			if partial {
				if err := os.WriteFile(filepath.Join(sn.Dir, partialMark), nil, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			if decided {
				if err := f.st.SetSnapshotReader(ctx, sn.ID, vm.ID); err != nil {
					t.Fatal(err)
				}
			}
			vm.State = model.VMPausing
			if err := f.m.save(ctx, &vm); err != nil {
				t.Fatal(err)
			}
			f.m.Reconcile(ctx)

			if _, err := os.Stat(vm.SystemDisk + nextSuffix); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("overlay left: %v", err)
			}
			got, err := f.st.GetVM(ctx, vm.ID)
			if err != nil || got.State != model.VMRunning {
				t.Fatalf("vm after reconcile: %s, %v", got.State, err)
			}
			// A work disk's copy the daemon before left in the VMM goes.
			if ov.drops != 1 {
				t.Fatalf("the vmm's leftover disk copies were dropped %d times, want once", ov.drops)
			}
			all, _ := f.st.ListSnapshots(ctx)
			if decided {
				if len(ov.overlays) != 1 {
					t.Fatalf("the live vmm was not switched: %v", ov.overlays)
				}
				if b := backingOf(t, vm.SystemDisk); b != snapFile {
					t.Fatalf("vm reads through %q, want the snapshot's", b)
				}
				want := model.SnapshotReady
				if partial || noWork {
					want = model.SnapshotFailed // its work disk was not whole
				}
				if len(all) != 1 || all[0].State != want {
					t.Fatalf("snapshots = %+v, want the half-made one kept %s", all, want)
				}
			} else {
				if len(ov.overlays) != 0 {
					t.Fatalf("an undecided switch was made: %v", ov.overlays)
				}
				if b := backingOf(t, vm.SystemDisk); b != img {
					t.Fatalf("vm reads through %q, want the image", b)
				}
				if len(all) != 0 {
					t.Fatalf("snapshots = %+v, want the half-made one gone", all)
				}
			}
		})
	}
}

// TestFlattenWaitsForReader: a snapshot its VM still reads through in
// place is not flattened (the VM's copy up names the base the VMM reads
// through); once the VM is copied up it is. (A flatten that comes while
// the copy runs waits for the snapshot's lock, which the copy holds.)
func TestFlattenWaitsForReader(t *testing.T) {
	f, ov, vm, _ := overlayFixture(t)
	ctx := context.Background()
	var mu sync.Mutex
	copyUp := false
	ov.stream = func(base string) error {
		mu.Lock()
		defer mu.Unlock()
		if !copyUp {
			return errors.New("not now")
		}
		writeOverlay(t, vm.SystemDisk, base)
		return nil
	}
	ov.err = fmt.Errorf("%w: copy this one", vmm.ErrNoOverlay)
	s0, err := f.m.CreateSnapshot(ctx, "dev", "s0")
	if err != nil {
		t.Fatal(err)
	}
	ov.err = nil
	s1, err := f.m.CreateSnapshot(ctx, "dev", "s1")
	if err != nil {
		t.Fatal(err)
	}
	// As if s1 read through s0 (a VM made from s0, snapshotted in place).
	if err := f.st.SetSnapshotBase(ctx, s1.ID, s0.ID); err != nil {
		t.Fatal(err)
	}
	if err := f.m.flatten(ctx, s1.ID); err == nil || !strings.Contains(err.Error(), "still reads through it") {
		t.Fatalf("flatten of a snapshot its vm reads through: %v", err)
	}
	mu.Lock()
	copyUp = true
	mu.Unlock()
	// The attempt the snapshot started (which failed) is over first.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		f.m.flat.mu.Lock()
		n := len(f.m.flat.separating)
		f.m.flat.mu.Unlock()
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the first copy up attempt did not end")
		}
	}
	if err := f.m.awaitSeparated(ctx, vm.ID); err != nil {
		t.Fatal(err)
	}
	err = f.m.flatten(ctx, s1.ID)
	if err != nil && strings.Contains(err.Error(), "still reads through it") {
		t.Fatalf("flatten after the copy up: %v", err)
	}
}

// TestCopyUpOffline: a VM stopped (or paused) before its VMM copied its
// snapshot up is copied by the daemon: the stop starts the copy, and a
// removal of the snapshot waits for it, then goes. The copy opens what
// the VM's VMM wrote, so a header naming a file outside the VM's lineage
// is refused and the snapshot kept.
func TestCopyUpOffline(t *testing.T) {
	testenv.RequireBinary(t, "qemu-img", "qemu-io")
	f, ov, vm, img := overlayFixture(t)
	ctx := context.Background()
	streams := 0
	ov.stream = func(string) error { streams++; return errors.New("qmp: connection reset") }
	sn, err := f.m.CreateSnapshot(ctx, "dev", "s1")
	if err != nil {
		t.Fatal(err)
	}
	snapFile := filepath.Join(sn.Dir, "system.qcow2")
	if b := backingOf(t, vm.SystemDisk); b != snapFile {
		t.Fatalf("vm reads through %q, want its snapshot's", b)
	}
	// What the guest wrote before the snapshot is in the snapshot's file
	// only; the copy must bring it into the VM's.
	qemu := func(argv ...string) {
		t.Helper()
		if out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", argv, err, out)
		}
	}
	qemu("qemu-img", "create", "-q", "-f", "qcow2", "-b", img, "-F", "raw", snapFile+".new", "512")
	qemu("qemu-io", "-c", "write -P 0xab 0 512", snapFile+".new")
	if err := os.Rename(snapFile+".new", snapFile); err != nil {
		t.Fatal(err)
	}

	// A header the VMM rewrote to name a host file: not copied, kept.
	writeOverlay(t, vm.SystemDisk, "/etc/passwd")
	if _, err := f.m.Stop(ctx, "dev", api.StopVMRequest{}); err != nil {
		t.Fatal(err)
	}
	err = f.m.RemoveSnapshot(ctx, "s1")
	if err == nil || !strings.Contains(err.Error(), "/etc/passwd") || !strings.Contains(err.Error(), "read through by vm dev") {
		t.Fatalf("removal over a foreign header: %v", err)
	}
	if _, err := os.Stat(snapFile); err != nil {
		t.Fatalf("the snapshot's file went with the copy refused: %v", err)
	}
	if rd, ok, _ := f.m.readerOf(ctx, vm.ID); !ok || rd.ID != sn.ID {
		t.Fatal("vm no longer recorded reading through its snapshot")
	}

	// Its own header: the stop's copy, or the removal's, copies it.
	qemu("qemu-img", "create", "-q", "-f", "qcow2", "-b", snapFile, "-F", "qcow2", vm.SystemDisk, "512")
	if err := f.m.RemoveSnapshot(ctx, "s1"); err != nil {
		t.Fatal(err)
	}
	if b := backingOf(t, vm.SystemDisk); b != img {
		t.Fatalf("after the copy the vm reads through %q, want the image", b)
	}
	if _, err := os.Stat(sn.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("snapshot dir left: %v", err)
	}
	qemu("qemu-io", "-r", "-c", "read -P 0xab 0 512", vm.SystemDisk)
	if matches, _ := filepath.Glob(vm.SystemDisk + ".*"); len(matches) > 0 {
		t.Fatalf("scratch files left: %v", matches)
	}
	if streams == 0 {
		t.Fatal("the running vm's copy was never tried by its vmm")
	}

	// A VMM that dies before its copy: the daemon copies once it sees.
	if _, err := f.m.Start(ctx, "dev", nil); err != nil {
		t.Fatal(err)
	}
	s2, err := f.m.CreateSnapshot(ctx, "dev", "s2")
	if err != nil {
		t.Fatal(err)
	}
	if b := backingOf(t, vm.SystemDisk); b != filepath.Join(s2.Dir, "system.qcow2") {
		t.Fatalf("vm reads through %q, want s2's", b)
	}
	if err := ov.Kill(ctx, vmm.Handle{APISocket: vm.APISocket}); err != nil {
		t.Fatal(err)
	}
	f.m.reapDead(ctx, vm.ID)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, ok, _ := f.m.readerOf(ctx, vm.ID); !ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a vm whose vmm died still reads through its snapshot")
		}
	}
	if b := backingOf(t, vm.SystemDisk); b != img {
		t.Fatalf("after the copy the vm reads through %q, want the image", b)
	}
}

// TestReconcileDropsBackups: a VMM found running at the daemon's start
// is rid of the disk copies the daemon before started there.
func TestReconcileDropsBackups(t *testing.T) {
	f, ov, _, _ := overlayFixture(t)
	f.m.Reconcile(context.Background())
	if ov.drops != 1 {
		t.Fatalf("the vmm's leftover disk copies were dropped %d times, want once", ov.drops)
	}
}

// TestSnapshotPausedInPlace: a paused VM's system disk is taken into its
// snapshot in place (no VMM to switch: the resume opens the overlay),
// after its state and work disk were captured; the resumed VM's VMM
// copies it up. A daemon that stopped mid-switch finishes it at start.
func TestSnapshotPausedInPlace(t *testing.T) {
	f, ov, vm, img := overlayFixture(t)
	ctx := context.Background()
	var mu sync.Mutex
	streamed := 0
	ov.stream = func(base string) error {
		mu.Lock()
		defer mu.Unlock()
		streamed++
		writeOverlay(t, vm.SystemDisk, base)
		return nil
	}
	if _, err := f.m.Pause(ctx, "dev"); err != nil {
		t.Fatal(err)
	}
	before, err := os.Stat(vm.SystemDisk)
	if err != nil {
		t.Fatal(err)
	}
	sn, err := f.m.CreateSnapshot(ctx, "dev", "sp")
	if err != nil {
		t.Fatal(err)
	}
	snapFile := filepath.Join(sn.Dir, "system.qcow2")
	if fi, err := os.Stat(snapFile); err != nil || !os.SameFile(fi, before) {
		t.Fatalf("the snapshot's system disk is not the paused vm's file (%v): copied", err)
	}
	if b := backingOf(t, vm.SystemDisk); b != snapFile {
		t.Fatalf("the paused vm reads through %q, want its snapshot's", b)
	}
	if rd, ok, _ := f.m.readerOf(ctx, vm.ID); !ok || rd.ID != sn.ID {
		t.Fatal("vm not recorded reading through its snapshot")
	}
	for _, p := range []string{"work.ext4", filepath.Join("state", "fake.state")} {
		if _, err := os.Stat(filepath.Join(sn.Dir, p)); err != nil {
			t.Fatalf("snapshot of a paused vm lacks %s: %v", p, err)
		}
	}
	if len(ov.overlays) != 0 {
		t.Fatalf("a vmm was asked to switch a paused vm: %v", ov.overlays)
	}
	if got, _ := f.m.Get(ctx, "dev"); got.State != model.VMPaused {
		t.Fatalf("after the snapshot: %s, want paused", got.State)
	}
	if _, err := f.m.Resume(ctx, "dev", nil); err != nil {
		t.Fatal(err)
	}
	if err := f.m.awaitSeparated(ctx, vm.ID); err != nil {
		t.Fatal(err)
	}
	if b := backingOf(t, vm.SystemDisk); b != img || streamed == 0 {
		t.Fatalf("after the resume's copy up the vm reads through %q (copies %d)", b, streamed)
	}

	// Cut short after the decision: the next daemon renames the overlay
	// over the disk; before it, removes the overlay.
	for _, decided := range []bool{true, false} {
		if _, err := f.m.Pause(ctx, "dev"); err != nil {
			t.Fatal(err)
		}
		s2, err := f.m.CreateSnapshot(ctx, "dev", fmt.Sprintf("cut-%v", decided))
		if err != nil {
			t.Fatal(err)
		}
		file := filepath.Join(s2.Dir, "system.qcow2")
		// As if the daemon had stopped right before its rename: the
		// overlay is back under its scratch name, the vm's disk is the
		// snapshot's file again.
		if err := os.Rename(vm.SystemDisk, vm.SystemDisk+nextSuffix); err != nil {
			t.Fatal(err)
		}
		if err := os.Link(file, vm.SystemDisk); err != nil {
			t.Fatal(err)
		}
		if !decided {
			if err := f.st.MoveSnapshotUser(ctx, vm.ID, s2.ID, ""); err != nil {
				t.Fatal(err)
			}
		}
		f.m.Reconcile(ctx)
		if _, err := os.Stat(vm.SystemDisk + nextSuffix); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("decided=%v: overlay left: %v", decided, err)
		}
		want := file
		if !decided {
			want = img
		}
		if b := backingOf(t, vm.SystemDisk); b != want {
			t.Fatalf("decided=%v: vm reads through %q, want %q", decided, b, want)
		}
		if _, err := f.m.Resume(ctx, "dev", nil); err != nil {
			t.Fatal(err)
		}
		if err := f.m.awaitSeparated(ctx, vm.ID); err != nil {
			t.Fatal(err)
		}
	}
}

// TestWorkOverlayRunning: a running VM's snapshot, where its system disk
// is taken in place, takes its work disk in place too: the snapshot's
// work.ext4 is the VM's file (no copy by the VMM), the VM goes on over an
// overlay naming it, and a stop makes its disk raw again with both
// layers' data, the snapshot's file untouched. A VMM that refuses the
// switch gets the file back and copies it. A switch a daemon's end cut
// short between the rename and the VMM's switch is undone at the next
// start, and the snapshot, with no work disk, is failed.
func TestWorkOverlayRunning(t *testing.T) {
	testenv.RequireBinary(t, "qemu-img", "qemu-io")
	f, ov, vm, _ := overlayFixture(t)
	ctx := context.Background()
	ov.stream = func(string) error { return errors.New("not now") }
	qemu := func(argv ...string) {
		t.Helper()
		if out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", argv, err, out)
		}
	}
	_ = os.Remove(vm.WorkDisk)
	qemu("qemu-img", "create", "-q", "-f", "raw", vm.WorkDisk, fmt.Sprint(vm.DiskBytes))
	qemu("qemu-io", "-f", "raw", "-c", "write -P 0x22 0 1M", vm.WorkDisk)
	disk, err := os.Stat(vm.WorkDisk)
	if err != nil {
		t.Fatal(err)
	}
	sameAsDisk := func(p string) bool {
		fi, err := os.Stat(p)
		return err == nil && os.SameFile(fi, disk)
	}

	// Refused by the VMM: the file keeps its name, the snapshot a copy.
	ov.work, ov.workErr = true, fmt.Errorf("%w: not now", vmm.ErrNoOverlay)
	s0, err := f.m.CreateSnapshot(ctx, "dev", "w0")
	if err != nil {
		t.Fatal(err)
	}
	if !sameAsDisk(vm.WorkDisk) || hasWorkOverlay(vm) {
		t.Fatalf("a refused switch left the work disk moved (overlay %v)", hasWorkOverlay(vm))
	}
	if b, err := os.ReadFile(filepath.Join(s0.Dir, snapWorkName)); err != nil || string(b) != "backup" {
		t.Fatalf("refused switch: the snapshot's work disk %q, %v; want the vmm's copy", b, err)
	}

	ov.workErr = nil
	s1, err := f.m.CreateSnapshot(ctx, "dev", "w1")
	if err != nil {
		t.Fatal(err)
	}
	snapWork := filepath.Join(s1.Dir, snapWorkName)
	abs, _ := filepath.Abs(snapWork)
	if !sameAsDisk(snapWork) {
		t.Fatal("the snapshot's work disk is not the vm's file")
	}
	if _, err := os.Lstat(vm.WorkDisk); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the vm kept its work.ext4 beside the overlay: %v", err)
	}
	if !hasWorkOverlay(vm) || backingOf(t, workOverlay(vm)) != abs {
		t.Fatalf("the vm's work disk is not an overlay over the snapshot's (overlay %v)", hasWorkOverlay(vm))
	}
	if n := len(ov.overlays); n == 0 || ov.overlays[n-1] != workOverlay(vm) {
		t.Fatalf("the vmm was not switched onto the work overlay: %v", ov.overlays)
	}
	if d, err := f.m.workDisk(ctx, vm); err != nil || d.Path != workOverlay(vm) {
		t.Fatalf("workDisk over its own snapshot = %+v, %v", d, err)
	}
	qemu("qemu-io", "-f", "qcow2", "-c", "write -P 0x33 1M 1M", workOverlay(vm))
	if _, err := f.m.Stop(ctx, "dev", api.StopVMRequest{}); err != nil {
		t.Fatal(err)
	}
	qemu("qemu-io", "-f", "raw", "-r", "-c", "read -P 0x22 0 1M", "-c", "read -P 0x33 1M 1M", vm.WorkDisk)
	qemu("qemu-io", "-f", "raw", "-r", "-c", "read -P 0x22 0 1M", "-c", "read -P 0 1M 1M", snapWork)
	if sameAsDisk(vm.WorkDisk) || hasWorkOverlay(vm) {
		t.Fatal("the stop did not give the vm a raw work disk of its own")
	}

	// Cut short: the file moved into a snapshot the VM reads through,
	// the VMM (the test process) still writing it, never switched.
	if _, err := f.m.Start(ctx, "dev", nil); err != nil {
		t.Fatal(err)
	}
	if vm, err = f.st.GetVM(ctx, vm.ID); err != nil {
		t.Fatal(err)
	}
	sn := halfSnapshot(t, f, vm)
	if err := f.st.SetSnapshotReader(ctx, sn.ID, vm.ID); err != nil {
		t.Fatal(err)
	}
	moved := filepath.Join(sn.Dir, snapWorkName)
	movedAbs, _ := filepath.Abs(moved)
	before, _ := os.Stat(vm.WorkDisk)
	if err := storage.WriteQcow2Overlay(workOverlay(vm), movedAbs, vmm.FormatRaw, vm.DiskBytes); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(vm.WorkDisk, moved); err != nil {
		t.Fatal(err)
	}
	holdAsVMM(t, f, ov, vm, moved)
	vm.State = model.VMPausing
	if err := f.m.save(ctx, &vm); err != nil {
		t.Fatal(err)
	}
	f.m.Reconcile(ctx)
	if fi, err := os.Stat(vm.WorkDisk); err != nil || !os.SameFile(fi, before) || hasWorkOverlay(vm) {
		t.Fatalf("the cut-short switch was not undone: work.ext4 %v, overlay %v", err, hasWorkOverlay(vm))
	}
	if got, err := f.st.GetSnapshot(ctx, sn.ID); err != nil || got.State != model.SnapshotFailed {
		t.Fatalf("the half-made snapshot: %+v, %v; want failed", got.State, err)
	}
}

// TestWorkOverlay: a VM made from a snapshot whose work disk cannot be
// cloned gets an overlay over it (no copy); a snapshot of it makes it raw
// by its VMM first, a stop by the daemon (qemu-img, reading back what
// both layers hold), and a header naming a host file is refused by
// both the start and the conversion.
func TestWorkOverlay(t *testing.T) {
	testenv.RequireBinary(t, "qemu-img", "qemu-io")
	f, ov, vm, img := overlayFixture(t)
	ctx := context.Background()
	qemu := func(argv ...string) {
		t.Helper()
		if out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", argv, err, out)
		}
	}
	ov.stream = func(string) error { return errors.New("not now") }
	ov.err = fmt.Errorf("%w: copy it", vmm.ErrNoOverlay)
	// A snapshot of another VM, which dev is taken as made from.
	other := startVM(t, f, "other")
	writeOverlay(t, other.SystemDisk, img)
	s1, err := f.m.CreateSnapshot(ctx, "other", "s1")
	if err != nil {
		t.Fatal(err)
	}
	ov.err = nil
	// The snapshot's work disk, as a VMM's copy makes it: raw, sparse.
	snapWork := filepath.Join(s1.Dir, "work.ext4")
	if err := os.Remove(snapWork); err != nil {
		t.Fatal(err)
	}
	qemu("qemu-img", "create", "-q", "-f", "raw", snapWork, fmt.Sprint(vm.DiskBytes))
	qemu("qemu-io", "-f", "raw", "-c", "write -P 0x11 0 1M", snapWork)
	// As if made from s1.
	if err := f.st.AddSnapshotUser(ctx, s1.ID, vm.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := f.m.Stop(ctx, "dev", api.StopVMRequest{}); err != nil {
		t.Fatal(err)
	}
	overlayFromSnapshot := func() {
		t.Helper()
		_ = os.Remove(vm.WorkDisk)
		if over, err := f.m.forkWorkDisk(ctx, vm, s1); err != nil || !over {
			t.Fatalf("forkWorkDisk = %v, %v; want an overlay", over, err)
		}
		if _, err := os.Stat(vm.WorkDisk); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("work.ext4 beside the overlay: %v", err)
		}
		if b := backingOf(t, workOverlay(vm)); b != snapWork {
			t.Fatalf("the overlay reads through %q, want the snapshot's work disk", b)
		}
	}

	// Made raw by the VMM before a snapshot.
	overlayFromSnapshot()
	if d, err := f.m.workDisk(ctx, vm); err != nil || d.Format != vmm.FormatQcow2 || d.Path != workOverlay(vm) {
		t.Fatalf("workDisk = %+v, %v; want the overlay", d, err)
	}
	if _, err := f.m.Start(ctx, "dev", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := f.m.CreateSnapshot(ctx, "dev", "s2"); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(vm.WorkDisk); err != nil || string(b) != "mirrored" || ov.mirrors != 1 {
		t.Fatalf("work disk after a snapshot: %q, %v (mirrors %d); want the vmm's copy", b, err, ov.mirrors)
	}
	if _, err := os.Stat(workOverlay(vm)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("overlay left after its copy: %v", err)
	}
	if d, err := f.m.workDisk(ctx, vm); err != nil || d.Format != vmm.FormatRaw || d.Path != vm.WorkDisk {
		t.Fatalf("workDisk = %+v, %v; want work.ext4", d, err)
	}

	// Made raw by the daemon at a stop, with both layers' data.
	if _, err := f.m.Stop(ctx, "dev", api.StopVMRequest{}); err != nil {
		t.Fatal(err)
	}
	overlayFromSnapshot()
	qemu("qemu-io", "-f", "qcow2", "-c", "write -P 0x22 2M 1M", workOverlay(vm))
	if _, err := f.m.Start(ctx, "dev", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := f.m.Stop(ctx, "dev", api.StopVMRequest{}); err != nil {
		t.Fatal(err)
	}
	qemu("qemu-io", "-f", "raw", "-r", "-c", "read -P 0x11 0 1M", "-c", "read -P 0 1M 1M", "-c", "read -P 0x22 2M 1M", vm.WorkDisk)
	if m, _ := filepath.Glob(filepath.Join(vm.Dir, "work.*")); len(m) != 1 {
		t.Fatalf("work files after the conversion: %v", m)
	}

	// A pause keeps the overlay (nothing reads a paused VM's disks); a
	// snapshot of the paused VM makes it raw first, then takes it in
	// place: the snapshot's work disk is that file, and the VM goes on
	// over an overlay over it.
	overlayFromSnapshot()
	if _, err := f.m.Start(ctx, "dev", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := f.m.Pause(ctx, "dev"); err != nil {
		t.Fatal(err)
	}
	if !hasWorkOverlay(vm) {
		t.Fatal("a pause made the work disk raw")
	}
	sp, err := f.m.CreateSnapshot(ctx, "dev", "sp")
	if err != nil {
		t.Fatal(err)
	}
	spWork := filepath.Join(sp.Dir, "work.ext4")
	if !hasWorkOverlay(vm) || backingOf(t, workOverlay(vm)) != spWork {
		t.Fatalf("a paused vm's snapshot left its work disk not over the snapshot's (overlay %v)", hasWorkOverlay(vm))
	}
	qemu("qemu-io", "-f", "raw", "-r", "-c", "read -P 0x11 0 1M", spWork)
	// A snapshot taken of the VM is accepted under its overlay whatever
	// its state (the VM is put over it before it is recorded ready).
	sp.State = model.SnapshotCreating
	if err := f.st.UpdateSnapshot(ctx, sp); err != nil {
		t.Fatal(err)
	}
	if d, err := f.m.workDisk(ctx, vm); err != nil || d.Path != workOverlay(vm) {
		t.Fatalf("workDisk over its own snapshot, not yet ready = %+v, %v", d, err)
	}
	sp.State = model.SnapshotReady
	if err := f.st.UpdateSnapshot(ctx, sp); err != nil {
		t.Fatal(err)
	}
	if _, err := f.m.Resume(ctx, "dev", nil); err != nil {
		t.Fatal(err)
	}
	qemu("qemu-io", "-f", "qcow2", "-c", "write -P 0x33 4M 1M", workOverlay(vm))
	if _, err := f.m.Stop(ctx, "dev", api.StopVMRequest{}); err != nil {
		t.Fatal(err)
	}
	qemu("qemu-io", "-f", "raw", "-r", "-c", "read -P 0x11 0 1M", "-c", "read -P 0x33 4M 1M", vm.WorkDisk)
	qemu("qemu-io", "-f", "raw", "-r", "-c", "read -P 0 4M 1M", spWork)

	// Its removal makes the VM's disk raw first: by the daemon while
	// the VM is paused, by its VMM while it runs.
	ov.stream = func(base string) error {
		writeOverlay(t, vm.SystemDisk, base)
		return nil
	}
	for _, running := range []bool{false, true} {
		if _, err := f.m.Start(ctx, "dev", nil); err != nil {
			t.Fatal(err)
		}
		if _, err := f.m.Pause(ctx, "dev"); err != nil {
			t.Fatal(err)
		}
		sn, err := f.m.CreateSnapshot(ctx, "dev", fmt.Sprintf("rm-%v", running))
		if err != nil {
			t.Fatal(err)
		}
		if !readsWork(vm, sn) {
			t.Fatalf("running=%v: the vm does not read through its snapshot's work disk", running)
		}
		mirrors := ov.mirrors
		if running {
			if _, err := f.m.Resume(ctx, "dev", nil); err != nil {
				t.Fatal(err)
			}
		}
		if err := f.m.RemoveSnapshot(ctx, sn.Name); err != nil {
			t.Fatalf("running=%v: remove: %v", running, err)
		}
		if hasWorkOverlay(vm) {
			t.Fatalf("running=%v: the snapshot went while the vm read through it", running)
		}
		if running {
			if b, err := os.ReadFile(vm.WorkDisk); err != nil || string(b) != "mirrored" || ov.mirrors != mirrors+1 {
				t.Fatalf("work disk after a removal: %q, %v; want the vmm's copy", b, err)
			}
			if err := os.Truncate(vm.WorkDisk, vm.DiskBytes); err != nil {
				t.Fatal(err)
			}
		} else {
			qemu("qemu-io", "-f", "raw", "-r", "-c", "read -P 0x33 4M 1M", vm.WorkDisk)
		}
		if _, err := f.m.Stop(ctx, "dev", api.StopVMRequest{}); err != nil {
			t.Fatal(err)
		}
	}

	// A daemon stopped before the VM was put over the snapshot's work
	// disk leaves one file under both names: its next start gives the
	// snapshot a copy of its own.
	if _, err := f.m.Start(ctx, "dev", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := f.m.Pause(ctx, "dev"); err != nil {
		t.Fatal(err)
	}
	half, err := f.m.CreateSnapshot(ctx, "dev", "half-linked")
	if err != nil {
		t.Fatal(err)
	}
	halfWork := filepath.Join(half.Dir, "work.ext4")
	if err := storage.Qcow2ToRaw(ctx, workOverlay(vm), vm.WorkDisk); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(halfWork); err != nil {
		t.Fatal(err)
	}
	qemu("qemu-io", "-f", "raw", "-c", "write -P 0x44 6M 1M", vm.WorkDisk)
	if err := os.Link(vm.WorkDisk, halfWork); err != nil {
		t.Fatal(err)
	}
	half.State = model.SnapshotCreating
	if err := f.st.UpdateSnapshot(ctx, half); err != nil {
		t.Fatal(err)
	}
	f.m.Reconcile(ctx)
	a, _ := os.Stat(vm.WorkDisk)
	b, _ := os.Stat(halfWork)
	if a == nil || b == nil || os.SameFile(a, b) || hasWorkOverlay(vm) {
		t.Fatalf("after the daemon's start: vm disk %v, snapshot's %v, overlay %v; want two files", a, b, hasWorkOverlay(vm))
	}
	if got, _ := f.m.GetSnapshot(ctx, half.Name); got.State != model.SnapshotReady {
		t.Fatalf("the half-linked snapshot is %s, want ready", got.State)
	}
	qemu("qemu-io", "-f", "raw", "-r", "-c", "read -P 0x44 6M 1M", halfWork)
	if _, err := f.m.Stop(ctx, "dev", api.StopVMRequest{}); err != nil {
		t.Fatal(err)
	}

	// A header naming a host file: no start, no conversion.
	_ = os.Remove(vm.WorkDisk)
	if err := storage.WriteQcow2Overlay(workOverlay(vm), "/etc/passwd", vmm.FormatRaw, vm.DiskBytes); err != nil {
		t.Fatal(err)
	}
	if _, err := f.m.Start(ctx, "dev", nil); err == nil || !strings.Contains(err.Error(), "work disk") || !strings.Contains(err.Error(), "/etc/passwd") {
		t.Fatalf("start over a foreign work disk header: %v", err)
	}
	if err := f.m.rawWorkOffline(ctx, vm); err == nil || !strings.Contains(err.Error(), "/etc/passwd") {
		t.Fatalf("conversion over a foreign header: %v", err)
	}
	if _, err := os.Stat(vm.WorkDisk); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a raw work disk was made from a foreign header: %v", err)
	}
	// An overlay whose header cannot be read (here a symlink to a host
	// file) counts as reading through the VM's snapshot: the removal
	// tries to make it raw, is refused, and keeps the snapshot.
	if err := os.Remove(workOverlay(vm)); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc/passwd", workOverlay(vm)); err != nil {
		t.Fatal(err)
	}
	if !readsWork(vm, half) {
		t.Fatal("an unreadable work overlay was taken as not reading through the snapshot")
	}
	if err := f.m.RemoveSnapshot(ctx, half.Name); errdefs.CodeOf(err) != errdefs.CodeConflict {
		t.Fatalf("removal under an unreadable work overlay: %v, want a conflict", err)
	}
	if _, err := f.m.GetSnapshot(ctx, half.Name); err != nil {
		t.Fatalf("the snapshot went under an unreadable work overlay: %v", err)
	}
	if _, err := os.Stat(vm.WorkDisk); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a raw work disk was made through a symlink: %v", err)
	}
	_ = os.Remove(workOverlay(vm))

	// The daemon's start converts a stopped VM's overlay.
	overlayFromSnapshot()
	f.m.Reconcile(ctx)
	qemu("qemu-io", "-f", "raw", "-r", "-c", "read -P 0x11 0 1M", vm.WorkDisk)
	if _, err := os.Stat(workOverlay(vm)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("overlay left after the daemon's start: %v", err)
	}
}
