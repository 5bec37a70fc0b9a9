package e2b

import (
	"context"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/banger/banger/internal/model"
)

// TestRelayConnectBounded: connecting to a guest port ends in bounded
// time even when the request that asked for it is gone (net/http goes on
// dialing for its pool): a dial to the guest carries a deadline, and a
// guest that takes the TCP connection of a TLS port but never answers
// the handshake has it closed, not held for as long as the VM runs.
func TestRelayConnectBounded(t *testing.T) {
	fx := newFixture(t)
	sb := fx.createSandbox(t, `{"network":{"httpsPorts":[8443]}}`)
	dial := fx.svc.DialGuest
	deadlines := make(chan bool, 16)
	fx.svc.DialGuest = func(ctx context.Context, vm model.VM, port int) (net.Conn, error) {
		_, ok := ctx.Deadline()
		deadlines <- ok
		return dial(ctx, vm, port)
	}
	// The guest's TLS port takes connections and says nothing.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	closed := make(chan struct{})
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_, _ = io.Copy(io.Discard, c)
		close(closed)
	}()
	fx.vms.mu.Lock()
	fx.vms.ports[8443] = ln.Addr().String()
	fx.vms.mu.Unlock()

	ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "GET", fx.url+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = "8443-" + sb.SandboxID + ".localhost:" + fx.port()
	if resp, err := http.DefaultTransport.RoundTrip(req); err == nil {
		resp.Body.Close()
	}
	if !<-deadlines {
		t.Error("the relay dialed the guest with no deadline")
	}
	select {
	case <-closed:
	case <-time.After(20 * time.Second):
		t.Fatal("a guest that never answers the TLS handshake keeps its relay connection")
	}
}
