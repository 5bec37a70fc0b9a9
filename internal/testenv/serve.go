package testenv

import (
	"math/rand/v2"
	"net"
	"strconv"
	"testing"
)

// Listen listens on network and address (a unix socket path or
// "127.0.0.1:0") for the rest of the test.
func Listen(t testing.TB, network, address string) net.Listener {
	t.Helper()
	ln, err := net.Listen(network, address)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// ListenPacket is Listen for a packet socket ("udp", "127.0.0.1:0").
func ListenPacket(t testing.TB, network, address string) net.PacketConn {
	t.Helper()
	pc, err := net.ListenPacket(network, address)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	return pc
}

// Serve accepts connections on ln until it is closed and runs handle on
// each in its own goroutine, closing the connection when handle returns:
// the stand-in server (a guest port, a guest side, an echo) tests share.
// It returns ln's address.
func Serve(ln net.Listener, handle func(net.Conn)) string {
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				handle(c)
			}()
		}
	}()
	return ln.Addr().String()
}

// QuietPort returns a TCP port free on 127.0.0.1 that the test may close
// and bind again later (a restarted listener, a config file naming it).
// A port the kernel handed out for "127.0.0.1:0" is a poor choice for
// that: once closed, any test running in parallel may be given it. This
// one lies below the kernel's ephemeral range (32768 and up by default),
// which port-0 binds never draw from, so only a test naming the same
// number could take it.
func QuietPort(t testing.TB) int {
	t.Helper()
	for range 50 {
		port := 20000 + rand.IntN(12000)
		ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			continue
		}
		ln.Close()
		return port
	}
	t.Fatal("no free port found below the ephemeral range")
	return 0
}
