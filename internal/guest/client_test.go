package guest

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/banger/banger/internal/guest/guesttest"
	"github.com/banger/banger/internal/shell"
)

// fixture is a loopback SSH server and a key it accepts.
type fixture struct {
	srv    *guesttest.Server
	signer ssh.Signer
	ep     Endpoint
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	signer, err := ssh.NewSignerFromKey(mustEd25519(t))
	if err != nil {
		t.Fatal(err)
	}
	srv := guesttest.New(t, signer.PublicKey())
	return &fixture{srv: srv, signer: signer, ep: Endpoint{Host: srv.Host, Port: srv.Port, HostKey: srv.HostKey}}
}

func (f *fixture) dial(t testing.TB) Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, f.ep, f.signer)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func run(t testing.TB, c Client, cmd string, stdin io.Reader) (code int, stdout, stderr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var o, e bytes.Buffer
	code, err := c.Run(ctx, cmd, stdin, &o, &e)
	if err != nil {
		t.Fatalf("Run(%q): %v", cmd, err)
	}
	return code, o.String(), e.String()
}

func TestDialPinnedHostKey(t *testing.T) {
	f := newFixture(t)
	c := f.dial(t)
	if code, out, _ := run(t, c, "echo hello", nil); code != 0 || out != "hello\n" {
		t.Fatalf("echo hello: code %d, out %q", code, out)
	}
	if err := c.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestDialRefusesOtherHostKey(t *testing.T) {
	f := newFixture(t)
	other, _ := ssh.NewSignerFromKey(mustEd25519(t))
	ep := f.ep
	ep.HostKey = AuthorizedKey(other)
	_, err := Dial(context.Background(), ep, f.signer)
	var mm *HostKeyMismatchError
	if !errors.As(err, &mm) {
		t.Fatalf("err = %v, want a *HostKeyMismatchError", err)
	}
	srvKey, _ := ParseHostKey(f.srv.HostKey)
	pinned, got := ssh.FingerprintSHA256(other.PublicKey()), ssh.FingerprintSHA256(srvKey)
	if !strings.Contains(err.Error(), pinned) || !strings.Contains(err.Error(), got) {
		t.Errorf("error %q does not name both fingerprints %s and %s", err, pinned, got)
	}

	// WaitReady never retries a mismatch: it returns at once.
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := WaitReady(ctx, ep, f.signer, 10*time.Millisecond); !errors.As(err, &mm) {
		t.Fatalf("WaitReady err = %v, want a *HostKeyMismatchError", err)
	}
	if time.Since(start) > 2*time.Second {
		t.Error("WaitReady retried a host key mismatch")
	}
}

func TestDialRefusesMissingHostKey(t *testing.T) {
	f := newFixture(t)
	ep := f.ep
	ep.HostKey = ""
	_, err := Dial(context.Background(), ep, f.signer)
	if err == nil || !strings.Contains(err.Error(), "never trusts") {
		t.Fatalf("err = %v, want a refusal to trust on first use", err)
	}
	if f.srv.Accepted() != 0 {
		t.Error("a connection was made without a pinned host key")
	}
	ep.HostKey = "ssh-ed25519 not-base64"
	if _, err := Dial(context.Background(), ep, f.signer); err == nil || !strings.Contains(err.Error(), "authorized_keys format") {
		t.Fatalf("err = %v, want a malformed host key error", err)
	}
}

func TestDialRefusedClientKey(t *testing.T) {
	f := newFixture(t)
	stranger, _ := ssh.NewSignerFromKey(mustEd25519(t))
	_, err := Dial(context.Background(), f.ep, stranger)
	if err == nil || !strings.Contains(err.Error(), "unable to authenticate") {
		t.Fatalf("err = %v, want an authentication failure", err)
	}
}

func TestDialCancelled(t *testing.T) {
	// A listener that accepts and never speaks: the handshake must give up
	// when ctx does.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	f := newFixture(t)
	ep := f.ep
	ep.Port = ln.Addr().(*net.TCPAddr).Port
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = Dial(ctx, ep, f.signer)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want context.DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("Dial took %v after its deadline", d)
	}
}

