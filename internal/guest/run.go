package guest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/banger/banger/internal/shell"
)

// Run runs cmd in a new session; see Client.
//
// The stdin copy is not waited for: Run returns once the command has exited
// even if stdin has not reached EOF (a goroutine may stay blocked in
// stdin.Read until it returns). A read error from stdin (other than EOF)
// aborts the command, so that a truncated input never looks complete to it.
// Nothing is written to stdout or stderr after Run returns.
//
// A cancelled ctx makes Run return at once and stops the command in the
// background with SIGTERM, then closes the session. The signal goes both as an SSH "signal" request and, because OpenSSH
// ignores those in sessions of root (it runs them without privilege
// separation), as `kill -TERM` to the command's process group from a second
// session: cmd runs wrapped so that the first line of its stderr names its
// process group, which Run strips before the caller sees stderr.
func (c *conn) Run(ctx context.Context, cmd string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	return c.run(ctx, cmd, stdin, stdout, stderr, true)
}

// run is Run; killable wraps cmd to learn its process group (the kill
// command itself runs unwrapped).
func (c *conn) run(ctx context.Context, cmd string, stdin io.Reader, stdout, stderr io.Writer, killable bool) (int, error) {
	if err := ctx.Err(); err != nil {
		return -1, fmt.Errorf("run on %s: %w", c.addr, context.Cause(ctx))
	}
	sess, err := c.openSession(ctx)
	if err != nil {
		return -1, err
	}
	stopping := false // the session was handed to stop, which closes it
	defer func() {
		if !stopping {
			sess.Close()
		}
	}()

	outGate, errGate := newGate(stdout), newGate(stderr)
	defer outGate.close()
	defer errGate.close()
	if outGate != nil {
		sess.Stdout = outGate
	}
	var pg *pgidReader
	if killable {
		pg = newPgidReader(errGate)
		sess.Stderr = pg
		cmd = wrapKillable(cmd)
	} else if errGate != nil {
		sess.Stderr = errGate
	}
	var stdinPipe io.WriteCloser
	if stdin != nil {
		if stdinPipe, err = sess.StdinPipe(); err != nil {
			return -1, fmt.Errorf("run on %s: %w", c.addr, err)
		}
	}
	if err := sess.Start(cmd); err != nil {
		if c.isDone() {
			return -1, &connLostError{op: "start command on " + c.addr, err: err}
		}
		return -1, fmt.Errorf("guest %s refused to run the command: %w", c.addr, err)
	}

	stdinFailed := make(chan error, 1)
	if stdin != nil {
		go func() {
			rr := &readRecorder{r: stdin}
			_, err := io.Copy(stdinPipe, rr)
			if rr.err != nil {
				// A read error, not the command going away: abort rather
				// than let the command take a truncated input for a whole.
				stdinFailed <- rr.err
				return
			}
			if err == nil {
				stdinPipe.Close() // EOF to the command
			}
			// A write error means the command or the connection went away;
			// Wait reports that.
		}()
	}

	waited := make(chan error, 1)
	go func() { waited <- sess.Wait() }()

	select {
	case err := <-waited:
		pg.flush()
		return c.exitResult(ctx, err, outGate, errGate)
	case <-ctx.Done():
		stopping = true
		go c.stop(sess, waited, pg)
		return -1, fmt.Errorf("command on %s cancelled: %w", c.addr, context.Cause(ctx))
	case err := <-stdinFailed:
		stopping = true
		go c.stop(sess, waited, pg)
		return -1, fmt.Errorf("reading the command's stdin: %w (command on %s aborted)", err, c.addr)
	}
}

// killGroupCommand sends SIGTERM to process group pgid. The form "-TERM -N"
// is the one dash, bash and busybox sh all read as a group ("--" is not).
func killGroupCommand(pgid int) string {
	return fmt.Sprintf("kill -TERM -%d 2>/dev/null; true", pgid)
}

// pgidMarker starts the line a killable command first writes to stderr.
const pgidMarker = "banger-pgid:"

// wrapKillable makes cmd report its process group first. sshd starts each
// command's shell with setsid, so the shell's pid is its group; eval runs cmd
// in that same shell, so cmd means what it meant.
func wrapKillable(cmd string) string {
	return `printf '` + pgidMarker + `%d\n' "$$" >&2; eval ` + shell.Quote(cmd)
}

