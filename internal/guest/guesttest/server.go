// Package guesttest is an in-process SSH server for tests of code that talks
// to guests: it listens on 127.0.0.1 only, accepts one client key, and runs
// each exec request with `/bin/sh -c` on the host, with stdin, stdout, stderr,
// exit-status, exit-signal and the "signal" request, as OpenSSH's sshd does.
//
// It owns only its listener, its connections and the processes it started,
// all released by Close (registered with t.Cleanup). It must never listen on
// anything but loopback.
package guesttest

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// Server is a running loopback SSH server.
type Server struct {
	// Host and Port are where it listens (Host is always 127.0.0.1).
	Host string
	Port int
	// HostKey is its host public key in authorized_keys format, to pin.
	HostKey string
	// IgnoreSignals makes it ignore "signal" requests, as OpenSSH does in
	// sessions of root.
	IgnoreSignals atomic.Bool
	// KeepaliveDelay (nanoseconds) delays each keepalive answer: a guest
	// slow to answer.
	KeepaliveDelay atomic.Int64

	ln         net.Listener
	cfg        *ssh.ServerConfig
	accepted   atomic.Int64
	keepalives atomic.Int64
	execs      atomic.Int64

	mu     sync.Mutex
	conns  map[*gateConn]struct{}
	procs  map[*exec.Cmd]struct{}
	closed bool
	wg     sync.WaitGroup
}

// New starts a server that accepts only clientKey and stops it when t ends.
func New(t testing.TB, clientKey ssh.PublicKey) *Server {
	t.Helper()
	s, err := Start(clientKey)
	if err != nil {
		t.Fatalf("start test SSH server: %v", err)
	}
	t.Cleanup(s.Close)
	return s
}

// Start starts a server that accepts only clientKey. The caller must Close it.
func Start(clientKey ssh.PublicKey) (*Server, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		return nil, err
	}
	want := clientKey.Marshal()
	cfg := &ssh.ServerConfig{
		PublicKeyCallback: func(_ ssh.ConnMetadata, k ssh.PublicKey) (*ssh.Permissions, error) {
			if string(k.Marshal()) == string(want) {
				return nil, nil
			}
			return nil, errors.New("key not authorized")
		},
	}
	cfg.AddHostKey(signer)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := ln.Addr().(*net.TCPAddr)
	s := &Server{
		Host:    "127.0.0.1",
		Port:    addr.Port,
		HostKey: strings.TrimSpace(string(ssh.MarshalAuthorizedKey(signer.PublicKey()))),
		ln:      ln,
		cfg:     cfg,
		conns:   map[*gateConn]struct{}{},
		procs:   map[*exec.Cmd]struct{}{},
	}
	s.wg.Add(1)
	go s.serve()
	return s, nil
}

// Addr is host:port.
func (s *Server) Addr() string { return net.JoinHostPort(s.Host, strconv.Itoa(s.Port)) }

// Accepted is how many TCP connections the server has accepted.
func (s *Server) Accepted() int { return int(s.accepted.Load()) }

// Keepalives is how many keepalive@openssh.com requests it has answered.
func (s *Server) Keepalives() int { return int(s.keepalives.Load()) }

// Execs is how many exec requests it has started.
func (s *Server) Execs() int { return int(s.execs.Load()) }

// DropConnections closes every live connection at the TCP level, as a guest
// that rebooted would. Processes they started go on, as under sshd without a
// pty, until they end or Close kills them.
func (s *Server) DropConnections() {
	s.mu.Lock()
	conns := make([]*gateConn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
}

// Freeze makes every live connection stop reading and writing without
// closing it, as a guest that was hard-reset would look to the client: its
// requests go unanswered. New connections are not frozen.
func (s *Server) Freeze() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		c.freeze()
	}
}

// Close stops the server, closes every connection and kills every process it
// started. Idempotent.
func (s *Server) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	s.ln.Close()
	for c := range s.conns {
		c.Close()
	}
	for cmd := range s.procs {
		if cmd.Process != nil {
			// The whole group: a shell's children would hold its output open.
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		}
	}
	s.mu.Unlock()
	s.wg.Wait()
}

func (s *Server) serve() {
	defer s.wg.Done()
	for {
		nc, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.accepted.Add(1)
		c := newGateConn(nc)
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			nc.Close()
			return
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			s.handleConn(c)
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
		}()
	}
}

func (s *Server) handleConn(c *gateConn) {
	defer c.Close()
	sc, chans, reqs, err := ssh.NewServerConn(c, s.cfg)
	if err != nil {
		return
	}
	defer sc.Close()
	go func() {
		for r := range reqs {
			if r.Type == "keepalive@openssh.com" {
				s.keepalives.Add(1)
				time.Sleep(time.Duration(s.KeepaliveDelay.Load()))
			}
			// OpenSSH answers unknown global requests, keepalives included,
			// with a failure; any answer proves the connection is alive.
			if r.WantReply {
				r.Reply(false, nil)
			}
		}
	}()
	var wg sync.WaitGroup
	for nch := range chans {
		if nch.ChannelType() != "session" {
			nch.Reject(ssh.UnknownChannelType, "only session channels are served")
			continue
		}
		ch, chReqs, err := nch.Accept()
		if err != nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.handleSession(ch, chReqs)
		}()
	}
	wg.Wait()
}

// session is one session channel: at most one exec, and signals for it.
type session struct {
	mu      sync.Mutex
	cmd     *exec.Cmd
	started bool
}

