package vms

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
	"github.com/banger/banger/internal/store"
	"github.com/banger/banger/internal/vmm"
)

// Limits of VM sizes accepted at create.
const (
	minMemoryMiB = 128
	minDiskBytes = 64 << 20
	sshTimeout   = 180 * time.Second
)

// resumeClockWait bounds setting a resumed guest's clock over the control
// channel; its banger-init answers within a fraction of that even on a
// TCG guest whose translations are all gone.
const resumeClockWait = 3 * time.Second

// unparkWait bounds taking back a resumed guest's parked SSH connection:
// one keepalive round trip, which a guest that kept it answers well
// within it under TCG; past it the guest is dialled as after a boot.
const unparkWait = 2 * time.Second

// vmPaths are the deterministic paths of a VM under its directory.
func vmPaths(vm *model.VM, dir string, strategy string) {
	vm.Dir = dir
	vm.APISocket = filepath.Join(dir, "api.sock")
	vm.VsockSocket = filepath.Join(dir, vmm.VsockFile)
	vm.LogPath = filepath.Join(dir, "vmm.log")
	vm.ConsolePath = filepath.Join(dir, "console.log")
	vm.MetricsPath = filepath.Join(dir, "metrics.json")
	vm.WorkDisk = filepath.Join(dir, "work.ext4")
	vm.SystemDisk = storage.SystemFile(strategy, dir)
}

// Create makes the VM record and its disks, and boots it when asked.
// With req.FromSnapshot it is restored from that snapshot instead, as a
// fork with the create's own name, network policy, deadline and labels.
// A booting create of a shape whose warm-start template is fresh
// (template.go) is restored from it unless req.Cold; a restore that
// fails falls back to a boot.
func (m *Manager) Create(ctx context.Context, req api.CreateVMRequest, report progress.Func) (model.VM, error) {
	report = progress.OrNop(report)
	id := model.NewID()
	name := req.Name
	if name == "" {
		name = "vm-" + model.ShortID(id)
	}
	if err := model.ValidateName("vm", name); err != nil {
		return model.VM{}, errdefs.Invalid(err)
	}
	if _, err := m.store.GetVM(ctx, name); err == nil {
		return model.VM{}, errdefs.Errorf(errdefs.CodeConflict, "vm %q already exists", name)
	}
	// What the user asked of the VM itself, whichever way it is made.
	base, err := m.intentOf(ctx, id, name, req)
	if err != nil {
		return model.VM{}, err
	}
	netPolicy := base.Net
	if req.FromSnapshot != "" {
		return m.createFromSnapshot(ctx, req, base, report)
	}
	if req.Cold && !req.Start {
		return model.VM{}, errdefs.Errorf(errdefs.CodeInvalid, "cold is for a create that boots the vm (start)")
	}
	shape, drv, strat, err := m.resolveShape(ctx, req, report)
	if err != nil {
		return model.VM{}, err
	}
	rebuild := false
	if req.Start && !req.Cold {
		var vm model.VM
		var ok bool
		if vm, ok, rebuild, err = m.createWarm(ctx, shape, base, report); ok || err != nil {
			return vm, err
		}
	}
	im, k, cpus, disk := shape.Image, shape.Kernel, shape.CPUs, shape.DiskBytes

	now := m.now().UTC()
	vm := model.VM{
		ID: id, Name: name, ImageID: im.ID, KernelID: k.ID,
		CPUs: cpus, MemoryMiB: shape.MemoryMiB, DiskBytes: disk,
		DesiredState: model.VMStopped, State: model.VMCreated,
		VMM: drv.Name(), CowStrategy: strat.Name(),
		DNSName:   name + "." + m.cfg.DNSSuffix,
		CreatedAt: now, UpdatedAt: now, Net: netPolicy, Labels: req.Labels,
	}
	applyDeadlines(&vm, base, now)
	if a, ok := drv.(vmm.AccelReporter); ok {
		vm.Accel, _ = a.Accel(ctx)
	}
	vmPaths(&vm, m.vmDir(id), strat.Name())
	// The VM's own host key: its public half is recorded and pinned, its
	// private half goes only onto the work disk.
	hostKey, err := guest.NewHostKey()
	if err != nil {
		return model.VM{}, err
	}
	vm.HostKey = hostKey.Public

	// Held until the disks exist: once the record is visible, a request
	// naming the VM resolves its id and waits here instead of acting on a
	// VM without disks.
	unlock := m.locks.Lock(id)
	if err = m.reserve(ctx, &vm); err != nil {
		unlock()
		return model.VM{}, err
	}
	report(progress.Event{Phase: "disks", Message: fmt.Sprintf("creating %s system disk and %s work disk", strat.Name(), model.FormatSize(disk))})
	err = m.makeDisks(ctx, vm, im, strat, hostKey)
	if err != nil {
		_ = os.RemoveAll(vm.Dir)
		_ = m.store.DeleteVM(context.Background(), vm.ID)
	}
	unlock()
	if err != nil {
		return model.VM{}, fmt.Errorf("create vm %s: %w", name, err)
	}
	m.log.Info("vm created", "vm", name, "id", id, "vmm", vm.VMM, "cow", vm.CowStrategy, "ip", vm.GuestIP)
	if vm.ExpiresAt != nil || vm.IdleTimeoutSeconds > 0 {
		m.pokeExpiry()
	}
	if req.Start {
		vm, err := m.start(ctx, id, report, bootOpts{ready: base.Ready, envd: base.Envd})
		if err == nil && rebuild {
			m.warmOnFirstUse(shape, drv)
		}
		return vm, err
	}
	return vm, nil
}

