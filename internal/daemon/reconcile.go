package daemon

import (
	"context"
	"os"
	"path/filepath"

	"github.com/banger/banger/internal/model"
)

// reconcile runs at start-up. For each VM recorded as running (or caught
// mid-transition) it reads the scratch file, looks for the VMM process by
// the api socket it was started with, and either keeps it (seeding the
// handles cache) or demotes it to stopped after tearing down what the
// scratch file names. VM directories with no record (a delete interrupted
// by a crash) are removed.
func (d *Daemon) reconcile(ctx context.Context) {
	vms, err := d.store.ListVMs(ctx)
	if err != nil {
		d.log.Error("reconcile: list vms", "err", err)
		return
	}
	known := map[string]bool{}
	for _, vm := range vms {
		known[vm.ID] = true
		d.reconcileVM(ctx, vm)
	}
	entries, _ := os.ReadDir(d.cfg.VMsDir())
	for _, e := range entries {
		if e.IsDir() && !known[e.Name()] {
			dir := filepath.Join(d.cfg.VMsDir(), e.Name())
			d.log.Warn("reconcile: removing vm directory with no record", "dir", dir)
			d.teardown(ctx, model.VM{ID: e.Name(), Dir: dir, VMM: d.host.drivers.Owner(dir), APISocket: filepath.Join(dir, "api.sock")})
			_ = os.RemoveAll(dir)
		}
	}
}

func (d *Daemon) reconcileVM(ctx context.Context, vm model.VM) {
	h, herr := readHandlesFile(vm.Dir)
	if herr != nil {
		d.log.Warn("reconcile: handles file", "vm", vm.Name, "err", herr)
	}
	switch vm.State {
	case model.VMRunning, model.VMStarting, model.VMStopping:
	default:
		if herr != nil || h.PID != 0 || h.Tap != "" || len(h.Loops) > 0 {
			// A stopped VM with a scratch file: a stop that crashed half-way.
			d.teardown(ctx, vm)
		}
		return
	}
	drv, err := d.driver(vm.VMM)
	if err == nil {
		sock := h.APISocket
		if sock == "" {
			sock = vm.APISocket
		}
		if vh, ferr := drv.Find(sock); ferr == nil {
			h.PID, h.APISocket = vh.PID, vh.APISocket
			if err := d.handles.set(vm.ID, vm.Dir, h); err != nil {
				d.log.Warn("reconcile: write handles", "vm", vm.Name, "err", err)
			}
			if vm.State != model.VMRunning {
				// A start or stop was cut short; the process lives, so the
				// VM runs. A start cut before SSH answered is re-checked by
				// the next exec's dial.
				vm.State = model.VMRunning
				_ = d.save(ctx, &vm)
			}
			d.log.Info("reconcile: vm still running", "vm", vm.Name, "pid", vh.PID)
			return
		}
	}
	d.teardown(ctx, vm)
	vm.State = model.VMStopped
	vm.LastError = "vmm process was gone when the daemon started"
	_ = d.save(ctx, &vm)
	d.log.Warn("reconcile: vm demoted to stopped", "vm", vm.Name)
}
