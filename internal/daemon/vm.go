package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/banger/banger/internal/api"
	"github.com/banger/banger/internal/errdefs"
	"github.com/banger/banger/internal/guest"
	"github.com/banger/banger/internal/guestinit"
	"github.com/banger/banger/internal/hostnet"
	"github.com/banger/banger/internal/model"
	"github.com/banger/banger/internal/progress"
	"github.com/banger/banger/internal/storage"
	"github.com/banger/banger/internal/tail"
	"github.com/banger/banger/internal/vmm"
)

// Limits of VM sizes accepted at create.
const (
	minMemoryMiB = 128
	maxCPUs      = 64
	minDiskBytes = 64 << 20
	sshTimeout   = 180 * time.Second
)

// vmPaths are the deterministic paths of a VM under its directory.
func vmPaths(vm *model.VM, dir string, strategy string) {
	vm.Dir = dir
	vm.APISocket = filepath.Join(dir, "api.sock")
	vm.VsockSocket = filepath.Join(dir, "vsock.sock")
	vm.LogPath = filepath.Join(dir, "vmm.log")
	vm.ConsolePath = filepath.Join(dir, "console.log")
	vm.MetricsPath = filepath.Join(dir, "metrics.json")
	vm.WorkDisk = filepath.Join(dir, "work.ext4")
	vm.SystemDisk = storage.SystemFile(strategy, dir)
}

// CreateVM makes the VM record and its disks, and boots it when asked.
func (d *Daemon) CreateVM(ctx context.Context, req api.CreateVMRequest, report progress.Func) (model.VM, error) {
	report = progress.OrNop(report)
	cpus := req.CPUs
	if cpus == 0 {
		cpus = d.cfg.CPUs
	}
	if cpus < 1 || cpus > maxCPUs {
		return model.VM{}, errdefs.Errorf(errdefs.CodeInvalid, "invalid cpus %d: use 1 to %d", cpus, maxCPUs)
	}
	mem, err := sizeAtLeast("memory", req.Memory, d.cfg.Memory, minMemoryMiB<<20)
	if err != nil {
		return model.VM{}, err
	}
	disk, err := sizeAtLeast("disk", req.Disk, d.cfg.Disk, minDiskBytes)
	if err != nil {
		return model.VM{}, err
	}
	id := model.NewID()
	name := req.Name
	if name == "" {
		name = "vm-" + model.ShortID(id)
	}
	if err := model.ValidateName("vm", name); err != nil {
		return model.VM{}, errdefs.Invalid(err)
	}
	if _, err := d.store.GetVM(ctx, name); err == nil {
		return model.VM{}, errdefs.Errorf(errdefs.CodeConflict, "vm %q already exists", name)
	}

	// Checked before the image and kernel, which may take minutes to fetch.
	if _, err := d.pickDriver(ctx, req.VMM); err != nil {
		return model.VM{}, err
	}
	im, err := d.imageForVM(ctx, req.Image, report)
	if err != nil {
		return model.VM{}, err
	}
	k, err := d.kernelForVM(ctx, req.Kernel, report)
	if err != nil {
		return model.VM{}, err
	}
	// Picked again now that the default kernel is surely registered: the
	// drivers' KVM probes boot it, which firmware alone does not prove.
	drv, err := d.pickDriver(ctx, req.VMM)
	if err != nil {
		return model.VM{}, err
	}
	strat, err := d.pickStrategy(drv.Name())
	if err != nil {
		return model.VM{}, err
	}

	now := d.now().UTC()
	vm := model.VM{
		ID: id, Name: name, ImageID: im.ID, KernelID: k.ID,
		CPUs: cpus, MemoryMiB: int(mem >> 20), DiskBytes: disk,
		DesiredState: model.VMStopped, State: model.VMCreated,
		VMM: drv.Name(), CowStrategy: strat.Name(),
		DNSName:   name + "." + d.cfg.DNSSuffix,
		CreatedAt: now, UpdatedAt: now,
	}
	if a, ok := drv.(accelReporter); ok {
		vm.Accel, _ = a.Accel(ctx)
	}
	vmPaths(&vm, d.vmDir(id), strat.Name())

	// Reserve the name, IP and CID in one step: the store's unique
	// constraints are the last word, the mutex keeps our own choices apart.
	d.allocMu.Lock()
	err = d.allocate(ctx, &vm)
	if err == nil {
		err = storeErr("vm", name, d.store.CreateVM(ctx, vm))
	}
	d.allocMu.Unlock()
	if err != nil {
		return model.VM{}, err
	}
	report(progress.Event{Phase: "disks", Message: fmt.Sprintf("creating %s system disk and %s work disk", strat.Name(), model.FormatSize(disk))})
	if err := d.makeDisks(ctx, vm, im, strat); err != nil {
		_ = os.RemoveAll(vm.Dir)
		_ = d.store.DeleteVM(context.Background(), vm.ID)
		return model.VM{}, fmt.Errorf("create vm %s: %w", name, err)
	}
	d.log.Info("vm created", "vm", name, "id", id, "vmm", vm.VMM, "cow", vm.CowStrategy, "ip", vm.GuestIP)
	if req.Start {
		return d.StartVM(ctx, id, report)
	}
	return vm, nil
}

