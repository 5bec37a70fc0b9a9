package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger/banger/internal/guestinit"
)

const (
	sshdPath     = "/usr/sbin/sshd"
	termGrace    = 3 * time.Second
	evKey        = 1   // EV_KEY
	keyPower     = 116 // KEY_POWER
	inputEvSize  = 24  // struct input_event on 64-bit: timeval(16) type(2) code(2) value(4)
	maxSSHDDelay = 10 * time.Second
)

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "banger-init: "+format+"\n", args...)
}

// runPID1 is the whole life of the guest's PID 1. It never returns: it
// ends in reboot(2).
func runPID1() {
	mountBase()
	// With ctrl-alt-del 0 the kernel sends SIGINT to PID 1 instead of
	// rebooting at once, so a Firecracker stop request shuts down cleanly.
	if err := os.WriteFile("/proc/sys/kernel/ctrl-alt-del", []byte("0\n"), 0o644); err != nil {
		logf("ctrl-alt-del: %v", err)
	}
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, unix.SIGCHLD, unix.SIGINT, unix.SIGTERM, unix.SIGPWR)

	power := make(chan string, 1)
	// The control channel first: it needs no network, and a restored fork
	// is told who it is there before its link is let up.
	go serveControl(power)
	// A sandbox's envd starts first, on the guest's other vCPU while
	// the set-up runs, so the create finds it running (banger.envd).
	p, err := bootParams()
	if err == nil && p.Envd {
		if err := startLockedEnvd(guestEnvd); err != nil {
			logf("envd: %v", err)
		}
	}
	if err == nil {
		err = setupWith(p)
	}
	if err != nil {
		logf("setup: %v", err)
	}
	go watchPowerKey(power)

	sshd := &supervised{path: sshdPath, args: sshdArgs}
	sshd.start()
	restart := time.NewTimer(time.Hour)
	restart.Stop()

	for {
		select {
		case s := <-sigs:
			if s == unix.SIGCHLD {
				if sshd.reap() {
					logf("sshd exited; restarting in %s", sshd.delay)
					restart.Reset(sshd.delay)
				}
				continue
			}
			shutdown(s.String())
		case why := <-power:
			shutdown(why)
		case <-restart.C:
			sshd.start()
		}
	}
}

