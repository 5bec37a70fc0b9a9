package vms

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/banger/banger/internal/errdefs"
	"github.com/banger/banger/internal/hostnet"
	"github.com/banger/banger/internal/model"
	"github.com/banger/banger/internal/progress"
	"github.com/banger/banger/internal/vmm"
)

// ---- pause and resume: a VM's whole state to disk and back ----
//
// A pause saves the guest (memory, vCPUs, devices) into <vmdir>/state.tmp
// through the driver's vmm.Snapshotter, renames it to <vmdir>/state once
// whole (a crash before leaves no state that looks complete), then ends the
// VMM and releases what it held, like a stop: the tap, loop devices,
// sockets, the pooled SSH connection and the published ports. The disks
// stay as they are. The record says paused. A resume does a start's host
// side again (disk, tap, network policy) and restores the VMM from the
// state instead of booting; the state is removed once the guest answers
// and its clock is set. A stop (or delete) of a paused VM removes it.

// Names of a paused VM's state directories, in its VM directory.
const (
	stateDirName = "state"
	stateTmpName = "state.tmp"
)

// pauseLockWait is how long a pause waits for another operation on the
// VM (a workspace prepare, a start) before it is refused.
const pauseLockWait = time.Second

// StateDir is where a paused VM's saved state lives.
func StateDir(vmDir string) string { return filepath.Join(vmDir, stateDirName) }

// snapshotter returns drv's Snapshotter ability, or an unavailable error
// naming the driver.
func snapshotter(drv vmm.Driver) (vmm.Snapshotter, error) {
	s, ok := drv.(vmm.Snapshotter)
	if !ok {
		return nil, errdefs.Errorf(errdefs.CodeUnavailable, "vmm %s cannot save a running VM's state (no snapshot support)", drv.Name())
	}
	return s, nil
}

// Pause saves a running VM's whole state to its directory and ends its
// VMM, so that it holds no host memory; Resume (or Start) goes on from
// there. A VM another operation holds (a workspace prepare, a start or
// stop) is refused after a short wait, not queued behind it.
func (m *Manager) Pause(ctx context.Context, ref string) (model.VM, error) {
	vm, unlock, err := m.lockBriefly(ctx, ref, "pause")
	if err != nil {
		return vm, err
	}
	defer unlock()
	return m.pause(ctx, vm)
}

// pause does the work of Pause. Called with the VM's lock held.
func (m *Manager) pause(ctx context.Context, vm model.VM) (model.VM, error) {
	if vm.State == model.VMPaused {
		return vm, errdefs.Errorf(errdefs.CodeConflict, "vm %s is already paused: resume it with `banger vm resume %s`", vm.Name, vm.Name)
	}
	if !m.Alive(vm) {
		return vm, errdefs.Errorf(errdefs.CodeConflict, "vm %s is not running (state %s): only a running vm can be paused", vm.Name, vm.State)
	}
	drv, err := m.driver(vm.VMM)
	if err != nil {
		return vm, err
	}
	snap, err := snapshotter(drv)
	if err != nil {
		return vm, err
	}
	h, _ := m.handles.get(vm.ID)
	vh := vmm.Handle{PID: h.PID, APISocket: h.APISocket}
	start := time.Now()
	vm.State = model.VMPausing
	if err := m.save(ctx, &vm); err != nil {
		return vm, err
	}
	// back puts the VM as it was when the save did not happen: the
	// driver resumed the guest.
	parked := false
	back := func(err error) (model.VM, error) {
		if parked {
			// The guest runs on: its connection's keepalives too.
			uctx, cancel := context.WithTimeout(context.Background(), unparkWait)
			_ = m.unparkGuest(uctx, vm)
			cancel()
		}
		_ = os.RemoveAll(filepath.Join(vm.Dir, stateTmpName))
		vm.State = model.VMRunning
		_ = m.save(context.Background(), &vm)
		m.log.Error("vm pause failed", "vm", vm.Name, "err", err)
		return vm, fmt.Errorf("pause vm %s: %w", vm.Name, err)
	}
	tmp := filepath.Join(vm.Dir, stateTmpName)
	if err := os.RemoveAll(tmp); err != nil {
		return back(err)
	}
	if err := os.Mkdir(tmp, 0o700); err != nil {
		return back(err)
	}
	// The pooled SSH connection outlives the pause: the guest's end is
	// saved with its memory, the daemon's stays open, and a resume takes
	// it back instead of a new handshake.
	parked = m.parkGuest(vm.ID)
	if err := snap.Save(ctx, vh, tmp); err != nil {
		return back(err)
	}
	dir := StateDir(vm.Dir)
	err = os.RemoveAll(dir)
	if err == nil {
		err = os.Rename(tmp, dir)
	}
	if err == nil {
		err = syncDir(vm.Dir)
	}
	if err != nil {
		if rerr := snap.Resume(context.Background(), vh); rerr != nil {
			err = errors.Join(err, rerr)
		}
		_ = os.RemoveAll(dir)
		return back(err)
	}
	// The guest lives in its state now: the VMM and what it held go, even
	// when the client has gone away meanwhile.
	ctx = context.WithoutCancel(ctx)
	m.release(ctx, vm, true)
	vm.State, vm.DesiredState = model.VMPaused, model.VMPaused
	if err := m.save(ctx, &vm); err != nil {
		return vm, err
	}
	m.log.Info("vm paused", "vm", vm.Name, "state_bytes", dirBytes(dir), "seconds", time.Since(start).Seconds())
	return vm, nil
}

