package main

import (
	"context"
	"io"
	"net"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/banger/banger/internal/guestctl"
)

// TestServeEach: the vsock side's loop serves one connection at a time
// with the handler; a second host is served once the first went away,
// and a closed listener ends the loop. (The vsock socket itself needs a
// vsock transport, which this host lacks; listenVsock is exercised in
// Firecracker guests.)
func TestServeEach(t *testing.T) {
	l, err := net.Listen("unix", filepath.Join(t.TempDir(), "ctl.sock"))
	if err != nil {
		t.Fatal(err)
	}
	var calls atomic.Int32
	h := func(req guestctl.Request) (guestctl.Reply, func(), error) {
		calls.Add(1)
		return guestctl.Reply{Version: guestctl.Version, BootID: "b"}, nil, nil
	}
	ended := make(chan struct{})
	go func() {
		serveEach(func() (io.ReadWriteCloser, error) { return l.Accept() }, h, time.Millisecond)
		close(ended)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	first, err := net.Dial("unix", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c1 := guestctl.NewClient(first)
	if rep, err := c1.Call(ctx, guestctl.Request{Op: guestctl.OpHello}); err != nil || rep.BootID != "b" {
		t.Fatalf("first host: %+v, %v", rep, err)
	}
	// A second host waits while the first is connected.
	second, err := net.Dial("unix", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c2 := guestctl.NewClient(second)
	wctx, wcancel := context.WithTimeout(ctx, 200*time.Millisecond)
	if _, err := c2.Call(wctx, guestctl.Request{Op: guestctl.OpHello}); err == nil {
		t.Fatal("a second host was served while the first was connected")
	}
	wcancel()
	c2.Close()
	c1.Close()
	third, err := net.Dial("unix", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c3 := guestctl.NewClient(third)
	if _, err := c3.Call(ctx, guestctl.Request{Op: guestctl.OpHello}); err != nil {
		t.Fatalf("host after the first went away: %v", err)
	}
	c3.Close()
	// The second host's request was read once its turn came, after it
	// had given up: three calls.
	if n := calls.Load(); n != 3 {
		t.Fatalf("handler called %d times, want 3", n)
	}
	l.Close()
	select {
	case <-ended:
	case <-time.After(5 * time.Second):
		t.Fatal("serveEach did not end with its listener")
	}
}