// vmIntent is what a create asks of the VM itself, validated, whichever
// way the VM is made (booted, restored from a template or a snapshot).
type vmIntent struct {
	ID, Name       string
	Net            model.NetPolicy
	Labels         map[string]string
	TTL, TTLAction string
	IdleSecs       int
	// Ready is when the create answers (api.CreateVMRequest.Ready).
	Ready string
	// Envd starts envd at boot (api.CreateVMRequest.Envd).
	Envd bool
}

// bootOpts are what a create asks of the VM's first launch only (a
// later start, restart or resume is an ordinary one): when it answers
// (api.CreateVMRequest.Ready) and whether a booting guest starts envd
// (api.CreateVMRequest.Envd).
type bootOpts struct {
	ready string
	envd  bool
}

// intentOf validates what req asks of the VM with this id and name
// itself (labels, network policy, deadline, idle timeout), as a create
// and a fork take them.
func (m *Manager) intentOf(ctx context.Context, id, name string, req api.CreateVMRequest) (vmIntent, error) {
	if err := model.ValidateLabels(req.Labels); err != nil {
		return vmIntent{}, errdefs.Invalid(err)
	}
	if err := refuseSpareLabel(req.Labels); err != nil {
		return vmIntent{}, err
	}
	netPolicy, err := m.netPolicy(ctx, model.VM{Name: name}, req.Net, req.Allow, req.Deny, req.AllowVMs)
	if err != nil {
		return vmIntent{}, err
	}
	// Checked now; the deadline itself is counted from the record's insert.
	if _, err := parseTTL(m.now(), req.TTL, req.TTLAction, true); err != nil {
		return vmIntent{}, err
	}
	idleSecs, err := parseIdle(req.IdleTimeout, true)
	if err != nil {
		return vmIntent{}, err
	}
	if req.TTLAction != "" && strings.TrimSpace(req.TTL) == "" && idleSecs == 0 {
		return vmIntent{}, errdefs.Errorf(errdefs.CodeInvalid, "a ttl action needs a ttl or an idle timeout")
	}
	if req.Ready != api.ReadySSH && req.Ready != api.ReadyListening {
		return vmIntent{}, errdefs.Errorf(errdefs.CodeInvalid, "ready %q: want empty (an SSH session runs commands) or %q (sshd accepts connections)", req.Ready, api.ReadyListening)
	}
	return vmIntent{ID: id, Name: name, Net: netPolicy, Labels: req.Labels, TTL: req.TTL, TTLAction: req.TTLAction, IdleSecs: idleSecs, Ready: req.Ready, Envd: req.Envd}, nil
}

// asksNet says whether a create or fork names a network policy (else a
// VM made from a snapshot has the snapshot's). Pure.
func asksNet(req api.CreateVMRequest) bool {
	return req.Net != "" || len(req.Allow)+len(req.Deny)+len(req.AllowVMs) > 0
}

