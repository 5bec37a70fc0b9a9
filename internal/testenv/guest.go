package testenv

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strconv"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/crypto/ssh"
)

// DialInNetns opens a connection from inside namespace ns; the socket stays
// in ns after the calling thread returns to its own namespace.
func DialInNetns(ns, network, addr string, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := inNetns(ns, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// ListenInNetns listens on addr inside namespace ns; like DialInNetns's
// connection, the listener stays in ns.
func ListenInNetns(ns, network, addr string) (net.Listener, error) {
	var l net.Listener
	err := inNetns(ns, func() error {
		var err error
		l, err = net.Listen(network, addr)
		return err
	})
	return l, err
}

// ListenPacketInNetns is ListenInNetns for packet sockets (UDP).
func ListenPacketInNetns(ns, network, addr string) (net.PacketConn, error) {
	var pc net.PacketConn
	err := inNetns(ns, func() error {
		var err error
		pc, err = net.ListenPacket(network, addr)
		return err
	})
	return pc, err
}

// inNetns runs fn on a thread that entered namespace ns.
func inNetns(ns string, fn func() error) error {
	ch := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		origin, err := netns.Get()
		if err != nil {
			ch <- err
			return
		}
		defer origin.Close()
		target, err := netns.GetFromName(ns)
		if err != nil {
			ch <- err
			return
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			ch <- err
			return
		}
		// Back to the host namespace before the thread serves anything
		// else; if that fails the thread stays locked and dies with the
		// goroutine.
		defer func() {
			if netns.Set(origin) == nil {
				runtime.UnlockOSThread()
			}
		}()
		ch <- fn()
	}()
	return <-ch
}

// Run runs cmd on the guest and returns its combined output.
func Run(c *ssh.Client, cmd string) (string, error) {
	s, err := c.NewSession()
	if err != nil {
		return "", err
	}
	defer s.Close()
	out, err := s.CombinedOutput(cmd)
	return string(out), err
}

var (
	refinedRE  = regexp.MustCompile(`Refined TSC clocksource calibration: ([0-9.]+) MHz`)
	detectedRE = regexp.MustCompile(`tsc: Detected ([0-9.]+) MHz`)
	cpuMHzRE   = regexp.MustCompile(`(?m)^cpu MHz\s*:\s*([0-9.]+)`)
)

// HostTSCkHz is the host's TSC frequency in kHz (for tsc_early_khz=): from
// the kernel log when readable, else /proc/cpuinfo.
func HostTSCkHz() (int, error) {
	dmesg, _ := exec.Command("dmesg").Output()
	cpuinfo, _ := os.ReadFile("/proc/cpuinfo")
	return parseTSCkHz(string(dmesg), string(cpuinfo))
}

func parseTSCkHz(dmesg, cpuinfo string) (int, error) {
	for _, m := range []struct {
		re *regexp.Regexp
		s  string
	}{{refinedRE, dmesg}, {detectedRE, dmesg}, {cpuMHzRE, cpuinfo}} {
		if sub := m.re.FindStringSubmatch(m.s); sub != nil {
			mhz, err := strconv.ParseFloat(sub[1], 64)
			if err == nil && mhz > 0 {
				return int(mhz*1000 + 0.5), nil
			}
		}
	}
	return 0, fmt.Errorf("host TSC frequency not found in dmesg or /proc/cpuinfo")
}
