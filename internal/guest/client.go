package guest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/ssh"
)

// Timings. Variables so that tests can shorten them.
var (
	// keepaliveInterval is how often an idle-or-not connection proves it is
	// alive; keepaliveTimeout is how long an answer may take before the
	// connection is declared dead and closed. Guests under TCG emulation
	// answer slowly when busy, hence the generous timeout.
	keepaliveInterval = 15 * time.Second
	keepaliveTimeout  = 15 * time.Second
	// staleAfter is how long a pooled connection may go without proof of
	// life before Pool.Get checks it with a keepalive round trip.
	staleAfter = 2 * time.Second
	// dialAttemptTimeout bounds one attempt of WaitReady, so that a SYN lost
	// to a guest whose network is not up yet does not eat the whole wait.
	dialAttemptTimeout = 20 * time.Second
	// killTimeout bounds the stopping of a cancelled command (see Run).
	killTimeout = 20 * time.Second
)

// ErrConnLost is wrapped by the errors of Dial-ed clients' Run when the SSH
// connection broke (or was found broken) rather than the command failing.
var ErrConnLost = errors.New("ssh connection lost")

// HostKeyMismatchError is returned by Dial when the guest presents a host key
// other than the pinned one. It is never retried and never trusted.
type HostKeyMismatchError struct {
	Addr   string // host:port dialed
	Pinned string // fingerprint of the pinned key, "SHA256:…"
	Got    string // fingerprint of the key the guest presented
}

func (e *HostKeyMismatchError) Error() string {
	return fmt.Sprintf("host key mismatch for %s: pinned %s, guest presented %s; refusing to connect", e.Addr, e.Pinned, e.Got)
}

// connLostError is a Run error caused by the connection, not the command.
type connLostError struct {
	op string
	// notStarted: nothing of the command reached the guest, so it can be
	// retried on another connection without running twice.
	notStarted bool
	err        error
}

func (e *connLostError) Error() string {
	return fmt.Sprintf("%s: %v: %v", e.op, ErrConnLost, e.err)
}
func (e *connLostError) Unwrap() error        { return e.err }
func (e *connLostError) Is(target error) bool { return target == ErrConnLost }

// canRetry reports whether err is a Run error after which nothing of the
// command had reached the guest.
func canRetry(err error) bool {
	var cl *connLostError
	return errors.As(err, &cl) && cl.notStarted
}

func (ep Endpoint) addr() string {
	port := ep.Port
	if port == 0 {
		port = 22
	}
	return net.JoinHostPort(ep.Host, strconv.Itoa(port))
}

func (ep Endpoint) user() string {
	if ep.User == "" {
		return "root"
	}
	return ep.User
}

// conn is a Client on one SSH connection.
type conn struct {
	addr      string
	c         *ssh.Client
	done      chan struct{} // closed once the connection is gone
	lastAlive atomic.Int64  // unix nanoseconds of the last proof of life
}

// Dial connects to ep's sshd as ep.User with signer, accepting only the host
// key pinned in ep.HostKey: an empty pin is refused (never trust on first
// use) and a different key fails with *HostKeyMismatchError naming both
// fingerprints. ctx bounds the TCP connect and the handshake. The returned
// client sends keepalives and closes itself when they go unanswered.
func Dial(ctx context.Context, ep Endpoint, signer ssh.Signer) (Client, error) {
	return dial(ctx, ep, signer)
}

func dial(ctx context.Context, ep Endpoint, signer ssh.Signer) (*conn, error) {
	if signer == nil {
		return nil, errors.New("dial guest: no client key given")
	}
	if ep.Host == "" {
		return nil, errors.New("dial guest: endpoint has no host")
	}
	if ep.Port < 0 || ep.Port > 65535 {
		return nil, fmt.Errorf("dial guest: port %d out of range 1-65535", ep.Port)
	}
	pinned, err := ParseHostKey(ep.HostKey)
	if err != nil {
		return nil, fmt.Errorf("dial guest %s: %w", ep.Host, err)
	}
	addr := ep.addr()
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("dial guest %s: %w", addr, err)
	}
	// The handshake has no context of its own: ctx ending interrupts it by
	// expiring the connection's deadline.
	stop := context.AfterFunc(ctx, func() { nc.SetDeadline(time.Unix(1, 0)) })
	cfg := &ssh.ClientConfig{
		User:              ep.user(),
		Auth:              []ssh.AuthMethod{ssh.PublicKeys(signer)},
		HostKeyCallback:   pinnedHostKey(addr, pinned),
		HostKeyAlgorithms: hostKeyAlgorithms(pinned),
		ClientVersion:     "SSH-2.0-banger",
	}
	sc, chans, reqs, err := ssh.NewClientConn(nc, addr, cfg)
	if !stop() || ctx.Err() != nil {
		if err == nil {
			sc.Close()
		}
		nc.Close()
		return nil, fmt.Errorf("ssh handshake with %s: %w", addr, context.Cause(ctx))
	}
	if err != nil {
		nc.Close()
		var mm *HostKeyMismatchError
		if errors.As(err, &mm) {
			return nil, mm
		}
		return nil, fmt.Errorf("ssh handshake with %s as %s: %w", addr, ep.user(), err)
	}
	c := &conn{addr: addr, c: ssh.NewClient(sc, chans, reqs), done: make(chan struct{})}
	c.touch()
	go func() {
		c.c.Wait()
		close(c.done)
	}()
	go c.keepalive()
	return c, nil
}

