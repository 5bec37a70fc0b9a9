package qemu

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger/banger/internal/proc"
	"github.com/banger/banger/internal/vmm"
)

// kvmOpens reports whether the KVM device (dev, "" for /dev/kvm) can be
// opened read-write, and why not.
func kvmOpens(dev string) (bool, string) {
	if err := vmm.OpenKVM(dev); err != nil {
		return false, fmt.Sprintf("KVM unusable: %v", err)
	}
	return true, ""
}

// ProbeKernel is a kernel the KVM probe boots when set: stronger evidence
// than firmware, since some hosts (paravirtualised KVM) run firmware code
// but hang ordinary guest kernels.
type ProbeKernel struct {
	Kernel string // vmlinux or bzImage
	Initrd string // optional
}

// probeMarkers are console lines proving a probe made real progress: SeaBIOS
// giving up on boot devices, or a kernel reaching root mount or init.
var (
	firmwareDone = []string{"No bootable device", "Booting from"}
	kernelDone   = []string{"Kernel panic", "Run /init", "Freeing unused kernel", "VFS: "}
)

// probe runs QEMU with accel for at most timeout, on a q35 machine with
// SeaBIOS (its debug console shows how far it got) or, when pk is given, on
// pk's kernel with no root disk (it panics at root mount, which proves a
// whole early boot). It returns whether the run reached a marker, and what
// it saw. Nothing is left behind.
func probe(ctx context.Context, bin, accel string, pk *ProbeKernel, timeout time.Duration) (bool, string) {
	dir, err := os.MkdirTemp("", "banger-qemu-probe-")
	if err != nil {
		return false, err.Error()
	}
	defer os.RemoveAll(dir)
	out := filepath.Join(dir, "out")
	accelArg := "kvm"
	if accel == "tcg" {
		accelArg = "tcg,thread=multi"
	}
	args := []string{"-accel", accelArg, "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot", "-m", "128"}
	markers := firmwareDone
	if pk != nil {
		cmdline := "console=ttyS0 panic=-1"
		// microvm can hang at TSC calibration without it (see Cmdline).
		if khz, err := HostTSCkHz(); err == nil {
			cmdline += " tsc_early_khz=" + strconv.Itoa(khz)
		}
		if pk.Initrd != "" {
			// rdinit names nothing: the kernel unpacks the initrd but goes on
			// to mount root (and panics there) instead of running its init.
			args = append(args, "-initrd", pk.Initrd)
			cmdline += " rdinit=/banger-probe-none"
		}
		args = append(args, "-M", "microvm,acpi=on", "-kernel", pk.Kernel, "-append", cmdline,
			"-chardev", "file,id=c0,path="+escape(out), "-serial", "chardev:c0")
		markers = kernelDone
	} else {
		args = append(args, "-M", "q35", "-debugcon", "file:"+out, "-global", "isa-debugcon.iobase=0x402")
	}
	child, err := proc.StartDetached(bin, args, filepath.Join(dir, "log"))
	if err != nil {
		return false, err.Error()
	}
	defer func() {
		_ = unix.Kill(child.PID, unix.SIGKILL)
		<-child.Done()
	}()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		b, _ := os.ReadFile(out)
		for _, m := range markers {
			if strings.Contains(string(b), m) {
				return true, fmt.Sprintf("probe with -accel %s reached %q", accel, m)
			}
		}
		select {
		case <-child.Done():
			b, _ := os.ReadFile(out)
			l, _ := os.ReadFile(filepath.Join(dir, "log"))
			for _, m := range markers {
				if strings.Contains(string(b), m) {
					return true, fmt.Sprintf("probe with -accel %s reached %q", accel, m)
				}
			}
			return false, fmt.Sprintf("probe with -accel %s exited early (%v): %s", accel, child.Err(), lastLine(string(l)))
		case <-deadline.C:
			return false, fmt.Sprintf("probe with -accel %s made no progress in %v (last output %q)", accel, timeout, lastLine(string(b)))
		case <-ctx.Done():
			return false, fmt.Sprintf("probe with -accel %s interrupted: %v", accel, ctx.Err())
		case <-tick.C:
		}
	}
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	if len(s) > 200 {
		s = s[len(s)-200:]
	}
	return s
}

// HostTSCkHz returns the host's TSC frequency in kHz. Under TCG the guest's
// TSC is the host's, so this is what tsc_early_khz must say. Sources, most
// precise first: /sys/devices/system/cpu/cpu0/tsc_freq_khz (some kernels),
// the kernel log's TSC calibration lines, /proc/cpuinfo "cpu MHz".
func HostTSCkHz() (int, error) {
	if b, err := os.ReadFile("/sys/devices/system/cpu/cpu0/tsc_freq_khz"); err == nil {
		if v, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && v > 0 {
			return v, nil
		}
	}
	if n, err := unix.Klogctl(unix.SYSLOG_ACTION_SIZE_BUFFER, nil); err == nil && n > 0 {
		buf := make([]byte, n)
		if m, err := unix.Klogctl(unix.SYSLOG_ACTION_READ_ALL, buf); err == nil {
			if v := ParseKlogTSC(string(buf[:m])); v > 0 {
				return v, nil
			}
		}
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		if v := ParseCPUInfoMHz(string(b)); v > 0 {
			return v, nil
		}
	}
	return 0, fmt.Errorf("host TSC frequency not found in sysfs, the kernel log or /proc/cpuinfo")
}

var (
	klogRefined  = regexp.MustCompile(`tsc: Refined TSC clocksource calibration: ([0-9]+)\.([0-9]{3}) MHz`)
	klogDetected = regexp.MustCompile(`tsc: Detected ([0-9]+)\.([0-9]{3}) MHz`)
	cpuinfoMHz   = regexp.MustCompile(`(?m)^cpu MHz\s*:\s*([0-9]+)(?:\.([0-9]{1,3}))?`)
)

// ParseKlogTSC returns the TSC kHz named in a kernel log (the refined
// calibration when present, else the first detection), or 0.
func ParseKlogTSC(log string) int {
	for _, re := range []*regexp.Regexp{klogRefined, klogDetected} {
		if m := re.FindStringSubmatch(log); m != nil {
			mhz, _ := strconv.Atoi(m[1])
			khz, _ := strconv.Atoi(m[2])
			return mhz*1000 + khz
		}
	}
	return 0
}

// ParseCPUInfoMHz returns the first "cpu MHz" of /proc/cpuinfo in kHz, or 0.
func ParseCPUInfoMHz(cpuinfo string) int {
	m := cpuinfoMHz.FindStringSubmatch(cpuinfo)
	if m == nil {
		return 0
	}
	mhz, _ := strconv.Atoi(m[1])
	frac := m[2]
	for len(frac) < 3 {
		frac += "0"
	}
	khz, _ := strconv.Atoi(frac)
	return mhz*1000 + khz
}
