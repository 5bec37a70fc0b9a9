package daemon

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/banger/banger/internal/errdefs"
	"github.com/banger/banger/internal/guest"
	"github.com/banger/banger/internal/hostnet"
	"github.com/banger/banger/internal/model"
	"github.com/banger/banger/internal/storage"
	"github.com/banger/banger/internal/store"
	"github.com/banger/banger/internal/vmm"
	"github.com/banger/banger/internal/vmm/drivers"
)

// hostDeps are the host-side parts the daemon composes. They are made by
// startHost; tests may replace them before Start.
type hostDeps struct {
	signer     ssh.Signer
	pool       *guest.Pool
	net        *hostnet.Network
	taps       tapManager // net, or a fake in tests
	netErr     error      // why the network could not be set up; VM starts fail with it
	dns        *hostnet.DNS
	drivers    *vmm.Registry
	strategies []storage.Strategy
	subnet     netip.Prefix
	stopWatch  context.CancelFunc
	watchDone  chan struct{}
}

// tapManager is the part of host networking that VM start and teardown use.
type tapManager interface {
	CreateTap(ctx context.Context, name string, g hostnet.Guest) error
	DeleteTap(ctx context.Context, name string) error
	Gateway() netip.Addr
}

// startHost makes the daemon's SSH key, the guest connection pool, the VMM
// drivers, the storage strategies and the network, then reconciles.
func (d *Daemon) startHost(ctx context.Context) error {
	signer, err := guest.LoadOrCreateKey(d.cfg.KeyPath())
	if err != nil {
		return fmt.Errorf("ssh key: %w", err)
	}
	if d.waitGuest == nil {
		d.waitGuest = d.waitReady
	}
	d.host.signer = signer
	d.host.pool = guest.NewPool(signer, guest.Dial)
	d.dialGuest = func(ctx context.Context, vm model.VM) (guest.Client, error) {
		ep, err := d.endpoint(ctx, vm)
		if err != nil {
			return nil, err
		}
		return d.host.pool.Get(ctx, vm.ID, ep)
	}
	d.dropGuest = d.host.pool.Drop
	d.processAlive = d.vmmAlive

	if d.host.drivers == nil {
		// The KVM probes boot the default kernel when there is one: on a
		// host whose KVM opens but runs no ordinary guest, only a real
		// kernel tells. Looked up at each decision: the default kernel may
		// be registered after the daemon starts (the first `vm create`
		// fetches it).
		defaultKernel := func() (vmm.Kernel, bool) {
			k, err := d.store.GetKernel(context.Background(), d.cfg.DefaultKernel)
			return vmm.Kernel{Vmlinux: k.VmlinuxPath, BzImage: k.BzImagePath, Initrd: k.InitrdPath}, err == nil
		}
		d.host.drivers = drivers.New(drivers.Config{
			Firecracker: d.cfg.Firecracker, QEMU: d.cfg.QEMU, Accel: d.cfg.Accel,
			ProbeKernel: defaultKernel,
		})
	}
	if d.host.strategies == nil {
		d.host.strategies = []storage.Strategy{storage.Qcow2{}, storage.Reflink{}, storage.DMSnapshot{}}
	}

	subnet, err := netip.ParsePrefix(d.cfg.Subnet)
	if err != nil {
		return fmt.Errorf("invalid subnet %q: %w", d.cfg.Subnet, err)
	}
	d.host.subnet = subnet.Masked()
	n, err := hostnet.New(hostnet.Config{Bridge: d.cfg.Bridge, Subnet: d.host.subnet, DNSSuffix: d.cfg.DNSSuffix})
	if err != nil {
		return err
	}
	d.host.net = n
	if !n.Guarded() {
		d.log.Warn("taps are not guarded against spoofing: the iptables backend cannot; install nftables")
	}
	if d.host.taps == nil {
		d.host.taps = n
	}
	if err := n.Ensure(ctx); err != nil {
		// The daemon still serves (lists, images, kernels); starting a VM
		// reports this.
		d.host.netErr = fmt.Errorf("host network %s: %w", d.cfg.Bridge, err)
		d.log.Error("network setup failed", "err", err)
	} else {
		d.host.dns = hostnet.NewDNS(d.cfg.DNSSuffix, d.lookupDNS, d.log)
		addr := netip.AddrPortFrom(n.Gateway(), 53).String()
		if err := d.host.dns.Start(addr); err != nil {
			d.log.Warn("dns responder not started", "addr", addr, "err", err)
			d.host.dns = nil
		}
	}

	d.reconcile(ctx)

	wctx, cancel := context.WithCancel(context.Background())
	d.host.stopWatch = cancel
	d.host.watchDone = make(chan struct{})
	go d.watch(wctx, 2*time.Second)
	return nil
}

func (d *Daemon) closeHost() error {
	if d.host.stopWatch != nil {
		d.host.stopWatch()
		<-d.host.watchDone
	}
	if d.host.dns != nil {
		_ = d.host.dns.Close()
	}
	if d.host.pool != nil {
		d.host.pool.Close()
	}
	return nil
}

// lookupDNS answers <name>.<suffix> for running VMs.
func (d *Daemon) lookupDNS(host string) (netip.Addr, bool) {
	vm, err := d.store.GetVM(context.Background(), host)
	if err != nil || vm.Name != host || !d.vmAlive(vm) {
		return netip.Addr{}, false
	}
	ip, err := netip.ParseAddr(vm.GuestIP)
	return ip, err == nil
}

// endpoint is how to reach a VM's sshd: its IP and its image's pinned host
// key.
func (d *Daemon) endpoint(ctx context.Context, vm model.VM) (guest.Endpoint, error) {
	im, err := d.store.GetImage(ctx, vm.ImageID)
	if err != nil {
		return guest.Endpoint{}, store.Describe("image", vm.ImageID, err)
	}
	if im.HostKey == "" {
		return guest.Endpoint{}, errdefs.Errorf(errdefs.CodeInvalid, "image %s has no recorded SSH host key; rebuild or re-import it", im.Name)
	}
	return guest.Endpoint{Host: vm.GuestIP, Port: 22, User: "root", HostKey: im.HostKey}, nil
}

// driver returns the VMM driver of a VM.
func (d *Daemon) driver(name string) (vmm.Driver, error) { return d.host.drivers.Get(name) }

// strategy returns the storage strategy by name.
func (d *Daemon) strategy(name string) (storage.Strategy, error) {
	for _, s := range d.host.strategies {
		if s.Name() == name {
			return s, nil
		}
	}
	return nil, errdefs.Errorf(errdefs.CodeInternal, "unknown storage strategy %q", name)
}

// vmmAlive checks the VMM process of a VM by its cached handles.
func (d *Daemon) vmmAlive(vm model.VM) bool {
	h, ok := d.handles.get(vm.ID)
	if !ok || h.PID == 0 {
		return false
	}
	drv, err := d.driver(vm.VMM)
	if err != nil {
		return false
	}
	return drv.Alive(vmm.Handle{PID: h.PID, APISocket: h.APISocket})
}

// vmDir is the directory of a VM.
func (d *Daemon) vmDir(id string) string { return filepath.Join(d.cfg.VMsDir(), id) }

// ensureDir makes a root-only directory.
func ensureDir(p string) error { return os.MkdirAll(p, 0o700) }
