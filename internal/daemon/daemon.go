// Package daemon is bangerd's logic: it implements api.Service by composing
// the store (durable intent), the VMM drivers, host networking, storage
// strategies and the guest SSH client. It owns the transient VM handles
// cache and its handles.json mirror, the per-VM request serialisation, and
// reconciliation at start-up.
//
// It does not parse HTTP (package api does) and does not know any VMM's API
// (packages vmm/*): it calls them through their interfaces.
package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/banger/banger/internal/api"
	"github.com/banger/banger/internal/config"
	"github.com/banger/banger/internal/daemon/artifacts"
	"github.com/banger/banger/internal/daemon/guestaccess"
	"github.com/banger/banger/internal/daemon/sessions"
	"github.com/banger/banger/internal/daemon/workspaces"
	"github.com/banger/banger/internal/errdefs"
	"github.com/banger/banger/internal/guest"
	"github.com/banger/banger/internal/model"
	"github.com/banger/banger/internal/store"
	"github.com/banger/banger/internal/version"
	"github.com/banger/banger/internal/vmm"
)

// Daemon implements api.Service.
type Daemon struct {
	cfg     config.Config
	store   *store.Store
	log     *slog.Logger
	started time.Time

	locks   keyedMutex // serialises requests on one VM (key: VM id)
	handles *handleCache
	allocMu sync.Mutex // serialises IP/CID/name allocation at create
	host    hostDeps

	// Test seams: replaceable behaviours, so a test swaps one without a
	// mock framework.
	//
	// dialGuest returns a (pooled) SSH client to a running VM's guest.
	dialGuest func(ctx context.Context, vm model.VM) (guest.Client, error)
	// dialData connects to a port a running VM's guest listens on, for the
	// data channel of internal/transfer.
	dialData func(ctx context.Context, vm model.VM, port int) (net.Conn, error)
	// dropGuest forgets pooled connections to a VM (it stopped or is gone).
	dropGuest func(vmID string)
	// processAlive reports whether the VMM process of a VM is alive (by its
	// cached handles and api socket). Only vmAlive calls it.
	processAlive func(vm model.VM) bool
	// waitGuest waits until a booting VM's guest is ready for commands.
	waitGuest func(ctx context.Context, vm model.VM, drv vmm.Driver, h vmm.Handle) error
	now       func() time.Time

	// The services the facade (service.go) hands requests to; made by wire.
	sessions   *sessions.Service
	workspaces *workspaces.Service
	artifacts  *artifacts.Service
	guests     *guestaccess.Service
}

// vmLookup is what the other services ask of the VM lifecycle.
type vmLookup struct{ d *Daemon }

func (l vmLookup) Resolve(ctx context.Context, ref string) (model.VM, error) {
	return l.d.resolveVM(ctx, ref)
}
func (l vmLookup) Running(ctx context.Context, ref string) (model.VM, error) {
	return l.d.runningVM(ctx, ref)
}
func (l vmLookup) Alive(vm model.VM) bool { return l.d.vmAlive(vm) }
func (l vmLookup) Lock(ctx context.Context, ref string) (model.VM, func(), error) {
	return l.d.lockVM(ctx, ref)
}

// wire makes the services over the daemon's parts. The seams are read
// through closures, so a test may replace a seam after wire.
func (d *Daemon) wire() {
	d.artifacts = artifacts.New(artifacts.Deps{Config: d.cfg, Store: d.store, Log: d.log, Now: func() time.Time { return d.now() }})
	d.sessions = sessions.New(sessions.Deps{
		Store: d.store, Log: d.log, VMs: vmLookup{d},
		Dial: func(ctx context.Context, vm model.VM) (guest.Client, error) { return d.dialGuest(ctx, vm) },
		Now:  func() time.Time { return d.now() },
	})
	d.guests = guestaccess.New(guestaccess.Deps{
		Store: d.store, VMs: vmLookup{d},
		Dial:    func(ctx context.Context, vm model.VM) (guest.Client, error) { return d.dialGuest(ctx, vm) },
		KeyPath: d.cfg.KeyPath(), Netns: d.cfg.Netns, DNSSuffix: d.cfg.DNSSuffix,
	})
	d.workspaces = workspaces.New(workspaces.Deps{
		Store: d.store, Log: d.log, VMs: vmLookup{d},
		Dial: func(ctx context.Context, vm model.VM) (guest.Client, error) { return d.dialGuest(ctx, vm) },
		DialData: func(ctx context.Context, vm model.VM, port int) (net.Conn, error) {
			return d.dialData(ctx, vm, port)
		},
		Transport: func() string { return d.cfg.WorkspaceTransport },
	})
}