// sizeAtLeast parses a requested size (or the configured default) and
// checks its minimum.
func sizeAtLeast(what, req, def string, min int64) (int64, error) {
	if req == "" {
		req = def
	}
	n, err := model.ParseSize(req)
	if err != nil {
		return 0, errdefs.Errorf(errdefs.CodeInvalid, "%s: %v", what, err)
	}
	if n < min {
		return 0, errdefs.Errorf(errdefs.CodeInvalid, "%s %s is too small: use at least %s", what, req, model.FormatSize(min))
	}
	return n, nil
}

// allocate picks the lowest free guest IP and CID. Called with allocMu held.
func (d *Daemon) allocate(ctx context.Context, vm *model.VM) error {
	vms, err := d.store.ListVMs(ctx)
	if err != nil {
		return err
	}
	var used []netip.Addr
	cids := map[uint32]bool{}
	for _, o := range vms {
		if ip, err := netip.ParseAddr(o.GuestIP); err == nil {
			used = append(used, ip)
		}
		cids[o.CID] = true
	}
	ip, err := hostnet.AllocateIP(d.host.subnet, used)
	if err != nil {
		return errdefs.Errorf(errdefs.CodeConflict, "no free guest address in %s: %v", d.host.subnet, err)
	}
	vm.GuestIP = ip.String()
	vm.GuestMAC = hostnet.MACForIP(ip)
	cid := uint32(3) // 0-2 are reserved by vsock
	for cids[cid] {
		cid++
	}
	vm.CID = cid
	return nil
}

// makeDisks creates the system disk and the work disk side by side.
func (d *Daemon) makeDisks(ctx context.Context, vm model.VM, im model.Image, strat storage.Strategy) error {
	if err := ensureDir(vm.Dir); err != nil {
		return err
	}
	var wg sync.WaitGroup
	var sysErr, workErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		sysErr = strat.Create(ctx, im.Path, vm.Dir)
	}()
	workErr = storage.CreateWorkDisk(ctx, vm.WorkDisk, vm.DiskBytes)
	wg.Wait()
	return errors.Join(sysErr, workErr)
}

// pickDriver resolves --vmm (request, then config) to a driver this host
// can run.
func (d *Daemon) pickDriver(ctx context.Context, want string) (vmm.Driver, error) {
	if want == "" {
		want = d.cfg.VMM
	}
	switch want {
	case "", "auto":
		if fc, ok := d.host.drivers["firecracker"]; ok {
			if ok, _ := fc.Available(ctx); ok {
				return fc, nil
			}
		}
		want = "qemu"
	}
	drv, err := d.driver(want)
	if err != nil {
		return nil, err
	}
	if ok, reason := drv.Available(ctx); !ok {
		return nil, errdefs.Errorf(errdefs.CodeUnavailable, "vmm %s is not usable on this host: %s", want, reason)
	}
	return drv, nil
}