func pinnedHostKey(addr string, pinned ssh.PublicKey) ssh.HostKeyCallback {
	want := pinned.Marshal()
	return func(_ string, _ net.Addr, key ssh.PublicKey) error {
		if bytes.Equal(key.Marshal(), want) {
			return nil
		}
		return &HostKeyMismatchError{
			Addr:   addr,
			Pinned: ssh.FingerprintSHA256(pinned),
			Got:    ssh.FingerprintSHA256(key),
		}
	}
}

// hostKeyAlgorithms asks the server for the pinned key's type only, so that
// a server holding several host keys presents the pinned one.
func hostKeyAlgorithms(pk ssh.PublicKey) []string {
	if pk.Type() == ssh.KeyAlgoRSA {
		return []string{ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256, ssh.KeyAlgoRSA}
	}
	return []string{pk.Type()}
}

func (c *conn) touch() { c.lastAlive.Store(time.Now().UnixNano()) }

func (c *conn) isDone() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// idle is how long since the connection last proved alive.
func (c *conn) idle() time.Duration {
	return time.Since(time.Unix(0, c.lastAlive.Load()))
}

// ping sends one keepalive@openssh.com request and waits for any answer
// (OpenSSH answers it with a failure, which proves life as well). A
// connection that does not answer before ctx ends is closed.
func (c *conn) ping(ctx context.Context) error {
	res := make(chan error, 1)
	go func() {
		_, _, err := c.c.SendRequest("keepalive@openssh.com", true, nil)
		res <- err
	}()
	select {
	case err := <-res:
		if err != nil {
			c.Close()
			return &connLostError{op: "keepalive to " + c.addr, err: err}
		}
		c.touch()
		return nil
	case <-c.done:
		return &connLostError{op: "keepalive to " + c.addr, err: net.ErrClosed}
	case <-ctx.Done():
		c.Close()
		return &connLostError{op: "keepalive to " + c.addr, err: fmt.Errorf("no answer: %w", context.Cause(ctx))}
	}
}

func (c *conn) keepalive() {
	t := time.NewTicker(keepaliveInterval)
	defer t.Stop()
	for {
		select {
		case <-c.done:
			return
		case <-t.C:
			ctx, cancel := context.WithTimeout(context.Background(), keepaliveTimeout)
			err := c.ping(ctx)
			cancel()
			if err != nil {
				return
			}
		}
	}
}

// Close closes the connection. Idempotent.
func (c *conn) Close() error {
	err := c.c.Close()
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

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
	return `printf '` + pgidMarker + `%d\n' "$$" >&2; eval ` + Quote(cmd)
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
	t := time.NewTimer(killTimeout)
	defer t.Stop()
	select {
	case <-pg.known:
	case <-waited:
		return
	case <-t.C:
		return
	}
	if g := pg.group(); g > 0 {
		kctx, cancel := context.WithTimeout(context.Background(), killTimeout)
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
		pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), keepaliveTimeout)
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

// WaitReady dials ep every interval until a connection is made and `true`
// runs on it with status 0, and returns that connection. It gives up when
// ctx ends, returning an error that wraps both ctx's error and the last
// attempt's error. A host key mismatch is returned at once, never retried.
func WaitReady(ctx context.Context, ep Endpoint, signer ssh.Signer, interval time.Duration) (Client, error) {
	if interval <= 0 {
		interval = 250 * time.Millisecond
	}
	var last error
	for {
		c, err := readyOnce(ctx, ep, signer)
		if err == nil {
			return c, nil
		}
		var mm *HostKeyMismatchError
		if errors.As(err, &mm) {
			return nil, err
		}
		// An attempt cut short by ctx itself says nothing about the guest.
		if ctx.Err() == nil || last == nil {
			last = err
		}
		t := time.NewTimer(interval)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("guest %s not reachable over SSH: %w (last attempt: %w)", ep.addr(), context.Cause(ctx), last)
		case <-t.C:
		}
	}
}

// readyOnce is one attempt of WaitReady, bounded by dialAttemptTimeout.
func readyOnce(ctx context.Context, ep Endpoint, signer ssh.Signer) (*conn, error) {
	actx, cancel := context.WithTimeout(ctx, dialAttemptTimeout)
	defer cancel()
	c, err := dial(actx, ep, signer)
	if err != nil {
		return nil, err
	}
	code, err := c.Run(actx, "true", nil, nil, nil)
	if err == nil && code != 0 {
		err = fmt.Errorf("`true` exited with status %d on %s", code, c.addr)
	}
	if err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}
