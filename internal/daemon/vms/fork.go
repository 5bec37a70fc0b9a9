package vms

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/banger/banger/internal/api"
	"github.com/banger/banger/internal/errdefs"
	"github.com/banger/banger/internal/guest"
	"github.com/banger/banger/internal/guestctl"
	"github.com/banger/banger/internal/model"
	"github.com/banger/banger/internal/progress"
	"github.com/banger/banger/internal/storage"
	"github.com/banger/banger/internal/store"
	"github.com/banger/banger/internal/vmm"
)

// MaxFork bounds one fork request.
const MaxFork = 16

// machineIDWait bounds telling a booted guest its machine id: its
// banger-init answers at once once SSH does.
const machineIDWait = 3 * time.Second

// forkIdentity is what a fork is told over the control channel before its
// link comes up.
type forkIdentity struct {
	hostKey guest.HostKey
}

// Fork makes count new VMs that resume from a snapshot (src names a
// snapshot, else a running VM, of which a snapshot is taken first and
// kept). Each gets its own record (name prefix-1…, IP, MAC, CID, tap,
// SSH host key), copy-on-write disks over the snapshot's, and is
// restored held off the bridge (raiseLink), told its identity over the control
// channel (hostname, machine id, entropy, MAC, address, host key, clock)
// and only then let onto the bridge. Up to forkParallel are made at once.
// A fork that fails is deleted and no further one is begun; the ones
// made stay and are returned (in name order) with the first error.
// Each fork has req's labels, deadline and idle timeout, and its network
// policy when it names one (else the snapshot's), all checked before
// anything is made.
func (m *Manager) Fork(ctx context.Context, req api.ForkRequest, report progress.Func) ([]model.VM, error) {
	report = progress.OrNop(report)
	src, count, prefix := req.Source, req.Count, req.NamePrefix
	if count < 1 || count > MaxFork {
		return nil, errdefs.Errorf(errdefs.CodeInvalid, "invalid count %d: fork 1 to %d vms at once", count, MaxFork)
	}
	if src == "" {
		return nil, errdefs.Errorf(errdefs.CodeInvalid, "fork needs a snapshot or a running or paused vm")
	}
	asked := api.CreateVMRequest{Labels: req.Labels, TTL: req.TTL, TTLAction: req.TTLAction, IdleTimeout: req.IdleTimeout,
		Net: req.Net, Allow: req.Allow, Deny: req.Deny, AllowVMs: req.AllowVMs}
	if _, err := m.intentOf(ctx, "", "", asked); err != nil {
		return nil, err
	}
	sn, err := m.store.GetSnapshot(ctx, src)
	if err == nil && sn.Template != "" {
		err = store.ErrNotFound // the daemon's own
	}
	if err != nil {
		if _, verr := m.store.GetVM(ctx, src); verr != nil {
			return nil, errdefs.Errorf(errdefs.CodeNotFound, "no snapshot or vm named %q to fork", src)
		}
		report(progress.Event{Phase: "snapshot", Message: "taking a snapshot of " + src})
		if sn, err = m.CreateSnapshot(ctx, src, ""); err != nil {
			return nil, err
		}
	}
	if sn.State != model.SnapshotReady {
		return nil, errdefs.Errorf(errdefs.CodeConflict, "snapshot %s is %s: fork it once it is ready", sn.Name, sn.State)
	}
	if prefix == "" {
		prefix = sn.VMName + "-fork"
	}
	names := make([]string, count)
	intents := make([]vmIntent, count)
	for i := range names {
		names[i] = fmt.Sprintf("%s-%d", prefix, i+1)
		if err := model.ValidateName("vm", names[i]); err != nil {
			return nil, errdefs.Errorf(errdefs.CodeInvalid, "name prefix %q: %v", prefix, err)
		}
		if _, err := m.store.GetVM(ctx, names[i]); err == nil {
			return nil, errdefs.Errorf(errdefs.CodeConflict, "vm %q already exists: pick another --name-prefix", names[i])
		}
		in, err := m.intentOf(ctx, model.NewID(), names[i], asked)
		if err != nil {
			return nil, err
		}
		if !asksNet(asked) {
			in.Net = snapshotNet(sn)
		}
		intents[i] = in
	}
	drv, err := m.driver(sn.VMM)
	if err != nil {
		return nil, err
	}
	if _, err := snapshotter(drv); err != nil {
		return nil, err
	}
	if _, ok := drv.(vmm.Controller); !ok {
		return nil, errdefs.Errorf(errdefs.CodeUnavailable, "vmm %s has no control channel to tell a fork who it is: forks need one", drv.Name())
	}
	// Up to forkParallel forks at once: much of a fork is waiting (the
	// VMM's start, the state's load, disk syncs, the guest's answers),
	// which the others fill. Progress events come from several forks, so
	// they are serialised and name the fork they are about.
	var (
		mu       sync.Mutex
		forks    = make([]*model.VM, count)
		firstErr error
		wg       sync.WaitGroup
		slots    = make(chan struct{}, forkParallel)
	)
	say := func(e progress.Event) {
		mu.Lock()
		defer mu.Unlock()
		report(e)
	}
	for i, name := range names {
		slots <- struct{}{}
		mu.Lock()
		failed := firstErr != nil
		mu.Unlock()
		if failed || ctx.Err() != nil {
			<-slots
			break
		}
		say(progress.Event{Phase: "fork", Message: fmt.Sprintf("%s (%d of %d)", name, i+1, count)})
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-slots }()
			vm, err := m.forkOne(ctx, sn, intents[i], func(e progress.Event) {
				e.Message = name + ": " + e.Message
				say(e)
			})
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				if firstErr == nil {
					firstErr = err
				}
				return
			}
			forks[i] = &vm
		}()
	}
	wg.Wait()
	made := []model.VM{}
	for _, vm := range forks {
		if vm != nil {
			made = append(made, *vm)
		}
	}
	if firstErr == nil && len(made) < count {
		firstErr = ctx.Err()
	}
	if firstErr != nil {
		return made, firstErr
	}
	return made, nil
}