// resolveShape resolves a create's sizes (or the configured defaults),
// VMM, image and kernel (made on first use) and storage strategy.
func (m *Manager) resolveShape(ctx context.Context, req api.CreateVMRequest, report progress.Func) (vmShape, vmm.Driver, storage.Strategy, error) {
	var s vmShape
	s.CPUs = req.CPUs
	if s.CPUs == 0 {
		s.CPUs = m.cfg.CPUs
	}
	if s.CPUs < 1 || s.CPUs > m.cfg.MaxCPUs {
		return s, nil, nil, errdefs.Errorf(errdefs.CodeInvalid, "invalid cpus %d: use 1 to %d (max_cpus)", s.CPUs, m.cfg.MaxCPUs)
	}
	mem, err := sizeWithin("memory", req.Memory, m.cfg.Memory, minMemoryMiB<<20, m.cfg.MaxMemory)
	if err != nil {
		return s, nil, nil, err
	}
	s.MemoryMiB = int(mem >> 20)
	if s.DiskBytes, err = sizeWithin("disk", req.Disk, m.cfg.Disk, minDiskBytes, m.cfg.MaxDisk); err != nil {
		return s, nil, nil, err
	}
	// Checked before the image and kernel, which may take minutes to fetch.
	if _, err := m.PickDriver(ctx, req.VMM); err != nil {
		return s, nil, nil, err
	}
	if s.Image, err = m.artifacts.ImageForVM(ctx, req.Image, report); err != nil {
		return s, nil, nil, err
	}
	if s.Kernel, err = m.artifacts.KernelForVM(ctx, req.Kernel, report); err != nil {
		return s, nil, nil, err
	}
	// Picked again now that the default kernel is surely registered: the
	// drivers' KVM probes boot it, which firmware alone does not prove.
	drv, err := m.PickDriver(ctx, req.VMM)
	if err != nil {
		return s, nil, nil, err
	}
	strat, err := m.PickStrategy(drv)
	if err != nil {
		return s, nil, nil, err
	}
	s.VMM, s.Strategy = drv.Name(), strat.Name()
	return s, drv, strat, nil
}

// applyDeadlines sets a new VM's deadline (counted from now) and idle
// timeout from what its create asked (base, validated).
func applyDeadlines(vm *model.VM, base vmIntent, now time.Time) {
	if vm.ExpiresAt, _ = parseTTL(now, base.TTL, base.TTLAction, true); vm.ExpiresAt != nil {
		vm.ExpireAction = base.TTLAction
		if vm.ExpireAction == "" {
			vm.ExpireAction = model.TTLDelete
		}
	}
	if base.IdleSecs > 0 {
		vm.IdleTimeoutSeconds, vm.IdleAction = base.IdleSecs, base.TTLAction
		if vm.IdleAction == "" {
			vm.IdleAction = model.TTLDelete
		}
	}
}