// New makes a daemon over an open store. It does not touch the host; Start
// does.
func New(cfg config.Config, st *store.Store, log *slog.Logger) (*Daemon, error) {
	if log == nil {
		log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	d := &Daemon{
		cfg:     cfg,
		store:   st,
		log:     log,
		started: time.Now(),
		handles: newHandleCache(),
		now:     time.Now,
	}
	d.dialGuest = func(ctx context.Context, vm model.VM) (guest.Client, error) {
		return nil, errdefs.Errorf(errdefs.CodeUnavailable, "guest access is not configured")
	}
	d.dialData = func(ctx context.Context, vm model.VM, port int) (net.Conn, error) {
		dialer := net.Dialer{Timeout: 10 * time.Second}
		return dialer.DialContext(ctx, "tcp", net.JoinHostPort(vm.GuestIP, strconv.Itoa(port)))
	}
	d.dropGuest = func(string) {}
	d.processAlive = func(model.VM) bool { return false }
	d.wire()
	return d, nil
}

// Start prepares the host side (directories, keys, network) and reconciles
// VMs recorded as running with what is really running.
func (d *Daemon) Start(ctx context.Context) error {
	for _, dir := range []string{d.cfg.StateDir, d.cfg.VMsDir(), d.cfg.ImagesDir(), d.cfg.KernelsDir()} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("state dir: %w", err)
		}
	}
	return d.startHost(ctx)
}

// Close releases what the daemon holds in-process. Running VMs keep running.
func (d *Daemon) Close() error {
	return d.closeHost()
}

// Info describes the daemon.
func (d *Daemon) Info(ctx context.Context) api.DaemonInfo {
	return api.DaemonInfo{
		Version:  version.Current(),
		PID:      os.Getpid(),
		StateDir: d.cfg.StateDir,
		Socket:   d.cfg.Socket,
		LogPath:  d.cfg.LogPath(),
		Netns:    d.cfg.Netns,
		Started:  d.started.UTC().Format(time.RFC3339),
	}
}

// resolveVM finds a VM by name, id or id prefix.
func (d *Daemon) resolveVM(ctx context.Context, ref string) (model.VM, error) {
	if ref == "" {
		return model.VM{}, errdefs.Errorf(errdefs.CodeInvalid, "vm name or id is empty")
	}
	vm, err := d.store.GetVM(ctx, ref)
	return vm, store.Describe("vm", ref, err)
}

// ListVMs lists every VM.
func (d *Daemon) ListVMs(ctx context.Context) ([]model.VM, error) {
	vms, err := d.store.ListVMs(ctx)
	if vms == nil {
		vms = []model.VM{}
	}
	return vms, err
}

// GetVM shows one VM.
func (d *Daemon) GetVM(ctx context.Context, ref string) (model.VM, error) {
	return d.resolveVM(ctx, ref)
}

// keyedMutex serialises work per key while letting different keys run in
// parallel.
type keyedMutex struct {
	mu    sync.Mutex
	locks map[string]*keyedEntry
}

type keyedEntry struct {
	mu   sync.Mutex
	refs int
}

// Lock locks key and returns the unlock function.
func (k *keyedMutex) Lock(key string) func() {
	k.mu.Lock()
	if k.locks == nil {
		k.locks = map[string]*keyedEntry{}
	}
	e := k.locks[key]
	if e == nil {
		e = &keyedEntry{}
		k.locks[key] = e
	}
	e.refs++
	k.mu.Unlock()
	e.mu.Lock()
	return func() {
		e.mu.Unlock()
		k.mu.Lock()
		e.refs--
		if e.refs == 0 {
			delete(k.locks, key)
		}
		k.mu.Unlock()
	}
}

// runningVM resolves a VM and checks it runs.
func (d *Daemon) runningVM(ctx context.Context, ref string) (model.VM, error) {
	vm, err := d.resolveVM(ctx, ref)
	if err != nil {
		return vm, err
	}
	if !d.vmAlive(vm) {
		return vm, errdefs.Errorf(errdefs.CodeConflict, "vm %s is not running (state %s): start it with `banger vm start %s`", vm.Name, vm.State, vm.Name)
	}
	return vm, nil
}

// vmAlive is the one liveness check used everywhere: the VM is recorded
// running and the VMM process started with its api socket is alive.
func (d *Daemon) vmAlive(vm model.VM) bool {
	return vm.State == model.VMRunning && d.processAlive(vm)
}
