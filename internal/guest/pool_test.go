package guest

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/banger/banger/internal/guest/guesttest"
	"github.com/banger/banger/internal/shell"
)

// countingDial is Dial counting its calls.
type countingDial struct{ n atomic.Int64 }

func (d *countingDial) dial(ctx context.Context, ep Endpoint, s ssh.Signer) (Client, error) {
	d.n.Add(1)
	return Dial(ctx, ep, s)
}

func newTestPool(t *testing.T, f *fixture) (*Pool, *countingDial) {
	d := &countingDial{}
	p := NewPool(f.signer, d.dial)
	t.Cleanup(p.Close)
	return p, d
}

func poolRun(t *testing.T, p *Pool, key string, ep Endpoint, cmd string) (int, string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := p.Get(ctx, key, ep)
	if err != nil {
		return -1, "", err
	}
	defer c.Close()
	var out strings.Builder
	code, err := c.Run(ctx, cmd, nil, &out, nil)
	return code, out.String(), err
}

func TestPoolReusesConnection(t *testing.T) {
	f := newFixture(t)
	p, d := newTestPool(t, f)
	for i := range 10 {
		code, out, err := poolRun(t, p, "vm-a", f.ep, "echo a")
		if err != nil || code != 0 || out != "a\n" {
			t.Fatalf("run %d: %d, %q, %v", i, code, out, err)
		}
	}
	if d.n.Load() != 1 || f.srv.Accepted() != 1 {
		t.Errorf("10 runs for one key made %d dials, %d connections; want 1", d.n.Load(), f.srv.Accepted())
	}
	if _, _, err := poolRun(t, p, "vm-b", f.ep, "true"); err != nil {
		t.Fatal(err)
	}
	if d.n.Load() != 2 {
		t.Errorf("a second key made %d dials in all, want 2", d.n.Load())
	}
}

func TestPoolConcurrentGetsDialOnce(t *testing.T) {
	f := newFixture(t)
	p, d := newTestPool(t, f)
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if code, _, err := poolRun(t, p, "vm-a", f.ep, "true"); err != nil || code != 0 {
				t.Errorf("%d, %v", code, err)
			}
		}()
	}
	wg.Wait()
	if d.n.Load() != 1 {
		t.Errorf("8 concurrent callers made %d dials, want 1", d.n.Load())
	}
}

func TestPoolRedialsAfterServerDropsConnection(t *testing.T) {
	f := newFixture(t)
	p, d := newTestPool(t, f)
	ctx := context.Background()
	c, err := p.Get(ctx, "vm-a", f.ep)
	if err != nil {
		t.Fatal(err)
	}
	if code, err := c.Run(ctx, "true", nil, nil, nil); err != nil || code != 0 {
		t.Fatalf("%d, %v", code, err)
	}
	f.srv.DropConnections()
	// The handle obtained before the drop works on, through a new connection.
	var out strings.Builder
	if code, err := c.Run(ctx, "echo again", nil, &out, nil); err != nil || code != 0 || out.String() != "again\n" {
		t.Fatalf("after drop: %d, %q, %v", code, out.String(), err)
	}
	if d.n.Load() != 2 || f.srv.Accepted() != 2 {
		t.Errorf("%d dials, %d connections; want 2", d.n.Load(), f.srv.Accepted())
	}
}

// brokenClient fails every Run as a connection found dead before sending
// anything, counting the calls.
type brokenClient struct{ runs, closes atomic.Int64 }

func (b *brokenClient) Run(context.Context, string, io.Reader, io.Writer, io.Writer) (int, error) {
	b.runs.Add(1)
	return -1, &connLostError{op: "open session", notStarted: true, err: io.EOF}
}

func (b *brokenClient) Close() error { b.closes.Add(1); return nil }

