package vms

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/banger/banger/internal/api"
	"github.com/banger/banger/internal/daemon/vms/vmstest"
	"github.com/banger/banger/internal/errdefs"
	"github.com/banger/banger/internal/hostnet"
	"github.com/banger/banger/internal/model"
	"github.com/banger/banger/internal/vmm"
)

// snapFixture is newFixture with a driver that can save and restore, and
// a count of guest clock settings.
func snapFixture(t *testing.T) (*fixture, *vmstest.SnapDriver, *int) {
	f := newFixture(t)
	snap := vmstest.NewSnapDriver()
	f.drv = snap.Driver
	clocks := new(int)
	f.started = map[string]int{}
	deps := Deps{
		Config: f.m.cfg, Store: f.m.store, Log: f.m.log, Now: time.Now,
		Drivers: vmm.NewRegistry(snap), Strategies: f.m.strategies,
		Taps: f.taps, Subnet: f.m.subnet, AuthorizedKey: f.m.authorizedKey, Artifacts: f.art,
		WaitGuest: func(ctx context.Context, vm model.VM, vmmAlive func() bool) error {
			return f.waitGuest(ctx, vm, vmmAlive)
		},
		WaitListening: func(ctx context.Context, vm model.VM, vmmAlive func() bool) error {
			return f.waitListening(ctx, vm, vmmAlive)
		},
		SetGuestClock: func(context.Context, model.VM) error { *clocks++; return nil },
		Started:       func(_ context.Context, vm model.VM) { f.started[vm.Name]++ },
	}
	f.m = New(deps)
	return f, snap, clocks
}