// pickStrategy chooses the copy-on-write strategy for a VMM on this state dir.
func (d *Daemon) pickStrategy(vmmName string) (storage.Strategy, error) {
	s, reason := storage.Choose(vmmName, d.cfg.VMsDir(), d.host.strategies...)
	if s == nil {
		return nil, errdefs.Errorf(errdefs.CodeUnavailable, "no copy-on-write strategy for %s on this host: %s", vmmName, reason)
	}
	return s, nil
}

// lockVM resolves ref, takes the VM's lock and reads its record again
// under the lock, so the caller acts on what is current. The caller must
// call unlock.
func (d *Daemon) lockVM(ctx context.Context, ref string) (model.VM, func(), error) {
	vm, err := d.resolveVM(ctx, ref)
	if err != nil {
		return vm, nil, err
	}
	unlock := d.locks.Lock(vm.ID)
	if vm, err = d.store.GetVM(ctx, vm.ID); err != nil {
		unlock()
		return vm, nil, storeErr("vm", ref, err)
	}
	return vm, unlock, nil
}

// StartVM boots a VM and waits until its guest answers SSH.
func (d *Daemon) StartVM(ctx context.Context, ref string, report progress.Func) (model.VM, error) {
	report = progress.OrNop(report)
	vm, unlock, err := d.lockVM(ctx, ref)
	if err != nil {
		return vm, err
	}
	defer unlock()
	if d.vmAlive(vm) {
		return vm, nil
	}
	return d.boot(ctx, vm, report)
}

// boot does the work of a start. Called with the VM's lock held.
func (d *Daemon) boot(ctx context.Context, vm model.VM, report progress.Func) (model.VM, error) {
	if d.host.netErr != nil {
		return vm, errdefs.Errorf(errdefs.CodeUnavailable, "cannot start vm %s: %v", vm.Name, d.host.netErr)
	}
	drv, err := d.driver(vm.VMM)
	if err != nil {
		return vm, err
	}
	im, err := d.store.GetImage(ctx, vm.ImageID)
	if err != nil {
		return vm, storeErr("image", vm.ImageID, err)
	}
	k, err := d.store.GetKernel(ctx, vm.KernelID)
	if err != nil {
		return vm, storeErr("kernel", vm.KernelID, err)
	}
	strat, err := d.strategy(vm.CowStrategy)
	if err != nil {
		return vm, err
	}
	// Whatever a previous run left (a crash mid-start) goes first.
	d.teardown(ctx, vm)

	vm.State = model.VMStarting
	vm.DesiredState = model.VMRunning
	vm.LastError = ""
	if err := d.save(ctx, &vm); err != nil {
		return vm, err
	}
	start := time.Now()
	fail := func(err error) (model.VM, error) {
		d.teardown(context.Background(), vm)
		vm.State = model.VMFailed
		vm.LastError = err.Error()
		_ = d.save(context.Background(), &vm)
		d.log.Error("vm start failed", "vm", vm.Name, "err", err)
		return vm, fmt.Errorf("start vm %s: %w", vm.Name, err)
	}

	report(progress.Event{Phase: "disks", Message: "attaching disks"})
	sys, err := strat.Attach(ctx, im.Path, vm.Dir)
	h := model.VMHandles{APISocket: vm.APISocket, Tap: hostnet.TapName(vm.ID), Bridge: d.cfg.Bridge, Netns: d.cfg.Netns,
		Loops: sys.Loops, DMNames: sys.DMNames}
	// Record what is about to exist before making it, so a crash in
	// between leaves a scratch file naming it.
	if herr := d.handles.set(vm.ID, vm.Dir, h); herr != nil && err == nil {
		err = herr
	}
	if err != nil {
		return fail(fmt.Errorf("system disk: %w", err))
	}
	g, err := guestOf(vm)
	if err != nil {
		return fail(err)
	}
	if err := d.host.taps.CreateTap(ctx, h.Tap, g); err != nil {
		return fail(fmt.Errorf("tap %s: %w", h.Tap, err))
	}
	pubKey := guest.AuthorizedKey(d.host.signer)
	gw := d.host.taps.Gateway()
	spec := vmm.Spec{
		ID: vm.ID, Name: vm.Name, Dir: vm.Dir, CPUs: vm.CPUs, MemoryMiB: vm.MemoryMiB,
		Kernel: vmm.Kernel{Vmlinux: k.VmlinuxPath, BzImage: k.BzImagePath, Initrd: k.InitrdPath},
		Cmdline: guestinit.Cmdline(k.Cmdline, guestinit.Params{
			Addr: netip.PrefixFrom(g.IP, d.host.subnet.Bits()), Gateway: gw, DNS: []netip.Addr{gw},
			Hostname: vm.Name, Key: pubKey,
			WorkDisk: "/dev/vdb", Root: "/dev/vda",
		}),
		Disks: []vmm.Disk{
			{ID: "root", Path: sys.Path, Format: sys.Format},
			{ID: "work", Path: vm.WorkDisk, Format: "raw"},
		},
		Net:       &vmm.NetIface{Tap: h.Tap, MAC: vm.GuestMAC},
		CID:       vm.CID,
		APISocket: vm.APISocket, VsockPath: vm.VsockSocket,
		LogPath: vm.LogPath, Console: vm.ConsolePath, Metrics: vm.MetricsPath,
	}
	// A fresh console log per boot: `vm logs` shows this boot.
	_ = os.Remove(vm.ConsolePath)
	report(progress.Event{Phase: "boot", Message: fmt.Sprintf("booting with %s", vm.VMM), Elapsed: time.Since(start).Seconds()})
	vh, err := drv.Start(ctx, spec)
	if err != nil {
		return fail(err)
	}
	h.PID = vh.PID
	if err := d.handles.set(vm.ID, vm.Dir, h); err != nil {
		return fail(err)
	}
	if err := d.writeKnownHosts(vm, im); err != nil {
		return fail(err)
	}
	report(progress.Event{Phase: "ssh", Message: "waiting for the guest's SSH", Elapsed: time.Since(start).Seconds()})
	if err := d.waitGuest(ctx, vm, drv, vh); err != nil {
		return fail(err)
	}
	now := d.now().UTC()
	vm.State = model.VMRunning
	vm.StartedAt = &now
	if err := d.save(ctx, &vm); err != nil {
		return fail(err)
	}
	report(progress.Event{Phase: "ready", Message: fmt.Sprintf("%s is running at %s", vm.Name, vm.GuestIP), Elapsed: time.Since(start).Seconds()})
	d.log.Info("vm started", "vm", vm.Name, "pid", vh.PID, "seconds", time.Since(start).Seconds())
	return vm, nil
}

