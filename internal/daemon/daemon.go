// Package daemon is bangerd's orchestrator: it composes the host's parts
// (the store, the VMM registry, copy-on-write strategies, host networking
// and DNS, the daemon's SSH key and guest connection pool) into the
// services that own each concern, and implements api.Service as a thin
// facade over them (service.go):
//
//   - vms: VM lifecycle, the per-VM lock, handles, reconcile, the watcher
//   - guestaccess: exec, logs, ssh info, hosts, guest readiness and dialing
//   - sessions: guest sessions
//   - workspaces: workspace prepare and export
//   - files: reading and writing a running guest's files
//   - ports: published ports of running VMs
//   - e2b: the E2B-compatible control plane and its relay to guests
//   - artifacts: image and kernel registration
//   - doctor: what this host gives banger
//
// It does not parse HTTP (package api does), decide anything a service
// owns, or know any VMM's API (packages vmm/*).
package daemon

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/banger/banger/internal/api"
	"github.com/banger/banger/internal/config"
	"github.com/banger/banger/internal/daemon/artifacts"
	"github.com/banger/banger/internal/daemon/e2b"
	"github.com/banger/banger/internal/daemon/files"
	"github.com/banger/banger/internal/daemon/guestaccess"
	"github.com/banger/banger/internal/daemon/ports"
	"github.com/banger/banger/internal/daemon/sessions"
	"github.com/banger/banger/internal/daemon/vms"
	"github.com/banger/banger/internal/daemon/workspaces"
	"github.com/banger/banger/internal/envd"
	"github.com/banger/banger/internal/errdefs"
	"github.com/banger/banger/internal/guest"
	"github.com/banger/banger/internal/hostnet"
	"github.com/banger/banger/internal/model"
	"github.com/banger/banger/internal/store"
	"github.com/banger/banger/internal/tail"
	"github.com/banger/banger/internal/version"
)

// Daemon implements api.Service.
type Daemon struct {
	cfg     config.Config
	store   *store.Store
	log     *slog.Logger
	started time.Time
	host    hostDeps

	// Test seams: replaceable behaviours, so a test swaps one without a
	// mock framework. The services reach them through closures, so a test
	// may replace one after New.
	//
	// dialGuest returns a (pooled) SSH client to a running VM's guest.
	dialGuest func(ctx context.Context, vm model.VM) (guest.Client, error)
	// dialData connects to a port a running VM's guest listens on, for the
	// data channel of internal/transfer.
	dialData func(ctx context.Context, vm model.VM, port int) (net.Conn, error)
	// waitGuest waits until a booting VM's guest is ready for commands;
	// vmmAlive says whether its VMM still runs.
	waitGuest func(ctx context.Context, vm model.VM, vmmAlive func() bool) error
	// waitListening waits until it accepts connections on its SSH port
	// (api.ReadyListening).
	waitListening func(ctx context.Context, vm model.VM, vmmAlive func() bool) error
	now           func() time.Time
	// directRefused: "vmID/port" of published guest ports that refused a
	// direct connection lately (time.Time of the refusal).
	directRefused sync.Map

	// The services the facade hands requests to; made by wire.
	vms        *vms.Manager
	guests     *guestaccess.Service
	sessions   *sessions.Service
	workspaces *workspaces.Service
	artifacts  *artifacts.Service
	files      *files.Service
	ports      *ports.Service
	e2b        *e2b.Service
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
		now:     time.Now,
	}
	d.dialGuest = func(ctx context.Context, vm model.VM) (guest.Client, error) {
		return nil, errdefs.Errorf(errdefs.CodeUnavailable, "guest access is not configured")
	}
	d.dialData = func(ctx context.Context, vm model.VM, port int) (net.Conn, error) {
		dialer := net.Dialer{Timeout: 10 * time.Second}
		return dialer.DialContext(ctx, "tcp", net.JoinHostPort(vm.GuestIP, strconv.Itoa(port)))
	}
	d.waitGuest = func(ctx context.Context, vm model.VM, vmmAlive func() bool) error {
		return d.guests.WaitReady(ctx, vm, vmmAlive)
	}
	d.waitListening = func(ctx context.Context, vm model.VM, vmmAlive func() bool) error {
		return d.guests.WaitListening(ctx, vm, vmmAlive)
	}
	d.wire()
	return d, nil
}