func (s *Server) handleSession(ch ssh.Channel, reqs <-chan *ssh.Request) {
	sess := &session{}
	done := make(chan struct{})
	for r := range reqs {
		switch r.Type {
		case "exec":
			var msg struct{ Command string }
			sess.mu.Lock()
			already := sess.started
			sess.started = true
			sess.mu.Unlock()
			if already || ssh.Unmarshal(r.Payload, &msg) != nil {
				r.Reply(false, nil)
				continue
			}
			cmd, stdin, err := s.startCmd(msg.Command, ch)
			if err != nil {
				r.Reply(false, nil)
				continue
			}
			sess.mu.Lock()
			sess.cmd = cmd
			sess.mu.Unlock()
			r.Reply(true, nil)
			go func() {
				// stdin is copied apart and never waited for, like sshd: a
				// command that exits without reading it still exits.
				io.Copy(stdin, ch)
				stdin.Close()
			}()
			go func() {
				s.finish(cmd, ch)
				close(done)
			}()
		case "signal":
			var msg struct{ Signal string }
			if !s.IgnoreSignals.Load() && ssh.Unmarshal(r.Payload, &msg) == nil {
				sess.mu.Lock()
				if sess.cmd != nil && sess.cmd.Process != nil {
					if sig, ok := signals[msg.Signal]; ok {
						sess.cmd.Process.Signal(sig)
					}
				}
				sess.mu.Unlock()
			}
			if r.WantReply {
				r.Reply(true, nil)
			}
		case "env":
			if r.WantReply {
				r.Reply(true, nil)
			}
		default:
			if r.WantReply {
				r.Reply(false, nil)
			}
		}
	}
	// The client closed the channel. A process still running is left to
	// finish (as sshd leaves it without a pty); Close kills what remains.
	sess.mu.Lock()
	started := sess.started && sess.cmd != nil
	sess.mu.Unlock()
	if started {
		<-done
	}
	ch.Close()
}

func (s *Server) startCmd(command string, ch ssh.Channel) (*exec.Cmd, io.WriteCloser, error) {
	cmd := exec.Command("/bin/sh", "-c", command)
	cmd.Stdout = ch
	cmd.Stderr = ch.Stderr()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// A process that leaves children holding stdout must not hold the
	// session open forever.
	cmd.WaitDelay = 5 * time.Second
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, nil, err
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, nil, errors.New("server closed")
	}
	// Counted before it starts: what the command does (a signal to
	// another command, a file a test waits for) must find it counted.
	s.execs.Add(1)
	if err := cmd.Start(); err != nil {
		s.execs.Add(-1)
		s.mu.Unlock()
		return nil, nil, err
	}
	s.procs[cmd] = struct{}{}
	s.mu.Unlock()
	return cmd, stdin, nil
}

func (s *Server) finish(cmd *exec.Cmd, ch ssh.Channel) {
	err := cmd.Wait()
	s.mu.Lock()
	delete(s.procs, cmd)
	s.mu.Unlock()
	ch.CloseWrite()
	var ee *exec.ExitError
	switch {
	case err == nil:
		ch.SendRequest("exit-status", false, exitStatus(0))
	case errors.As(err, &ee):
		ws, _ := ee.Sys().(syscall.WaitStatus)
		if ws.Signaled() {
			ch.SendRequest("exit-signal", false, ssh.Marshal(struct {
				Signal     string
				CoreDumped bool
				Error      string
				Lang       string
			}{Signal: signalName(ws.Signal()), Error: ws.Signal().String()}))
		} else {
			ch.SendRequest("exit-status", false, exitStatus(ee.ExitCode()))
		}
	default:
		// Could not wait for it: report nothing, as a broken sshd would.
	}
	ch.Close()
}

func exitStatus(code int) []byte {
	b := make([]byte, 4)
	binary.BigEndian.PutUint32(b, uint32(code))
	return b
}

var signals = map[string]syscall.Signal{
	"ABRT": syscall.SIGABRT, "ALRM": syscall.SIGALRM, "FPE": syscall.SIGFPE,
	"HUP": syscall.SIGHUP, "ILL": syscall.SIGILL, "INT": syscall.SIGINT,
	"KILL": syscall.SIGKILL, "PIPE": syscall.SIGPIPE, "QUIT": syscall.SIGQUIT,
	"SEGV": syscall.SIGSEGV, "TERM": syscall.SIGTERM, "USR1": syscall.SIGUSR1,
	"USR2": syscall.SIGUSR2,
}

func signalName(sig syscall.Signal) string {
	for name, s := range signals {
		if s == sig {
			return name
		}
	}
	return fmt.Sprintf("SIG%d", int(sig))
}

// gateConn is a net.Conn that Freeze can stall: reads and writes block
// until the connection is closed.
type gateConn struct {
	net.Conn
	frozen    atomic.Bool
	closed    chan struct{}
	closeOnce sync.Once
}

func newGateConn(c net.Conn) *gateConn {
	return &gateConn{Conn: c, closed: make(chan struct{})}
}

func (c *gateConn) freeze() { c.frozen.Store(true) }

func (c *gateConn) stall() error {
	if c.frozen.Load() {
		<-c.closed
		return net.ErrClosed
	}
	return nil
}

func (c *gateConn) Read(p []byte) (int, error) {
	if err := c.stall(); err != nil {
		return 0, err
	}
	n, err := c.Conn.Read(p)
	if err == nil {
		// Data read just before a freeze is dropped, as a dead host would.
		if err := c.stall(); err != nil {
			return 0, err
		}
	}
	return n, err
}

func (c *gateConn) Write(p []byte) (int, error) {
	if err := c.stall(); err != nil {
		return 0, err
	}
	return c.Conn.Write(p)
}

func (c *gateConn) Close() error {
	c.closeOnce.Do(func() { close(c.closed) })
	return c.Conn.Close()
}