// parsePgidLine reads the marker line (without its newline).
func parsePgidLine(line string) (int, bool) {
	rest, ok := strings.CutPrefix(line, pgidMarker)
	if !ok {
		return 0, false
	}
	n, err := strconv.Atoi(rest)
	if err != nil || n <= 1 {
		return 0, false
	}
	return n, true
}

// pgidReader takes the marker line off the head of stderr and passes the
// rest to w (nil: discard). A head that is not a marker is passed on whole.
type pgidReader struct {
	w     io.Writer
	mu    sync.Mutex
	head  []byte
	done  bool
	pgid  int
	known chan struct{} // closed once the head is decided
}

func newPgidReader(w *gate) *pgidReader {
	p := &pgidReader{known: make(chan struct{})}
	if w != nil {
		p.w = w
	}
	return p
}

func (p *pgidReader) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done {
		return p.pass(b)
	}
	p.head = append(p.head, b...)
	i := bytes.IndexByte(p.head, '\n')
	if i < 0 {
		if len(p.head) <= len(pgidMarker)+20 {
			return len(b), nil
		}
		p.decide()
		return len(b), nil
	}
	if n, ok := parsePgidLine(string(p.head[:i])); ok {
		p.pgid = n
		p.head = p.head[i+1:]
	}
	p.decide()
	return len(b), nil
}

// decide ends the head: what is left of it goes on to w.
func (p *pgidReader) decide() {
	p.done = true
	close(p.known)
	head := p.head
	p.head = nil
	p.pass(head)
}

func (p *pgidReader) pass(b []byte) (int, error) {
	if p.w != nil && len(b) > 0 {
		p.w.Write(b) // a gate: never fails
	}
	return len(b), nil
}

// flush passes on a head cut short by the end of the stream.
func (p *pgidReader) flush() {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.done {
		p.decide()
	}
}

func (p *pgidReader) group() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pgid
}

// openSession opens a session, giving up when ctx ends: a connection that
// died without our noticing yet can leave the open request unanswered.
func (c *conn) openSession(ctx context.Context) (*ssh.Session, error) {
	type opened struct {
		s   *ssh.Session
		err error
	}
	res := make(chan opened, 1)
	go func() {
		s, err := c.c.NewSession()
		res <- opened{s, err}
	}()
	select {
	case o := <-res:
		if o.err == nil {
			return o.s, nil
		}
		var oce *ssh.OpenChannelError
		if errors.As(o.err, &oce) {
			// The connection works; the guest refused another session.
			// OpenSSH does so beyond MaxSessions (10 by default).
			return nil, fmt.Errorf("guest %s refused a new session (sshd MaxSessions reached?): %w", c.addr, o.err)
		}
		return nil, &connLostError{op: "open session on " + c.addr, notStarted: true, err: o.err}
	case <-ctx.Done():
		go func() {
			if o := <-res; o.s != nil {
				o.s.Close()
			}
		}()
		return nil, fmt.Errorf("open session on %s: %w", c.addr, context.Cause(ctx))
	}
}

// stop stops a running session in the background of a Run that already
// returned: SIGTERM as an SSH signal and, when the command's process group is
// known, by `kill` from a second session, and only then closes the session,
// so that the command never sees its stdin end before the signal.
func (c *conn) stop(sess *ssh.Session, waited <-chan error, pg *pgidReader) {
	defer sess.Close()
	sess.Signal(ssh.SIGTERM)
	if pg == nil {
		return
	}
	// The marker is the command's first output; a cancel right after the
	// start may come before it.
	t := time.NewTimer(c.t.killTimeout)
	defer t.Stop()
	select {
	case <-pg.known:
	case <-waited:
		return
	case <-t.C:
		return
	}
	if g := pg.group(); g > 0 {
		kctx, cancel := context.WithTimeout(context.Background(), c.t.killTimeout)
		defer cancel()
		c.run(kctx, killGroupCommand(g), nil, nil, nil, false)
	}
}

