package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/banger/banger/internal/guestinit"
)

// setup applies the banger.* kernel parameters to the running guest.
func setup() error {
	p, err := bootParams()
	if err != nil {
		return err
	}
	return setupWith(p)
}

// setupWith applies the parameters p. Every step is attempted; the
// errors are joined so the console shows them all.
func setupWith(p guestinit.Params) error {
	if err := p.Validate(); err != nil {
		return err
	}
	var errs []error
	step := func(name string, err error) {
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
		}
	}
	step("hostname", setHostname(p.Hostname))
	step("/etc/hosts", replaceFile("/etc/hosts", guestinit.Hosts(p), 0o644))
	step("/etc/resolv.conf", replaceFile("/etc/resolv.conf", guestinit.ResolvConf(p), 0o644))
	step("network", setupNetwork(p))
	if p.WorkDisk != "" {
		err := mountWork(p.WorkDisk)
		step("work disk", err)
		if err == nil {
			step(guestinit.UserHome, mountUserHome())
		}
	}
	step("ssh key", writeKey(p))
	// After the work disk, which carries the VM's own host key, and before
	// sshd, which must serve it: the daemon pins that key, not the image's.
	_, err := guestinit.InstallHostKey("/")
	step("ssh host key", err)
	// sshd's privilege separation directory; systemd's unit makes it too.
	step("/run/sshd", os.MkdirAll("/run/sshd", 0o755))
	return errors.Join(errs...)
}

// bootParams are the banger.* parameters of the kernel command line.
func bootParams() (guestinit.Params, error) {
	raw, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return guestinit.Params{}, fmt.Errorf("read kernel command line: %w", err)
	}
	return guestinit.ParseCmdline(string(raw))
}

func setHostname(name string) error {
	if err := unix.Sethostname([]byte(name)); err != nil {
		return err
	}
	return replaceFile("/etc/hostname", name+"\n", 0o644)
}

// replaceFile writes content at path, replacing a symlink (systemd images
// link resolv.conf elsewhere) rather than writing through it.
func replaceFile(path, content string, mode os.FileMode) error {
	tmp := path + ".banger-tmp"
	if err := os.WriteFile(tmp, []byte(content), mode); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

// setupNetwork brings lo and the first Ethernet link up with the address
// and the default route. The link may appear a moment after boot when its
// driver is still probing, so it is awaited briefly.
func setupNetwork(p guestinit.Params) error {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("find lo: %w", err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return fmt.Errorf("lo up: %w", err)
	}
	var eth netlink.Link
	for deadline := time.Now().Add(5 * time.Second); ; {
		eth, err = firstEthernet()
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		return err
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{
		IP:   p.Addr.Addr().AsSlice(),
		Mask: net.CIDRMask(p.Addr.Bits(), 32),
	}}
	if err := netlink.AddrReplace(eth, addr); err != nil {
		return fmt.Errorf("address %s on %s: %w", p.Addr, eth.Attrs().Name, err)
	}
	if err := netlink.LinkSetUp(eth); err != nil {
		return fmt.Errorf("%s up: %w", eth.Attrs().Name, err)
	}
	if p.Gateway.IsValid() {
		route := &netlink.Route{LinkIndex: eth.Attrs().Index, Gw: p.Gateway.AsSlice()}
		if err := netlink.RouteReplace(route); err != nil {
			return fmt.Errorf("default route via %s: %w", p.Gateway, err)
		}
	}
	return nil
}

// firstEthernet prefers eth0 and otherwise takes the first device link
// with a hardware address (predictable names differ between machines).
func firstEthernet() (netlink.Link, error) {
	if l, err := netlink.LinkByName("eth0"); err == nil {
		return l, nil
	}
	links, err := netlink.LinkList()
	if err != nil {
		return nil, err
	}
	for _, l := range links {
		if l.Type() == "device" && len(l.Attrs().HardwareAddr) == 6 && l.Attrs().Name != "lo" {
			return l, nil
		}
	}
	return nil, fmt.Errorf("no Ethernet link found (is virtio_net loaded?)")
}

// mountWork mounts the work disk at /root, waiting briefly for the device
// node, and skips it when /root is already a mount (setup run twice).
func mountWork(dev string) error {
	if mounted(guestinit.WorkMount) {
		return nil
	}
	for deadline := time.Now().Add(5 * time.Second); ; {
		if _, err := os.Stat(dev); err == nil {
			break
		} else if time.Now().After(deadline) {
			return fmt.Errorf("device %s did not appear: %w", dev, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := os.MkdirAll(guestinit.WorkMount, 0o700); err != nil {
		return err
	}
	if err := unix.Mount(dev, guestinit.WorkMount, "ext4", unix.MS_NOATIME, ""); err != nil {
		return fmt.Errorf("mount %s on %s as ext4: %w", dev, guestinit.WorkMount, err)
	}
	return os.Chmod(guestinit.WorkMount, 0o700)
}

// mountUserHome bind-mounts the user's home kept on the work disk (made
// from the image's on the first boot) on /home/user, and skips it when the
// image has no such account or the home is mounted already.
func mountUserHome() error {
	if mounted(guestinit.UserHome) {
		return nil
	}
	src, err := guestinit.SeedUserHome("/")
	if err != nil || src == "" {
		return err
	}
	if err := unix.Mount(src, guestinit.UserHome, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind %s on %s: %w", src, guestinit.UserHome, err)
	}
	return nil
}

func mounted(dir string) bool {
	raw, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(raw), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[1] == dir {
			return true
		}
	}
	return false
}

func writeKey(p guestinit.Params) error {
	dir := filepath.Dir(guestinit.AuthorizedKeysPath)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	return replaceFile(guestinit.AuthorizedKeysPath, guestinit.AuthorizedKeys(p), 0o600)
}
