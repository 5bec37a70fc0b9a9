// Package vms is the VM lifecycle: create, start, stop, restart and delete
// a VM; the per-VM lock every request on a VM takes; the handles cache of
// what is momentarily true of a running VM (VMM PID, tap, loops) and its
// handles.json mirror; the one liveness check; reconciliation at start-up;
// and the watcher that notices VMMs that died.
//
// It composes the VMM registry (package vmm), copy-on-write strategies
// (package storage) and taps (package hostnet) through their interfaces.
// It must not know any VMM's API or files, reach into a guest (boot waits
// through the WaitGuest function it is given), or touch sessions,
// workspaces or image builds.
package vms

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/banger/banger/internal/config"
	"github.com/banger/banger/internal/errdefs"
	"github.com/banger/banger/internal/hostnet"
	"github.com/banger/banger/internal/keyed"
	"github.com/banger/banger/internal/model"
	"github.com/banger/banger/internal/progress"
	"github.com/banger/banger/internal/storage"
	"github.com/banger/banger/internal/store"
	"github.com/banger/banger/internal/vmm"
)

// Lookup is what the daemon's other services ask of the VM lifecycle;
// *Manager implements it.
type Lookup interface {
	// Resolve finds a VM by name, id or id prefix.
	Resolve(ctx context.Context, ref string) (model.VM, error)
	// Running resolves a VM and fails with a conflict naming how to start
	// it when it does not run.
	Running(ctx context.Context, ref string) (model.VM, error)
	// Alive is the one liveness check: recorded running and its VMM alive.
	Alive(vm model.VM) bool
	// Lock resolves ref, takes the VM's lock and reads its record again
	// under it; the caller must call unlock.
	Lock(ctx context.Context, ref string) (vm model.VM, unlock func(), err error)
}

var _ Lookup = (*Manager)(nil)

// Taps is the part of host networking that VM start, teardown and
// network policy changes use (*hostnet.Network).
type Taps interface {
	// CreateTap makes the tap of guest g on the bridge: up, or held down
	// until RaiseTap when g.Held.
	CreateTap(ctx context.Context, name string, g hostnet.Guest) error
	// RaiseTap brings up a tap made held.
	RaiseTap(ctx context.Context, name string) error
	// DeleteTap removes a tap, its guard and policy; what is gone is
	// not an error.
	DeleteTap(ctx context.Context, name string) error
	// ParkTap is DeleteTap for a pause: what the guest's allowed host
	// names opened is kept for the resume's CreateTap of that name and
	// guest, and answered (nil when nothing is parked) to be kept
	// across a daemon restart.
	ParkTap(ctx context.Context, name string) (*hostnet.ParkedNames, error)
	// Repark puts back what a ParkTap of a daemon before this one
	// answered; a damaged one is refused.
	Repark(name string, p hostnet.ParkedNames) error
	// ApplyPolicy replaces the policy of a running VM's tap; on error the
	// old one stays.
	ApplyPolicy(ctx context.Context, name string, g hostnet.Guest) error
	// CheckPolicy says why CreateTap or ApplyPolicy would refuse g's
	// policy, touching nothing.
	CheckPolicy(name string, g hostnet.Guest) error
	Gateway() netip.Addr
}

// Artifacts finds the image and kernel of a new VM, making the defaults
// on first use.
type Artifacts interface {
	ImageForVM(ctx context.Context, ref string, report progress.Func) (model.Image, error)
	KernelForVM(ctx context.Context, ref string, report progress.Func) (model.Kernel, error)
}