func (c *conn) exitResult(ctx context.Context, err error, gates ...*gate) (int, error) {
	code := -1
	var ee *ssh.ExitError
	var em *ssh.ExitMissingError
	switch {
	case err == nil:
		code = 0
	case errors.As(err, &ee):
		if sig := ee.Signal(); sig != "" {
			return -1, fmt.Errorf("command on %s killed by signal %s", c.addr, sig)
		}
		code = ee.ExitStatus()
	case errors.As(err, &em):
		// A connection that dropped also ends a session this way; tell the
		// two apart by asking the connection.
		pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.t.keepaliveTimeout)
		defer cancel()
		if perr := c.ping(pctx); perr != nil {
			return -1, &connLostError{op: "command on " + c.addr, err: perr}
		}
		return -1, fmt.Errorf("command on %s ended without an exit status", c.addr)
	default:
		if c.isDone() {
			return -1, &connLostError{op: "command on " + c.addr, err: err}
		}
		return -1, fmt.Errorf("command on %s: %w", c.addr, err)
	}
	c.touch()
	for _, g := range gates {
		if werr := g.failed(); werr != nil {
			return -1, fmt.Errorf("command on %s exited with status %d but its output could not be written: %w", c.addr, code, werr)
		}
	}
	return code, nil
}

// readRecorder remembers the read error (other than EOF) of r.
type readRecorder struct {
	r   io.Reader
	err error
}

func (rr *readRecorder) Read(p []byte) (int, error) {
	n, err := rr.r.Read(p)
	if err != nil && err != io.EOF {
		rr.err = err
	}
	return n, err
}

// gate passes writes to w until closed, then drops them, so that nothing is
// written after Run returns. A write error from w is remembered and later
// output drained, so that a failing writer cannot stall the session.
type gate struct {
	mu     sync.Mutex
	w      io.Writer
	err    error
	closed bool
}

func newGate(w io.Writer) *gate {
	if w == nil {
		return nil
	}
	return &gate{w: w}
}

func (g *gate) Write(p []byte) (int, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed || g.err != nil {
		return len(p), nil
	}
	if _, err := g.w.Write(p); err != nil {
		g.err = err
	}
	return len(p), nil
}

func (g *gate) close() {
	if g == nil {
		return
	}
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
}

func (g *gate) failed() error {
	if g == nil {
		return nil
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.err
}

// RunTerminal runs cmd on a pseudo-terminal; see Terminal.
func (c *conn) RunTerminal(ctx context.Context, cmd string, pty PTY, in io.Reader, out io.Writer, resize <-chan WindowSize) (int, error) {
	if err := ctx.Err(); err != nil {
		return -1, fmt.Errorf("run on %s: %w", c.addr, context.Cause(ctx))
	}
	sess, err := c.openSession(ctx)
	if err != nil {
		return -1, err
	}
	defer sess.Close()
	modes := ssh.TerminalModes{ssh.ECHO: 1, ssh.TTY_OP_ISPEED: 38400, ssh.TTY_OP_OSPEED: 38400}
	if err := sess.RequestPty(pty.Term, pty.Rows, pty.Cols, modes); err != nil {
		if c.isDone() {
			return -1, &connLostError{op: "request a terminal on " + c.addr, notStarted: true, err: err}
		}
		return -1, fmt.Errorf("guest %s refused a terminal: %w", c.addr, err)
	}
	outGate := newGate(out)
	defer outGate.close()
	if outGate != nil {
		sess.Stdout, sess.Stderr = outGate, outGate
	}
	var stdinPipe io.WriteCloser
	if in != nil {
		if stdinPipe, err = sess.StdinPipe(); err != nil {
			return -1, fmt.Errorf("run on %s: %w", c.addr, err)
		}
	}
	if err := sess.Start(cmd); err != nil {
		if c.isDone() {
			return -1, &connLostError{op: "start command on " + c.addr, err: err}
		}
		return -1, fmt.Errorf("guest %s refused to run the command: %w", c.addr, err)
	}
	if in != nil {
		go func() {
			if _, err := io.Copy(stdinPipe, in); err == nil {
				stdinPipe.Close()
			}
		}()
	}
	done := make(chan struct{})
	defer close(done)
	if resize != nil {
		go func() {
			for {
				select {
				case <-done:
					return
				case ws := <-resize:
					_ = sess.WindowChange(ws.Rows, ws.Cols)
				}
			}
		}()
	}
	waited := make(chan error, 1)
	go func() { waited <- sess.Wait() }()
	select {
	case err := <-waited:
		return c.exitResult(ctx, err, outGate)
	case <-ctx.Done():
		// The deferred Close hangs the terminal up.
		_ = sess.Signal(ssh.SIGHUP)
		return -1, fmt.Errorf("command on %s cancelled: %w", c.addr, context.Cause(ctx))
	}
}
