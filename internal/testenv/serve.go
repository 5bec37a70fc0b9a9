package testenv

import (
	"net"
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
