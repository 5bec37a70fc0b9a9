package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
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

// serveControl serves the control channel (internal/guestctl) for the
// guest's whole life on every transport the VMM gave: the virtio-serial
// port named guestctl.PortName (QEMU) and AF_VSOCK port
// guestctl.VsockPort (Firecracker), with the same handler. A poweroff
// request is handed to power. It returns when neither is there.
func serveControl(power chan<- string) {
	h := func(req guestctl.Request) (guestctl.Reply, func(), error) { return handleControl(req, power) }
	done := make(chan struct{})
	go func() { serveControlVsock(h); close(done) }()
	serveControlPort(h)
	<-done
}

// virtioVsockID is the virtio device id of a vsock device
// (/sys/bus/virtio/devices/*/device).
const virtioVsockID = "0x0013"

// hasVsockDevice reports whether the guest has a virtio vsock device.
func hasVsockDevice() bool {
	devs, _ := filepath.Glob("/sys/bus/virtio/devices/*/device")
	for _, d := range devs {
		if readSmallTrim(d) == virtioVsockID {
			return true
		}
	}
	return false
}

// serveControlVsock serves the channel on AF_VSOCK port
// guestctl.VsockPort when the guest has a vsock device: one connection
// at a time, as the serial port is one stream; a host that went away
// ends its connection and the next is accepted. Listening sockets
// survive a snapshot restore (the VMM resets the transport, which ends
// only connections). Without the device it returns at once; without the
// transport driver (vmw_vsock_virtio_transport) it logs once and
// returns.
func serveControlVsock(h guestctl.Handler) {
	if !hasVsockDevice() {
		return
	}
	var fd int
	var err error
	// The transport module may still be binding to the device.
	for deadline := time.Now().Add(3 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if fd, err = listenVsock(guestctl.VsockPort); err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		logf("control channel: vsock port %d: %v (is vmw_vsock_virtio_transport loaded?)", guestctl.VsockPort, err)
		return
	}
	serveEach(func() (io.ReadWriteCloser, error) {
		nfd, _, err := unix.Accept4(fd, unix.SOCK_CLOEXEC)
		if err != nil {
			return nil, err
		}
		return os.NewFile(uintptr(nfd), "vsock"), nil
	}, h, time.Second)
}

// serveEach serves the connections accept returns one after another,
// each until it ends; a failed accept is retried after pause (at once
// for an interrupted one). It returns only when accept fails with
// net.ErrClosed.
func serveEach(accept func() (io.ReadWriteCloser, error), h guestctl.Handler, pause time.Duration) {
	for {
		conn, err := accept()
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if errors.Is(err, unix.EINTR) || errors.Is(err, unix.ECONNABORTED) {
			continue
		}
		if err != nil {
			logf("control channel: accept: %v", err)
			time.Sleep(pause)
			continue
		}
		_ = guestctl.Serve(conn, h, time.Now)
		conn.Close()
	}
}

// listenVsock listens on vsock port for any host CID.
func listenVsock(port uint32) (int, error) {
	fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrVM{CID: unix.VMADDR_CID_ANY, Port: port}); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("bind: %w", err)
	}
	if err := unix.Listen(fd, 4); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("listen: %w", err)
	}
	return fd, nil
}

