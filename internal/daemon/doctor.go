package daemon

import (
	"context"
	"os"
	"os/exec"

	"github.com/banger/banger/internal/api"
	"github.com/banger/banger/internal/vmm"
)

// Doctor reports what this host gives banger and why: the VMM, accelerator,
// copy-on-write strategy and network mode new VMs get, and each capability
// with what to install for the better path.
func (d *Daemon) Doctor(ctx context.Context) api.DoctorReport {
	rep := api.DoctorReport{NetworkMode: "host"}
	if d.cfg.Netns != "" {
		rep.NetworkMode = "netns:" + d.cfg.Netns
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
	for _, drv := range d.host.drivers.All() {
		avail, reason := drv.Available(ctx)
		add(drv.Name(), avail, reason, drv.InstallHint())
	}
	if drv, err := d.pickDriver(ctx, ""); err == nil {
		rep.VMM = drv.Name()
		if a, ok := drv.(vmm.AccelReporter); ok {
			var why string
			rep.Accel, why = a.Accel(ctx)
			rep.Checks = append(rep.Checks, api.DoctorCheck{Name: "accel", OK: rep.Accel == "kvm", Detail: rep.Accel + ": " + why,
				Fix: "a host whose KVM runs ordinary guests (not a paravirtual nested KVM)"})
		}
		if s, err := d.pickStrategy(drv); err == nil {
			rep.CowStrategy = s.Name()
		}
	}
	for _, s := range d.host.strategies {
		ok, reason := s.Available(d.cfg.VMsDir())
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
	if d.host.netErr != nil {
		add("network", false, d.host.netErr.Error(), "run bangerd as root with CAP_NET_ADMIN")
	} else if d.host.net != nil {
		add("network", true, "bridge "+d.cfg.Bridge+" with gateway "+d.host.net.Gateway().String(), "")
		if d.host.net.Guarded() {
			add("tap guard", true, "each VM's tap lets it send only from its own MAC and address (nft bridge tables)", "")
		} else {
			add("tap guard", false, "taps are not guarded: a VM could spoof another's MAC or address on the bridge (the iptables backend cannot guard)",
				"install nftables, or set workspace_transport to ssh")
		}
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
