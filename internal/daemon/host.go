package daemon

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/banger/banger/internal/daemon/doctor"
	"github.com/banger/banger/internal/daemon/e2b"
	"github.com/banger/banger/internal/daemon/vms"
	"github.com/banger/banger/internal/guest"
	"github.com/banger/banger/internal/hostnet"
	"github.com/banger/banger/internal/model"
	"github.com/banger/banger/internal/storage"
	"github.com/banger/banger/internal/vmm"
	"github.com/banger/banger/internal/vmm/drivers"
)

// hostDeps are the host-side parts the daemon composes. They are made by
// startHost; tests may replace them before Start.
type hostDeps struct {
	signer     ssh.Signer
	pool       *guest.Pool
	net        *hostnet.Network
	taps       vms.Taps // net, or a fake in tests
	netErr     error    // why the network could not be set up; VM starts fail with it
	dns        *hostnet.DNS
	drivers    *vmm.Registry
	strategies []storage.Strategy
	subnet     netip.Prefix
	stopWatch  context.CancelFunc
	watchDone  chan struct{}
	expireDone chan struct{} // the deadline loop, stopped by stopWatch too
}

// startHost makes the daemon's SSH key, the guest connection pool, the VMM
// drivers, the storage strategies and the network, then reconciles.
func (d *Daemon) startHost(ctx context.Context) error {
	signer, err := guest.LoadOrCreateKey(d.cfg.KeyPath())
	if err != nil {
		return fmt.Errorf("ssh key: %w", err)
	}
	d.host.signer = signer
	d.host.pool = guest.NewPool(signer, guest.Dial)
	d.dialGuest = func(ctx context.Context, vm model.VM) (guest.Client, error) { return d.guests.Dial(ctx, vm) }

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
		d.host.dns = hostnet.NewDNS(d.cfg.DNSSuffix, func(host string) (netip.Addr, bool) { return d.guests.LookupDNS(host) }, d.log)
		// Validate checked the setting.
		upstreams, fromHost, _ := d.cfg.Upstreams()
		if fromHost {
			upstreams = hostnet.HostResolvers("/etc/resolv.conf")
		}
		d.host.dns.Forward(upstreams)
		// Forwarded answers for a VM's allowed host names open their
		// addresses in its policy before the VM gets them.
		d.host.dns.Gate(n)
		addr := netip.AddrPortFrom(n.Gateway(), 53).String()
		if err := d.host.dns.Start(addr); err != nil {
			d.log.Warn("dns responder not started", "addr", addr, "err", err)
			d.host.dns = nil
		}
	}

	d.wire()
	d.vms.Reconcile(ctx)
	d.ports.Reconcile(ctx)
	if err := d.e2b.Start(ctx, e2b.Listener{Addr: d.cfg.E2BListen, Domain: d.cfg.E2BDomain, TLS: d.cfg.E2BTLS, DNS: d.cfg.E2BDNS}); err != nil {
		d.log.Warn("e2b control plane not started", "err", err)
	}

	wctx, cancel := context.WithCancel(context.Background())
	d.host.stopWatch = cancel
	d.host.watchDone = make(chan struct{})
	d.host.expireDone = make(chan struct{})
	go func() {
		defer close(d.host.watchDone)
		d.vms.Watch(wctx, 2*time.Second)
	}()
	go func() {
		defer close(d.host.expireDone)
		d.vms.Expire(wctx)
	}()
	// The warm pool's refills run in the background until the daemon stops.
	d.vms.StartPool(wctx)
	// So do the flattening of snapshots whose qcow2 chains grew too deep.
	d.vms.StartFlatten(wctx)
	return nil
}

func (d *Daemon) closeHost() error {
	if d.host.stopWatch != nil {
		d.host.stopWatch()
		<-d.host.watchDone
		<-d.host.expireDone
		d.vms.StopPool()
		d.vms.StopFlatten()
	}
	d.ports.Close()
	d.e2b.Close()
	if d.host.dns != nil {
		_ = d.host.dns.Close()
	}
	if d.host.pool != nil {
		d.host.pool.Close()
	}
	return nil
}

// doctorHost is what the doctor looks at: the host parts and the choices a
// new VM gets.
func (d *Daemon) doctorHost() doctor.Host {
	h := doctor.Host{
		Netns: d.cfg.Netns, Bridge: d.cfg.Bridge, VMsDir: d.cfg.VMsDir(),
		Drivers: d.host.drivers, Strategies: d.host.strategies,
		PickDriver:   func(ctx context.Context) (vmm.Driver, error) { return d.vms.PickDriver(ctx, "") },
		PickStrategy: d.vms.PickStrategy,
		NetErr:       d.host.netErr,
		LostFound:    d.cfg.LostFoundDir(),
	}
	if d.host.net != nil {
		h.Net = d.host.net
	}
	return h
}