// Resume restores a paused VM from its saved state and waits until its
// guest answers SSH, with its clock set to the host's.
func (m *Manager) Resume(ctx context.Context, ref string, report progress.Func) (model.VM, error) {
	vm, unlock, err := m.Lock(ctx, ref)
	if err != nil {
		return vm, err
	}
	defer unlock()
	if vm.State != model.VMPaused {
		return vm, errdefs.Errorf(errdefs.CodeConflict, "vm %s is not paused (state %s): only a paused vm can be resumed", vm.Name, vm.State)
	}
	return m.resume(ctx, vm, progress.OrNop(report))
}

// resume does the work of Resume. Called with the VM's lock held.
func (m *Manager) resume(ctx context.Context, vm model.VM, report progress.Func) (model.VM, error) {
	dir := StateDir(vm.Dir)
	if _, err := os.Stat(dir); err != nil {
		m.markStopped(ctx, vm, "the saved state of the paused vm is missing")
		return vm, errdefs.Errorf(errdefs.CodeConflict, "vm %s was paused but its saved state is gone (%v): it is stopped now; start it with `banger vm start %s`", vm.Name, err, vm.Name)
	}
	// What the pause parked of the VM's host names, as it saved them: a
	// resume that fails tears its tap down, and the VM goes on paused.
	parked, perr := readParked(vm.Dir)
	vm, err := m.launch(ctx, vm, report, dir, nil, bootOpts{})
	if err == nil {
		// A resume is activity: the idle time before the pause must not
		// pause the VM again at once.
		m.Active(vm.ID)()
		// Its tap has what was parked; the scratch file is for a
		// paused VM only.
		_ = writeParked(vm.Dir, nil)
		return vm, nil
	}
	if vm.State == model.VMPaused && parked != nil && perr == nil && m.taps != nil {
		// Parked again as the pause left them, not as the failed run
		// changed them: the next resume restores the guest's memory of
		// that moment, and what its names had opened then.
		if rerr := m.taps.Repark(hostnet.TapName(vm.ID), *parked); rerr != nil {
			m.log.Warn("what the vm's host names opened is lost", "vm", vm.Name, "err", rerr)
		} else if werr := writeParked(vm.Dir, parked); werr != nil {
			m.log.Warn("keep what the vm's host names opened", "vm", vm.Name, "err", werr)
		}
	}
	return vm, err
}