// forkParallel bounds the forks of one request made at once.
const forkParallel = 4

// forkOne makes and restores one VM from a snapshot, with what its
// create asked (name, network policy, deadlines, labels); on failure
// nothing of it is left. The VM is pending in snapshot_users until its
// guest has taken its identity (launch).
func (m *Manager) forkOne(ctx context.Context, sn model.Snapshot, in vmIntent, report progress.Func) (model.VM, error) {
	start := time.Now()
	id, name := in.ID, in.Name
	now := m.now().UTC()
	vm := model.VM{
		ID: id, Name: name, ImageID: sn.ImageID, KernelID: sn.KernelID,
		CPUs: sn.CPUs, MemoryMiB: sn.MemoryMiB, DiskBytes: sn.DiskBytes,
		DesiredState: model.VMStopped, State: model.VMCreated,
		VMM: sn.VMM, CowStrategy: sn.CowStrategy,
		DNSName:   name + "." + m.cfg.DNSSuffix,
		CreatedAt: now, UpdatedAt: now, Net: in.Net, Labels: in.Labels,
	}
	applyDeadlines(&vm, in, now)
	if drv, err := m.driver(vm.VMM); err == nil {
		if a, ok := drv.(vmm.AccelReporter); ok {
			vm.Accel, _ = a.Accel(ctx)
		}
	}
	vmPaths(&vm, m.vmDir(id), vm.CowStrategy)
	hostKey, err := guest.NewHostKey()
	if err != nil {
		return model.VM{}, err
	}
	vm.HostKey = hostKey.Public

	unlock := m.locks.Lock(id)
	defer unlock()
	if err := m.reserve(ctx, &vm); err != nil {
		return model.VM{}, err
	}
	undo := func(err error) (model.VM, error) {
		m.teardown(context.Background(), vm)
		_ = os.RemoveAll(vm.Dir)
		_ = m.store.DeleteVM(context.Background(), vm.ID)
		return model.VM{}, fmt.Errorf("fork %s from snapshot %s: %w", name, sn.Name, err)
	}
	if err := m.store.AddSnapshotUser(ctx, sn.ID, vm.ID); err != nil {
		return undo(store.Describe("snapshot", sn.Name, err))
	}
	if err := ensureDir(vm.Dir); err != nil {
		return undo(err)
	}
	report(progress.Event{Phase: "disks", Message: "copy-on-write disks over the snapshot's", Elapsed: time.Since(start).Seconds()})
	sysSrc := snapshotSystemFile(sn.Dir, vm.SystemDisk)
	switch sn.CowStrategy {
	case "qcow2":
		// qemu-img opens the snapshot's disk: its header is checked first,
		// as a VM's is before a start.
		var im model.Image
		if im, err = m.store.GetImage(ctx, sn.ImageID); err != nil {
			err = store.Describe("image", sn.ImageID, err)
		} else if err = m.checkSystemChain(ctx, sysSrc, im, sn.BaseID); err == nil {
			err = storage.ForkQcow2(ctx, sysSrc, vm.SystemDisk)
		}
	default:
		_, err = storage.CaptureFile(ctx, sysSrc, vm.SystemDisk)
	}
	if err == nil {
		_, err = m.forkWorkDisk(ctx, vm, sn)
	}
	if err != nil {
		return undo(err)
	}
	vm, err = m.launch(ctx, vm, report, filepath.Join(sn.Dir, snapStateName), &forkIdentity{hostKey: hostKey}, bootOpts{ready: in.Ready})
	if err != nil {
		return undo(err)
	}
	if vm.ExpiresAt != nil || vm.IdleTimeoutSeconds > 0 {
		m.pokeExpiry()
	}
	m.log.Info("vm forked", "vm", name, "snapshot", sn.Name, "ip", vm.GuestIP, "seconds", time.Since(start).Seconds())
	return vm, nil
}

