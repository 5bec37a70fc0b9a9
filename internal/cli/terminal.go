package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
	"golang.org/x/term"

	"github.com/banger/banger/internal/api"
)

// DefaultDetachKeys end an attachment from a terminal, as docker's do.
const DefaultDetachKeys = "ctrl-p,ctrl-q"

// parseDetachKeys reads a detach sequence in docker's form: keys separated
// by commas, each one printable character or ctrl-X with X one of a-z, @,
// [, \, ], ^ and _.
func parseDetachKeys(s string) ([]byte, error) {
	if strings.TrimSpace(s) == "" {
		return nil, fmt.Errorf("invalid --detach-keys %q: give at least one key, e.g. %s", s, DefaultDetachKeys)
	}
	var keys []byte
	for _, k := range strings.Split(s, ",") {
		k = strings.TrimSpace(k)
		low := strings.ToLower(k)
		switch {
		case len(k) == 1 && k[0] >= 0x21 && k[0] <= 0x7e:
			keys = append(keys, k[0])
		case strings.HasPrefix(low, "ctrl-") && len(low) == len("ctrl-")+1:
			c := low[len(low)-1]
			switch {
			case c >= 'a' && c <= 'z':
				keys = append(keys, c-'a'+1)
			case strings.IndexByte("@[\\]^_", c) >= 0:
				keys = append(keys, c-'@')
			default:
				return nil, fmt.Errorf("invalid detach key %q: after ctrl- use a letter or one of @ [ \\ ] ^ _", k)
			}
		default:
			return nil, fmt.Errorf("invalid detach key %q: use one character or ctrl-X, separated by commas (e.g. %s)", k, DefaultDetachKeys)
		}
	}
	return keys, nil
}

// detachFilter finds the detach sequence in what is typed: bytes that
// might start it are held back until they either complete it or turn out
// to be ordinary input, and are then passed on.
type detachFilter struct {
	keys []byte
	held int // how many of keys the last bytes matched
}

// feed returns the bytes of p to pass on and whether the sequence was
// completed (then the bytes after it are dropped).
func (f *detachFilter) feed(p []byte) (out []byte, detach bool) {
	if len(f.keys) == 0 {
		return p, false
	}
	for _, b := range p {
		if b == f.keys[f.held] {
			f.held++
			if f.held == len(f.keys) {
				f.held = 0
				return out, true
			}
			continue
		}
		out = append(out, f.keys[:f.held]...)
		f.held = 0
		if b == f.keys[0] {
			f.held = 1
			if len(f.keys) == 1 {
				f.held = 0
				return out, true
			}
			continue
		}
		out = append(out, b)
	}
	return out, false
}

// copyInput sends r to w until EOF or an error (false) or, when keys are
// given, until they are typed (true; the bytes before them are sent).
func copyInput(w io.Writer, r io.Reader, keys []byte) (detached bool) {
	f := detachFilter{keys: keys}
	buf := make([]byte, 32<<10)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			out, detach := f.feed(buf[:n])
			if len(out) > 0 {
				if _, werr := w.Write(out); werr != nil {
					return false
				}
			}
			if detach {
				return true
			}
		}
		if err != nil {
			return false
		}
	}
}

// terminalFd is stdin's descriptor when stdin is a terminal.
func (a *app) terminalFd() (int, bool) {
	f, ok := a.stdin.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return -1, false
	}
	return int(f.Fd()), true
}

// windowSize is the terminal's size, or 80x24 when it cannot be read.
func windowSize(fd int) api.WindowSize {
	if w, h, err := term.GetSize(fd); err == nil && w > 0 && h > 0 {
		return api.WindowSize{Cols: w, Rows: h}
	}
	return api.WindowSize{Cols: 80, Rows: 24}
}

// followWindow sends the terminal's size to st on every SIGWINCH until
// the returned stop is called.
func followWindow(fd int, st *api.AttachStream) (stop func()) {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGWINCH)
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-done:
				return
			case <-ch:
				_ = st.Resize(windowSize(fd))
			}
		}
	}()
	return func() {
		signal.Stop(ch)
		close(done)
	}
}

// rawMode puts the terminal in raw mode: every key, Ctrl-C included, goes
// to the guest as typed, and the guest's terminal does the echo.
func rawMode(fd int) (restore func(), err error) {
	old, err := term.MakeRaw(fd)
	if err != nil {
		return nil, err
	}
	return func() { _ = term.Restore(fd, old) }, nil
}

// cbreak puts a terminal in non-canonical mode, so that the detach keys
// arrive at once, keeping echo, line endings and Ctrl-C: for a session
// without a terminal of its own, which echoes nothing. It fails when fd
// is not a terminal.
func cbreak(fd int) (restore func(), err error) {
	old, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return nil, err
	}
	t := *old
	t.Lflag &^= unix.ICANON
	t.Cc[unix.VMIN], t.Cc[unix.VTIME] = 1, 0
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, &t); err != nil {
		return nil, err
	}
	return func() { _ = unix.IoctlSetTermios(fd, unix.TCSETS, old) }, nil
}

// execTerminal runs req in a VM with stdin streamed and, when tty, on a
// terminal: the local one in raw mode when stdin is one, its size sent at
// the start and on every change. It returns the command's exit code.
func (a *app) execTerminal(ctx context.Context, c *api.Client, vm string, req api.ExecRequest) (int, error) {
	fd, isTerm := a.terminalFd()
	if req.TTY {
		if req.Term = a.getenv("TERM"); req.Term == "" {
			req.Term = "xterm-256color"
		}
		if isTerm {
			ws := windowSize(fd)
			req.Size = &ws
		}
	}
	st, err := c.ExecVMAttached(ctx, vm, req)
	if err != nil {
		return 0, err
	}
	defer st.Close()
	if req.TTY && isTerm {
		restore, err := rawMode(fd)
		if err != nil {
			return 0, fmt.Errorf("put the terminal in raw mode: %w", err)
		}
		defer restore()
		defer followWindow(fd, st)()
	}
	go func() {
		copyInput(st, a.stdin, nil)
		_ = st.CloseStdin()
	}()
	stop := context.AfterFunc(ctx, func() { st.Close() })
	defer stop()
	end, err := st.Receive(a.stdout, a.stderr)
	if err != nil {
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		return 0, err
	}
	return end.ExitCode, nil
}
