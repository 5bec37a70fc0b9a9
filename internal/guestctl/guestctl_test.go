package guestctl

import (
	"bufio"
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"
)

func fixedNow() time.Time { return time.Unix(1700000000, 5) }

// serve runs Serve with h on one end of a pipe and returns a client on the
// other.
func serve(t *testing.T, h Handler) *Client {
	t.Helper()
	host, guest := net.Pipe()
	go func() { _ = Serve(guest, h, fixedNow) }()
	t.Cleanup(func() { host.Close(); guest.Close() })
	return NewClient(host)
}

func TestCallServe(t *testing.T) {
	var afterRan bool
	c := serve(t, func(req Request) (Reply, func(), error) {
		switch req.Op {
		case OpHello:
			return Reply{Version: Version, BootID: "b"}, nil, nil
		case OpIdentity:
			if req.Hostname == "bad" {
				return Reply{}, nil, errors.New("no such luck")
			}
			return Reply{Identity: &Identity{Hostname: req.Hostname, MachineID: req.MachineID}}, nil, nil
		case OpPowerOff:
			return Reply{}, func() { afterRan = true }, nil
		}
		return Reply{}, nil, nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	rep, err := c.Call(ctx, Request{Op: OpHello})
	if err != nil || rep.Version != Version || rep.BootID != "b" || !rep.OK || rep.UnixNano != fixedNow().UnixNano() {
		t.Fatalf("hello = %+v, %v", rep, err)
	}
	mid := NewMachineID()
	rep, err = c.Call(ctx, Request{Op: OpIdentity, Hostname: "fork-1", MachineID: mid, Seed: []byte("x")})
	if err != nil || rep.Identity == nil || rep.Identity.Hostname != "fork-1" || rep.Identity.MachineID != mid {
		t.Fatalf("identity = %+v, %v", rep, err)
	}
	if _, err := c.Call(ctx, Request{Op: OpIdentity, Hostname: "bad"}); err == nil || !strings.Contains(err.Error(), "guest refused identity: no such luck") {
		t.Fatalf("refusal: %v", err)
	}
	if _, err := c.Call(ctx, Request{Op: OpPowerOff}); err != nil {
		t.Fatal(err)
	}
	// after runs once the answer is written; the next call proves Serve
	// went round its loop.
	if _, err := c.Call(ctx, Request{Op: OpHello}); err != nil || !afterRan {
		t.Fatalf("after ran %v, %v", afterRan, err)
	}
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		req Request
		err string
	}{
		{Request{Op: "reboot"}, `unknown op "reboot"`},
		{Request{Op: OpIdentity, Hostname: "-x"}, "hostname"},
		{Request{Op: OpIdentity, Hostname: strings.Repeat("a", 65)}, "hostname"},
		{Request{Op: OpIdentity, Hostname: "a.b"}, "hostname"},
		{Request{Op: OpIdentity, MachineID: "ABCDEF0123456789abcdef0123456789"}, "machine id"},
		{Request{Op: OpIdentity, MachineID: strings.Repeat("0", 32)}, "machine id"},
		{Request{Op: OpIdentity, Seed: make([]byte, 513)}, "seed"},
		{Request{Op: OpClock}, "unix_ns must be positive"},
		{Request{Op: OpIdentity, MAC: "03:00:00:00:00:01"}, "mac"},
		{Request{Op: OpIdentity, MAC: "nope"}, "mac"},
		{Request{Op: OpIdentity, Addr: "172.16.0.5"}, "addr"},
		{Request{Op: OpIdentity, Addr: "fd00::1/64"}, "addr"},
		{Request{Op: OpIdentity, Gateway: "172.16.0.1"}, "gw"},
		{Request{Op: OpIdentity, HostKey: []byte("k")}, "host key"},
		{Request{Op: OpIdentity, HostKey: []byte("k"), HostPub: "ssh-rsa AAAA"}, "host key"},
		{Request{Op: OpIdentity, HostKey: []byte("k"), HostPub: "ssh-ed25519 AAAA\nx"}, "host key"},
		{Request{Op: OpIdentity, HostKey: make([]byte, 4097), HostPub: "ssh-ed25519 AAAA"}, "host key"},
		{Request{Op: OpIdentity, MAC: "02:00:ac:10:00:05", Addr: "172.16.0.5/24", Gateway: "172.16.0.1", HostKey: []byte("k"), HostPub: "ssh-ed25519 AAAA x"}, ""},
		{Request{Op: OpIdentity, Hostname: "ok-1", MachineID: NewMachineID()}, ""},
		{Request{Op: OpClock, UnixNano: 1}, ""},
		{Request{Op: OpEnvd}, "envd token"},
		{Request{Op: OpEnvd, EnvdToken: "short"}, "envd token"},
		{Request{Op: OpEnvd, EnvdToken: strings.Repeat("a", 257)}, "envd token"},
		{Request{Op: OpEnvd, EnvdToken: strings.Repeat("a", 20) + "\n"}, "envd token"},
		{Request{Op: OpEnvd, EnvdToken: strings.Repeat("a", 20) + " x"}, "envd token"},
		{Request{Op: OpEnvd, EnvdToken: strings.Repeat("a", 48), EnvdEnv: []string{"NOEQUALS"}}, "environment entry"},
		{Request{Op: OpEnvd, EnvdToken: strings.Repeat("a", 48), EnvdEnv: []string{"=v"}}, "environment entry"},
		{Request{Op: OpEnvd, EnvdToken: strings.Repeat("a", 48), EnvdEnv: []string{"K=a\nB=c"}}, "environment entry"},
		{Request{Op: OpEnvd, EnvdToken: strings.Repeat("a", 48), EnvdEnv: []string{"K=a\x00"}}, "environment entry"},
		{Request{Op: OpEnvd, EnvdToken: "0123456789abcdef0123456789abcdef0123456789abcdef", EnvdEnv: []string{"K=v=w", "EMPTY="}}, ""},
	} {
		err := tc.req.Validate()
		if (tc.err == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("%+v: err %v, want %q", tc.req, err, tc.err)
		}
	}
	// Call refuses before sending.
	if _, err := NewClient(nil).Call(context.Background(), Request{Op: "nope"}); err == nil {
		t.Error("Call sent an invalid request")
	}
}

// A hostile or confused guest: stale answers, noise and over-long lines
// are skipped; an endless stream of them ends the call with an error.
func TestCallSkipsStaleAndBounds(t *testing.T) {
	host, guest := net.Pipe()
	defer host.Close()
	defer guest.Close()
	go func() {
		br := bufio.NewReader(guest)
		line, _ := ReadLine(br) // the leading newline
		if len(line) == 0 {
			line, _ = ReadLine(br)
		}
		id := line[strings.Index(string(line), `"id":"`)+6:]
		id = id[:strings.IndexByte(string(id), '"')]
		_, _ = guest.Write([]byte(`{"id":"old","ok":true}` + "\nnot json\n" + strings.Repeat("x", MaxLine+10) + "\n"))
		_, _ = guest.Write([]byte(`{"id":"` + string(id) + `","ok":true,"version":1}` + "\n"))
	}()
	c := NewClient(host)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	rep, err := c.Call(ctx, Request{Op: OpHello})
	if err != nil || rep.Version != 1 {
		t.Fatalf("rep %+v, %v", rep, err)
	}

	h2, g2 := net.Pipe()
	defer h2.Close()
	defer g2.Close()
	go func() {
		_, _ = ReadLine(bufio.NewReader(g2))
		for range maxStale + 5 {
			if _, err := g2.Write([]byte(`{"id":"other","ok":true}` + "\n")); err != nil {
				return
			}
		}
	}()
	if _, err := NewClient(h2).Call(ctx, Request{Op: OpHello}); err == nil || !strings.Contains(err.Error(), "no answer") {
		t.Fatalf("endless stale answers: %v", err)
	}
}

func TestCallDeadline(t *testing.T) {
	host, guest := net.Pipe()
	defer host.Close()
	defer guest.Close()
	go func() { _, _ = bufio.NewReader(guest).ReadString('\x00') }() // reads, never answers
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := NewClient(host).Call(ctx, Request{Op: OpHello})
	if err == nil || !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 3*time.Second {
		t.Fatalf("silent guest: %v after %s", err, time.Since(start))
	}
}

func TestServeBadLines(t *testing.T) {
	host, guest := net.Pipe()
	defer host.Close()
	go func() {
		_ = Serve(guest, func(Request) (Reply, func(), error) { return Reply{}, nil, nil }, fixedNow)
		guest.Close()
	}()
	go func() {
		_, _ = host.Write([]byte("\n\nnope\n" + `{"id":"1","op":"reboot"}` + "\n" + strings.Repeat("y", MaxLine+1) + "\n" + `{"id":"2","op":"hello"}` + "\n"))
	}()
	br := bufio.NewReader(host)
	var got []string
	for range 4 {
		line, err := ReadLine(br)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, string(line))
	}
	for i, want := range []string{`"ok":false,"error":"not a request`, `{"id":"1","ok":false,"error":"unknown op \"reboot\"`, `"error":"line longer`, `{"id":"2","ok":true`} {
		if !strings.Contains(got[i], want) {
			t.Errorf("answer %d = %s, want %s", i, got[i], want)
		}
	}
}