// machineIDOf is a VM's machine id (/etc/machine-id): stable across its
// boots, its own, and not its id (which `vm show` prints; a machine id
// is meant to stay private to the machine). Pure.
func machineIDOf(vmID string) string {
	sum := sha256.Sum256([]byte("banger machine-id\n" + vmID))
	return hex.EncodeToString(sum[:16])
}

// tellMachineID gives a booted guest its machine id over the control
// channel (images share theirs otherwise, or have none); a guest without
// the channel (an image built before it) keeps the image's, logged,
// after at most machineIDWait.
func (m *Manager) tellMachineID(ctx context.Context, vm model.VM, drv vmm.Driver, im model.Image) {
	if _, ok := drv.(vmm.Controller); !ok || im.Init != "fast" {
		return
	}
	cctx, cancel := context.WithTimeout(ctx, machineIDWait)
	defer cancel()
	c, err := dialControl(cctx, vm, drv)
	if err == nil {
		_, err = c.Call(cctx, guestctl.Request{Op: guestctl.OpIdentity, MachineID: machineIDOf(vm.ID)})
		c.Close()
	}
	if err != nil {
		m.log.Warn("guest's machine id not set", "vm", vm.Name, "err", err)
	}
}

// GuestControl sends req over a running VM's control channel and
// answers the guest's reply (an error carrying the guest's message when
// it refused). It is unavailable (errdefs.CodeUnavailable) when the VM's
// VMM has no control channel or its image does not run banger-init,
// which serves it; the caller then takes another way in (SSH). req is
// bounded by ctx.
func (m *Manager) GuestControl(ctx context.Context, vm model.VM, req guestctl.Request) (guestctl.Reply, error) {
	drv, err := m.driver(vm.VMM)
	if err != nil {
		return guestctl.Reply{}, err
	}
	if _, ok := drv.(vmm.Controller); !ok {
		return guestctl.Reply{}, errdefs.Errorf(errdefs.CodeUnavailable, "vm %s: vmm %s has no control channel", vm.Name, vm.VMM)
	}
	im, err := m.store.GetImage(ctx, vm.ImageID)
	if err != nil {
		return guestctl.Reply{}, store.Describe("image", vm.ImageID, err)
	}
	if im.Init != "fast" {
		return guestctl.Reply{}, errdefs.Errorf(errdefs.CodeUnavailable, "vm %s: image %s does not run banger-init, which serves the control channel", vm.Name, im.Name)
	}
	if !m.Alive(vm) {
		return guestctl.Reply{}, errdefs.Errorf(errdefs.CodeConflict, "vm %s is not running", vm.Name)
	}
	c, err := dialControl(ctx, vm, drv)
	if err != nil {
		return guestctl.Reply{}, err
	}
	defer c.Close()
	return c.Call(ctx, req)
}