func startVM(t *testing.T, f *fixture, name string) model.VM {
	t.Helper()
	vm, err := f.m.Create(context.Background(), api.CreateVMRequest{Name: name, Disk: "64M", Start: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return vm
}

// assertPaused checks a VM is recorded paused with a whole saved state
// and holds nothing on the host: no VMM, tap or scratch file.
func assertPaused(t *testing.T, f *fixture, name string) model.VM {
	t.Helper()
	vm, err := f.m.Get(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	if vm.State != model.VMPaused || vm.DesiredState != model.VMPaused {
		t.Fatalf("%s: state %s desired %s, want paused", name, vm.State, vm.DesiredState)
	}
	if _, err := os.Stat(filepath.Join(StateDir(vm.Dir), "fake.state")); err != nil {
		t.Fatalf("%s: saved state missing: %v", name, err)
	}
	if _, err := os.Stat(filepath.Join(vm.Dir, stateTmpName)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("%s: state.tmp left (%v)", name, err)
	}
	if _, err := f.drv.Find(vm.APISocket); err == nil {
		t.Fatalf("%s: vmm still running while paused", name)
	}
	if len(f.taps.Made) != 0 {
		t.Fatalf("%s: taps left while paused: %v", name, f.taps.Made)
	}
	if _, err := os.Stat(filepath.Join(vm.Dir, handlesFile)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("%s: handles.json left while paused (%v)", name, err)
	}
	return vm
}

func TestPauseResume(t *testing.T) {
	f, snap, clocks := snapFixture(t)
	ctx := context.Background()
	startVM(t, f, "one")
	none := "none"
	if _, err := f.m.SetNet(ctx, "one", api.VMNetRequest{Net: &none, Allow: &[]string{"*.example.test"}}); err != nil {
		t.Fatal(err)
	}
	vm, err := f.m.Pause(ctx, "one")
	if err != nil {
		t.Fatal(err)
	}
	if vm.State != model.VMPaused {
		t.Fatalf("Pause answered %+v", vm)
	}
	assertPaused(t, f, "one")
	// The tap is parked: what its host names opened waits for the resume,
	// in memory and beside the VM.
	tap := hostnet.TapName(vm.ID)
	if !f.taps.IsParked(tap) {
		t.Fatalf("tap %s of a paused vm not parked (parked %v)", tap, f.taps.Parked)
	}
	if p, err := readParked(vm.Dir); err != nil || p == nil || p.IP.String() != vm.GuestIP {
		t.Fatalf("parked names beside the vm: %+v, %v", p, err)
	}
	if _, err := f.m.Pause(ctx, "one"); errdefs.CodeOf(err) != errdefs.CodeConflict || !strings.Contains(err.Error(), "already paused") {
		t.Fatalf("second pause: %v", err)
	}
	if _, err := f.m.Running(ctx, "one"); errdefs.CodeOf(err) != errdefs.CodeConflict || !strings.Contains(err.Error(), "banger vm resume one") {
		t.Fatalf("Running of a paused vm: %v", err)
	}

	// A daemon restart keeps it paused: no VMM is expected. Its new
	// network knows nothing until the restart reparks what was kept.
	f.m.handles = newHandleCache()
	f.taps.Parked = map[string]hostnet.ParkedNames{}
	f.m.Reconcile(ctx)
	assertPaused(t, f, "one")
	if !f.taps.IsParked(tap) {
		t.Fatalf("tap %s not parked again after a restart", tap)
	}

	vm, err = f.m.Resume(ctx, "one", nil)
	if err != nil {
		t.Fatal(err)
	}
	if vm.State != model.VMRunning || vm.DesiredState != model.VMRunning || !f.m.Alive(vm) {
		t.Fatalf("after resume: %+v alive=%v", vm, f.m.Alive(vm))
	}
	if len(snap.Restored) != 1 || len(f.drv.Started) != 1 || *clocks != 1 {
		t.Fatalf("restored %d, booted %d, clock set %d times", len(snap.Restored), len(f.drv.Started), *clocks)
	}
	// A resume is a start for those told of one (published ports listen again).
	if f.started["one"] != 2 {
		t.Fatalf("Started told %d times of boot and resume, want 2", f.started["one"])
	}
	if !slices.Equal(f.taps.Unparked, []string{tap}) {
		t.Fatalf("the resume's tap got %v back, want %s's parked sets", f.taps.Unparked, tap)
	}
	if p, err := readParked(vm.Dir); p != nil || err != nil {
		t.Fatalf("parked names kept beside a running vm: %+v, %v", p, err)
	}
	if snap.Restored[0].Net.Tap != f.drv.Started[0].Net.Tap || snap.Restored[0].Cmdline != f.drv.Started[0].Cmdline {
		t.Fatalf("restored spec differs from the booted one:\n%+v\n%+v", snap.Restored[0], f.drv.Started[0])
	}
	if _, err := os.Stat(StateDir(vm.Dir)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("saved state left after resume (%v)", err)
	}
	if _, err := f.m.Resume(ctx, "one", nil); errdefs.CodeOf(err) != errdefs.CodeConflict || !strings.Contains(err.Error(), "not paused (state running)") {
		t.Fatalf("resume of a running vm: %v", err)
	}

	// Start of a paused VM resumes it too.
	if _, err := f.m.Pause(ctx, "one"); err != nil {
		t.Fatal(err)
	}
	if vm, err = f.m.Start(ctx, "one", nil); err != nil || vm.State != model.VMRunning || len(snap.Restored) != 2 || len(f.drv.Started) != 1 {
		t.Fatalf("start of a paused vm: %+v, %v, %d restores, %d boots", vm, err, len(snap.Restored), len(f.drv.Started))
	}
	if !slices.Equal(f.taps.Unparked, []string{tap, tap}) {
		t.Fatalf("the resume's tap got %v back, want %s's parked sets", f.taps.Unparked, tap)
	}

	// A stop of a paused VM discards its memory: the next start boots.
	if _, err := f.m.Pause(ctx, "one"); err != nil {
		t.Fatal(err)
	}
	if vm, err = f.m.Stop(ctx, "one", api.StopVMRequest{}); err != nil || vm.State != model.VMStopped {
		t.Fatalf("stop of a paused vm: %+v, %v", vm, err)
	}
	if _, err := os.Stat(StateDir(vm.Dir)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("saved state left after stop (%v)", err)
	}
	if p, _ := readParked(vm.Dir); f.taps.IsParked(tap) || p != nil {
		t.Fatalf("a stopped vm's tap still parked (beside it: %+v)", p)
	}
	if _, err := f.m.Pause(ctx, "one"); errdefs.CodeOf(err) != errdefs.CodeConflict || !strings.Contains(err.Error(), "not running (state stopped)") {
		t.Fatalf("pause of a stopped vm: %v", err)
	}
	if _, err := f.m.Resume(ctx, "one", nil); errdefs.CodeOf(err) != errdefs.CodeConflict || !strings.Contains(err.Error(), "not paused (state stopped)") {
		t.Fatalf("resume of a stopped vm: %v", err)
	}
	if vm, err = f.m.Start(ctx, "one", nil); err != nil || len(f.drv.Started) != 2 {
		t.Fatalf("start after the stop of a paused vm: %v, %d boots", err, len(f.drv.Started))
	}

	// Delete of a paused VM takes its state with the directory.
	if _, err := f.m.Pause(ctx, "one"); err != nil {
		t.Fatal(err)
	}
	if err := f.m.Delete(ctx, "one", false); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(vm.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("vm dir left after deleting a paused vm (%v)", err)
	}
}

func TestPauseFailures(t *testing.T) {
	f, snap, _ := snapFixture(t)
	ctx := context.Background()
	vm := startVM(t, f, "one")

	// A save that fails leaves the VM running, with no state.
	snap.SaveErr = errors.New("disk full")
	if _, err := f.m.Pause(ctx, "one"); err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("pause with a failing save: %v", err)
	}
	got, _ := f.m.Get(ctx, "one")
	if got.State != model.VMRunning || !f.m.Alive(got) {
		t.Fatalf("after a failed pause: %+v", got)
	}
	for _, p := range []string{StateDir(vm.Dir), filepath.Join(vm.Dir, stateTmpName)} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("%s left after a failed pause (%v)", p, err)
		}
	}
	snap.SaveErr = nil

	// A pause while another operation holds the VM is refused.
	unlock := f.m.locks.Lock(vm.ID)
	t0 := time.Now()
	_, err := f.m.Pause(ctx, "one")
	unlock()
	if errdefs.CodeOf(err) != errdefs.CodeConflict || !strings.Contains(err.Error(), "busy") || time.Since(t0) > 3*time.Second {
		t.Fatalf("pause of a busy vm: %v after %v", err, time.Since(t0))
	}

	// A restore that fails leaves the VM paused with its state, and
	// nothing on the host but what its host names opened, parked again
	// for the next resume.
	none := "none"
	if _, err := f.m.SetNet(ctx, "one", api.VMNetRequest{Net: &none, Allow: &[]string{"example.test"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.m.Pause(ctx, "one"); err != nil {
		t.Fatal(err)
	}
	tap := hostnet.TapName(vm.ID)
	stillParked := func(when string) {
		t.Helper()
		if p, err := readParked(vm.Dir); !f.taps.IsParked(tap) || p == nil || err != nil {
			t.Fatalf("%s: tap parked %v, beside the vm %+v, %v", when, f.taps.IsParked(tap), p, err)
		}
	}
	snap.RestoreErr = errors.New("state refused")
	if _, err := f.m.Resume(ctx, "one", nil); err == nil || !strings.Contains(err.Error(), "state refused") {
		t.Fatalf("resume with a failing restore: %v", err)
	}
	got = assertPaused(t, f, "one")
	if !strings.Contains(got.LastError, "state refused") {
		t.Fatalf("last error %q", got.LastError)
	}
	stillParked("after a failed restore")
	snap.RestoreErr = nil
	// A guest that does not answer after the restore: paused again.
	f.waitGuest = func(context.Context, model.VM, func() bool) error { return errors.New("no ssh") }
	if _, err := f.m.Resume(ctx, "one", nil); err == nil {
		t.Fatal("resume with a silent guest succeeded")
	}
	assertPaused(t, f, "one")
	stillParked("after a silent guest")
	f.waitGuest = func(context.Context, model.VM, func() bool) error { return nil }
	unparked := len(f.taps.Unparked)
	if _, err := f.m.Resume(ctx, "one", nil); err != nil {
		t.Fatal(err)
	}
	if len(f.taps.Unparked) != unparked+1 {
		t.Fatalf("the resume after two failed ones got no parked sets back (%v)", f.taps.Unparked)
	}

	// A paused VM whose state vanished is stopped, not resumed.
	if _, err := f.m.Pause(ctx, "one"); err != nil {
		t.Fatal(err)
	}
	os.RemoveAll(StateDir(vm.Dir))
	if _, err := f.m.Resume(ctx, "one", nil); errdefs.CodeOf(err) != errdefs.CodeConflict || !strings.Contains(err.Error(), "saved state is gone") {
		t.Fatalf("resume without state: %v", err)
	}
	if got, _ := f.m.Get(ctx, "one"); got.State != model.VMStopped {
		t.Fatalf("vm without state: %+v", got)
	}

	// A driver without the ability says so.
	plain := newFixture(t)
	startVM(t, plain, "two")
	if _, err := plain.m.Pause(ctx, "two"); errdefs.CodeOf(err) != errdefs.CodeUnavailable || !strings.Contains(err.Error(), "vmm fake") {
		t.Fatalf("pause without the ability: %v", err)
	}
}

// A daemon that died mid-pause or mid-resume: a VMM still running means
// the guest runs (resumed if it was being paused); without one, a whole
// state means paused, none means stopped.
func TestReconcilePausing(t *testing.T) {
	f, snap, _ := snapFixture(t)
	ctx := context.Background()
	live := startVM(t, f, "live")
	saved := startVM(t, f, "saved")
	lost := startVM(t, f, "lost")
	linger := startVM(t, f, "linger")
	// live: caught after its save, VMM still up and paused.
	h, _ := f.m.handles.get(live.ID)
	os.Mkdir(filepath.Join(live.Dir, stateTmpName), 0o700)
	if err := snap.Save(ctx, vmm.Handle{PID: h.PID, APISocket: h.APISocket}, filepath.Join(live.Dir, stateTmpName)); err != nil {
		t.Fatal(err)
	}
	// saved: the state was renamed into place, then the daemon died and
	// so did the VMM.
	h, _ = f.m.handles.get(saved.ID)
	os.Mkdir(StateDir(saved.Dir), 0o700)
	snap.Save(ctx, vmm.Handle{PID: h.PID, APISocket: h.APISocket}, StateDir(saved.Dir))
	f.drv.Kill(ctx, vmm.Handle{APISocket: saved.APISocket})
	// lost: resuming, the VMM gone, no state.
	f.drv.Kill(ctx, vmm.Handle{APISocket: lost.APISocket})
	// linger: paused, its state whole, but its VMM outlived the pause.
	h, _ = f.m.handles.get(linger.ID)
	os.Mkdir(StateDir(linger.Dir), 0o700)
	snap.Save(ctx, vmm.Handle{PID: h.PID, APISocket: h.APISocket}, StateDir(linger.Dir))
	os.Remove(filepath.Join(linger.Dir, handlesFile))
	for vm, st := range map[*model.VM]model.VMState{&live: model.VMPausing, &saved: model.VMPausing, &lost: model.VMResuming, &linger: model.VMPaused} {
		vm.State = st
		if err := f.m.save(ctx, vm); err != nil {
			t.Fatal(err)
		}
	}
	f.m.handles = newHandleCache()
	f.m.Reconcile(ctx)

	got, _ := f.m.Get(ctx, "live")
	if got.State != model.VMRunning || !f.m.Alive(got) || snap.Paused[got.APISocket] {
		t.Fatalf("live: %+v alive=%v paused=%v", got, f.m.Alive(got), snap.Paused[got.APISocket])
	}
	if _, err := os.Stat(filepath.Join(live.Dir, stateTmpName)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("live: state.tmp left (%v)", err)
	}
	got, _ = f.m.Get(ctx, "saved")
	if got.State != model.VMPaused {
		t.Fatalf("saved: %+v", got)
	}
	got, _ = f.m.Get(ctx, "lost")
	if got.State != model.VMStopped || got.LastError == "" {
		t.Fatalf("lost: %+v", got)
	}
	got, _ = f.m.Get(ctx, "linger")
	if got.State != model.VMPaused {
		t.Fatalf("linger: %+v", got)
	}
	if _, err := f.drv.Find(linger.APISocket); err == nil {
		t.Fatal("linger: the VMM that outlived its pause still runs after reconcile")
	}
	if _, err := f.m.Resume(ctx, "saved", nil); err != nil {
		t.Fatal(err)
	}
}

// TestPauseKeepsConnection: a pause parks the VM's pooled SSH connection
// instead of closing it, a resume takes it back without waiting for the
// guest's SSH, falls back to that wait when it cannot, and a failed save,
// a stop and a delete settle it.
func TestPauseKeepsConnection(t *testing.T) {
	f, snap, _ := snapFixture(t)
	ctx := context.Background()
	var (
		conn     = map[string]string{} // vm id → live, parked, closed
		waits    int
		unparkOK = true
	)
	f.m.waitGuest = func(_ context.Context, vm model.VM, _ func() bool) error {
		waits++
		conn[vm.ID] = "live"
		return nil
	}
	f.m.dropGuest = func(id string, keep bool) {
		if !keep {
			conn[id] = "closed"
		}
	}
	f.m.parkGuest = func(id string) bool {
		if conn[id] != "live" {
			return false
		}
		conn[id] = "parked"
		return true
	}
	f.m.unparkGuest = func(_ context.Context, vm model.VM) error {
		if conn[vm.ID] != "parked" || !unparkOK {
			conn[vm.ID] = "closed"
			return errors.New("none kept")
		}
		conn[vm.ID] = "live"
		return nil
	}
	vm := startVM(t, f, "one")
	if waits != 1 || conn[vm.ID] != "live" {
		t.Fatalf("after boot: %d waits, connection %s", waits, conn[vm.ID])
	}
	if _, err := f.m.Pause(ctx, "one"); err != nil {
		t.Fatal(err)
	}
	if conn[vm.ID] != "parked" {
		t.Fatalf("after pause: connection %s, want parked", conn[vm.ID])
	}
	if _, err := f.m.Resume(ctx, "one", nil); err != nil {
		t.Fatal(err)
	}
	if waits != 1 || conn[vm.ID] != "live" {
		t.Fatalf("after resume: %d waits, connection %s; want the parked one back, no wait", waits, conn[vm.ID])
	}

	// A parked connection that does not answer: the guest is waited for.
	if _, err := f.m.Pause(ctx, "one"); err != nil {
		t.Fatal(err)
	}
	unparkOK = false
	if _, err := f.m.Resume(ctx, "one", nil); err != nil {
		t.Fatal(err)
	}
	if waits != 2 || conn[vm.ID] != "live" {
		t.Fatalf("after a resume without the parked connection: %d waits, connection %s", waits, conn[vm.ID])
	}
	unparkOK = true

	// A save that fails: the guest runs on with its connection in use.
	snap.SaveErr = errors.New("disk full")
	if _, err := f.m.Pause(ctx, "one"); err == nil {
		t.Fatal("pause with a failing save succeeded")
	}
	snap.SaveErr = nil
	if conn[vm.ID] != "live" {
		t.Fatalf("after a failed pause: connection %s, want live", conn[vm.ID])
	}

	// A stop of a paused VM closes it.
	if _, err := f.m.Pause(ctx, "one"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.m.Stop(ctx, "one", api.StopVMRequest{}); err != nil {
		t.Fatal(err)
	}
	if conn[vm.ID] != "closed" {
		t.Fatalf("after a stop of a paused vm: connection %s, want closed", conn[vm.ID])
	}
}
