package vmm

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/banger/banger/internal/proc"
	"github.com/banger/banger/internal/tail"
)

// Helpers shared by the drivers.

// ClaimSocket prepares a unix socket path for a VMM to bind: it refuses a
// path something answers on, and removes a stale one nothing listens on
// (VMMs refuse to bind over an existing file).
func ClaimSocket(path string) error {
	if _, err := os.Lstat(path); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	// A VMM that was just killed can hold its listening socket for a moment
	// after it is reported gone (the kernel closes its files last): only a
	// socket that keeps answering for a second is in use.
	for i := 0; ; i++ {
		c, err := net.DialTimeout("unix", path, time.Second)
		if err != nil {
			break
		}
		c.Close()
		if i == 10 {
			return fmt.Errorf("socket %s is in use by another process", path)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("remove stale socket %s: %w", path, err)
	}
	return nil
}

// LogTail returns the end of a VMM's log for an error message. The log may
// hold the guest's console output: only its last 64 KiB are read.
func LogTail(path string) string {
	s, err := tail.File(path, 64<<10, 0)
	if err != nil {
		return "no log"
	}
	s = strings.TrimSpace(s)
	if s == "" {
		return "empty log"
	}
	if len(s) > 600 {
		s = "…" + s[len(s)-600:]
	}
	return s
}

// KernelArgs completes a kernel command line: each of args ("key=value" or
// "key") is appended unless the line already names its key, so the user's
// own setting wins. Whitespace is normalised to single spaces.
func KernelArgs(cmdline string, args ...string) string {
	parts := strings.Fields(cmdline)
	has := func(key string) bool {
		for _, p := range parts {
			if p == key || strings.HasPrefix(p, key+"=") {
				return true
			}
		}
		return false
	}
	for _, a := range args {
		key, _, _ := strings.Cut(a, "=")
		if !has(key) {
			parts = append(parts, a)
		}
	}
	return strings.Join(parts, " ")
}

// SetKernelArg returns cmdline with arg (key=value, or a bare key) in place
// of every argument of the same key, appended when it has none. Pure.
func SetKernelArg(cmdline, arg string) string {
	key, _, _ := strings.Cut(arg, "=")
	var parts []string
	for _, p := range strings.Fields(cmdline) {
		if p != key && !strings.HasPrefix(p, key+"=") {
			parts = append(parts, p)
		}
	}
	return strings.Join(append(parts, arg), " ")
}

// OpenKVM says why the KVM device dev cannot be opened read-write (nil
// when it can), as both drivers check before they use KVM; "" is
// /dev/kvm. The error names the device.
func OpenKVM(dev string) error {
	if dev == "" {
		dev = "/dev/kvm"
	}
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	return f.Close()
}

// RemoveFiles removes paths, skipping empty ones and those already gone,
// and returns the other errors joined.
func RemoveFiles(paths ...string) error {
	var errs []error
	for _, p := range paths {
		if p == "" {
			continue
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// FindProcess returns the handle of the live process m recognises as the
// VMM of apiSocket, or ErrNotFound: what Driver.Find does once a driver
// has its matcher.
func FindProcess(m proc.Matcher, apiSocket string) (Handle, error) {
	pids, err := proc.Find(m)
	if err != nil {
		return Handle{}, err
	}
	if len(pids) == 0 {
		return Handle{}, ErrNotFound
	}
	return Handle{PID: pids[0], APISocket: apiSocket}, nil
}

// AskUnlessGone sends ask to the VMM of h when it still runs. A VMM that is
// gone, or that went while being asked (a guest that powered off at once),
// is not an error: Shutdown's contract.
func AskUnlessGone(d Driver, h Handle, ask func() error) error {
	if !d.Alive(h) {
		return nil
	}
	if err := ask(); err != nil && d.Alive(h) {
		return err
	}
	return nil
}