// discardState removes a VM's saved state (a stop of a paused VM), and
// any half-written one.
func discardState(vmDir string) error {
	return errors.Join(os.RemoveAll(StateDir(vmDir)), os.RemoveAll(filepath.Join(vmDir, stateTmpName)))
}

// reconcilePaused settles a VM recorded paused, or caught pausing or
// resuming, at start-up: a VMM still running means the guest runs (a
// pause cut short is resumed, its state dropped); without one the VM is
// paused when a whole state is on disk, else stopped.
func (m *Manager) reconcilePaused(ctx context.Context, vm model.VM, h model.VMHandles) {
	drv, err := m.driver(vm.VMM)
	if err == nil && vm.State != model.VMPaused {
		sock := h.APISocket
		if sock == "" {
			sock = vm.APISocket
		}
		vh, ferr := drv.Find(sock)
		if ferr == nil && vm.State == model.VMPausing {
			m.settleSwitch(ctx, vm, drv, &vh)
			m.settleWorkSwitch(ctx, vm, vh)
		}
		if ferr == nil && drv.Alive(vh) {
			if s, ok := drv.(vmm.Snapshotter); ok && vm.State == model.VMPausing {
				if err := s.Resume(ctx, vh); err != nil {
					m.log.Warn("reconcile: resume a vm caught pausing", "vm", vm.Name, "err", err)
				}
			}
			_ = discardState(vm.Dir)
			h.PID, h.APISocket = vh.PID, vh.APISocket
			if err := m.handles.set(vm.ID, vm.Dir, h); err != nil {
				m.log.Warn("reconcile: write handles", "vm", vm.Name, "err", err)
			}
			vm.State, vm.DesiredState = model.VMRunning, model.VMRunning
			_ = m.save(ctx, &vm)
			m.reapplyNet(ctx, vm)
			m.dropBackups(ctx, vm, drv, vh)
			m.log.Info("reconcile: vm caught pausing or resuming still runs", "vm", vm.Name, "pid", vh.PID)
			return
		}
	}
	if (vm.State == model.VMPausing || vm.State == model.VMPaused) && err == nil {
		// A snapshot's switch cut short: of a frozen VM whose VMM is
		// gone, or of a paused one (takePausedInPlace).
		m.settleSwitch(ctx, vm, drv, nil)
	}
	// What the daemon before this one parked of the VM's host names
	// goes back for the resume's tap, before the release below answers
	// it again to be kept.
	if p, err := readParked(vm.Dir); err != nil {
		m.log.Warn("reconcile: what the vm's host names opened is lost", "vm", vm.Name, "err", err)
	} else if p != nil && m.taps != nil {
		if err := m.taps.Repark(hostnet.TapName(vm.ID), *p); err != nil {
			m.log.Warn("reconcile: what the vm's host names opened is lost", "vm", vm.Name, "err", err)
		}
	}
	// Whatever a pause cut short left (a VMM, a tap, loops) goes; for a
	// VM paused cleanly this finds nothing.
	m.release(ctx, vm, true)
	_ = os.RemoveAll(filepath.Join(vm.Dir, stateTmpName))
	if _, err := os.Stat(StateDir(vm.Dir)); err != nil {
		m.markStopped(ctx, vm, "the vm was paused but its saved state is missing")
		m.log.Warn("reconcile: paused vm without a saved state demoted to stopped", "vm", vm.Name)
		return
	}
	if vm.State != model.VMPaused {
		vm.State, vm.DesiredState = model.VMPaused, model.VMPaused
		_ = m.save(ctx, &vm)
	}
	m.log.Info("reconcile: vm paused", "vm", vm.Name)
}

// setGuestClock steps a resumed guest's wall clock to the host's.
func (m *Manager) setGuestClock(ctx context.Context, vm model.VM) error {
	if m.setClock == nil {
		return nil
	}
	return m.setClock(ctx, vm)
}

// syncDir makes a rename in dir durable.
func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// dirBytes is the disk space the files in dir take, for the log.
func dirBytes(dir string) int64 {
	var n int64
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if fi, err := e.Info(); err == nil {
			n += fi.Size()
		}
	}
	return n
}
