package vms

import (
	"context"
	"os"
	"path/filepath"
	"time"

	"github.com/banger/banger/internal/model"
	"github.com/banger/banger/internal/vmm"
)

// Reconcile runs at start-up. For each VM recorded as running (or caught
// mid-transition) it reads the scratch file, looks for the VMM process by
// the api socket it was started with, and either keeps it (seeding the
// handles cache) or demotes it to stopped after tearing down what the
// scratch file names. A paused VM has no VMM by design: it stays paused
// while its saved state is on disk (reconcilePaused). A VM directory with no record (a database restored
// from an older copy, or damaged) is never deleted: what runs from it is
// torn down and the directory moves to the lost+found directory, for the
// user to inspect.
func (m *Manager) Reconcile(ctx context.Context) {
	vms, err := m.store.ListVMs(ctx)
	if err != nil {
		m.log.Error("reconcile: list vms", "err", err)
		return
	}
	known := map[string]bool{}
	gone := m.reconcileLeftovers(ctx, vms)
	for _, vm := range vms {
		known[vm.ID] = true
		if !gone[vm.ID] {
			m.reconcileVM(ctx, vm)
			// A work overlay left on a VM that does not run (a daemon
			// stopped mid-stop) is made raw; only such a VM is read again.
			if _, err := os.Lstat(workOverlay(vm)); err != nil {
				continue
			}
			if v, err := m.store.GetVM(ctx, vm.ID); err == nil && (v.State == model.VMStopped || v.State == model.VMFailed) {
				m.rawWorkAfterStop(ctx, v)
			}
		}
	}
	entries, _ := os.ReadDir(m.cfg.VMsDir())
	for _, e := range entries {
		if e.IsDir() && !known[e.Name()] {
			dir := filepath.Join(m.cfg.VMsDir(), e.Name())
			m.teardown(ctx, model.VM{ID: e.Name(), Dir: dir, VMM: m.drivers.Owner(dir), APISocket: filepath.Join(dir, "api.sock")})
			dst, err := m.moveToLostFound(dir)
			if err != nil {
				m.log.Error("reconcile: vm directory with no record could not be moved; it is left in place", "dir", dir, "err", err)
				continue
			}
			m.log.Warn("reconcile: vm directory with no record moved to lost+found", "dir", dir, "to", dst)
		}
	}
	m.reconcileSnapshots(ctx)
	// Deadlines that passed while the daemon was down, before anyone
	// can use those VMs again.
	m.expireDue(ctx)
}

func (m *Manager) reconcileVM(ctx context.Context, vm model.VM) {
	h, herr := readHandlesFile(vm.Dir)
	if herr != nil {
		m.log.Warn("reconcile: handles file", "vm", vm.Name, "err", herr)
	}
	switch vm.State {
	case model.VMRunning, model.VMStarting, model.VMStopping:
	case model.VMPaused, model.VMPausing, model.VMResuming:
		m.reconcilePaused(ctx, vm, h)
		return
	default:
		if herr != nil || h.PID != 0 || h.Tap != "" || len(h.Loops) > 0 {
			// A stopped VM with a scratch file: a stop that crashed half-way.
			m.teardown(ctx, vm)
		}
		return
	}
	drv, err := m.driver(vm.VMM)
	if err == nil {
		sock := h.APISocket
		if sock == "" {
			sock = vm.APISocket
		}
		if vh, ferr := drv.Find(sock); ferr == nil {
			h.PID, h.APISocket = vh.PID, vh.APISocket
			if err := m.handles.set(vm.ID, vm.Dir, h); err != nil {
				m.log.Warn("reconcile: write handles", "vm", vm.Name, "err", err)
			}
			if vm.State != model.VMRunning {
				// A start or stop was cut short; the process lives, so the
				// VM runs. A start cut before SSH answered is re-checked by
				// the next exec's dial.
				vm.State = model.VMRunning
				_ = m.save(ctx, &vm)
			}
			m.reapplyNet(ctx, vm)
			m.dropBackups(ctx, vm, drv, vh)
			m.settleMirror(ctx, vm, drv, vh)
			m.log.Info("reconcile: vm still running", "vm", vm.Name, "pid", vh.PID)
			return
		}
	}
	m.markStopped(ctx, vm, "vmm process was gone when the daemon started")
	m.log.Warn("reconcile: vm demoted to stopped", "vm", vm.Name)
}

// Watch notices VMM processes that died under a running VM (killed, or the
// guest powered itself off) and releases their resources, every interval,
// until ctx ends.
func (m *Manager) Watch(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		vms, err := m.store.ListVMs(ctx)
		if err != nil {
			continue
		}
		for _, vm := range vms {
			if vm.State != model.VMRunning {
				continue
			}
			m.capLogs(vm)
			if _, cached := m.handles.get(vm.ID); !cached || m.vmmAlive(vm) {
				continue
			}
			m.reapDead(ctx, vm.ID)
		}
	}
}

// capLogs keeps a running VM's console and VMM logs under the configured
// size: a guest printing without end must not fill the state directory.
func (m *Manager) capLogs(vm model.VM) {
	max, err := model.ParseSize(m.cfg.MaxConsoleLog)
	if err != nil || max <= 0 {
		return
	}
	for _, p := range []string{vm.ConsolePath, vm.LogPath} {
		if err := vmm.CapLog(p, max); err != nil {
			m.log.Debug("cap log", "vm", vm.Name, "path", p, "err", err)
		}
	}
}

// reapDead marks a running VM whose VMM is gone as stopped.
func (m *Manager) reapDead(ctx context.Context, id string) {
	unlock := m.locks.Lock(id)
	defer unlock()
	vm, err := m.store.GetVM(ctx, id)
	if err != nil || vm.State != model.VMRunning || m.vmmAlive(vm) {
		return
	}
	m.markStopped(ctx, vm, "vmm process exited while the vm was running (guest powered off, or the process was killed)")
	m.log.Warn("vmm process gone; vm marked stopped", "vm", vm.Name)
}

// markStopped records a VM whose VMM is gone as stopped, with why, after
// releasing what it held.
func (m *Manager) markStopped(ctx context.Context, vm model.VM, why string) {
	m.teardown(ctx, vm)
	vm.State = model.VMStopped
	vm.LastError = why
	_ = m.save(ctx, &vm)
	m.rawWorkAfterStop(ctx, vm)
	// A copy up its VMM did not finish is the daemon's now (halt).
	m.separateIfReader(ctx, vm.ID)
}

// moveToLostFound moves a VM directory to <state>/lost+found/<id>-<time>,
// on the same file system (a rename: nothing is copied or lost).
func (m *Manager) moveToLostFound(dir string) (string, error) {
	lf := m.cfg.LostFoundDir()
	if err := os.MkdirAll(lf, 0o700); err != nil {
		return "", err
	}
	dst := filepath.Join(lf, filepath.Base(dir)+"-"+m.now().UTC().Format("20060102T150405Z"))
	return dst, os.Rename(dir, dst)
}