// waitReady waits until the guest's sshd runs commands, failing early when
// the VMM process dies.
func (d *Daemon) waitReady(ctx context.Context, vm model.VM, drv vmm.Driver, vh vmm.Handle) error {
	ep, err := d.endpoint(ctx, vm)
	if err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, sshTimeout)
	defer cancel()
	go func() {
		// Stop waiting as soon as the VMM is gone: its log says why.
		for wctx.Err() == nil {
			if !drv.Alive(vh) {
				cancel()
				return
			}
			time.Sleep(250 * time.Millisecond)
		}
	}()
	c, err := guest.WaitReady(wctx, ep, d.host.signer, 200*time.Millisecond)
	if err != nil {
		if !drv.Alive(vh) {
			return fmt.Errorf("the vmm exited during boot; %s", tailFile(vm.LogPath, vm.ConsolePath))
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("guest ssh did not answer within %s: %v; %s", sshTimeout, err, tailFile(vm.ConsolePath))
	}
	// The connection that proved the guest ready serves the first exec.
	d.host.pool.Adopt(vm.ID, ep, c)
	return nil
}

// tailFile returns the last lines of the first file whose end is not blank,
// for errors. Guests write these logs: only their last 64 KiB are read.
func tailFile(paths ...string) string {
	for _, p := range paths {
		s, err := tail.File(p, 64<<10, 8)
		if err != nil || len(strings.TrimSpace(s)) == 0 {
			continue
		}
		return fmt.Sprintf("last lines of %s:\n%s", p, s)
	}
	return "no log output"
}