func TestRunExitCodesAndStreams(t *testing.T) {
	f := newFixture(t)
	c := f.dial(t)
	tests := []struct {
		cmd            string
		code           int
		stdout, stderr string
	}{
		{"true", 0, "", ""},
		{"exit 3", 3, "", ""},
		{"exit 255", 255, "", ""},
		{"echo out; echo err >&2; exit 7", 7, "out\n", "err\n"},
		{"printf 'banger-pgid:1\\n' >&2", 0, "", "banger-pgid:1\n"},
		{"printf '%s' \"$0\" >/dev/null; echo $((6*7))", 0, "42\n", ""},
		{"no-such-command-banger", 127, "", "not found"},
	}
	for _, tt := range tests {
		code, out, errOut := run(t, c, tt.cmd, nil)
		if code != tt.code || out != tt.stdout || !strings.Contains(errOut, tt.stderr) || strings.Contains(errOut, "banger-pgid:") != strings.Contains(tt.stderr, "banger-pgid:") {
			t.Errorf("Run(%q) = %d, %q, %q; want %d, %q, stderr containing %q", tt.cmd, code, out, errOut, tt.code, tt.stdout, tt.stderr)
		}
	}
	// nil writers discard.
	if code, err := c.Run(context.Background(), "echo discarded; exit 4", nil, nil, nil); code != 4 || err != nil {
		t.Errorf("Run with nil writers = %d, %v; want 4, nil", code, err)
	}
}

func TestRunKilledBySignal(t *testing.T) {
	f := newFixture(t)
	c := f.dial(t)
	code, err := c.Run(context.Background(), "kill -KILL $$", nil, nil, nil)
	if code != -1 || err == nil || !strings.Contains(err.Error(), "killed by signal KILL") {
		t.Fatalf("Run = %d, %v; want -1 and a killed-by-signal error", code, err)
	}
	if errors.Is(err, ErrConnLost) {
		t.Error("a killed command was reported as a lost connection")
	}
}

func TestRunStdinMiB(t *testing.T) {
	f := newFixture(t)
	c := f.dial(t)
	data := make([]byte, 1<<20+7)
	rand.Read(data)
	var out bytes.Buffer
	code, err := c.Run(context.Background(), "cat", bytes.NewReader(data), &out, nil)
	if err != nil || code != 0 {
		t.Fatalf("cat = %d, %v", code, err)
	}
	if !bytes.Equal(out.Bytes(), data) {
		t.Fatalf("cat returned %d bytes differing from the %d sent", out.Len(), len(data))
	}
	// Through a pipe, read in odd-sized pieces, counted on the guest.
	_, wc, _ := run(t, c, "wc -c", io.MultiReader(bytes.NewReader(data[:1000]), bytes.NewReader(data[1000:])))
	if strings.TrimSpace(wc) != fmt.Sprint(len(data)) {
		t.Errorf("guest counted %s bytes, sent %d", wc, len(data))
	}
}

func TestRunStdinNotConsumed(t *testing.T) {
	f := newFixture(t)
	c := f.dial(t)
	// A command that exits without reading its input succeeds, also when
	// stdin never ends.
	pr, pw := io.Pipe()
	defer pw.Close()
	go pw.Write(make([]byte, 1<<20))
	done := make(chan struct{})
	var code int
	var err error
	go func() {
		code, err = c.Run(context.Background(), "head -c 10 >/dev/null; exit 5", pr, nil, nil)
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run waited for stdin after the command exited")
	}
	if code != 5 || err != nil {
		t.Fatalf("Run = %d, %v; want 5, nil", code, err)
	}
}

type failingReader struct {
	data []byte
	err  error
}

func (r *failingReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, r.err
	}
	n := copy(p, r.data)
	r.data = r.data[n:]
	return n, nil
}

func TestRunStdinReadErrorAborts(t *testing.T) {
	for _, signals := range []bool{true, false} {
		t.Run(fmt.Sprintf("server signals %v", signals), func(t *testing.T) {
			testRunStdinReadErrorAborts(t, signals)
		})
	}
}

func testRunStdinReadErrorAborts(t *testing.T, signals bool) {
	f := newFixture(t)
	f.srv.IgnoreSignals.Store(!signals)
	c := f.dial(t)
	marker := filepath.Join(t.TempDir(), "completed")
	in := &failingReader{data: []byte("partial"), err: errors.New("client went away")}
	code, err := c.Run(context.Background(), "cat >/dev/null; touch "+shell.Quote(marker), in, nil, nil)
	if code != -1 || err == nil || !strings.Contains(err.Error(), "client went away") {
		t.Fatalf("Run = %d, %v; want -1 and the read error", code, err)
	}
	time.Sleep(500 * time.Millisecond)
	if _, err := os.Stat(marker); err == nil {
		t.Error("the command took a truncated stdin for a whole one and went on")
	}
}

func TestRunConcurrentOnOneConnection(t *testing.T) {
	f := newFixture(t)
	c := f.dial(t)
	const workers, each = 8, 5
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				want := fmt.Sprintf("%d-%d", w, i)
				var out bytes.Buffer
				code, err := c.Run(context.Background(), "cat; exit "+fmt.Sprint(w), strings.NewReader(want), &out, nil)
				if err != nil || code != w || out.String() != want {
					t.Errorf("worker %d run %d: %d, %q, %v", w, i, code, out.String(), err)
				}
			}
		}()
	}
	wg.Wait()
	if f.srv.Accepted() != 1 {
		t.Errorf("server accepted %d connections, want 1", f.srv.Accepted())
	}
}

