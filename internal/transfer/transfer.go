// Package transfer is banger's bulk data channel from the daemon into a
// guest: plain TCP over the VM's own tap link instead of the SSH session,
// because a guest under software emulation decrypts SSH at a few tens of
// MB/s while it takes plain TCP several times faster.
//
// The SSH session stays the control channel: the daemon passes a one-time
// token in the (encrypted) command it runs, the guest listens on a fresh
// port and announces it on that session, and the daemon connects and sends
// the token, then the stream in frames. The guest accepts only the
// connection that presents the token and closes its listener then; a
// stream cut short (no end frame) is an error, never a short success.
//
// The package holds both ends of the protocol and nothing else: it knows
// nothing of VMs, scripts or what the stream carries. cmd/banger-init runs
// Receive in the guest; the daemon runs Send.
package transfer

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
)

// TokenEnv is the environment variable that carries the token, hex encoded,
// to the guest side.
const TokenEnv = "BANGER_XFER_TOKEN"

// tokenLen is the token's length in bytes (hex encoding doubles it).
const tokenLen = 32

// AnnouncePrefix starts the line the guest writes (on the SSH session's
// stderr) to say where to send: "banger-listen=PORT", or
// "banger-listen=stdin" when it reads the stream from the session instead.
const AnnouncePrefix = "banger-listen="

// AnnounceStdin is the announcement of a guest that reads the stream from
// the SSH session (its banger-init has no receiver, or none was asked for).
const AnnounceStdin = AnnouncePrefix + "stdin"

// frameMax bounds a frame's length: a larger length prefix is corruption.
const frameMax = 4 << 20

// sendChunk is the frame size the sender uses.
const sendChunk = 1 << 20

// NewToken returns a fresh random token, hex encoded.
func NewToken() (string, error) {
	b := make([]byte, tokenLen)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return hex.EncodeToString(b), nil
}

// ParseToken decodes a hex token and checks its length.
func ParseToken(s string) ([]byte, error) {
	b, err := hex.DecodeString(strings.TrimSpace(s))
	if err != nil || len(b) != tokenLen {
		return nil, fmt.Errorf("transfer token must be %d hex digits", 2*tokenLen)
	}
	return b, nil
}

// Announce is the line (without newline) a receiver listening on port
// writes.
func Announce(port int) string { return AnnouncePrefix + strconv.Itoa(port) }

// ParseAnnounce reads an announcement line: the port, or stdin true, and
// ok false when the line is not an announcement.
func ParseAnnounce(line string) (port int, stdin bool, ok bool) {
	v, found := strings.CutPrefix(strings.TrimSpace(line), AnnouncePrefix)
	if !found {
		return 0, false, false
	}
	if v == "stdin" {
		return 0, true, true
	}
	p, err := strconv.Atoi(v)
	if err != nil || p < 1 || p > 65535 {
		return 0, false, false
	}
	return p, false, true
}

// ReceiveOptions tunes Receive.
type ReceiveOptions struct {
	// HandshakeTimeout bounds how long one connection may take to present
	// the token (default 10 s).
	HandshakeTimeout time.Duration
	// Rejected, when set, is told about each connection refused for a wrong
	// or missing token.
	Rejected func(remote string, err error)
}

