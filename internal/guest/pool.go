package guest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"

	"golang.org/x/crypto/ssh"
)

// DialFunc makes a new connection; Dial is the real one.
type DialFunc func(ctx context.Context, ep Endpoint, s ssh.Signer) (Client, error)

// Pool shares one connection per key (a VM id) between all callers, redialing
// transparently when it broke. Safe for concurrent use; Gets for different
// keys never wait for each other.
type Pool struct {
	signer ssh.Signer
	dial   DialFunc

	mu     sync.Mutex
	slots  map[string]*slot
	closed bool
}

// slot holds the connection of one key.
type slot struct {
	key     string
	dropped atomic.Bool // set by Drop and Close; a dropped slot never dials again

	mu sync.Mutex // held while dialing, so that one key has one connection
	ep Endpoint
	c  Client
}

// NewPool makes a pool that authenticates with signer and connects with dial
// (Dial when nil).
func NewPool(signer ssh.Signer, dial DialFunc) *Pool {
	if dial == nil {
		dial = Dial
	}
	return &Pool{signer: signer, dial: dial, slots: map[string]*slot{}}
}

// Get returns a client for key, connected to ep: the pooled connection when
// it is alive and was made for the same endpoint, else a new one. A
// connection idle for a while is checked with a keepalive round trip first.
//
// The returned client's Run uses the key's current connection; when that
// connection turns out broken before anything of the command was sent, Run
// redials and tries once more, so no command ever runs twice. Its Close
// releases only the handle: the connection belongs to the pool and is closed
// by Drop or Close. After Drop(key), handles obtained before fail.
func (p *Pool) Get(ctx context.Context, key string, ep Endpoint) (Client, error) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, errors.New("guest connection pool is closed")
	}
	s := p.slots[key]
	if s == nil {
		s = &slot{key: key}
		p.slots[key] = s
	}
	p.mu.Unlock()
	if _, err := p.conn(ctx, s, ep); err != nil {
		return nil, err
	}
	return &pooled{p: p, s: s, ep: ep}, nil
}

// Adopt gives the pool a connection made elsewhere (the one WaitReady
// proved the guest ready with), so the next Get for key does not dial
// again. If key already has a live connection, c is closed instead.
func (p *Pool) Adopt(key string, ep Endpoint, c Client) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		c.Close()
		return
	}
	s := p.slots[key]
	if s == nil {
		s = &slot{key: key}
		p.slots[key] = s
	}
	p.mu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.c != nil || s.dropped.Load() {
		c.Close()
		return
	}
	s.ep, s.c = ep, c
}

// Drop closes and forgets key's connection (its VM stopped or was deleted).
// A dial in progress for key is closed when it completes.
func (p *Pool) Drop(key string) {
	p.mu.Lock()
	s := p.slots[key]
	delete(p.slots, key)
	p.mu.Unlock()
	if s != nil {
		s.drop()
	}
}