// Deps are what a Manager is made of.
type Deps struct {
	Config     config.Config
	Store      *store.Store
	Log        *slog.Logger
	Now        func() time.Time
	Drivers    *vmm.Registry
	Strategies []storage.Strategy
	// Taps makes and deletes VM taps; NetErr, when set, says why the host
	// network is unusable and every start fails with it.
	Taps   Taps
	NetErr error
	Subnet netip.Prefix
	// AuthorizedKey is the daemon's public key, given to every guest.
	AuthorizedKey string
	Artifacts     Artifacts
	// WaitGuest waits until a booting VM's guest is ready for commands;
	// vmmAlive says whether its VMM still runs, so it can fail early. vm's
	// State is resuming for a guest restored from a saved state (which
	// may be proved ready with less work than a boot).
	WaitGuest func(ctx context.Context, vm model.VM, vmmAlive func() bool) error
	// WaitListening is WaitGuest for a create that asks only that the
	// guest's sshd accept connections (api.ReadyListening), which it does
	// once the guest is set up; no SSH session is made. Nil: WaitGuest.
	WaitListening func(ctx context.Context, vm model.VM, vmmAlive func() bool) error
	// DropGuest ends what reaches a VM's guest through the network: its
	// published ports' listeners and, unless keepConn (a pause, a resume),
	// its pooled SSH connection (it stopped or is gone).
	DropGuest func(vmID string, keepConn bool)
	// ParkGuest keeps a VM's pooled SSH connection open across a pause of
	// its guest (keepalives stop); false when it has none. Nil: none kept.
	ParkGuest func(vmID string) bool
	// UnparkGuest takes a resumed guest's parked connection back into use
	// once it answers on it within ctx; an error when there is none or it
	// does not answer (it is dropped: the guest is dialled anew).
	UnparkGuest func(ctx context.Context, vm model.VM) error
	// Started is told of a VM that just booted (its guest answers), with
	// the VM's lock held; it must not take that lock.
	Started func(ctx context.Context, vm model.VM)
	// SetGuestClock steps a resumed guest's wall clock to the host's
	// (nil: left as it is).
	SetGuestClock func(ctx context.Context, vm model.VM) error
	// GuestInit answers the checksum ("sha256:<hex>", "" when none) of
	// the banger-init the daemon installs in the images it builds: part
	// of what makes a warm-start template stale.
	GuestInit func() string
}

// Manager runs the VM lifecycle.
type Manager struct {
	cfg           config.Config
	store         *store.Store
	log           *slog.Logger
	now           func() time.Time
	drivers       *vmm.Registry
	strategies    []storage.Strategy
	taps          Taps
	netErr        error
	subnet        netip.Prefix
	authorizedKey string
	artifacts     Artifacts
	waitGuest     func(ctx context.Context, vm model.VM, vmmAlive func() bool) error
	waitListening func(ctx context.Context, vm model.VM, vmmAlive func() bool) error
	dropGuest     func(vmID string, keepConn bool)
	parkGuest     func(vmID string) bool
	unparkGuest   func(ctx context.Context, vm model.VM) error
	started       func(ctx context.Context, vm model.VM)
	setClock      func(ctx context.Context, vm model.VM) error
	guestInit     func() string
	// since is when the Manager was made (the daemon's start), from which
	// idle time is counted: activity is kept in memory only.
	since time.Time
	usage usage

	locks   keyed.Mutex // serialises requests on one VM (key: VM id)
	allocMu sync.Mutex  // serialises IP/CID/name allocation at create
	handles *handleCache
	pool    pool      // the warm pool's spares (pool.go)
	flat    flattener // the snapshots being flattened (flatten.go)
	// expiryChanged wakes the expiry loop when a deadline is set.
	expiryChanged chan struct{}
}