// serveControlPort serves the channel on the virtio-serial port named
// guestctl.PortName. Without the port (a VMM that gives none, a kernel
// without virtio_console) it logs once and returns.
func serveControlPort(h guestctl.Handler) {
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
	case guestctl.OpEnvd:
		if err := applyEnvd(guestEnvd, req); err != nil {
			return rep, nil, err
		}
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
	if len(req.HostKey) > 0 {
		if err := setHostKey(req.HostKey, req.HostPub); err != nil {
			return fmt.Errorf("host key: %w", err)
		}
	}
	if req.MAC != "" || req.Addr != "" {
		if err := setAddress(req); err != nil {
			return fmt.Errorf("network: %w", err)
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

// setHostKey installs sshd's new host key where sshd reads it and on the
// work disk (where a boot installs it from), each file replaced through
// a rename, so a reader meets the old key or the new one, never half.
//
// The listening sshd holds its host keys: PID 1 runs it with -r
// (sshdArgs), and from OpenSSH 9.8 on the listener loads them once and
// hands them to sshd-session anyway. So it must re-read them: SIGHUP
// makes it re-execute itself (same PID), and the answer waits until it
// listens again, since the host connects as soon as the link is up and
// must never meet the old key.
func setHostKey(priv []byte, pub string) error {
	dsts := []string{guestinit.HostKeyPath}
	if mounted(guestinit.WorkMount) {
		work := filepath.Join(guestinit.WorkMount, guestinit.WorkHostKey)
		if err := os.MkdirAll(filepath.Dir(work), 0o700); err != nil {
			return err
		}
		dsts = append(dsts, work)
	}
	for _, dst := range dsts {
		if err := replaceFile(dst, string(priv), 0o600); err != nil {
			return err
		}
		if err := replaceFile(dst+".pub", pub+"\n", 0o644); err != nil {
			return err
		}
	}
	// sshd closes its listener and binds a new one when it has
	// re-executed, so a new listening socket on port 22 tells.
	before := sshListener()
	pids := pidsOf(sshdPath)
	for _, pid := range pids {
		_ = unix.Kill(pid, unix.SIGHUP)
	}
	if len(pids) == 0 {
		return nil
	}
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if now := sshListener(); now != "" && now != before {
			return nil
		}
	}
	return fmt.Errorf("sshd did not reload its host key within 15s")
}

// sshdArgs is how PID 1 runs sshd: in the foreground, logging to
// stderr, and with -r: no re-execution per connection. Under emulation
// that exec (the binary loaded, its libraries linked, its configuration
// and keys read again) was half of an SSH handshake: 349 ms against
// 177 ms with -r (ssh-keyscan from the host, one TCG guest). What re-execution
// buys, a fresh address space layout per connection against a remote
// attacker probing sshd, defends nothing here: only bangerd's namespace
// reaches the guest's sshd (taps are isolated), and whoever runs code in
// the guest owns it already.
var sshdArgs = []string{sshdPath, "-D", "-e", "-r"}

// sshListener is the inode of the IPv4 socket listening on port 22
// (/proc/net/tcp), "" when there is none.
func sshListener() string {
	raw, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		return ""
	}
	for _, l := range strings.Split(string(raw), "\n") {
		f := strings.Fields(l)
		if len(f) > 9 && strings.HasSuffix(f[1], ":0016") && f[3] == "0A" {
			return f[9]
		}
	}
	return ""
}

// pidsOf lists the processes whose parent is PID 1 running exe (the
// daemons PID 1 supervises).
func pidsOf(exe string) []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if p, err := os.Readlink(filepath.Join("/proc", e.Name(), "exe")); err != nil || p != exe {
			continue
		}
		stat := readSmallTrim(filepath.Join("/proc", e.Name(), "stat"))
		if i := strings.LastIndexByte(stat, ')'); i >= 0 {
			if f := strings.Fields(stat[i+1:]); len(f) > 1 && f[1] == "1" {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}

// setAddress gives eth0 a new MAC and replaces its IPv4 addresses (and
// default route), forgetting its neighbours: a restored fork must not
// speak with its parent's identity. The link is left up.
func setAddress(req guestctl.Request) error {
	eth, err := firstEthernet()
	if err != nil {
		return err
	}
	if req.MAC != "" {
		hw, _ := net.ParseMAC(req.MAC)
		if err := netlink.LinkSetHardwareAddr(eth, hw); err != nil {
			return fmt.Errorf("mac %s: %w", req.MAC, err)
		}
	}
	if req.Addr != "" {
		p, _ := netip.ParsePrefix(req.Addr)
		old, err := netlink.AddrList(eth, netlink.FAMILY_V4)
		if err != nil {
			return err
		}
		for _, a := range old {
			a := a
			_ = netlink.AddrDel(eth, &a)
		}
		addr := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), 32)}}
		if err := netlink.AddrReplace(eth, addr); err != nil {
			return fmt.Errorf("address %s: %w", req.Addr, err)
		}
	}
	if err := netlink.LinkSetUp(eth); err != nil {
		return err
	}
	if req.Gateway != "" {
		gw, _ := netip.ParseAddr(req.Gateway)
		if err := netlink.RouteReplace(&netlink.Route{LinkIndex: eth.Attrs().Index, Gw: gw.AsSlice()}); err != nil {
			return fmt.Errorf("default route via %s: %w", req.Gateway, err)
		}
	}
	if neighs, err := netlink.NeighList(eth.Attrs().Index, netlink.FAMILY_V4); err == nil {
		for _, n := range neighs {
			n := n
			_ = netlink.NeighDel(&n)
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
