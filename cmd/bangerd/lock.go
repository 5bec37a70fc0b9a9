package main

import (
	"errors"
	"fmt"
	"os"
	"os/user"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// stateLock is the exclusive flock on the state dir's lock file, held for
// the daemon's lifetime. The kernel drops it when the process dies, so a
// killed bangerd never blocks the next one.
type stateLock struct {
	f *os.File
}

// acquireLock takes the lock or fails naming the holder's pid.
func acquireLock(path, stateDir string) (*stateLock, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock file: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("another bangerd (pid %s) is already running on state dir %s", holderPID(path), stateDir)
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	if err := f.Truncate(0); err == nil {
		_, err = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("lock file: %w", err)
		}
	}
	return &stateLock{f: f}, nil
}

// holderPID reads the pid the lock holder wrote; a holder that has just
// won the lock may not have written it yet, so give it a moment.
func holderPID(path string) string {
	for i := 0; i < 20; i++ {
		b, _ := os.ReadFile(path)
		if s := strings.TrimSpace(string(b)); s != "" {
			return s
		}
		time.Sleep(10 * time.Millisecond)
	}
	return "unknown"
}

// release empties the pid and unlocks.
func (l *stateLock) release() {
	_ = l.f.Truncate(0)
	_ = unix.Flock(int(l.f.Fd()), unix.LOCK_UN)
	l.f.Close()
}

func userLookupGroup(name string) (int, error) {
	g, err := user.LookupGroup(name)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(g.Gid)
}