// wire makes the services over the daemon's parts as they are now: New
// calls it, and Start again once the host parts exist (tests, after
// replacing host parts with fakes).
func (d *Daemon) wire() {
	now := func() time.Time { return d.now() }
	dial := func(ctx context.Context, vm model.VM) (guest.Client, error) { return d.dialGuest(ctx, vm) }
	d.artifacts = artifacts.New(artifacts.Deps{Config: d.cfg, Store: d.store, Log: d.log, Now: now,
		DropTemplates: func(ctx context.Context, id string) error { return d.vms.DropTemplates(ctx, id) }})
	authorizedKey := ""
	if d.host.signer != nil {
		authorizedKey = guest.AuthorizedKey(d.host.signer)
	}
	var taps vms.Taps
	if d.host.taps != nil {
		taps = d.host.taps
	}
	d.vms = vms.New(vms.Deps{
		Config: d.cfg, Store: d.store, Log: d.log, Now: now,
		Drivers: d.host.drivers, Strategies: d.host.strategies,
		Taps: taps, NetErr: d.host.netErr, Subnet: d.host.subnet,
		AuthorizedKey: authorizedKey, Artifacts: d.artifacts,
		WaitGuest: func(ctx context.Context, vm model.VM, vmmAlive func() bool) error {
			return d.waitGuest(ctx, vm, vmmAlive)
		},
		WaitListening: func(ctx context.Context, vm model.VM, vmmAlive func() bool) error {
			return d.waitListening(ctx, vm, vmmAlive)
		},
		SetGuestClock: func(ctx context.Context, vm model.VM) error {
			return d.guests.SetClock(ctx, vm)
		},
		DropGuest: func(id string, keepConn bool) {
			// A stopped or deleted VM's listeners go with its connection:
			// teardown is where both end. The records stay (intent). A
			// pause keeps the connection it parked for the resume.
			d.ports.Unlisten(id)
			d.directRefused.Range(func(k, _ any) bool {
				if strings.HasPrefix(k.(string), id+"/") {
					d.directRefused.Delete(k)
				}
				return true
			})
			if !keepConn {
				// Streams the E2B relay holds to its guest end with it.
				d.e2b.VMGone(id)
				if d.host.pool != nil {
					d.host.pool.Drop(id)
				}
			}
		},
		ParkGuest: func(id string) bool {
			return d.host.pool != nil && d.host.pool.Park(id)
		},
		UnparkGuest: func(ctx context.Context, vm model.VM) error {
			return d.guests.Unpark(ctx, vm)
		},
		Started:   func(ctx context.Context, vm model.VM) { d.ports.VMStarted(ctx, vm) },
		GuestInit: d.artifacts.InitSum,
	})
	d.guests = guestaccess.New(guestaccess.Deps{
		Store: d.store, VMs: d.vms, Dial: dial,
		Signer: d.host.signer, Pool: d.host.pool,
		KeyPath: d.cfg.KeyPath(), Netns: d.cfg.Netns, DNSSuffix: d.cfg.DNSSuffix,
	})
	d.sessions = sessions.New(sessions.Deps{Store: d.store, Log: d.log, VMs: d.vms, Dial: dial, Now: now})
	d.workspaces = workspaces.New(workspaces.Deps{
		Store: d.store, Log: d.log, VMs: d.vms, Dial: dial,
		DialData: func(ctx context.Context, vm model.VM, port int) (net.Conn, error) {
			return d.dialData(ctx, vm, port)
		},
		Transport: func() string { return d.cfg.WorkspaceTransport },
	})
	maxCopyOut, _ := model.ParseSize(d.cfg.MaxCopyOut) // validated at load
	d.files = files.New(files.Deps{VMs: d.vms, Dial: dial,
		DialData: func(ctx context.Context, vm model.VM, port int) (net.Conn, error) {
			return d.dialData(ctx, vm, port)
		},
		Transport: func() string { return d.cfg.WorkspaceTransport },
		Budget:    files.Budget{MaxBytes: maxCopyOut, MaxEntries: d.cfg.MaxCopyOutEntries}})
	d.ports = ports.New(ports.Deps{
		Store: d.store, Log: d.log, VMs: d.vms, Now: now,
		DialGuest: func(ctx context.Context, vm model.VM, port int) (net.Conn, error) {
			return d.dialGuestTCP(ctx, vm, port)
		},
		Listen: hostnet.ListenHost,
		Active: func(vmID string) func() { return d.vms.Active(vmID) },
	})
	d.e2b = e2b.New(e2b.Deps{
		Store: d.store, Log: d.log, VMs: d.vms, Now: now,
		RunGuest: d.runGuest,
		DialGuest: func(ctx context.Context, vm model.VM, port int) (net.Conn, error) {
			if port == envd.Port {
				return d.dialEnvd(ctx, vm)
			}
			return d.dialGuestTCP(ctx, vm, port)
		},
		Listen:       hostnet.ListenHost,
		ListenPacket: hostnet.ListenPacketHost,
		Dir:          filepath.Join(d.cfg.StateDir, "e2b"),
	})
}

