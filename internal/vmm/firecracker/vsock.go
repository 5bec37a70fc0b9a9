package firecracker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"time"

	"github.com/banger/banger/internal/guestctl"
	"github.com/banger/banger/internal/vmm"
)

// Firecracker's vsock is "hybrid": the host side is the unix socket the
// device was given as uds_path. A host process connects to it and writes
// "CONNECT <port>\n"; Firecracker opens a connection to that guest vsock
// port and answers "OK <host port>\n" when the guest accepts it, or
// closes the connection when nothing listens there. After the answer the
// unix connection is the stream.

// maxAnswer bounds the handshake's answer: "OK " and a 32-bit port.
const maxAnswer = 32

// handshakeTimeout bounds one CONNECT when the caller's context has no
// earlier deadline.
const handshakeTimeout = 5 * time.Second

// ErrPortClosed is returned by Connect when Firecracker closed the
// connection instead of answering: no guest process listens on the port
// (or the guest has no vsock driver yet).
var ErrPortClosed = errors.New("connection closed without an answer: nothing listens on that guest vsock port")

var okAnswer = regexp.MustCompile(`^OK [0-9]{1,10}$`)

// Connect dials the hybrid vsock socket udsPath and asks Firecracker for
// guest port port. It returns the stream once Firecracker answered
// "OK <n>"; ErrPortClosed (wrapped) when it closed the connection; an
// error naming the bytes when the answer is anything else or longer than
// maxAnswer, and the context's error (or a timeout after
// handshakeTimeout) when no answer comes. It reads the answer a byte at a
// time, so no byte of the guest's stream is taken from the caller.
func Connect(ctx context.Context, udsPath string, port uint32) (net.Conn, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", udsPath)
	if err != nil {
		return nil, fmt.Errorf("firecracker vsock %s: %w", udsPath, err)
	}
	deadline, ctxBound := time.Now().Add(handshakeTimeout), false
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline, ctxBound = dl, true
	}
	_ = conn.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	_, err = handshake(conn, port)
	stop()
	if err != nil {
		conn.Close()
		switch {
		case ctx.Err() != nil:
			err = fmt.Errorf("%w (%v)", ctx.Err(), err)
		case errors.Is(err, os.ErrDeadlineExceeded) && ctxBound:
			err = fmt.Errorf("no answer: %w", context.DeadlineExceeded)
		case errors.Is(err, os.ErrDeadlineExceeded):
			err = fmt.Errorf("no answer within %v", handshakeTimeout)
		}
		return nil, fmt.Errorf("firecracker vsock %s, guest port %d: %w", udsPath, port, err)
	}
	_ = conn.SetDeadline(time.Time{})
	return conn, nil
}

// handshake writes the CONNECT line on rw and reads Firecracker's answer
// line (without its newline), bounded by maxAnswer.
func handshake(rw io.ReadWriter, port uint32) (string, error) {
	if _, err := io.WriteString(rw, "CONNECT "+strconv.FormatUint(uint64(port), 10)+"\n"); err != nil {
		return "", fmt.Errorf("send CONNECT: %w", err)
	}
	var line []byte
	b := make([]byte, 1)
	for {
		n, err := rw.Read(b)
		if n == 1 {
			if b[0] == '\n' {
				break
			}
			line = append(line, b[0])
			if len(line) > maxAnswer {
				return "", fmt.Errorf("answer longer than %d bytes: %q…", maxAnswer, line[:maxAnswer])
			}
			continue
		}
		if errors.Is(err, io.EOF) {
			if len(line) == 0 {
				return "", ErrPortClosed
			}
			return "", fmt.Errorf("answer %q cut short: %w", line, ErrPortClosed)
		}
		if err != nil {
			return "", fmt.Errorf("read the answer to CONNECT: %w", err)
		}
	}
	if !okAnswer.Match(line) {
		return "", fmt.Errorf("unexpected answer to CONNECT: %q", line)
	}
	return string(line), nil
}

// refusedRetry is how often DialControl asks again while the guest's
// channel is not listening yet.
const refusedRetry = 50 * time.Millisecond

// DialControl connects to the control channel of the VM in dir: guest
// port guestctl.VsockPort through the vsock socket <dir>/vsock.sock. It
// fails at once when no firecracker serves that socket (no file, or
// nobody accepts on it). A guest that does not listen on the port yet (a
// guest still booting, a restored guest whose vsock transport is being
// reset) has its CONNECT closed; DialControl asks again every 50 ms until
// ctx ends, then fails with ErrPortClosed. See vmm.Controller.
func (d *Driver) DialControl(ctx context.Context, dir string) (net.Conn, error) {
	sock := filepath.Join(dir, vmm.VsockFile)
	for {
		conn, err := Connect(ctx, sock, guestctl.VsockPort)
		if err == nil || !errors.Is(err, ErrPortClosed) {
			return conn, err
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("control channel of %s: %w", dir, err)
		case <-time.After(refusedRetry):
		}
	}
}

var _ vmm.Controller = (*Driver)(nil)
