package guest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/ssh"
)

// timings are the durations a connection works with. The package defaults
// are variables so that tests can shorten them; each connection copies them
// when made, so its goroutines never read the variables.
type timings struct {
	keepaliveInterval, keepaliveTimeout, staleAfter, killTimeout time.Duration
}

func currentTimings() timings {
	return timings{keepaliveInterval, keepaliveTimeout, staleAfter, killTimeout}
}

var (
	// keepaliveInterval is how often a connection, busy or idle, proves it
	// is alive; keepaliveTimeout is how long an answer may take before the
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
	// readyConnectTimeout bounds the TCP connect of one WaitReady attempt:
	// a SYN sent before the guest's network was up is lost, and waiting for
	// TCP's own retransmit (1 s, then 3 s) delays readiness; a fresh attempt
	// sends a fresh SYN at once.
	readyConnectTimeout = 500 * time.Millisecond
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
	t         timings
	c         *ssh.Client
	nc        net.Conn      // the TCP connection under c
	done      chan struct{} // closed once the connection is gone
	lastAlive atomic.Int64  // unix nanoseconds of the last proof of life
	// parked: the guest is paused; keepalives wait (see Pool.Park).
	parked atomic.Bool
	// pinging is held while the keepalive loop's request is out, so park
	// can wait for it to come back before the guest is frozen.
	pinging sync.Mutex
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
	return dialTimeout(ctx, ep, signer, 0)
}

// dialTimeout is dial with a bound on the TCP connect alone (0: none beyond
// ctx).
func dialTimeout(ctx context.Context, ep Endpoint, signer ssh.Signer, connect time.Duration) (*conn, error) {
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
	d := net.Dialer{Timeout: connect}
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
	c := &conn{addr: addr, t: currentTimings(), c: ssh.NewClient(sc, chans, reqs), nc: nc, done: make(chan struct{})}
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
	t := time.NewTicker(c.t.keepaliveInterval)
	defer t.Stop()
	for {
		select {
		case <-c.done:
			return
		case <-t.C:
			c.pinging.Lock()
			if c.parked.Load() {
				c.pinging.Unlock()
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), c.t.keepaliveTimeout)
			err := c.ping(ctx)
			cancel()
			c.pinging.Unlock()
			if err != nil {
				return
			}
		}
	}
}

// park stops the connection's keepalives, SSH's and TCP's, while its
// guest is frozen, after the one in flight (if any) has come back: a
// request left unanswered in a frozen guest would close the connection,
// and a segment left unacknowledged would have TCP back off its
// retransmits past the resume.
func (c *conn) park() {
	c.pinging.Lock()
	c.parked.Store(true)
	c.pinging.Unlock()
	if tc, ok := c.nc.(*net.TCPConn); ok {
		_ = tc.SetKeepAlive(false)
	}
}

// unpark proves the connection alive with a keepalive round trip bounded
// by ctx (closing it when there is no answer) and starts its keepalives
// again.
func (c *conn) unpark(ctx context.Context) error {
	if err := c.ping(ctx); err != nil {
		return err
	}
	if tc, ok := c.nc.(*net.TCPConn); ok {
		_ = tc.SetKeepAlive(true)
	}
	c.parked.Store(false)
	return nil
}

// DialTCP opens a direct-tcpip channel to addr; see TCPDialer.
func (c *conn) DialTCP(ctx context.Context, addr string) (net.Conn, error) {
	nc, err := c.c.DialContext(ctx, "tcp", addr)
	if err != nil {
		if c.isDone() {
			return nil, &connLostError{op: "open channel to " + addr + " on " + c.addr, err: err}
		}
		return nil, fmt.Errorf("guest %s: connect to %s: %w", c.addr, addr, err)
	}
	c.touch()
	return nc, nil
}

// Close closes the connection. Idempotent.
func (c *conn) Close() error {
	err := c.c.Close()
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// WaitReady dials ep every interval until a connection is made and `true`
// runs on it with status 0, and returns that connection. It gives up when
// ctx ends, returning an error that wraps both ctx's error and the last
// attempt's error. A host key mismatch is returned at once, never retried.
func WaitReady(ctx context.Context, ep Endpoint, signer ssh.Signer, interval time.Duration) (Client, error) {
	return waitReady(ctx, ep, signer, interval, true)
}

// WaitDial is WaitReady without the command: it returns the first
// connection whose handshake and authentication succeed. It suits a
// guest restored from a saved state, which ran commands before it was
// saved: sshd serving the pinned key and taking the daemon's key is
// what is left to prove, and a guest under emulation pays for every
// process it starts.
func WaitDial(ctx context.Context, ep Endpoint, signer ssh.Signer, interval time.Duration) (Client, error) {
	return waitReady(ctx, ep, signer, interval, false)
}

func waitReady(ctx context.Context, ep Endpoint, signer ssh.Signer, interval time.Duration, run bool) (Client, error) {
	if interval <= 0 {
		interval = 250 * time.Millisecond
	}
	var last error
	for {
		c, err := readyOnce(ctx, ep, signer, run)
		if err == nil {
			return c, nil
		}
		var mm *HostKeyMismatchError
		if errors.As(err, &mm) {
			return nil, err
		}
		// An attempt cut short by ctx itself says nothing about the guest:
		// its dial can end with an i/o timeout at ctx's deadline a moment
		// before ctx reports it, so an attempt ending that close counts too.
		if last == nil || (ctx.Err() == nil && !nearDeadline(ctx, 50*time.Millisecond)) {
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

// nearDeadline reports whether ctx's deadline is less than d away.
func nearDeadline(ctx context.Context, d time.Duration) bool {
	dl, ok := ctx.Deadline()
	return ok && time.Until(dl) < d
}

// readyOnce is one attempt of WaitReady (run: with `true`) or WaitDial,
// bounded by dialAttemptTimeout.
func readyOnce(ctx context.Context, ep Endpoint, signer ssh.Signer, run bool) (*conn, error) {
	actx, cancel := context.WithTimeout(ctx, dialAttemptTimeout)
	defer cancel()
	c, err := dialTimeout(actx, ep, signer, readyConnectTimeout)
	if err != nil || !run {
		return c, err
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