// Park keeps key's connection open across a pause of its guest, whose
// TCP state is frozen in its saved memory while the host's socket stays
// here: its keepalives (SSH's and TCP's) stop until Unpark, so the
// frozen guest's silence does not close it. It waits for a keepalive in
// flight to come back, so call it before the guest is frozen. It reports
// whether there was a live connection to keep. Drop closes a parked
// connection as any other.
func (p *Pool) Park(key string) bool {
	p.mu.Lock()
	s := p.slots[key]
	p.mu.Unlock()
	if s == nil {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.c.(*conn)
	if !ok || c.isDone() {
		return false
	}
	c.park()
	return true
}

// Unpark takes key's parked connection back into use once its guest runs
// again: a keepalive round trip bounded by ctx proves it alive (a resumed
// guest answers on the TCP connection it had), and its keepalives start
// again. When there is none for ep, or it does not answer, Unpark closes
// and forgets it and returns an error: the caller dials anew.
func (p *Pool) Unpark(ctx context.Context, key string, ep Endpoint) error {
	p.mu.Lock()
	s := p.slots[key]
	p.mu.Unlock()
	if s == nil {
		return fmt.Errorf("guest connection %q: none kept", key)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.c.(*conn)
	if !ok || !c.parked.Load() || c.isDone() || s.ep != ep {
		if s.c != nil {
			s.c.Close()
			s.c = nil
		}
		return fmt.Errorf("guest connection %q: none kept", key)
	}
	if err := c.unpark(ctx); err != nil {
		c.Close()
		s.c = nil
		return err
	}
	return nil
}

// Close closes every connection; Get fails afterwards. Idempotent.
func (p *Pool) Close() {
	p.mu.Lock()
	p.closed = true
	slots := p.slots
	p.slots = map[string]*slot{}
	p.mu.Unlock()
	for _, s := range slots {
		s.drop()
	}
}

func (s *slot) drop() {
	s.dropped.Store(true)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.c != nil {
		s.c.Close()
		s.c = nil
	}
}

// conn returns s's live connection to ep, dialing when there is none.
func (p *Pool) conn(ctx context.Context, s *slot, ep Endpoint) (Client, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dropped.Load() {
		return nil, fmt.Errorf("guest connection %q was dropped (VM stopped or deleted)", s.key)
	}
	if s.c != nil && s.ep != ep {
		s.c.Close()
		s.c = nil
	}
	if s.c != nil {
		ok, err := healthy(ctx, s.c)
		if err != nil {
			// The caller went away; the connection, shared with every
			// command and channel on it, is left as it is.
			return nil, fmt.Errorf("guest connection %q: %w", s.key, err)
		}
		if ok {
			return s.c, nil
		}
		s.c.Close()
		s.c = nil
	}
	c, err := p.dial(ctx, ep, p.signer)
	if err != nil {
		return nil, err
	}
	if s.dropped.Load() {
		c.Close()
		return nil, fmt.Errorf("guest connection %q was dropped (VM stopped or deleted)", s.key)
	}
	s.c, s.ep = c, ep
	return c, nil
}

// discard forgets c as s's connection, if it still is, and closes it.
func (s *slot) discard(c Client) {
	s.mu.Lock()
	if s.c == c {
		s.c = nil
	}
	s.mu.Unlock()
	c.Close()
}

// healthy reports whether c can be reused: not known dead and, when idle for
// a while, answering a keepalive. Clients not made by Dial are trusted.
// The keepalive has its own deadline, not ctx's: a caller that goes away
// mid-check (a cancelled request) gets ctx's error and must not make the
// pool close a connection other commands and channels are using.
func healthy(ctx context.Context, c Client) (bool, error) {
	cc, ok := c.(*conn)
	if !ok {
		return true, nil
	}
	if cc.isDone() {
		return false, nil
	}
	if cc.idle() < cc.t.staleAfter {
		return true, nil
	}
	res := make(chan error, 1)
	go func() {
		pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cc.t.keepaliveTimeout)
		defer cancel()
		res <- cc.ping(pctx)
	}()
	select {
	case err := <-res:
		return err == nil, nil
	case <-ctx.Done():
		return false, context.Cause(ctx)
	}
}

// pooled is the Client handed out by Pool.Get.
type pooled struct {
	p      *Pool
	s      *slot
	ep     Endpoint
	closed atomic.Bool
}

// Run runs cmd on the key's current connection; see Pool.Get.
func (h *pooled) Run(ctx context.Context, cmd string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	if h.closed.Load() {
		return -1, fmt.Errorf("guest client for %q is closed", h.s.key)
	}
	for attempt := 0; ; attempt++ {
		c, err := h.p.conn(ctx, h.s, h.ep)
		if err != nil {
			return -1, err
		}
		code, err := c.Run(ctx, cmd, stdin, stdout, stderr)
		if err == nil || !errors.Is(err, ErrConnLost) {
			return code, err
		}
		h.s.discard(c)
		if attempt > 0 || !canRetry(err) {
			return code, err
		}
	}
}

// Close releases the handle; the pooled connection stays. Idempotent.
func (h *pooled) Close() error {
	h.closed.Store(true)
	return nil
}

// DialTCP opens a direct-tcpip channel on the key's current connection to
// addr as the guest sees it (127.0.0.1 is the guest's loopback); a
// connection found broken is redialed once, as in Run.
func (h *pooled) DialTCP(ctx context.Context, addr string) (net.Conn, error) {
	if h.closed.Load() {
		return nil, fmt.Errorf("guest client for %q is closed", h.s.key)
	}
	for attempt := 0; ; attempt++ {
		c, err := h.p.conn(ctx, h.s, h.ep)
		if err != nil {
			return nil, err
		}
		d, ok := c.(TCPDialer)
		if !ok {
			return nil, fmt.Errorf("guest connection %q cannot open TCP channels", h.s.key)
		}
		nc, err := d.DialTCP(ctx, addr)
		if err == nil || !errors.Is(err, ErrConnLost) || attempt > 0 {
			return nc, err
		}
		h.s.discard(c)
	}
}

// RunTerminal runs cmd on a pseudo-terminal on the key's current
// connection; a connection found broken before the command started is
// redialed once, as in Run.
func (h *pooled) RunTerminal(ctx context.Context, cmd string, pty PTY, in io.Reader, out io.Writer, resize <-chan WindowSize) (int, error) {
	if h.closed.Load() {
		return -1, fmt.Errorf("guest client for %q is closed", h.s.key)
	}
	for attempt := 0; ; attempt++ {
		c, err := h.p.conn(ctx, h.s, h.ep)
		if err != nil {
			return -1, err
		}
		t, ok := c.(Terminal)
		if !ok {
			return -1, fmt.Errorf("guest connection %q cannot open terminals", h.s.key)
		}
		code, err := t.RunTerminal(ctx, cmd, pty, in, out, resize)
		if err == nil || !errors.Is(err, ErrConnLost) {
			return code, err
		}
		h.s.discard(c)
		if attempt > 0 || !canRetry(err) {
			return code, err
		}
	}
}