// writeKnownHosts writes the pinned host key for `vm ssh`.
func (d *Daemon) writeKnownHosts(vm model.VM, im model.Image) error {
	line := guest.KnownHostsLine(vm.GuestIP, im.HostKey)
	return os.WriteFile(filepath.Join(vm.Dir, "known_hosts"), []byte(line+"\n"), 0o600)
}

// StopVM shuts a VM down gracefully, then forcefully after the timeout.
func (d *Daemon) StopVM(ctx context.Context, ref string, req api.StopVMRequest) (model.VM, error) {
	vm, unlock, err := d.lockVM(ctx, ref)
	if err != nil {
		return vm, err
	}
	defer unlock()
	return d.halt(ctx, vm, req)
}

// halt stops a VM. Called with the VM's lock held.
func (d *Daemon) halt(ctx context.Context, vm model.VM, req api.StopVMRequest) (model.VM, error) {
	vm.DesiredState = model.VMStopped
	if d.vmAlive(vm) {
		vm.State = model.VMStopping
		if err := d.save(ctx, &vm); err != nil {
			return vm, err
		}
		drv, err := d.driver(vm.VMM)
		if err != nil {
			return vm, err
		}
		h, _ := d.handles.get(vm.ID)
		vh := vmm.Handle{PID: h.PID, APISocket: h.APISocket}
		timeout := time.Duration(req.TimeoutSeconds) * time.Second
		if timeout <= 0 {
			timeout = 30 * time.Second
		}
		exited := false
		if !req.Force {
			if err := drv.Shutdown(ctx, vh); err != nil {
				d.log.Warn("graceful shutdown request failed", "vm", vm.Name, "err", err)
			} else {
				wctx, cancel := context.WithTimeout(ctx, timeout)
				exited = vmm.WaitExit(wctx, drv, vh, 100*time.Millisecond)
				cancel()
			}
		}
		if !exited {
			if err := drv.Kill(context.Background(), vh); err != nil {
				return vm, fmt.Errorf("kill vmm of %s: %w", vm.Name, err)
			}
		}
	}
	d.teardown(ctx, vm)
	if vm.State != model.VMFailed || vm.DesiredState == model.VMStopped {
		vm.State = model.VMStopped
	}
	if err := d.save(ctx, &vm); err != nil {
		return vm, err
	}
	d.log.Info("vm stopped", "vm", vm.Name)
	return vm, nil
}

// RestartVM stops then starts a VM.
func (d *Daemon) RestartVM(ctx context.Context, ref string, report progress.Func) (model.VM, error) {
	vm, unlock, err := d.lockVM(ctx, ref)
	if err != nil {
		return vm, err
	}
	defer unlock()
	if vm, err = d.halt(ctx, vm, api.StopVMRequest{}); err != nil {
		return vm, err
	}
	return d.boot(ctx, vm, progress.OrNop(report))
}

// DeleteVM removes a VM and everything it has on the host.
func (d *Daemon) DeleteVM(ctx context.Context, ref string, force bool) error {
	vm, unlock, err := d.lockVM(ctx, ref)
	if err != nil {
		return err
	}
	defer unlock()
	if d.vmAlive(vm) {
		if !force {
			return errdefs.Errorf(errdefs.CodeConflict, "vm %s is running: stop it first or delete with --force", vm.Name)
		}
		if _, err := d.halt(ctx, vm, api.StopVMRequest{Force: true}); err != nil {
			return err
		}
	}
	d.teardown(ctx, vm)
	if strat, err := d.strategy(vm.CowStrategy); err == nil {
		if err := strat.Remove(ctx, vm.Dir); err != nil {
			d.log.Warn("remove system disk", "vm", vm.Name, "err", err)
		}
	}
	if err := os.RemoveAll(vm.Dir); err != nil {
		return fmt.Errorf("remove %s: %w", vm.Dir, err)
	}
	if err := d.store.DeleteVM(ctx, vm.ID); err != nil {
		return storeErr("vm", ref, err)
	}
	d.log.Info("vm deleted", "vm", vm.Name)
	return nil
}

