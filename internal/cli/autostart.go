package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger/banger/internal/api"
	"github.com/banger/banger/internal/tail"
)

// startTimeout is how long a cold start may take before banger gives up.
const startTimeout = 30 * time.Second

// client returns a client of a daemon that answers, starting bangerd when
// the socket does not.
func (a *app) client(ctx context.Context) (*api.Client, error) {
	c := api.NewClient(a.resolvedSocket())
	err := c.Health(ctx)
	if err == nil {
		return c, nil
	}
	if !errors.Is(err, api.ErrDaemonUnreachable) {
		return nil, err
	}
	if err := a.startDaemon(ctx, c); err != nil {
		return nil, err
	}
	return c, nil
}

// connected returns a client only when the daemon already answers.
func (a *app) connected(ctx context.Context) (*api.Client, error) {
	c := api.NewClient(a.resolvedSocket())
	return c, c.Health(ctx)
}

// findBangerd prefers the bangerd installed next to this banger.
func findBangerd() (string, error) {
	if self, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(self), "bangerd")
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() {
			return p, nil
		}
	}
	p, err := exec.LookPath("bangerd")
	if err != nil {
		return "", errors.New("bangerd not found next to banger nor on PATH: install it or start it yourself")
	}
	return p, nil
}

// daemonEnv passes the environment through, with the CLI's --state-dir and
// --socket as BANGER_* so that the daemon serves where the CLI looks.
func (a *app) daemonEnv() []string {
	env := os.Environ()
	if a.stateDir != "" {
		env = append(env, "BANGER_STATE_DIR="+a.stateDir)
	}
	if a.socket != "" {
		env = append(env, "BANGER_SOCKET="+a.socket)
	}
	return env
}

// startDaemon starts bangerd detached from this terminal and waits for
// its health. When several CLIs race, each starts one; the state dir lock
// lets one survive and the others exit at once, while every CLI just
// polls until the survivor answers.
func (a *app) startDaemon(ctx context.Context, c *api.Client) error {
	bin, err := findBangerd()
	if err != nil {
		return err
	}
	stateDir := a.resolvedStateDir()
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return fmt.Errorf("start bangerd: state dir: %w", err)
	}
	logPath := a.logPath()
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("start bangerd: log file: %w", err)
	}
	defer logf.Close()
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return err
	}
	defer devnull.Close()
	launch := func() (chan struct{}, error) {
		cmd := exec.Command(bin)
		cmd.Env = a.daemonEnv()
		cmd.Stdin, cmd.Stdout, cmd.Stderr = devnull, logf, logf
		// Its own session: no terminal signals, and it outlives this CLI.
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		cmd.Dir = "/"
		if err := cmd.Start(); err != nil {
			return nil, fmt.Errorf("start %s: %w", bin, err)
		}
		if !a.quiet {
			fmt.Fprintf(a.stderr, "banger: started bangerd (pid %d), log %s\n", cmd.Process.Pid, logPath)
		}
		exited := make(chan struct{})
		go func() { cmd.Wait(); close(exited) }()
		return exited, nil
	}
	exited, err := launch()
	if err != nil {
		return err
	}
	// A daemon that is still dying holds the state dir's lock for a
	// moment, so the one just started may exit at once; then it is
	// started again, a few times.
	relaunches := 0

	deadline := time.NewTimer(startTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		hctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := c.Health(hctx)
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-exited:
			exited = nil // checked once; keep polling for a racing winner
			if a.lockHeld(stateDir) {
				break
			}
			if relaunches < 3 && strings.Contains(tailFile(logPath, 3), "another bangerd") {
				relaunches++
				if exited, err = launch(); err != nil {
					return err
				}
				break
			}
			return fmt.Errorf("bangerd exited without serving %s; see %s:\n%s", c.Socket(), logPath, tailFile(logPath, 10))
		case <-deadline.C:
			return fmt.Errorf("bangerd did not answer on %s within %s; see %s:\n%s", c.Socket(), startTimeout, logPath, tailFile(logPath, 10))
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// lockHeld reports whether some bangerd holds the state dir's lock. When
// that cannot be told (no permission), it says yes so the caller polls on.
func (a *app) lockHeld(stateDir string) bool {
	f, err := os.Open(filepath.Join(stateDir, "bangerd.lock"))
	if err != nil {
		return !errors.Is(err, os.ErrNotExist)
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB); err != nil {
		return true
	}
	_ = unix.Flock(int(f.Fd()), unix.LOCK_UN)
	return false
}

// tailFile returns the last n lines of a file, indented for an error
// message.
func tailFile(path string, n int) string {
	s, err := tail.File(path, 64<<10, n)
	if err != nil {
		return "  (" + err.Error() + ")"
	}
	return "  " + strings.ReplaceAll(s, "\n", "\n  ")
}
