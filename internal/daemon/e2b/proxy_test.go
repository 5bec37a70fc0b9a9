package e2b

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
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

// TestUpgradeEndsWithClient: an upgraded stream (a WebSocket) ends when
// its client's end does, on a TLS port as on a plain one, where it used
// to wait on the guest to close its side too: the relay only half
// closed the TLS connection, and a guest that never closed held it, the
// client's socket and their goroutines as long as its VM ran.
func TestUpgradeEndsWithClient(t *testing.T) {
	fx := newFixture(t)
	sb := fx.createSandbox(t, `{"network":{"httpsPorts":[8443]}}`)
	vm, err := fx.vms.Get(t.Context(), sb.SandboxID)
	if err != nil {
		t.Fatal(err)
	}
	// The guest switches protocols, echoes one line, then neither speaks
	// nor closes.
	held := make(chan net.Conn, 4)
	defer func() {
		close(held)
		for c := range held {
			c.Close()
		}
	}()
	upgrade := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
		_ = brw.Flush()
		if line, err := brw.ReadString('\n'); err == nil {
			_, _ = brw.WriteString(line)
			_ = brw.Flush()
		}
		held <- c
	})
	for _, tc := range []struct {
		port int
		tls  bool
	}{{8000, false}, {8443, true}} {
		srv := httptest.NewUnstartedServer(upgrade)
		if tc.tls {
			srv.StartTLS()
		} else {
			srv.Start()
		}
		defer srv.Close()
		fx.vms.mu.Lock()
		fx.vms.ports[tc.port] = srv.Listener.Addr().String()
		fx.vms.mu.Unlock()

		c, err := net.Dial("tcp", fx.addr)
		if err != nil {
			t.Fatal(err)
		}
		host := strconv.Itoa(tc.port) + "-" + sb.SandboxID + ".localhost:" + fx.port()
		_, _ = io.WriteString(c, "GET /ws HTTP/1.1\r\nHost: "+host+"\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
			t.Fatalf("port %d: upgrade = %v, %v", tc.port, resp, err)
		}
		_, _ = io.WriteString(c, "ping\n")
		if line, err := br.ReadString('\n'); line != "ping\n" {
			t.Fatalf("port %d: echo over the upgraded stream = %q, %v", tc.port, line, err)
		}
		c.Close()
		gone := false
		for end := time.Now().Add(5 * time.Second); !gone && time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
			fx.svc.proxy.mu.Lock()
			gone = len(fx.svc.proxy.conns[vm.ID]) == 0
			fx.svc.proxy.mu.Unlock()
		}
		if !gone {
			t.Errorf("port %d (tls %v): the relay still holds the guest's end of an upgraded stream its client left", tc.port, tc.tls)
		}
	}
}