func TestRunCancel(t *testing.T) {
	for _, signals := range []bool{true, false} {
		t.Run(fmt.Sprintf("server signals %v", signals), func(t *testing.T) {
			testRunCancel(t, signals)
		})
	}
}

func testRunCancel(t *testing.T, signals bool) {
	f := newFixture(t)
	f.srv.IgnoreSignals.Store(!signals)
	c := f.dial(t)
	dir := t.TempDir()
	got := filepath.Join(dir, "signal")
	ready := filepath.Join(dir, "ready")
	script := fmt.Sprintf("trap 'echo TERM > %s; exit 9' TERM; touch %s; while :; do sleep 0.05; done", shell.Quote(got), shell.Quote(ready))
	ctx, cancel := context.WithCancel(context.Background())
	res := make(chan error, 1)
	go func() {
		code, err := c.Run(ctx, script, nil, nil, nil)
		if code != -1 {
			err = fmt.Errorf("code %d, want -1 (%v)", code, err)
		}
		res <- err
	}()
	waitFile(t, ready)
	cancel()
	select {
	case err := <-res:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	waitFile(t, got)
	if !signals && f.srv.Execs() != 2 {
		t.Errorf("server ran %d commands, want the command and its kill", f.srv.Execs())
	}
	// The connection is still usable.
	if code, _, _ := run(t, c, "exit 2", nil); code != 2 {
		t.Errorf("after cancel: code %d, want 2", code)
	}
}

func waitFile(t *testing.T, path string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := os.Stat(path); err == nil {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("%s did not appear", path)
}

func TestRunConnectionDroppedMidCommand(t *testing.T) {
	f := newFixture(t)
	c := f.dial(t)
	ready := filepath.Join(t.TempDir(), "ready")
	res := make(chan error, 1)
	go func() {
		code, err := c.Run(context.Background(), "touch "+shell.Quote(ready)+"; sleep 30", nil, nil, nil)
		if code != -1 {
			err = fmt.Errorf("code %d, want -1 (%v)", code, err)
		}
		res <- err
	}()
	waitFile(t, ready)
	f.srv.DropConnections()
	select {
	case err := <-res:
		if !errors.Is(err, ErrConnLost) {
			t.Fatalf("err = %v, want ErrConnLost", err)
		}
		if canRetry(err) {
			t.Error("a command that had started is marked retryable")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after the connection dropped")
	}
	// A Run on the dead connection fails before sending anything.
	_, err := c.Run(context.Background(), "true", nil, nil, nil)
	if !errors.Is(err, ErrConnLost) || !canRetry(err) {
		t.Fatalf("Run on a dead connection: %v, want a retryable ErrConnLost", err)
	}
}

func TestKeepaliveClosesFrozenConnection(t *testing.T) {
	setTimings(t, 50*time.Millisecond, 200*time.Millisecond)
	f := newFixture(t)
	c := f.dial(t).(*conn)
	time.Sleep(200 * time.Millisecond)
	if f.srv.Keepalives() == 0 {
		t.Fatal("no keepalive reached the server")
	}
	f.srv.Freeze()
	select {
	case <-c.done:
	case <-time.After(5 * time.Second):
		t.Fatal("a connection whose peer stopped answering was not closed")
	}
}

// setTimings shortens keepalives for one test.
func setTimings(t *testing.T, interval, timeout time.Duration) {
	oi, ot, os := keepaliveInterval, keepaliveTimeout, staleAfter
	keepaliveInterval, keepaliveTimeout, staleAfter = interval, timeout, interval
	t.Cleanup(func() { keepaliveInterval, keepaliveTimeout, staleAfter = oi, ot, os })
}

// waitThroughFront dials f's server with wait through a front that
// refuses the first refuse connections, as a guest whose sshd is not up
// yet does; it checks that wait kept trying and that the client runs a
// command afterwards, and returns the commands the server ran before
// that one.
func waitThroughFront(t *testing.T, refuse int, wait func(context.Context, Endpoint, ssh.Signer, time.Duration) (Client, error)) (execsBefore int) {
	t.Helper()
	f := newFixture(t)
	fr := newFront(t, f.srv.Addr(), refuse)
	ep := f.ep
	ep.Port = fr.port
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := wait(ctx, ep, f.signer, 20*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if fr.connections() < refuse+1 {
		t.Errorf("front saw %d attempts, want at least %d", fr.connections(), refuse+1)
	}
	execsBefore = f.srv.Execs()
	if code, out, _ := run(t, c, "echo up", nil); code != 0 || out != "up\n" {
		t.Errorf("after the wait: %d, %q", code, out)
	}
	return execsBefore
}

func TestWaitReady(t *testing.T) {
	waitThroughFront(t, 3, WaitReady)
}

func TestWaitDialRunsNothing(t *testing.T) {
	if n := waitThroughFront(t, 2, WaitDial); n != 0 {
		t.Errorf("WaitDial ran %d commands, want none", n)
	}
}

func TestWaitReadyTimesOutWithLastError(t *testing.T) {
	f := newFixture(t)
	// A socket bound but not listening: connects are refused, and no
	// parallel test can be handed the port meanwhile (a closed listener's
	// port can be, and one that never answers turns "refused" into a
	// timeout).
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	ep := f.ep
	ep.Port = sa.(*syscall.SockaddrInet4).Port
	// Long enough that a loaded host still completes the first attempt
	// (a refused connect is immediate); an attempt cut by the deadline does
	// not replace the last real error.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err = WaitReady(ctx, ep, f.signer, 20*time.Millisecond)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("err = %v, want DeadlineExceeded and the last error (connection refused)", err)
	}
}

func TestPgidReader(t *testing.T) {
	tests := []struct {
		name   string
		chunks []string
		pgid   int
		out    string
	}{
		{"marker then output", []string{"banger-pgid:1234\nerr\n"}, 1234, "err\n"},
		{"marker in pieces", []string{"bang", "er-pgid:12", "34", "\nmore", "\n"}, 1234, "more\n"},
		{"no marker", []string{"plain error\n"}, 0, "plain error\n"},
		{"long head without newline", []string{strings.Repeat("x", 100)}, 0, strings.Repeat("x", 100)},
		{"short head cut by the end", []string{"oops"}, 0, "oops"},
		{"bad number", []string{"banger-pgid:x1\n"}, 0, "banger-pgid:x1\n"},
		{"group 1 refused", []string{"banger-pgid:1\n"}, 0, "banger-pgid:1\n"},
		{"marker only", []string{"banger-pgid:77\n"}, 77, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			p := newPgidReader(newGate(&out))
			for _, c := range tt.chunks {
				if n, err := p.Write([]byte(c)); n != len(c) || err != nil {
					t.Fatalf("Write(%q) = %d, %v", c, n, err)
				}
			}
			p.flush()
			if p.group() != tt.pgid || out.String() != tt.out {
				t.Errorf("pgid %d, out %q; want %d, %q", p.group(), out.String(), tt.pgid, tt.out)
			}
			select {
			case <-p.known:
			default:
				t.Error("head still undecided after flush")
			}
		})
	}
	// Without a writer, output is dropped but the group still found.
	p := newPgidReader(nil)
	p.Write([]byte("banger-pgid:42\nx"))
	if p.group() != 42 {
		t.Errorf("pgid %d, want 42", p.group())
	}
}

func TestKillGroupCommandInShells(t *testing.T) {
	shells := [][]string{{"/bin/sh", "-c"}, {"/bin/bash", "-c"}, {"/bin/busybox", "sh", "-c"}}
	for _, sh := range shells {
		if _, err := os.Stat(sh[0]); err != nil {
			t.Logf("skipping %s: not installed", sh[0])
			continue
		}
		t.Run(filepath.Base(sh[0]), func(t *testing.T) {
			// A group leader with a child, as sshd's session shell is.
			leader := exec.Command("/bin/sh", "-c", "sleep 30 & wait")
			leader.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
			if err := leader.Start(); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- leader.Wait() }()
			t.Cleanup(func() { syscall.Kill(-leader.Process.Pid, syscall.SIGKILL) })
			time.Sleep(50 * time.Millisecond)
			argv := append(append([]string{}, sh[1:]...), killGroupCommand(leader.Process.Pid))
			if out, err := exec.Command(sh[0], argv...).CombinedOutput(); err != nil {
				t.Fatalf("%s: %v\n%s", sh[0], err, out)
			}
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				t.Fatal("process group still running")
			}
			deadline := time.Now().Add(3 * time.Second)
			for liveInGroup(leader.Process.Pid) > 0 {
				if time.Now().After(deadline) {
					t.Fatal("a member of the group survived")
				}
				time.Sleep(20 * time.Millisecond)
			}
		})
	}
}

// liveInGroup counts the processes of group pgid that are not zombies.
func liveInGroup(pgid int) int {
	n := 0
	dirs, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, d := range dirs {
		data, err := os.ReadFile(d)
		if err != nil {
			continue
		}
		// After "(comm)": state ppid pgrp ...
		i := bytes.LastIndexByte(data, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(data[i+1:]))
		if len(f) > 2 && f[2] == fmt.Sprint(pgid) && f[0] != "Z" {
			n++
		}
	}
	return n
}