// Receive accepts connections on ln until one presents token, closes ln,
// and copies that connection's stream to out until its end frame. Other
// connections are closed unread beyond the token. It returns the bytes
// written; it fails when ctx ends before a valid connection arrives, when
// the stream breaks or ends without its end frame, or when out fails.
func Receive(ctx context.Context, ln net.Listener, token []byte, out io.Writer, opts ReceiveOptions) (int64, error) {
	if len(token) != tokenLen {
		ln.Close()
		return 0, fmt.Errorf("transfer token must be %d bytes", tokenLen)
	}
	if opts.HandshakeTimeout <= 0 {
		opts.HandshakeTimeout = 10 * time.Second
	}
	won := make(chan net.Conn, 1)
	acceptErr := make(chan error, 1)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				acceptErr <- err
				return
			}
			// Handshakes run concurrently, so a silent connection cannot
			// hold the channel up.
			go func(c net.Conn) {
				if err := checkToken(c, token, opts.HandshakeTimeout); err != nil {
					if opts.Rejected != nil {
						opts.Rejected(c.RemoteAddr().String(), err)
					}
					c.Close()
					return
				}
				select {
				case won <- c:
				default:
					c.Close() // a second valid connection: the token is spent
				}
			}(c)
		}
	}()
	var conn net.Conn
	select {
	case conn = <-won:
		ln.Close()
	case err := <-acceptErr:
		ln.Close()
		return 0, fmt.Errorf("accept: %w", err)
	case <-ctx.Done():
		ln.Close()
		return 0, fmt.Errorf("no sender connected: %w", context.Cause(ctx))
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	n, err := readFrames(bufio.NewReaderSize(conn, 256<<10), out)
	if err != nil && ctx.Err() != nil {
		err = fmt.Errorf("%w (%w)", err, context.Cause(ctx))
	}
	return n, err
}

func checkToken(c net.Conn, token []byte, timeout time.Duration) error {
	got := make([]byte, tokenLen)
	_ = c.SetReadDeadline(time.Now().Add(timeout))
	if _, err := io.ReadFull(c, got); err != nil {
		return fmt.Errorf("no token: %w", err)
	}
	_ = c.SetReadDeadline(time.Time{})
	if subtle.ConstantTimeCompare(got, token) != 1 {
		return errors.New("wrong token")
	}
	return nil
}

// readFrames copies frames to out until the zero-length end frame.
func readFrames(r io.Reader, out io.Writer) (int64, error) {
	var hdr [4]byte
	buf := make([]byte, sendChunk)
	var total int64
	for {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return total, fmt.Errorf("stream ended after %d bytes without its end mark: the sender stopped", total)
			}
			return total, fmt.Errorf("read stream: %w", err)
		}
		n := binary.BigEndian.Uint32(hdr[:])
		if n == 0 {
			return total, nil
		}
		if n > frameMax {
			return total, fmt.Errorf("stream is corrupt: a frame of %d bytes (at most %d)", n, frameMax)
		}
		if int(n) > len(buf) {
			buf = make([]byte, n)
		}
		if _, err := io.ReadFull(r, buf[:n]); err != nil {
			return total, fmt.Errorf("stream ended inside a frame after %d bytes: the sender stopped", total)
		}
		if _, err := out.Write(buf[:n]); err != nil {
			return total, fmt.Errorf("write stream: %w", err)
		}
		total += int64(n)
	}
}

// Send presents token (hex) on conn, then sends r's bytes in frames and
// the end frame once r is at EOF. When r fails, or ctx ends, the end frame
// is not sent and conn is closed, so the receiver fails instead of taking a
// short stream as whole. Send closes conn; it returns the bytes sent.
func Send(ctx context.Context, conn net.Conn, token string, r io.Reader) (int64, error) {
	defer conn.Close()
	tok, err := ParseToken(token)
	if err != nil {
		return 0, err
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	w := bufio.NewWriterSize(conn, 64<<10)
	if _, err := w.Write(tok); err != nil {
		return 0, sendErr(ctx, err)
	}
	buf := make([]byte, 4+sendChunk)
	var total int64
	for {
		n, rerr := io.ReadFull(r, buf[4:])
		if n > 0 {
			binary.BigEndian.PutUint32(buf[:4], uint32(n))
			if _, err := w.Write(buf[:4+n]); err != nil {
				return total, sendErr(ctx, err)
			}
			total += int64(n)
		}
		if errors.Is(rerr, io.EOF) || errors.Is(rerr, io.ErrUnexpectedEOF) {
			break
		}
		if rerr != nil {
			return total, fmt.Errorf("read the stream to send: %w", rerr)
		}
	}
	if _, err := w.Write([]byte{0, 0, 0, 0}); err != nil {
		return total, sendErr(ctx, err)
	}
	if err := w.Flush(); err != nil {
		return total, sendErr(ctx, err)
	}
	return total, nil
}

func sendErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("send stream: %w", context.Cause(ctx))
	}
	return fmt.Errorf("send stream: %w", err)
}