func TestPoolRetriesOnceWhenNothingWasSent(t *testing.T) {
	f := newFixture(t)
	broken := &brokenClient{}
	var dials atomic.Int64
	p := NewPool(f.signer, func(ctx context.Context, ep Endpoint, s ssh.Signer) (Client, error) {
		if dials.Add(1) == 1 {
			return broken, nil
		}
		return Dial(ctx, ep, s)
	})
	defer p.Close()
	log := filepath.Join(t.TempDir(), "log")
	c, err := p.Get(context.Background(), "vm-a", f.ep)
	if err != nil {
		t.Fatal(err)
	}
	code, err := c.Run(context.Background(), "echo ran >> "+shell.Quote(log), nil, nil, nil)
	if err != nil || code != 0 {
		t.Fatalf("Run = %d, %v; want a transparent retry", code, err)
	}
	if broken.runs.Load() != 1 || broken.closes.Load() != 1 || dials.Load() != 2 {
		t.Errorf("broken client: %d runs, %d closes; %d dials; want 1, 1, 2", broken.runs.Load(), broken.closes.Load(), dials.Load())
	}
	if data, _ := os.ReadFile(log); string(data) != "ran\n" {
		t.Errorf("command log %q, want it to have run once", data)
	}
}

func TestPoolRetriesOnlyOnce(t *testing.T) {
	f := newFixture(t)
	var made []*brokenClient
	p := NewPool(f.signer, func(context.Context, Endpoint, ssh.Signer) (Client, error) {
		b := &brokenClient{}
		made = append(made, b)
		return b, nil
	})
	defer p.Close()
	c, err := p.Get(context.Background(), "vm-a", f.ep)
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Run(context.Background(), "true", nil, nil, nil)
	if !errors.Is(err, ErrConnLost) {
		t.Fatalf("err = %v, want ErrConnLost", err)
	}
	if len(made) != 2 {
		t.Errorf("%d connections tried, want 2 (one retry)", len(made))
	}
}

