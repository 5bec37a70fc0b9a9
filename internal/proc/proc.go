// Package proc finds, watches, signals and starts host processes by what
// their command line says. banger identifies a VMM process by an argument it
// was started with (its api socket), not by a PID alone: after a daemon
// restart the PID may have been recycled, while the argument is unique.
//
// proc owns only /proc reading, signalling and detached starts. It knows
// nothing about VMMs, their flags or their sockets: callers pass the flag and
// value (or a matcher) to look for.
package proc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Matcher decides whether a process's argv (argv[0] included) is the one
// looked for.
type Matcher func(argv []string) bool

// ParseCmdline splits the contents of /proc/PID/cmdline (NUL-separated, with
// a trailing NUL) into argv. An empty input (kernel thread, zombie) gives nil.
func ParseCmdline(b []byte) []string {
	b = bytes.TrimRight(b, "\x00")
	if len(b) == 0 {
		return nil
	}
	return strings.Split(string(b), "\x00")
}

// HasArg reports whether argv (argv[0] excluded) carries flag with value,
// either as two arguments ("--api-sock", "/x") or as one ("--api-sock=/x").
// An empty flag matches value as a bare argument anywhere.
func HasArg(argv []string, flag, value string) bool {
	if len(argv) < 2 {
		return false
	}
	args := argv[1:]
	for i, a := range args {
		if flag == "" {
			if a == value {
				return true
			}
			continue
		}
		if a == flag && i+1 < len(args) && args[i+1] == value {
			return true
		}
		if a == flag+"="+value {
			return true
		}
	}
	return false
}

// ArgMatcher is a Matcher for HasArg(argv, flag, value).
func ArgMatcher(flag, value string) Matcher {
	return func(argv []string) bool { return HasArg(argv, flag, value) }
}

// Cmdline returns the argv of pid. A zombie or kernel thread has none.
func Cmdline(pid int) ([]string, error) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
	if err != nil {
		return nil, err
	}
	return ParseCmdline(b), nil
}

// state returns the one-letter state of pid from /proc/PID/stat ("R", "S",
// "Z", …).
func state(pid int) (string, error) {
	st, _, err := stat(pid)
	return st, err
}

func stat(pid int) (state string, flags uint64, err error) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return "", 0, err
	}
	if state, err = ParseStatState(b); err != nil {
		return "", 0, err
	}
	flags, err = ParseStatFlags(b)
	return state, flags, err
}

// threads counts pid's threads still listed (0 when it is gone).
func threads(pid int) int {
	ents, err := os.ReadDir(filepath.Join("/proc", strconv.Itoa(pid), "task"))
	if err != nil {
		return 0
	}
	return len(ents)
}

// PFExiting is the kernel's PF_EXITING task flag: the process is being torn
// down. Its memory (and so its argv) may already be gone while its files,
// sockets among them, are still open.
const PFExiting = 0x4

// ParseStatFlags extracts the flags field (the 9th) of a /proc/PID/stat line.
func ParseStatFlags(b []byte) (uint64, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("malformed /proc stat line %q", b)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 7 {
		return 0, fmt.Errorf("malformed /proc stat line %q", b)
	}
	return strconv.ParseUint(f[6], 10, 64)
}

// ParseStatState extracts the state field of a /proc/PID/stat line. The
// command name in parentheses may itself hold spaces and parentheses, so the
// state is read after the last ')'.
func ParseStatState(b []byte) (string, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return "", fmt.Errorf("malformed /proc stat line %q", b)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) == 0 {
		return "", fmt.Errorf("malformed /proc stat line %q", b)
	}
	return f[0], nil
}

