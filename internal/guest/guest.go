// Package guest is the daemon's access to a running guest over SSH: the
// daemon's ed25519 key, the pinned host key check, dialing with retries, a
// pool of connections per VM, and running commands with streams.
//
// It knows nothing of VMs' records or of how guests are booted; it is given
// an Endpoint and talks SSH to it.
package guest

import (
	"context"
	"io"
	"net"
)

// Endpoint is where and how to reach a guest's sshd.
type Endpoint struct {
	Host    string // guest IP
	Port    int    // 22 when 0
	User    string // "root" when empty
	HostKey string // pinned host public key, authorized_keys format; a mismatch fails the dial
}

// Client is one SSH connection to a guest. Safe for concurrent use: each call
// opens its own SSH session (channel) on the shared connection.
type Client interface {
	// Run runs cmd through the guest's login shell (`sh -c` semantics) with
	// stdin (may be nil), and copies its output to stdout/stderr (either may
	// be nil to discard). It returns the command's exit status; err is set
	// only when the command could not be run or the connection broke (then
	// exitCode is -1). Cancelling ctx closes the session.
	Run(ctx context.Context, cmd string, stdin io.Reader, stdout, stderr io.Writer) (exitCode int, err error)

	// Close closes the connection. Idempotent.
	Close() error
}

// TCPDialer is a Client that can also open TCP connections from the guest
// (SSH direct-tcpip): the real and pooled clients are.
type TCPDialer interface {
	// DialTCP connects to addr ("host:port") as the guest sees it. An
	// error wrapping ErrConnLost means the SSH connection itself is gone;
	// any other is the guest refusing (nothing listens there).
	DialTCP(ctx context.Context, addr string) (net.Conn, error)
}

// PTY describes a pseudo-terminal asked of the guest's sshd.
type PTY struct {
	Term string // TERM of the command, e.g. xterm-256color
	Cols int
	Rows int
}

// WindowSize is a terminal's size in character cells.
type WindowSize struct {
	Cols, Rows int
}

// Terminal is a Client that can run a command on a pseudo-terminal in the
// guest: the real and pooled clients are.
type Terminal interface {
	// RunTerminal runs cmd as Run does but on a new pseudo-terminal of the
	// guest (sshd's pty-req): the command's stdin, stdout and stderr are
	// the terminal, so everything it writes comes to out (in the
	// terminal's own line endings) and in is what is typed on it. Each
	// size from resize changes the terminal's size (the command gets
	// SIGWINCH). The end of in is passed on as the channel's EOF, which a
	// terminal does not turn into end-of-file. A cancelled ctx closes the
	// session, which hangs the terminal up (SIGHUP to the command).
	RunTerminal(ctx context.Context, cmd string, pty PTY, in io.Reader, out io.Writer, resize <-chan WindowSize) (exitCode int, err error)
}