// sizeWithin parses a requested size (or the configured default) and
// checks it lies between min and the configured maximum.
func sizeWithin(what, req, def string, min int64, maxSize string) (int64, error) {
	n, err := sizeAtLeast(what, req, def, min)
	if err != nil {
		return 0, err
	}
	max, err := model.ParseSize(maxSize)
	if err != nil {
		return 0, fmt.Errorf("max %s %q in the configuration: %w", what, maxSize, err)
	}
	if n > max {
		return 0, errdefs.Errorf(errdefs.CodeInvalid, "%s %s is too large: this host allows at most %s (max_%s)", what, model.FormatSize(n), model.FormatSize(max), what)
	}
	return n, nil
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

// reserve gives vm its IP and CID and records it, in one step: the
// store's unique constraints (name, IP, CID) are the last word, allocMu
// keeps the daemon's own choices apart. Once the address is known the
// network policy is checked against it and the subnet, so that no start
// fails on it later.
func (m *Manager) reserve(ctx context.Context, vm *model.VM) error {
	m.allocMu.Lock()
	defer m.allocMu.Unlock()
	if err := m.allocate(ctx, vm); err != nil {
		return err
	}
	if err := m.checkNet(ctx, *vm); err != nil {
		return err
	}
	return store.Describe("vm", vm.Name, m.store.CreateVM(ctx, *vm))
}

// allocate picks the lowest free guest IP and CID. Called with allocMu held.
func (m *Manager) allocate(ctx context.Context, vm *model.VM) error {
	vms, err := m.store.ListVMs(ctx)
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
	ip, err := hostnet.AllocateIP(m.subnet, used)
	if err != nil {
		return errdefs.Errorf(errdefs.CodeConflict, "no free guest address in %s: %v", m.subnet, err)
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
func (m *Manager) makeDisks(ctx context.Context, vm model.VM, im model.Image, strat storage.Strategy, hostKey guest.HostKey) error {
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
	workErr = createWorkDisk(ctx, vm, hostKey)
	wg.Wait()
	return errors.Join(sysErr, workErr)
}

// PickDriver resolves --vmm (request, then config) to a driver this host
// can run.
func (m *Manager) PickDriver(ctx context.Context, want string) (vmm.Driver, error) {
	if want == "" {
		want = m.cfg.VMM
	}
	return m.drivers.Pick(ctx, want)
}

// PickStrategy chooses the copy-on-write strategy for a VMM on this state dir.
func (m *Manager) PickStrategy(drv vmm.Driver) (storage.Strategy, error) {
	s, reason := storage.Choose(drv.Formats(), m.cfg.VMsDir(), m.strategies...)
	if s == nil {
		return nil, errdefs.Errorf(errdefs.CodeUnavailable, "no copy-on-write strategy for %s on this host: %s", drv.Name(), reason)
	}
	return s, nil
}

// Lock resolves ref, takes the VM's lock and reads its record again
// under the lock, so the caller acts on what is current. The caller must
// call unlock.
func (m *Manager) Lock(ctx context.Context, ref string) (model.VM, func(), error) {
	vm, err := m.Resolve(ctx, ref)
	if err != nil {
		return vm, nil, err
	}
	unlock := m.locks.Lock(vm.ID)
	if vm, err = m.store.GetVM(ctx, vm.ID); err != nil {
		unlock()
		return vm, nil, store.Describe("vm", ref, err)
	}
	return vm, unlock, nil
}

// Start boots a VM and waits until its guest answers SSH. A paused VM is
// resumed from its saved state instead.
func (m *Manager) Start(ctx context.Context, ref string, report progress.Func) (model.VM, error) {
	return m.start(ctx, ref, report, bootOpts{})
}

// start is Start with a create's opts (a resume proves its guest on the
// SSH connection its pause parked).
func (m *Manager) start(ctx context.Context, ref string, report progress.Func, opts bootOpts) (model.VM, error) {
	report = progress.OrNop(report)
	vm, unlock, err := m.Lock(ctx, ref)
	if err != nil {
		return vm, err
	}
	defer unlock()
	if m.Alive(vm) {
		return vm, nil
	}
	if vm.State == model.VMPaused {
		return m.resume(ctx, vm, report)
	}
	return m.launch(ctx, vm, report, "", nil, opts)
}

// boot does the work of a start. Called with the VM's lock held.
func (m *Manager) boot(ctx context.Context, vm model.VM, report progress.Func) (model.VM, error) {
	return m.launch(ctx, vm, report, "", nil, bootOpts{})
}

// launch starts a VM's VMM and waits for its guest: booting it, or, with
// stateDir set, restoring it from the state a pause saved there (then
// the guest's clock is stepped and the state removed once the guest
// answers). A failed boot leaves the VM failed; a failed restore leaves it
// paused with its state, to be resumed again or stopped. Called with the
// VM's lock held. With fork set the state is a snapshot's (kept), the
// guest is held off the bridge until it has been told its identity, and a
// failure leaves the VM failed. opts are a create's (bootOpts).
func (m *Manager) launch(ctx context.Context, vm model.VM, report progress.Func, stateDir string, fork *forkIdentity, opts bootOpts) (model.VM, error) {
	restoring := stateDir != ""
	verb, done := "start", "started"
	if restoring {
		verb, done = "resume", "resumed"
	}
	if fork != nil {
		verb, done = "fork", "restored"
	}
	if m.netErr != nil {
		return vm, errdefs.Errorf(errdefs.CodeUnavailable, "cannot %s vm %s: %v", verb, vm.Name, m.netErr)
	}
	drv, err := m.driver(vm.VMM)
	if err != nil {
		return vm, err
	}
	var snap vmm.Snapshotter
	if restoring {
		if snap, err = snapshotter(drv); err != nil {
			return vm, err
		}
	}
	im, err := m.store.GetImage(ctx, vm.ImageID)
	if err != nil {
		return vm, store.Describe("image", vm.ImageID, err)
	}
	k, err := m.store.GetKernel(ctx, vm.KernelID)
	if err != nil {
		return vm, store.Describe("kernel", vm.KernelID, err)
	}
	strat, err := m.strategy(vm.CowStrategy)
	if err != nil {
		return vm, err
	}
	// Whatever a previous run left (a crash mid-start) goes first; a
	// resume keeps what its pause parked (SSH connection, name sets).
	resuming := restoring && fork == nil
	m.release(ctx, vm, resuming)

	vm.State = model.VMStarting
	if restoring {
		vm.State = model.VMResuming
	}
	vm.DesiredState = model.VMRunning
	vm.LastError = ""
	if err := m.save(ctx, &vm); err != nil {
		return vm, err
	}
	start := time.Now()
	fail := func(err error) (model.VM, error) {
		m.teardown(context.Background(), vm)
		vm.State = model.VMFailed
		if restoring && fork == nil {
			vm.State, vm.DesiredState = model.VMPaused, model.VMPaused
		}
		vm.LastError = err.Error()
		_ = m.save(context.Background(), &vm)
		m.log.Error("vm "+verb+" failed", "vm", vm.Name, "err", err)
		return vm, fmt.Errorf("%s vm %s: %w", verb, vm.Name, err)
	}

	report(progress.Event{Phase: "disks", Message: "attaching disks"})
	sys, err := strat.Attach(ctx, im.Path, vm.Dir)
	h := model.VMHandles{APISocket: vm.APISocket, Tap: hostnet.TapName(vm.ID), Bridge: m.cfg.Bridge, Netns: m.cfg.Netns,
		Loops: sys.Loops, DMNames: sys.DMNames}
	// Record what is about to exist before making it, so a crash in
	// between leaves a scratch file naming it.
	if herr := m.handles.set(vm.ID, vm.Dir, h); herr != nil && err == nil {
		err = herr
	}
	if err != nil {
		return fail(fmt.Errorf("system disk: %w", err))
	}
	if sys.Format == vmm.FormatQcow2 {
		origin, err := m.store.SnapshotOf(ctx, vm.ID)
		if err == nil {
			err = m.checkSystemChain(ctx, sys.Path, im, origin)
		}
		if err != nil {
			return fail(fmt.Errorf("system disk: %w", err))
		}
	}
	g, err := m.guest(ctx, vm)
	if err != nil {
		return fail(err)
	}
	// A fork must not reach the bridge before it knows who it is: its
	// driver holds the guest's carrier down, or, without that ability,
	// its tap stays down (raiseLink lets it on).
	_, carrier := drv.(vmm.LinkSetter)
	g.Held = fork != nil && !carrier
	if err := m.taps.CreateTap(ctx, h.Tap, g); err != nil {
		if errors.Is(err, hostnet.ErrPolicyNeedsNft) {
			err = netErr(vm, err)
		}
		return fail(fmt.Errorf("tap %s: %w", h.Tap, err))
	}
	work, err := m.workDisk(ctx, vm)
	if err != nil {
		return fail(err)
	}
	spec := m.spec(vm, k, sys, work, h, g, opts.envd)
	if fork != nil && carrier {
		spec.Net.LinkDown = true
	}
	var vh vmm.Handle
	if restoring {
		report(progress.Event{Phase: "restore", Message: fmt.Sprintf("restoring with %s", vm.VMM), Elapsed: time.Since(start).Seconds()})
		vh, err = snap.Restore(ctx, spec, stateDir)
	} else {
		// A fresh console log per boot: `vm logs` shows this boot.
		_ = os.Remove(vm.ConsolePath)
		_ = os.Remove(vm.ConsolePath + ".1")
		report(progress.Event{Phase: "boot", Message: fmt.Sprintf("booting with %s", vm.VMM), Elapsed: time.Since(start).Seconds()})
		vh, err = drv.Start(ctx, spec)
	}
	if err != nil {
		return fail(err)
	}
	h.PID = vh.PID
	if err := m.handles.set(vm.ID, vm.Dir, h); err != nil {
		return fail(err)
	}
	if err := m.writeKnownHosts(vm, im); err != nil {
		return fail(err)
	}
	if fork != nil {
		report(progress.Event{Phase: "identity", Message: "telling the guest who it is", Elapsed: time.Since(start).Seconds()})
		if err := m.reidentify(ctx, vm, drv, vh, h.Tap, fork); err != nil {
			return fail(err)
		}
		// Its work disk now holds its own host key: a daemon that stops
		// from here keeps it (reconcile deletes it while pending).
		if err := m.store.IdentifiedSnapshotUser(ctx, vm.ID); err != nil {
			return fail(err)
		}
	}
	wait, waitMsg := m.waitGuest, "waiting for the guest's SSH"
	if opts.ready == api.ReadyListening && m.waitListening != nil {
		wait, waitMsg = m.waitListening, "waiting for the guest's sshd to listen"
	}
	report(progress.Event{Phase: "ssh", Message: waitMsg, Elapsed: time.Since(start).Seconds()})
	// A resumed guest answers on the SSH connection its pause parked (its
	// TCP state was saved with it): no new handshake. Else, or when that
	// connection is gone (a daemon restarted meanwhile), it is dialled.
	kept := false
	if resuming {
		uctx, cancel := context.WithTimeout(ctx, unparkWait)
		err := m.unparkGuest(uctx, vm)
		cancel()
		if err != nil {
			m.log.Debug("parked SSH connection not taken back; dialling", "vm", vm.Name, "err", err)
		}
		kept = err == nil
	}
	if !kept {
		if err := wait(ctx, vm, func() bool { return drv.Alive(vh) }); err != nil {
			return fail(err)
		}
	}
	if !restoring {
		m.tellMachineID(ctx, vm, drv, im)
	}
	if resuming {
		// The guest's wall clock stood still while it was paused. Set
		// last, as the guest is declared ready: its clock (jiffies under
		// TCG) loses time while it is busy after a restore.
		report(progress.Event{Phase: "clock", Message: "setting the guest's clock", Elapsed: time.Since(start).Seconds()})
		if err := m.resumeClock(ctx, vm, drv, im); err != nil {
			m.log.Warn("resumed guest's clock not set", "vm", vm.Name, "err", err)
		}
		// The guest runs on: its saved state is history now.
		if err := os.RemoveAll(stateDir); err != nil {
			m.log.Warn("remove saved state", "vm", vm.Name, "err", err)
		}
	}
	now := m.now().UTC()
	vm.State = model.VMRunning
	if !restoring || vm.StartedAt == nil {
		vm.StartedAt = &now
	}
	if err := m.save(ctx, &vm); err != nil {
		return fail(err)
	}
	m.started(ctx, vm)
	if sys.Format == vmm.FormatQcow2 {
		m.separateIfReader(ctx, vm.ID)
	}
	report(progress.Event{Phase: "ready", Message: fmt.Sprintf("%s is running at %s", vm.Name, vm.GuestIP), Elapsed: time.Since(start).Seconds()})
	m.log.Info("vm "+done, "vm", vm.Name, "pid", vh.PID, "seconds", time.Since(start).Seconds())
	return vm, nil
}

// resumeClock sets a resumed guest's wall clock: over the control channel
// when its VMM has one and its image runs banger-init (no process
// started in the guest), else over SSH.
func (m *Manager) resumeClock(ctx context.Context, vm model.VM, drv vmm.Driver, im model.Image) error {
	if _, ok := drv.(vmm.Controller); ok && im.Init == "fast" {
		err := m.clockOverControl(ctx, vm, drv, resumeClockWait)
		if err == nil {
			return nil
		}
		m.log.Debug("clock over the control channel failed; using SSH", "vm", vm.Name, "err", err)
	}
	return m.setGuestClock(ctx, vm)
}

// spec is the VMM's description of a VM: the same for a boot and for a
// restore of its saved state, which needs the same machine. envd starts
// envd at boot (guestinit.Params.Envd; nothing for a restore).
func (m *Manager) spec(vm model.VM, k model.Kernel, sys storage.SystemDisk, work vmm.Disk, h model.VMHandles, g hostnet.Guest, envd bool) vmm.Spec {
	gw := m.taps.Gateway()
	return vmm.Spec{
		ID: vm.ID, Name: vm.Name, Dir: vm.Dir, CPUs: vm.CPUs, MemoryMiB: vm.MemoryMiB,
		Kernel: vmm.Kernel{Vmlinux: k.VmlinuxPath, BzImage: k.BzImagePath, Initrd: k.InitrdPath},
		Cmdline: guestinit.Cmdline(k.Cmdline, guestinit.Params{
			Addr: netip.PrefixFrom(g.IP, m.subnet.Bits()), Gateway: gw, DNS: []netip.Addr{gw},
			Hostname: vm.Name, Key: m.authorizedKey,
			WorkDisk: "/dev/vdb", Root: "/dev/vda", Envd: envd,
		}),
		Disks: []vmm.Disk{
			{ID: rootDisk, Path: sys.Path, Format: sys.Format},
			work,
		},
		Net:       &vmm.NetIface{Tap: h.Tap, MAC: vm.GuestMAC},
		CID:       vm.CID,
		APISocket: vm.APISocket, VsockPath: vm.VsockSocket,
		LogPath: vm.LogPath, Console: vm.ConsolePath, Metrics: vm.MetricsPath,
	}
}

// writeKnownHosts writes the pinned host key for `vm ssh`.
func (m *Manager) writeKnownHosts(vm model.VM, im model.Image) error {
	line := guest.KnownHostsLine(vm.GuestIP, vm.PinnedHostKey(im))
	return os.WriteFile(filepath.Join(vm.Dir, "known_hosts"), []byte(line+"\n"), 0o600)
}

// Stop shuts a VM down gracefully, then forcefully after the timeout.
func (m *Manager) Stop(ctx context.Context, ref string, req api.StopVMRequest) (model.VM, error) {
	vm, unlock, err := m.Lock(ctx, ref)
	if err != nil {
		return vm, err
	}
	defer unlock()
	return m.stop(ctx, vm, req)
}

// stop halts a VM for good (a stop asked for, or its deadline's or idle
// timeout's): halt, then its work disk made raw, as what reads a stopped
// VM's disk needs. Called with the VM's lock held.
func (m *Manager) stop(ctx context.Context, vm model.VM, req api.StopVMRequest) (model.VM, error) {
	vm, err := m.halt(ctx, vm, req)
	if err == nil {
		m.rawWorkAfterStop(ctx, vm)
	}
	return vm, err
}

// stopTimedOut is logged when a VM's VMM is still there when a graceful
// stop's time is up, and is killed.
const stopTimedOut = "vm did not stop within its timeout; its vmm is killed"

// halt stops a VM. Called with the VM's lock held.
func (m *Manager) halt(ctx context.Context, vm model.VM, req api.StopVMRequest) (model.VM, error) {
	vm.DesiredState = model.VMStopped
	if m.Alive(vm) {
		vm.State = model.VMStopping
		if err := m.save(ctx, &vm); err != nil {
			return vm, err
		}
		drv, err := m.driver(vm.VMM)
		if err != nil {
			return vm, err
		}
		h, _ := m.handles.get(vm.ID)
		vh := vmm.Handle{PID: h.PID, APISocket: h.APISocket}
		timeout := time.Duration(req.TimeoutSeconds) * time.Second
		if timeout <= 0 {
			timeout = 30 * time.Second
		}
		exited := false
		if !req.Force {
			if err := drv.Shutdown(ctx, vh); err != nil {
				m.log.Warn("graceful shutdown request failed", "vm", vm.Name, "err", err)
			} else {
				wctx, cancel := context.WithTimeout(ctx, timeout)
				exited = vmm.WaitExit(wctx, drv, vh, 100*time.Millisecond)
				cancel()
				if !exited {
					m.log.Warn(stopTimedOut, "vm", vm.Name, "timeout_s", timeout.Seconds())
				}
			}
		}
		if !exited {
			if err := drv.Kill(context.Background(), vh); err != nil {
				return vm, fmt.Errorf("kill vmm of %s: %w", vm.Name, err)
			}
		}
	}
	m.teardown(ctx, vm)
	// A paused VM's memory goes with the stop: it boots afresh next.
	if err := discardState(vm.Dir); err != nil {
		m.log.Warn("discard saved state", "vm", vm.Name, "err", err)
	}
	if vm.State != model.VMFailed || vm.DesiredState == model.VMStopped {
		vm.State = model.VMStopped
	}
	if err := m.save(ctx, &vm); err != nil {
		return vm, err
	}
	m.log.Info("vm stopped", "vm", vm.Name)
	// A copy up its VMM did not finish is the daemon's now (it waits
	// for the VM's lock, held by the caller).
	m.separateIfReader(ctx, vm.ID)
	return vm, nil
}

// Restart stops then starts a VM.
func (m *Manager) Restart(ctx context.Context, ref string, report progress.Func) (model.VM, error) {
	vm, unlock, err := m.Lock(ctx, ref)
	if err != nil {
		return vm, err
	}
	defer unlock()
	if vm, err = m.halt(ctx, vm, api.StopVMRequest{}); err != nil {
		return vm, err
	}
	return m.boot(ctx, vm, progress.OrNop(report))
}

// Delete removes a VM and everything it has on the host, then its name
// from the other VMs' allow-vm lists (its address goes to the next VM
// made).
func (m *Manager) Delete(ctx context.Context, ref string, force bool) error {
	vm, err := m.delete(ctx, ref, force)
	if err != nil {
		return err
	}
	// After the VM's lock is released: taking the others' locks while
	// holding it could deadlock with their own deletion.
	m.forgetAllowVM(ctx, vm.Name)
	return nil
}

// delete does the work of Delete under the VM's lock.
func (m *Manager) delete(ctx context.Context, ref string, force bool) (model.VM, error) {
	vm, unlock, err := m.Lock(ctx, ref)
	if err != nil {
		return vm, err
	}
	defer unlock()
	return vm, m.remove(ctx, vm, force)
}

// remove deletes a VM. Called with the VM's lock held.
func (m *Manager) remove(ctx context.Context, vm model.VM, force bool) error {
	if m.Alive(vm) {
		if !force {
			return errdefs.Errorf(errdefs.CodeConflict, "vm %s is running: stop it first or delete with --force", vm.Name)
		}
		if _, err := m.halt(ctx, vm, api.StopVMRequest{Force: true}); err != nil {
			return err
		}
	}
	m.teardown(ctx, vm)
	if strat, err := m.strategy(vm.CowStrategy); err == nil {
		if err := strat.Remove(ctx, vm.Dir); err != nil {
			m.log.Warn("remove system disk", "vm", vm.Name, "err", err)
		}
	}
	if err := os.RemoveAll(vm.Dir); err != nil {
		return fmt.Errorf("remove %s: %w", vm.Dir, err)
	}
	if err := m.store.DeleteVM(ctx, vm.ID); err != nil {
		return store.Describe("vm", vm.Name, err)
	}
	m.forgetUse(vm.ID)
	m.flat.forget(vm.ID)
	m.log.Info("vm deleted", "vm", vm.Name)
	return nil
}

// teardown releases every transient host resource of a VM: VMM process,
// tap, loops, dm targets, sockets, pooled connections. Each step tolerates
// things already gone, so it is safe after a crash and safe to repeat.
func (m *Manager) teardown(ctx context.Context, vm model.VM) { m.release(ctx, vm, false) }

// release is teardown; with park what a pause keeps for the resume is
// kept: the VM's pooled SSH connection, left open, and what its
// allowed host names opened (ParkTap).
func (m *Manager) release(ctx context.Context, vm model.VM, park bool) {
	h, ok := m.handles.get(vm.ID)
	if !ok {
		var err error
		if h, err = readHandlesFile(vm.Dir); err != nil {
			m.log.Warn("handles file unreadable; tearing down by derived names", "vm", vm.Name, "err", err)
		}
	}
	if h.APISocket == "" {
		h.APISocket = vm.APISocket
	}
	if h.Tap == "" {
		h.Tap = hostnet.TapName(vm.ID)
	}
	m.dropGuest(vm.ID, park)
	drv, drvErr := m.driver(vm.VMM)
	if drvErr == nil {
		if vh, err := drv.Find(h.APISocket); err == nil {
			if err := drv.Kill(ctx, vh); err != nil {
				m.log.Warn("kill vmm", "vm", vm.Name, "err", err)
			}
		}
	}
	if m.taps != nil {
		// What a paused VM's names opened is kept beside it, for a
		// resume by a daemon started since (reconcilePaused).
		var parked *hostnet.ParkedNames
		var err error
		if park {
			parked, err = m.taps.ParkTap(ctx, h.Tap)
		} else {
			err = m.taps.DeleteTap(ctx, h.Tap)
		}
		if err != nil {
			m.log.Warn("delete tap", "vm", vm.Name, "tap", h.Tap, "err", err)
		}
		if err := writeParked(vm.Dir, parked); err != nil {
			m.log.Warn("keep what the vm's host names opened", "vm", vm.Name, "err", err)
		}
	}
	// Without handles too: a crash between Attach and recording its
	// objects leaves them to be found by the VM directory.
	if strat, err := m.strategy(vm.CowStrategy); err == nil {
		if err := strat.Detach(ctx, storage.SystemDisk{Loops: h.Loops, DMNames: h.DMNames, VMDir: vm.Dir}); err != nil {
			m.log.Warn("detach system disk", "vm", vm.Name, "err", err)
		}
	}
	if drvErr == nil {
		_ = drv.Cleanup(vmm.Spec{Dir: vm.Dir, APISocket: vm.APISocket, VsockPath: vm.VsockSocket})
	}
	m.handles.forget(vm.ID, vm.Dir)
}

// save writes a VM record, stamping UpdatedAt.
func (m *Manager) save(ctx context.Context, vm *model.VM) error {
	vm.UpdatedAt = m.now().UTC()
	return store.Describe("vm", vm.Name, m.store.UpdateVM(ctx, *vm))
}

// guestOf is the VM's address on the bridge, which its tap lets it send
// as, without its policy (guest adds it).
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