func TestPoolNoRetryOnceCommandStarted(t *testing.T) {
	f := newFixture(t)
	p, _ := newTestPool(t, f)
	dir := t.TempDir()
	log, ready := filepath.Join(dir, "log"), filepath.Join(dir, "ready")
	c, err := p.Get(context.Background(), "vm-a", f.ep)
	if err != nil {
		t.Fatal(err)
	}
	res := make(chan error, 1)
	go func() {
		_, err := c.Run(context.Background(), "echo ran >> "+shell.Quote(log)+"; touch "+shell.Quote(ready)+"; sleep 30", nil, nil, nil)
		res <- err
	}()
	waitFile(t, ready)
	f.srv.DropConnections()
	select {
	case err := <-res:
		if !errors.Is(err, ErrConnLost) {
			t.Fatalf("err = %v, want ErrConnLost", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after the connection dropped")
	}
	if data, _ := os.ReadFile(log); string(data) != "ran\n" {
		t.Errorf("command log %q: a started command was run again", data)
	}
	if code, err := c.Run(context.Background(), "exit 4", nil, nil, nil); err != nil || code != 4 {
		t.Errorf("next Run = %d, %v; want 4 on a new connection", code, err)
	}
}

func TestPoolDetectsDeadConnectionWithKeepalive(t *testing.T) {
	setTimings(t, time.Hour, 200*time.Millisecond) // only Get's check runs
	staleAfter = 50 * time.Millisecond
	f := newFixture(t)
	var conns []*conn
	p := NewPool(f.signer, func(ctx context.Context, ep Endpoint, s ssh.Signer) (Client, error) {
		c, err := dial(ctx, ep, s)
		if err == nil {
			conns = append(conns, c)
		}
		return c, err
	})
	defer p.Close()
	if _, _, err := poolRun(t, p, "vm-a", f.ep, "true"); err != nil {
		t.Fatal(err)
	}
	f.srv.Freeze() // the peer stops answering without closing: a hard reset
	time.Sleep(100 * time.Millisecond)
	start := time.Now()
	code, out, err := poolRun(t, p, "vm-a", f.ep, "echo fresh")
	if err != nil || code != 0 || out != "fresh\n" {
		t.Fatalf("after freeze: %d, %q, %v", code, out, err)
	}
	if len(conns) != 2 {
		t.Fatalf("%d dials, want 2", len(conns))
	}
	if !conns[0].isDone() {
		t.Error("the unanswering connection was not closed")
	}
	if el := time.Since(start); el < keepaliveTimeout || el > 3*time.Second {
		t.Errorf("redial took %v; want the keepalive timeout (%v) and little more", el, keepaliveTimeout)
	}
}

// TestPoolCheckLeftByCaller: a caller that goes away while Get checks an
// idle connection gets its own error, and the connection, which other
// commands and channels share, stays open and pooled.
func TestPoolCheckLeftByCaller(t *testing.T) {
	setTimings(t, time.Hour, 2*time.Second) // only Get's check runs
	staleAfter = 50 * time.Millisecond
	f := newFixture(t)
	var conns []*conn
	p := NewPool(f.signer, func(ctx context.Context, ep Endpoint, s ssh.Signer) (Client, error) {
		c, err := dial(ctx, ep, s)
		if err == nil {
			conns = append(conns, c)
		}
		return c, err
	})
	defer p.Close()
	if _, _, err := poolRun(t, p, "vm-a", f.ep, "true"); err != nil {
		t.Fatal(err)
	}
	f.srv.KeepaliveDelay.Store(int64(300 * time.Millisecond))
	time.Sleep(100 * time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	if _, err := p.Get(ctx, "vm-a", f.ep); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Get by a caller that left = %v, want its deadline", err)
	}
	if conns[0].isDone() {
		t.Fatal("the pooled connection was closed because a caller left")
	}
	f.srv.KeepaliveDelay.Store(0)
	if code, out, err := poolRun(t, p, "vm-a", f.ep, "echo same"); err != nil || code != 0 || out != "same\n" {
		t.Fatalf("next run: %d, %q, %v", code, out, err)
	}
	if len(conns) != 1 {
		t.Errorf("%d dials, want the one connection reused", len(conns))
	}
}

func TestPoolDrop(t *testing.T) {
	f := newFixture(t)
	p, d := newTestPool(t, f)
	c, err := p.Get(context.Background(), "vm-a", f.ep)
	if err != nil {
		t.Fatal(err)
	}
	p.Drop("vm-a")
	if _, err := c.Run(context.Background(), "true", nil, nil, nil); err == nil || !strings.Contains(err.Error(), "dropped") {
		t.Fatalf("Run after Drop: %v, want a dropped error", err)
	}
	p.Drop("vm-a") // idempotent
	p.Drop("never-seen")
	if _, _, err := poolRun(t, p, "vm-a", f.ep, "true"); err != nil {
		t.Fatal(err)
	}
	if d.n.Load() != 2 {
		t.Errorf("%d dials, want 2 (Drop forgets the connection)", d.n.Load())
	}
}

func TestPoolEndpointChangeRedials(t *testing.T) {
	f1, f2 := newFixture(t), newFixture(t)
	// Both servers accept f1's key.
	f2.srv = guesttest.New(t, f1.signer.PublicKey())
	f2.ep = Endpoint{Host: f2.srv.Host, Port: f2.srv.Port, HostKey: f2.srv.HostKey}
	p, _ := newTestPool(t, f1)
	if _, _, err := poolRun(t, p, "vm-a", f1.ep, "true"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := poolRun(t, p, "vm-a", f2.ep, "true"); err != nil {
		t.Fatal(err)
	}
	if f2.srv.Accepted() != 1 || f2.srv.Execs() != 1 {
		t.Errorf("the new endpoint saw %d connections, %d commands; want 1, 1", f2.srv.Accepted(), f2.srv.Execs())
	}
}

func TestPoolClose(t *testing.T) {
	f := newFixture(t)
	var conns []*conn
	p := NewPool(f.signer, func(ctx context.Context, ep Endpoint, s ssh.Signer) (Client, error) {
		c, err := dial(ctx, ep, s)
		if err == nil {
			conns = append(conns, c)
		}
		return c, err
	})
	for _, key := range []string{"a", "b"} {
		if _, _, err := poolRun(t, p, key, f.ep, "true"); err != nil {
			t.Fatal(err)
		}
	}
	p.Close()
	p.Close()
	for i, c := range conns {
		select {
		case <-c.done:
		case <-time.After(5 * time.Second):
			t.Errorf("connection %d still open after Close", i)
		}
	}
	if _, err := p.Get(context.Background(), "a", f.ep); err == nil {
		t.Error("Get after Close succeeded")
	}
}

func TestPoolAdoptsReadyConnection(t *testing.T) {
	f := newFixture(t)
	p, d := newTestPool(t, f)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := WaitReady(ctx, f.ep, f.signer, 50*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	p.Adopt("vm-a", f.ep, c)
	code, out, err := poolRun(t, p, "vm-a", f.ep, "echo adopted")
	if err != nil || code != 0 || out != "adopted\n" {
		t.Fatalf("run on the adopted connection: %d, %q, %v", code, out, err)
	}
	if d.n.Load() != 0 || f.srv.Accepted() != 1 {
		t.Fatalf("adopted key dialled %d times (%d connections), want 0 (1)", d.n.Load(), f.srv.Accepted())
	}
	// A key that has a connection already keeps it; the adopted one closes.
	c2, err := WaitReady(ctx, f.ep, f.signer, 50*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	p.Adopt("vm-a", f.ep, c2)
	if _, err := c2.Run(ctx, "true", nil, nil, nil); err == nil {
		t.Fatal("the surplus connection was not closed")
	}
	if _, _, err := poolRun(t, p, "vm-a", f.ep, "true"); err != nil {
		t.Fatal(err)
	}
}

// TestPoolParkKeepsConnection: a parked connection outlives a silence
// many keepalive timeouts long and is taken back by Unpark without a new
// dial.
func TestPoolParkKeepsConnection(t *testing.T) {
	setTimings(t, 50*time.Millisecond, 100*time.Millisecond)
	f := newFixture(t)
	fr := newFront(t, f.srv.Addr(), 0)
	ep := f.ep
	ep.Port = fr.port
	p, d := newTestPool(t, f)
	if _, _, err := poolRun(t, p, "vm-a", ep, "true"); err != nil {
		t.Fatal(err)
	}
	if !p.Park("vm-a") {
		t.Fatal("Park found no live connection")
	}
	fr.setHeld(true) // the guest is frozen
	time.Sleep(500 * time.Millisecond)
	fr.setHeld(false)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := p.Unpark(ctx, "vm-a", ep); err != nil {
		t.Fatalf("Unpark: %v", err)
	}
	code, out, err := poolRun(t, p, "vm-a", ep, "echo again")
	if err != nil || code != 0 || out != "again\n" {
		t.Fatalf("after Unpark: %d, %q, %v", code, out, err)
	}
	if d.n.Load() != 1 || fr.connections() != 1 {
		t.Errorf("%d dials, %d connections; want the parked one alone", d.n.Load(), fr.connections())
	}
	// Its keepalives run again: a silence now closes it.
	fr.setHeld(true)
	time.Sleep(400 * time.Millisecond)
	p.mu.Lock()
	c := p.slots["vm-a"].c.(*conn)
	p.mu.Unlock()
	if !c.isDone() {
		t.Error("an unparked connection kept on through an unanswered keepalive")
	}
	fr.setHeld(false)
}

// TestPoolUnparkDead: a parked connection that died (or none at all)
// fails Unpark, which forgets it, so the next Get dials anew.
func TestPoolUnparkDead(t *testing.T) {
	f := newFixture(t)
	p, d := newTestPool(t, f)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := p.Unpark(ctx, "vm-a", f.ep); err == nil {
		t.Error("Unpark of a key never parked succeeded")
	}
	if p.Park("vm-a") {
		t.Error("Park of a key without a connection reported one kept")
	}
	if _, _, err := poolRun(t, p, "vm-a", f.ep, "true"); err != nil {
		t.Fatal(err)
	}
	if !p.Park("vm-a") {
		t.Fatal("Park found no live connection")
	}
	f.srv.DropConnections()
	if err := p.Unpark(ctx, "vm-a", f.ep); err == nil {
		t.Error("Unpark of a dead connection succeeded")
	}
	if code, out, err := poolRun(t, p, "vm-a", f.ep, "echo fresh"); err != nil || code != 0 || out != "fresh\n" {
		t.Fatalf("after a failed Unpark: %d, %q, %v", code, out, err)
	}
	if d.n.Load() != 2 {
		t.Errorf("%d dials, want 2", d.n.Load())
	}
}