// dialControl opens vm's control channel through drv, which must have
// one (vmm.Controller); the caller closes the client.
func dialControl(ctx context.Context, vm model.VM, drv vmm.Driver) (*guestctl.Client, error) {
	ctl, ok := drv.(vmm.Controller)
	if !ok {
		return nil, fmt.Errorf("vmm %s has no control channel", drv.Name())
	}
	conn, err := ctl.DialControl(ctx, vm.Dir)
	if err != nil {
		return nil, err
	}
	return guestctl.NewClient(conn), nil
}

// reidentify tells a restored fork, held off the bridge, who it is,
// then raises its link (raiseLink).
func (m *Manager) reidentify(ctx context.Context, vm model.VM, drv vmm.Driver, vh vmm.Handle, tap string, fork *forkIdentity) error {
	ip, err := netip.ParseAddr(vm.GuestIP)
	if err != nil {
		return err
	}
	seed := make([]byte, 64)
	_, _ = rand.Read(seed)
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	c, err := dialControl(cctx, vm, drv)
	if err != nil {
		return err
	}
	defer c.Close()
	rep, err := c.Call(cctx, guestctl.Request{
		Op: guestctl.OpIdentity, Hostname: vm.Name, MachineID: machineIDOf(vm.ID), Seed: seed,
		MAC: vm.GuestMAC, Addr: netip.PrefixFrom(ip, m.subnet.Bits()).String(), Gateway: m.taps.Gateway().String(),
		HostKey: fork.hostKey.Private, HostPub: fork.hostKey.Public,
	})
	if err != nil {
		return fmt.Errorf("tell the guest its identity: %w", err)
	}
	if id := rep.Identity; id == nil || id.Hostname != vm.Name || id.MAC != vm.GuestMAC {
		return fmt.Errorf("the guest did not take its identity (it answered %+v)", rep.Identity)
	}
	if _, err := c.Call(cctx, guestctl.Request{Op: guestctl.OpClock, UnixNano: time.Now().UnixNano()}); err != nil {
		m.log.Warn("fork's clock not set", "vm", vm.Name, "err", err)
	}
	return m.raiseLink(cctx, drv, vh, tap)
}

// raiseLink lets a restored fork that has its identity onto the bridge,
// the way launch held it off: through the guest's carrier when the
// driver has vmm.LinkSetter (Restore honoured Spec.Net.LinkDown), else
// by bringing up its tap, which CreateTap left down (hostnet.Guest.Held)
// — Firecracker has no carrier API. Either way no frame of the guest's
// reached the bridge before.
func (m *Manager) raiseLink(ctx context.Context, drv vmm.Driver, vh vmm.Handle, tap string) error {
	if links, ok := drv.(vmm.LinkSetter); ok {
		return links.SetLink(ctx, vh, true)
	}
	if err := m.taps.RaiseTap(ctx, tap); err != nil {
		return fmt.Errorf("let the guest onto the bridge: %w", err)
	}
	return nil
}

// snapshotNet is the network policy VMs made from sn start with: the one
// of the VM it was taken of, so that a copy of a confined VM is no less
// confined (a snapshot made before snapshots kept it has the default).
func snapshotNet(sn model.Snapshot) model.NetPolicy {
	p := sn.Net
	if p.Mode == "" {
		p.Mode = model.NetInternet
	}
	return p
}