// Find returns the PIDs of live (non-zombie) processes whose argv satisfies
// match, in ascending order.
func Find(match Matcher) ([]int, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("list /proc: %w", err)
	}
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid <= 0 {
			continue
		}
		// An exiting process's argv is gone: it cannot be told to match.
		if alive(pid, match, false) {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// FindArg returns the PIDs of live processes started with flag and value
// (see HasArg).
func FindArg(flag, value string) ([]int, error) {
	return Find(ArgMatcher(flag, value))
}

// Alive reports whether pid exists, is not a zombie and its argv satisfies
// match (nil matches any argv). A PID recycled by another program is not
// alive. A process that is exiting stays alive until all its threads are
// gone: its argv is gone by then, but it still holds its files (a VMM's
// sockets), and a caller that waits for it to go must not start a successor
// before.
func Alive(pid int, match Matcher) bool { return alive(pid, match, true) }

// alive is Alive; exiting says whether a process being torn down (argv
// gone) counts as alive.
func alive(pid int, match Matcher, exiting bool) bool {
	if pid <= 0 {
		return false
	}
	st, _, err := stat(pid)
	if err != nil || st == "X" {
		return false
	}
	if st == "Z" {
		// The leader of a threaded process (a Go or QEMU VMM) is a zombie
		// while its other threads still tear down; the files they share
		// close only when the last one has gone.
		return exiting && threads(pid) > 1
	}
	if match == nil {
		return true
	}
	argv, err := Cmdline(pid)
	if err == nil && len(argv) > 0 {
		return match(argv)
	}
	if !exiting {
		return false
	}
	// No argv: the process is gone or exiting. It may have begun exiting
	// between the stat read above and the argv read (argv goes with its
	// memory), so read the state again, or a caller waiting for it to go
	// would see it gone while it still holds its files, and alive again a
	// moment later.
	st, flags, err := stat(pid)
	if err != nil || st == "X" {
		return false
	}
	if st == "Z" {
		return threads(pid) > 1
	}
	return flags&PFExiting != 0
}

// Terminate sends SIGTERM to pid, waits up to grace for it to go, then sends
// SIGKILL and waits up to a few more seconds. It signals only while pid still
// satisfies match, so a recycled PID is never hit. A process already gone is
// not an error; one that survives SIGKILL is.
func Terminate(ctx context.Context, pid int, match Matcher, grace time.Duration) error {
	if !Alive(pid, match) {
		return nil
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("SIGTERM pid %d: %w", pid, err)
	}
	if WaitGone(ctx, pid, match, grace) {
		return nil
	}
	if !Alive(pid, match) {
		return nil
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("SIGKILL pid %d: %w", pid, err)
	}
	// SIGKILL cannot be ignored; the wait is only for the kernel to tear the
	// process down, so it does not honour ctx.
	if WaitGone(context.Background(), pid, match, 5*time.Second) {
		return nil
	}
	return fmt.Errorf("pid %d still alive 5s after SIGKILL", pid)
}

// WaitGone polls until pid no longer satisfies Alive(pid, match), timeout
// passes or ctx ends; it returns true when the process is gone.
func WaitGone(ctx context.Context, pid int, match Matcher, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for {
		if !Alive(pid, match) {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		select {
		case <-ctx.Done():
			return !Alive(pid, match)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Child is a process started by StartDetached. While this process is its
// parent, a goroutine reaps it so it never lingers as a zombie.
type Child struct {
	PID  int
	done chan struct{}
	err  error
}

// Done is closed once the process has exited and been reaped.
func (c *Child) Done() <-chan struct{} { return c.done }

// Err is the exit error of the process (nil for exit status 0); valid only
// after Done is closed.
func (c *Child) Err() error {
	<-c.done
	return c.err
}

// StartDetached starts bin with args in a new session (so it survives the
// daemon and its terminal), stdin from /dev/null and stdout/stderr appended
// to logPath (created 0600 if missing). The process is not tied to any
// context: it outlives the caller unless killed.
func StartDetached(bin string, args []string, logPath string) (*Child, error) {
	return StartDetachedIn("", bin, args, logPath)
}

// StartDetachedIn is StartDetached with dir as the process's working
// directory ("": the caller's).
func StartDetachedIn(dir, bin string, args []string, logPath string) (*Child, error) {
	return StartDetachedWith(dir, bin, args, logPath, nil)
}

// StartDetachedWith is StartDetachedIn that also hands the process extra
// open files, as descriptors 3, 4, … in their order. They stay the
// caller's to close once it returns.
func StartDetachedWith(dir, bin string, args []string, logPath string, extra []*os.File) (*Child, error) {
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open process log: %w", err)
	}
	defer logf.Close()
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return nil, err
	}
	defer devnull.Close()
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Stdin = devnull
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.ExtraFiles = extra
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	c := &Child{PID: cmd.Process.Pid, done: make(chan struct{})}
	go func() {
		c.err = cmd.Wait()
		close(c.done)
	}()
	return c, nil
}