// teardown releases every transient host resource of a VM: VMM process,
// tap, loops, dm targets, sockets, pooled connections. Each step tolerates
// things already gone, so it is safe after a crash and safe to repeat.
func (d *Daemon) teardown(ctx context.Context, vm model.VM) {
	h, ok := d.handles.get(vm.ID)
	if !ok {
		var err error
		if h, err = readHandlesFile(vm.Dir); err != nil {
			d.log.Warn("handles file unreadable; tearing down by derived names", "vm", vm.Name, "err", err)
		}
	}
	if h.APISocket == "" {
		h.APISocket = vm.APISocket
	}
	if h.Tap == "" {
		h.Tap = hostnet.TapName(vm.ID)
	}
	d.dropGuest(vm.ID)
	if drv, err := d.driver(vm.VMM); err == nil {
		if vh, err := drv.Find(h.APISocket); err == nil {
			if err := drv.Kill(ctx, vh); err != nil {
				d.log.Warn("kill vmm", "vm", vm.Name, "err", err)
			}
		}
	}
	if d.host.taps != nil {
		if err := d.host.taps.DeleteTap(ctx, h.Tap); err != nil {
			d.log.Warn("delete tap", "vm", vm.Name, "tap", h.Tap, "err", err)
		}
	}
	if len(h.Loops) > 0 || len(h.DMNames) > 0 {
		if strat, err := d.strategy(vm.CowStrategy); err == nil {
			if err := strat.Detach(ctx, storage.SystemDisk{Loops: h.Loops, DMNames: h.DMNames}); err != nil {
				d.log.Warn("detach system disk", "vm", vm.Name, "err", err)
			}
		}
	}
	for _, p := range []string{vm.APISocket, vm.VsockSocket, filepath.Join(vm.Dir, "qemu.pid")} {
		_ = os.Remove(p)
	}
	d.handles.forget(vm.ID, vm.Dir)
}

// save writes a VM record, stamping UpdatedAt.
func (d *Daemon) save(ctx context.Context, vm *model.VM) error {
	vm.UpdatedAt = d.now().UTC()
	return storeErr("vm", vm.Name, d.store.UpdateVM(ctx, *vm))
}

// watch notices VMM processes that died under a running VM (killed, or the
// guest powered itself off) and releases their resources.
func (d *Daemon) watch(ctx context.Context, every time.Duration) {
	defer close(d.host.watchDone)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		vms, err := d.store.ListVMs(ctx)
		if err != nil {
			continue
		}
		for _, vm := range vms {
			if vm.State != model.VMRunning {
				continue
			}
			if _, cached := d.handles.get(vm.ID); !cached || d.processAlive(vm) {
				continue
			}
			d.reapDead(ctx, vm.ID)
		}
	}
}

// reapDead marks a running VM whose VMM is gone as stopped.
func (d *Daemon) reapDead(ctx context.Context, id string) {
	unlock := d.locks.Lock(id)
	defer unlock()
	vm, err := d.store.GetVM(ctx, id)
	if err != nil || vm.State != model.VMRunning || d.processAlive(vm) {
		return
	}
	d.teardown(ctx, vm)
	vm.State = model.VMStopped
	vm.LastError = "vmm process exited while the vm was running (guest powered off, or the process was killed)"
	_ = d.save(ctx, &vm)
	d.log.Warn("vmm process gone; vm marked stopped", "vm", vm.Name)
}

// guestOf is the VM's address on the bridge, which its tap lets it send as.
func guestOf(vm model.VM) (hostnet.Guest, error) {
	mac, err := net.ParseMAC(vm.GuestMAC)
	if err != nil {
		return hostnet.Guest{}, fmt.Errorf("vm %s has an invalid MAC %q: %w", vm.Name, vm.GuestMAC, err)
	}
	ip, err := netip.ParseAddr(vm.GuestIP)
	if err != nil {
		return hostnet.Guest{}, fmt.Errorf("vm %s has an invalid address %q: %w", vm.Name, vm.GuestIP, err)
	}
	return hostnet.Guest{MAC: mac, IP: ip}, nil
}
