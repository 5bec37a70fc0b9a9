// Package doctor reports what this host gives banger: the VMM,
// accelerator, copy-on-write strategy and network new VMs get, and each
// capability with what to install for the better path.
//
// It only looks: it changes nothing on the host and holds no state.
package doctor

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"

	"github.com/banger/banger/internal/api"
	"github.com/banger/banger/internal/storage"
	"github.com/banger/banger/internal/vmm"
)

// Network is what the doctor asks of the host network.
type Network interface {
	Gateway() netip.Addr
	Guarded() bool
}

// Host is what the doctor looks at.
type Host struct {
	Netns      string // the daemon's network namespace, "" for the host's
	Bridge     string
	VMsDir     string
	Drivers    *vmm.Registry
	Strategies []storage.Strategy
	// PickDriver and PickStrategy are the choices a new VM gets.
	PickDriver   func(ctx context.Context) (vmm.Driver, error)
	PickStrategy func(drv vmm.Driver) (storage.Strategy, error)
	Net          Network // nil when the network could not be set up
	NetErr       error   // why not
	// LostFound holds VM directories reconcile found no record of.
	LostFound string
}

// Report says what this host gives banger and why: the VMM, accelerator,
// copy-on-write strategy and network mode new VMs get, and each capability
// with what to install for the better path.
func Report(ctx context.Context, h Host) api.DoctorReport {
	rep := api.DoctorReport{NetworkMode: "host"}
	if h.Netns != "" {
		rep.NetworkMode = "netns:" + h.Netns
	}
	add := func(name string, ok bool, detail, fix string) {
		c := api.DoctorCheck{Name: name, OK: ok, Detail: detail}
		if !ok {
			c.Fix = fix
		}
		rep.Checks = append(rep.Checks, c)
	}

	_, kvmErr := os.Stat("/dev/kvm")
	add("kvm-device", kvmErr == nil, describe(kvmErr, "/dev/kvm present"), "load kvm_intel or kvm_amd, or enable nested virtualisation")
	for _, drv := range h.Drivers.All() {
		avail, reason := drv.Available(ctx)
		add(drv.Name(), avail, reason, drv.InstallHint())
		if c, ok := drv.(vmm.Confiner); ok {
			what, ok := c.Confinement(ctx)
			add("confine:"+drv.Name(), ok, what, "run bangerd as root with useradd available (user banger-vmm); for firecracker, install its jailer")
		}
		if _, ok := drv.(vmm.Snapshotter); ok {
			add("pause:"+drv.Name(), true, "vm pause and vm resume save and restore a guest's whole state (docs/pause.md)", "")
		}
	}
	if drv, err := h.PickDriver(ctx); err == nil {
		rep.VMM = drv.Name()
		if a, ok := drv.(vmm.AccelReporter); ok {
			var why string
			rep.Accel, why = a.Accel(ctx)
			rep.Checks = append(rep.Checks, api.DoctorCheck{Name: "accel", OK: rep.Accel == "kvm", Detail: rep.Accel + ": " + why,
				Fix: "a host whose KVM runs ordinary guests (not a paravirtual nested KVM)"})
		}
		if s, err := h.PickStrategy(drv); err == nil {
			rep.CowStrategy = s.Name()
		}
	}
	for _, s := range h.Strategies {
		ok, reason := s.Available(h.VMsDir)
		fix := ""
		switch s.Name() {
		case "dm-snapshot":
			fix = "a kernel with device-mapper (modprobe dm_snapshot) and dmsetup (apt-get install dmsetup)"
		case "reflink":
			fix = "put the state directory on XFS (mkfs.xfs -m reflink=1) or btrfs"
		case "qcow2":
			fix = "apt-get install qemu-utils"
		}
		add("cow:"+s.Name(), ok, reason, fix)
	}
	_, tunErr := os.Stat("/dev/net/tun")
	add("tun", tunErr == nil, describe(tunErr, "/dev/net/tun present"), "modprobe tun")
	nft := lookBin("nft")
	ipt := lookBin("iptables")
	add("nat", nft != "" || ipt != "", firstNonEmpty(nft, ipt, "neither nft nor iptables found"), "apt-get install nftables")
	if h.NetErr != nil {
		add("network", false, h.NetErr.Error(), "run bangerd as root with CAP_NET_ADMIN")
	} else if h.Net != nil {
		add("network", true, "bridge "+h.Bridge+" with gateway "+h.Net.Gateway().String(), "")
		if h.Net.Guarded() {
			add("tap guard", true, "each VM's tap lets it send only from its own MAC and address (nft bridge tables)", "")
		} else {
			add("tap guard", false, "taps are not guarded: a VM could spoof another's MAC or address on the bridge (the iptables backend cannot guard)",
				"install nftables, or set workspace_transport to ssh")
		}
		// Per-VM policies go by source address, which only the nft guard
		// pins; iptables enforces the default for every VM.
		if h.Net.Guarded() {
			add("net policy", true, "per-VM network policies (--net, --allow, --deny, --allow-vm) enforced in nft tables; default internet", "")
		} else {
			add("net policy", false, "only the default network policy (internet) is enforced, for every VM; --net open|none, --allow, --deny and --allow-vm are refused (the iptables backend cannot tell guests apart)",
				"install nftables")
		}
	}
	if entries, _ := os.ReadDir(h.LostFound); len(entries) > 0 {
		add("lost+found", false, fmt.Sprintf("%d VM directories with no record were moved to %s (their VMs were not in the database)", len(entries), h.LostFound),
			"inspect them (each holds a VM's disks); restore the database they belong to, or delete what you do not need")
	} else {
		add("lost+found", true, "no VM directory without a record", "")
	}
	for _, b := range []struct{ bin, fix string }{
		{"mmdebstrap", "apt-get install mmdebstrap (or debootstrap)"},
		{"mkfs.ext4", "apt-get install e2fsprogs"},
		{"debugfs", "apt-get install e2fsprogs"},
		{"qemu-img", "apt-get install qemu-utils"},
		{"busybox", "apt-get install busybox-static"},
		{"ssh", "apt-get install openssh-client (for banger vm ssh)"},
	} {
		p := lookBin(b.bin)
		add("bin:"+b.bin, p != "", firstNonEmpty(p, "not found on PATH"), b.fix)
	}
	return rep
}

func describe(err error, ok string) string {
	if err != nil {
		return err.Error()
	}
	return ok
}

func lookBin(name string) string {
	p, err := exec.LookPath(name)
	if err != nil {
		return ""
	}
	return p
}

func firstNonEmpty(ss ...string) string {
	for _, s := range ss {
		if s != "" {
			return s
		}
	}
	return ""
}
