package guest

import (
	"io"
	"net"
	"sync"
	"testing"

	"github.com/banger/banger/internal/testenv"
)

// front relays TCP from a loopback port to a target, standing in for the
// path to a guest in the states a client must live through: it closes its
// first connections at once, as a guest whose sshd is not up yet does, and
// can hold the target's answers back, as a paused guest gives none while
// its connections stay open.
type front struct {
	port   int
	target string
	refuse int // how many first connections to close at once

	mu    sync.Mutex
	cond  *sync.Cond // signalled when held turns false
	held  bool
	seen  int // connections accepted, the refused ones too
	conns []net.Conn
}

// newFront relays to target until the test ends, closing its first refuse
// connections at once.
func newFront(t *testing.T, target string, refuse int) *front {
	ln := testenv.Listen(t, "tcp", "127.0.0.1:0")
	f := &front{port: ln.Addr().(*net.TCPAddr).Port, target: target, refuse: refuse}
	f.cond = sync.NewCond(&f.mu)
	t.Cleanup(func() {
		ln.Close() // before Listen's own close, so nothing is relayed after
		f.mu.Lock()
		f.held = false // relays blocked on a hold end with their connection
		for _, c := range f.conns {
			c.Close()
		}
		f.mu.Unlock()
		f.cond.Broadcast()
	})
	testenv.Serve(ln, f.relay)
	return f
}

// relay serves one connection; Serve closes c when it returns.
func (f *front) relay(c net.Conn) {
	f.mu.Lock()
	f.seen++
	refuse := f.seen <= f.refuse
	f.mu.Unlock()
	if refuse {
		return
	}
	b, err := net.Dial("tcp", f.target)
	if err != nil {
		return
	}
	f.mu.Lock()
	f.conns = append(f.conns, c, b)
	f.mu.Unlock()
	go func() { io.Copy(b, c); b.Close() }()
	// The answers: each chunk read waits out a hold before it is passed on.
	buf := make([]byte, 32<<10)
	for {
		n, err := b.Read(buf)
		f.mu.Lock()
		for f.held {
			f.cond.Wait()
		}
		f.mu.Unlock()
		if n > 0 {
			if _, err := c.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// setHeld holds the target's answers back (true) or lets them through.
func (f *front) setHeld(held bool) {
	f.mu.Lock()
	f.held = held
	f.mu.Unlock()
	f.cond.Broadcast()
}

// connections is how many connections the front accepted, the refused
// ones too.
func (f *front) connections() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.seen
}
