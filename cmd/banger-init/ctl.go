package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/banger/banger/internal/guestctl"
	"github.com/banger/banger/internal/guestinit"
)

// serveControl serves the control channel (internal/guestctl) on the
// virtio-serial port named guestctl.PortName for the guest's whole life.
// A poweroff request is handed to power. Without the port (a VMM that
// gives none, a kernel without virtio_console) it logs once and returns.
func serveControl(power chan<- string) {
	dev, err := findPort(guestctl.PortName)
	if err != nil {
		logf("control channel: %v", err)
		return
	}
	fd, err := unix.Open(dev, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		logf("control channel: open %s: %v", dev, err)
		return
	}
	// The port reads end (0 bytes) at once while no host is connected; the
	// driver signals SIGIO when one connects, so wait for that (or a
	// while) instead of spinning.
	sigio := make(chan os.Signal, 1)
	signal.Notify(sigio, unix.SIGIO)
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETOWN, os.Getpid()); err != nil {
		logf("control channel: F_SETOWN: %v", err)
	}
	if fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0); err == nil {
		_, _ = unix.FcntlInt(uintptr(fd), unix.F_SETFL, fl|unix.O_ASYNC)
	}
	port := &portRW{fd: fd, wait: func() {
		select {
		case <-sigio:
		case <-time.After(2 * time.Second):
		}
	}}
	h := func(req guestctl.Request) (guestctl.Reply, func(), error) { return handleControl(req, power) }
	for {
		err := guestctl.Serve(port, h, time.Now)
		logf("control channel: %v; serving again", err)
		time.Sleep(time.Second)
	}
}

// portRW reads and writes the port's descriptor, waiting instead of
// returning end of file while no host is connected.
type portRW struct {
	fd   int
	wait func()
}

func (p *portRW) Read(b []byte) (int, error) {
	for {
		n, err := unix.Read(p.fd, b)
		if errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN) {
			continue
		}
		if err != nil {
			return 0, err
		}
		if n > 0 {
			return n, nil
		}
		p.wait() // no host connected
	}
}

func (p *portRW) Write(b []byte) (int, error) {
	done := 0
	for done < len(b) {
		n, err := unix.Write(p.fd, b[done:])
		if errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN) {
			continue
		}
		if err != nil {
			return done, err
		}
		done += n
	}
	return done, nil
}

// findPort returns the device node of the virtio-serial port called name
// (/dev/vportNpM; there is no udev to make /dev/virtio-ports links),
// waiting briefly for its driver to probe.
func findPort(name string) (string, error) {
	for deadline := time.Now().Add(3 * time.Second); ; {
		dirs, _ := filepath.Glob("/sys/class/virtio-ports/vport*")
		for _, d := range dirs {
			raw, err := os.ReadFile(filepath.Join(d, "name"))
			if err == nil && strings.TrimSpace(string(raw)) == name {
				return "/dev/" + filepath.Base(d), nil
			}
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("no virtio-serial port named %s (is virtio_console loaded?)", name)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// handleControl does one request's work.
func handleControl(req guestctl.Request, power chan<- string) (guestctl.Reply, func(), error) {
	var rep guestctl.Reply
	switch req.Op {
	case guestctl.OpHello:
		rep.Version = guestctl.Version
		rep.BootID = readSmallTrim("/proc/sys/kernel/random/boot_id")
	case guestctl.OpClock:
		ts := unix.NsecToTimespec(req.UnixNano)
		if err := unix.ClockSettime(unix.CLOCK_REALTIME, &ts); err != nil {
			return rep, nil, fmt.Errorf("set the clock: %w", err)
		}
	case guestctl.OpIdentity:
		if err := applyIdentity(req); err != nil {
			return rep, nil, err
		}
		id := identity()
		rep.Identity = &id
	case guestctl.OpPowerOff:
		return rep, func() {
			select {
			case power <- "control channel poweroff":
			default:
			}
		}, nil
	}
	return rep, nil, nil
}

// applyIdentity changes what req names: the entropy pool first (a fork
// shares its parent's pool), then the machine id and the hostname.
func applyIdentity(req guestctl.Request) error {
	if len(req.Seed) > 0 {
		// A write to /dev/urandom mixes the bytes into the pool (without
		// crediting entropy), so forks of one snapshot diverge.
		if err := os.WriteFile("/dev/urandom", req.Seed, 0); err != nil {
			return fmt.Errorf("reseed: %w", err)
		}
	}
	if req.MachineID != "" {
		if err := replaceFile("/etc/machine-id", req.MachineID+"\n", 0o444); err != nil {
			return fmt.Errorf("machine id: %w", err)
		}
	}
	if req.Hostname != "" {
		if err := setHostname(req.Hostname); err != nil {
			return fmt.Errorf("hostname: %w", err)
		}
		if raw, err := os.ReadFile("/proc/cmdline"); err == nil {
			if p, err := guestinit.ParseCmdline(string(raw)); err == nil {
				p.Hostname = req.Hostname
				if err := replaceFile("/etc/hosts", guestinit.Hosts(p), 0o644); err != nil {
					return fmt.Errorf("/etc/hosts: %w", err)
				}
			}
		}
	}
	return nil
}

// identity reads who the guest is now.
func identity() guestctl.Identity {
	var id guestctl.Identity
	var uts unix.Utsname
	if unix.Uname(&uts) == nil {
		id.Hostname = unix.ByteSliceToString(uts.Nodename[:])
		id.KernelRel = unix.ByteSliceToString(uts.Release[:])
	}
	id.MachineID = readSmallTrim("/etc/machine-id")
	id.BootID = readSmallTrim("/proc/sys/kernel/random/boot_id")
	id.HostKey = readSmallTrim(guestinit.HostKeyPath + ".pub")
	if f := strings.Fields(readSmallTrim("/proc/uptime")); len(f) > 0 {
		id.Uptime, _ = strconv.ParseFloat(f[0], 64)
	}
	if eth, err := firstEthernet(); err == nil {
		id.MAC = eth.Attrs().HardwareAddr.String()
		id.LinkUp = eth.Attrs().Flags&net.FlagUp != 0
		if addrs, err := addrList(eth); err == nil {
			id.Addrs = addrs
		}
	}
	if ents, err := os.ReadDir("/proc"); err == nil {
		for _, e := range ents {
			if _, err := strconv.Atoi(e.Name()); err == nil {
				id.Processes++
			}
		}
	}
	return id
}

// readSmallTrim reads the first 4 KiB of a file, trimmed.
func readSmallTrim(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	b, _ := io.ReadAll(io.LimitReader(f, 4096))
	return strings.TrimSpace(string(b))
}

// addrList is a link's IPv4 addresses as prefixes.
func addrList(l netlink.Link) ([]string, error) {
	addrs, err := netlink.AddrList(l, netlink.FAMILY_V4)
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(addrs))
	for _, a := range addrs {
		out = append(out, a.IPNet.String())
	}
	return out, nil
}