// mountBase mounts the kernel filesystems; ones the initrd moved over are
// left as they are.
func mountBase() {
	type m struct {
		src, dir, fstype string
		flags            uintptr
		data             string
	}
	for _, x := range []m{
		{"proc", "/proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
		{"sysfs", "/sys", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
		{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755"},
		{"devpts", "/dev/pts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "gid=5,mode=0620,ptmxmode=0666"},
		{"tmpfs", "/dev/shm", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
		{"tmpfs", "/run", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755"},
		{"tmpfs", "/tmp", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
	} {
		if x.dir != "/proc" && mounted(x.dir) {
			continue
		}
		_ = os.MkdirAll(x.dir, 0o755)
		if err := unix.Mount(x.src, x.dir, x.fstype, x.flags, x.data); err != nil && !errors.Is(err, unix.EBUSY) {
			logf("mount %s on %s: %v", x.fstype, x.dir, err)
		}
	}
	// The command line says rw, but be sure: everything after needs it.
	if err := unix.Mount("", "/", "", unix.MS_REMOUNT, ""); err != nil {
		logf("remount / rw: %v", err)
	}
}

// supervised is a child PID 1 keeps running.
type supervised struct {
	path  string
	args  []string
	pid   int
	delay time.Duration
	since time.Time
}

func (s *supervised) start() {
	p, err := os.StartProcess(s.path, s.args, &os.ProcAttr{
		Files: []*os.File{nil, os.Stdout, os.Stderr},
		Env:   []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
	})
	if err != nil {
		logf("start %s: %v", s.path, err)
		s.pid = -1
		s.bumpDelay()
		return
	}
	s.pid = p.Pid
	s.since = time.Now()
	// The reaper below collects it; release the os.Process handle.
	_ = p.Release()
}

func (s *supervised) bumpDelay() {
	switch {
	case s.delay == 0:
		s.delay = 200 * time.Millisecond
	case s.delay < maxSSHDDelay:
		s.delay *= 2
	}
}

// reap collects every exited child (PID 1 adopts all orphans) and reports
// whether the supervised process was among them.
func (s *supervised) reap() bool {
	died := false
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if pid <= 0 || err != nil {
			break
		}
		if pid == s.pid {
			logf("%s (pid %d) ended: %v", s.path, pid, describe(ws))
			died = true
			if time.Since(s.since) > time.Minute {
				s.delay = 0
			}
			s.bumpDelay()
		}
	}
	return died
}

func describe(ws unix.WaitStatus) string {
	if ws.Signaled() {
		return "signal " + ws.Signal().String()
	}
	return fmt.Sprintf("exit %d", ws.ExitStatus())
}

// watchPowerKey reads every input device and reports a KEY_POWER press
// (QEMU's system_powerdown through the ACPI button driver). Devices are
// scanned again after a moment in case a driver probed late.
func watchPowerKey(out chan<- string) {
	seen := map[string]bool{}
	for _, wait := range []time.Duration{0, 3 * time.Second} {
		time.Sleep(wait)
		paths, _ := filepath.Glob("/dev/input/event*")
		for _, p := range paths {
			if seen[p] {
				continue
			}
			seen[p] = true
			go readPowerKey(p, out)
		}
	}
}

// watchPowerSystemd waits for the power key and asks systemd to reboot,
// which ends the VMM like a reboot from PID 1 does.
func watchPowerSystemd() {
	power := make(chan string, 1)
	go watchPowerKey(power)
	go serveControl(power)
	why := <-power
	logf("stop requested (%s): systemctl reboot", why)
	cmd := exec.Command("systemctl", "reboot")
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		logf("systemctl reboot: %v", err)
		os.Exit(1)
	}
}

func readPowerKey(path string, out chan<- string) {
	f, err := os.Open(path)
	if err != nil {
		logf("open %s: %v", path, err)
		return
	}
	defer f.Close()
	buf := make([]byte, inputEvSize*16)
	for {
		n, err := f.Read(buf)
		if err != nil {
			return
		}
		for off := 0; off+inputEvSize <= n; off += inputEvSize {
			ev := buf[off : off+inputEvSize]
			typ := binary.LittleEndian.Uint16(ev[16:])
			code := binary.LittleEndian.Uint16(ev[18:])
			val := int32(binary.LittleEndian.Uint32(ev[20:]))
			if typ == evKey && code == keyPower && val == 1 {
				select {
				case out <- "power key on " + path:
				default:
				}
			}
		}
	}
}

// shutdown stops every process, flushes and unmounts the disks and reboots,
// which ends the VMM (Firecracker with reboot=k, QEMU with -no-reboot).
func shutdown(why string) {
	logf("stop requested (%s): stopping all processes", why)
	signal.Ignore(unix.SIGCHLD, unix.SIGINT, unix.SIGTERM, unix.SIGPWR)
	_ = unix.Kill(-1, unix.SIGTERM)
	_ = unix.Kill(-1, unix.SIGCONT)
	if !reapAll(time.Now().Add(termGrace)) {
		logf("processes left after %s; killing them", termGrace)
		_ = unix.Kill(-1, unix.SIGKILL)
		reapAll(time.Now().Add(time.Second))
	}
	unix.Sync()
	// The user's home is a bind mount from the work disk: it goes first.
	if mounted(guestinit.UserHome) {
		if err := unix.Unmount(guestinit.UserHome, 0); err != nil {
			_ = unix.Unmount(guestinit.UserHome, unix.MNT_DETACH)
		}
	}
	if mounted(guestinit.WorkMount) {
		if err := unix.Unmount(guestinit.WorkMount, 0); err != nil {
			logf("unmount %s: %v; detaching it", guestinit.WorkMount, err)
			_ = unix.Unmount(guestinit.WorkMount, unix.MNT_DETACH)
		}
	}
	if err := unix.Mount("", "/", "", unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
		logf("remount / read-only: %v", err)
	}
	unix.Sync()
	logf("rebooting")
	for {
		_ = unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
		time.Sleep(time.Second)
	}
}

// reapAll waits until PID 1 has no children left or the deadline passes; it
// reports whether none are left.
func reapAll(deadline time.Time) bool {
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if errors.Is(err, syscall.ECHILD) {
			return true
		}
		if pid > 0 {
			continue
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}
