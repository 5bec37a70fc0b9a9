package vmm

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

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
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("socket %s is in use by another process", path)
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