// runGuest runs cmd as root in a running guest with stdin, answering the
// end of its combined output and its exit code.
func (d *Daemon) runGuest(ctx context.Context, vm model.VM, cmd string, stdin io.Reader) (string, int, error) {
	c, err := d.dialGuest(ctx, vm)
	if err != nil {
		return "", -1, err
	}
	defer c.Close()
	// Two buffers: the session may write both streams at once.
	stdout, stderr := &tail.Buffer{Max: 8 << 10}, &tail.Buffer{Max: 8 << 10}
	code, err := c.Run(ctx, cmd, stdin, stdout, stderr)
	return stdout.String() + stderr.String(), code, err
}

// dialGuestTCP connects to port in a running guest, for a published
// port. A service listening on the guest's own address is reached over
// plain TCP on the VM's link (from bangerd's namespace, where the bridge
// is), which a guest under emulation serves many times faster than it
// decrypts SSH; one listening only on the guest's loopback refuses that
// and is reached through the pooled SSH connection's direct-tcpip to
// 127.0.0.1. A refusal is remembered for directRetry, so later
// connections go straight to SSH. workspace_transport "ssh" keeps every
// forward on SSH.
func (d *Daemon) dialGuestTCP(ctx context.Context, vm model.VM, port int) (net.Conn, error) {
	key := vm.ID + "/" + strconv.Itoa(port)
	if d.cfg.WorkspaceTransport != "ssh" && vm.GuestIP != "" {
		if at, ok := d.directRefused.Load(key); !ok || time.Since(at.(time.Time)) > directRetry {
			dctx, cancel := context.WithTimeout(ctx, directTimeout)
			nc, err := d.dialData(dctx, vm, port)
			cancel()
			if err == nil {
				d.directRefused.Delete(key)
				return nc, nil
			}
			d.directRefused.Store(key, time.Now())
		}
	}
	return d.dialGuestSSH(ctx, vm, port)
}

// How long a direct connection to a guest port may take before the
// forward goes through SSH, and how long a refusal sends every later
// connection to that port straight to SSH.
const (
	directTimeout = 2 * time.Second
	directRetry   = time.Minute
)

// dialEnvd connects to a sandbox's envd: over plain TCP on the VM's link
// to the guest's address, where envd listens (its port checks its access
// token, and taps are isolated: only bangerd's namespace reaches it),
// else through SSH to the guest's loopback (an envd started before it
// listened on the guest's address, restored from a snapshot). No refusal
// is remembered, unlike dialGuestTCP: an envd that is starting refuses
// until it listens, and then must be reached directly.
func (d *Daemon) dialEnvd(ctx context.Context, vm model.VM) (net.Conn, error) {
	if d.cfg.WorkspaceTransport != "ssh" && vm.GuestIP != "" {
		dctx, cancel := context.WithTimeout(ctx, directTimeout)
		nc, err := d.dialData(dctx, vm, envd.Port)
		cancel()
		if err == nil {
			return nc, nil
		}
	}
	return d.dialGuestSSH(ctx, vm, envd.Port)
}

// dialGuestSSH connects to port on a running guest's loopback through its
// pooled SSH connection.
func (d *Daemon) dialGuestSSH(ctx context.Context, vm model.VM, port int) (net.Conn, error) {
	c, err := d.dialGuest(ctx, vm)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	td, ok := c.(guest.TCPDialer)
	if !ok {
		return nil, errdefs.Errorf(errdefs.CodeUnavailable, "guest connection of vm %s cannot open TCP channels", vm.Name)
	}
	return td.DialTCP(ctx, net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
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
