package api

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/banger/banger/internal/errdefs"
)

// dialVM serves a connection to a guest port: the service dials it, the
// answer is a 101 (or a plain JSON error when the dial failed), and the
// hijacked connection then carries the stream's bytes both ways. The end
// of one direction is passed on as a half-close; the relay ends when
// both directions have.
func (h *handler) dialVM(w http.ResponseWriter, r *http.Request) {
	if !headerHas(r.Header, "Connection", "upgrade") || !strings.EqualFold(r.Header.Get("Upgrade"), DialProtocol) {
		writeError(w, errdefs.Errorf(errdefs.CodeInvalid, "dial needs the headers Connection: Upgrade and Upgrade: %s", DialProtocol))
		return
	}
	port, err := strconv.Atoi(r.URL.Query().Get("port"))
	if err != nil || port < 1 || port > 65535 {
		writeError(w, errdefs.Errorf(errdefs.CodeInvalid, "invalid port %q: give ?port= a TCP port from 1 to 65535", r.URL.Query().Get("port")))
		return
	}
	g, err := h.svc.DialVM(r.Context(), r.PathValue("ref"), port)
	if err != nil {
		writeError(w, err)
		return
	}
	defer g.Close()
	conn, bw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		h.log.Warn("dial upgrade failed", "err", err)
		return
	}
	defer conn.Close()
	if _, err := bw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: " + DialProtocol + "\r\n\r\n"); err != nil {
		return
	}
	if err := bw.Flush(); err != nil {
		return
	}
	// What the client sent after its request may sit in bw's reader.
	relay(g, &bufferedConn{Conn: conn, r: bw.Reader})
}

// bufferedConn reads through r (which holds bytes read ahead of the
// hijack) and writes and closes the connection itself.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (b *bufferedConn) Read(p []byte) (int, error) { return b.r.Read(p) }

func (b *bufferedConn) CloseWrite() error { return closeWrite(b.Conn) }

// closeWrite ends c's writing direction, or all of c when it cannot
// half-close.
func closeWrite(c net.Conn) error {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Close()
}

// relay copies a to b and b to a until both directions ended, passing
// each end on as a half-close.
func relay(a, b net.Conn) {
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		_ = closeWrite(dst)
		done <- struct{}{}
	}
	go pipe(a, b)
	go pipe(b, a)
	<-done
	<-done
}

// DialVM connects to TCP port of a running VM's guest through the daemon
// (the guest's address, else its loopback over SSH) and returns the
// connection: it half-closes (CloseWrite) and Close ends it. Errors
// before the connection (VM not running, nothing listens on the port)
// are *errdefs.Error values.
func (c *Client) DialVM(ctx context.Context, ref string, port int) (net.Conn, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", c.socket)
	if err != nil {
		return nil, &UnreachableError{Socket: c.socket, Err: err}
	}
	// The request is written by hand: the connection must stay a
	// *net.UnixConn so that the caller can half-close it.
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	req, err := c.newRequest(ctx, "POST", "/v1/vms/"+esc(ref)+"/dial", url.Values{"port": {strconv.Itoa(port)}}, nil)
	if err != nil {
		stop()
		conn.Close()
		return nil, err
	}
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", DialProtocol)
	br := bufio.NewReader(conn)
	var resp *http.Response
	if err = req.Write(conn); err == nil {
		resp, err = http.ReadResponse(br, req)
	}
	if !stop() {
		err = ctx.Err()
	}
	if err != nil {
		conn.Close()
		return nil, err
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		defer conn.Close()
		defer resp.Body.Close()
		if resp.StatusCode/100 == 2 {
			return nil, &errdefs.Error{Code: errdefs.CodeInternal, Message: "daemon did not upgrade the dial: " + resp.Status}
		}
		return nil, readError(resp)
	}
	return &bufferedConn{Conn: conn, r: br}, nil
}