// New makes a Manager. It touches nothing on the host; Reconcile does.
func New(deps Deps) *Manager {
	m := &Manager{
		cfg: deps.Config, store: deps.Store, log: deps.Log, now: deps.Now,
		drivers: deps.Drivers, strategies: deps.Strategies,
		taps: deps.Taps, netErr: deps.NetErr, subnet: deps.Subnet,
		authorizedKey: deps.AuthorizedKey, artifacts: deps.Artifacts,
		waitGuest: deps.WaitGuest, waitListening: deps.WaitListening, dropGuest: deps.DropGuest, started: deps.Started,
		parkGuest: deps.ParkGuest, unparkGuest: deps.UnparkGuest,
		setClock:      deps.SetGuestClock,
		guestInit:     deps.GuestInit,
		usage:         usage{uses: map[string]Use{}},
		handles:       newHandleCache(),
		pool:          newPool(),
		expiryChanged: make(chan struct{}, 1),
	}
	if m.dropGuest == nil {
		m.dropGuest = func(string, bool) {}
	}
	if m.parkGuest == nil {
		m.parkGuest = func(string) bool { return false }
	}
	if m.unparkGuest == nil {
		m.unparkGuest = func(context.Context, model.VM) error { return errors.New("no connection kept") }
	}
	if m.started == nil {
		m.started = func(context.Context, model.VM) {}
	}
	if m.now == nil {
		m.now = time.Now
	}
	m.since = m.now().UTC()
	return m
}

// ---- lookup: what the other services ask of a VM ----

// Resolve finds a VM by name, id or id prefix.
func (m *Manager) Resolve(ctx context.Context, ref string) (model.VM, error) {
	if ref == "" {
		return model.VM{}, errdefs.Errorf(errdefs.CodeInvalid, "vm name or id is empty")
	}
	vm, err := m.store.GetVM(ctx, ref)
	if err == nil && isSpare(vm) {
		vm, err = model.VM{}, store.ErrNotFound // the daemon's own (pool.go)
	}
	return vm, store.Describe("vm", ref, err)
}

// List lists every VM but the warm pool's spares (the daemon's own).
func (m *Manager) List(ctx context.Context) ([]model.VM, error) {
	vms, err := m.store.ListVMs(ctx)
	vms = slices.DeleteFunc(vms, isSpare)
	if vms == nil {
		vms = []model.VM{}
	}
	return vms, err
}

// Get shows one VM.
func (m *Manager) Get(ctx context.Context, ref string) (model.VM, error) {
	return m.Resolve(ctx, ref)
}

// Running resolves a VM and checks it runs.
func (m *Manager) Running(ctx context.Context, ref string) (model.VM, error) {
	vm, err := m.Resolve(ctx, ref)
	if err != nil {
		return vm, err
	}
	if vm.State == model.VMPaused {
		return vm, errdefs.Errorf(errdefs.CodeConflict, "vm %s is paused: resume it with `banger vm resume %s`", vm.Name, vm.Name)
	}
	if !m.Alive(vm) {
		return vm, errdefs.Errorf(errdefs.CodeConflict, "vm %s is not running (state %s): start it with `banger vm start %s`", vm.Name, vm.State, vm.Name)
	}
	return vm, nil
}

// Alive is the one liveness check used everywhere: the VM is recorded
// running and the VMM process started with its api socket is alive.
func (m *Manager) Alive(vm model.VM) bool {
	return vm.State == model.VMRunning && m.vmmAlive(vm)
}

// ---- drivers, strategies, directories ----

// driver returns the VMM driver of a VM.
func (m *Manager) driver(name string) (vmm.Driver, error) { return m.drivers.Get(name) }

// strategy returns the storage strategy by name.
func (m *Manager) strategy(name string) (storage.Strategy, error) {
	for _, s := range m.strategies {
		if s.Name() == name {
			return s, nil
		}
	}
	return nil, errdefs.Errorf(errdefs.CodeInternal, "unknown storage strategy %q", name)
}

// vmmAlive checks the VMM process of a VM by its cached handles.
func (m *Manager) vmmAlive(vm model.VM) bool {
	h, ok := m.handles.get(vm.ID)
	if !ok || h.PID == 0 {
		return false
	}
	drv, err := m.driver(vm.VMM)
	if err != nil {
		return false
	}
	return drv.Alive(vmm.Handle{PID: h.PID, APISocket: h.APISocket})
}

// vmDir is the directory of a VM.
func (m *Manager) vmDir(id string) string { return filepath.Join(m.cfg.VMsDir(), id) }

// ensureDir makes a root-only directory.
func ensureDir(p string) error { return os.MkdirAll(p, 0o700) }
