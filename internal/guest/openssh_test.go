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
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/banger/banger/internal/shell"
	"github.com/banger/banger/internal/testenv"
)

// sshd is a system OpenSSH server on 127.0.0.1, started for one test.
type sshd struct {
	ep      Endpoint
	signer  ssh.Signer
	keyPath string // the client key, for the ssh command
	log     string
}

// startSSHD runs /usr/sbin/sshd -D on a free loopback port with a fresh host
// key, accepting root with a fresh client key. extra is appended to its
// configuration. It skips the test when sshd or root is missing.
func startSSHD(t *testing.T, extra string) *sshd {
	t.Helper()
	const bin = "/usr/sbin/sshd"
	if _, err := os.Stat(bin); err != nil {
		t.Skip("OpenSSH server not installed (apt-get install openssh-server)")
	}
	if os.Geteuid() != 0 {
		t.Skip("running sshd needs root")
	}
	// sshd insists on its privilege separation directory.
	if _, err := os.Stat("/run/sshd"); errors.Is(err, os.ErrNotExist) {
		if err := os.Mkdir("/run/sshd", 0o755); err != nil {
			t.Skipf("cannot create /run/sshd for sshd: %v", err)
		}
		t.Cleanup(func() { os.Remove("/run/sshd") })
	}
	dir := t.TempDir()
	hostKeyPath := filepath.Join(dir, "host_ed25519")
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", hostKeyPath).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %v\n%s", err, out)
	}
	hostPub, err := os.ReadFile(hostKeyPath + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	keyPath := filepath.Join(dir, "client", "id_ed25519")
	signer, err := LoadOrCreateKey(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	authorized := filepath.Join(dir, "authorized_keys")
	if err := os.WriteFile(authorized, []byte(AuthorizedKey(signer)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	port := testenv.QuietPort(t)
	cfg := filepath.Join(dir, "sshd_config")
	conf := fmt.Sprintf(`ListenAddress 127.0.0.1
Port %d
HostKey %s
AuthorizedKeysFile %s
PidFile none
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
LogLevel VERBOSE
%s
`, port, hostKeyPath, authorized, extra)
	if err := os.WriteFile(cfg, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, "sshd.log")
	cmd := exec.Command(bin, "-D", "-e", "-f", cfg)
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatalf("start sshd: %v", err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		logf.Close()
		if t.Failed() {
			log, _ := os.ReadFile(logPath)
			t.Logf("sshd log:\n%s", log)
		}
	})
	s := &sshd{
		ep:      Endpoint{Host: "127.0.0.1", Port: port, HostKey: strings.TrimSpace(string(hostPub))},
		signer:  signer,
		keyPath: keyPath,
		log:     logPath,
	}
	return s
}

func (s *sshd) ready(t *testing.T) Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	c, err := WaitReady(ctx, s.ep, s.signer, 50*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestOpenSSH(t *testing.T) {
	s := startSSHD(t, "")
	c := s.ready(t)

	t.Run("exit codes and streams", func(t *testing.T) {
		code, out, errOut := run(t, c, "echo out; echo err >&2; exit 7", nil)
		if code != 7 || out != "out\n" || errOut != "err\n" {
			t.Errorf("got %d, %q, %q", code, out, errOut)
		}
		if code, out, _ := run(t, c, shell.Command([]string{"printf", "%s", "it's $HOME `x`"}), nil); code != 0 || out != "it's $HOME `x`" {
			t.Errorf("quoted printf: %d, %q", code, out)
		}
	})

	t.Run("killed by signal", func(t *testing.T) {
		code, err := c.Run(context.Background(), "kill -KILL $$", nil, nil, nil)
		if code != -1 || err == nil || !strings.Contains(err.Error(), "signal KILL") {
			t.Errorf("got %d, %v", code, err)
		}
	})

	t.Run("stdin MiB", func(t *testing.T) {
		data := make([]byte, 1<<20)
		rand.Read(data)
		var out bytes.Buffer
		code, err := c.Run(context.Background(), "cat", bytes.NewReader(data), &out, nil)
		if err != nil || code != 0 || !bytes.Equal(out.Bytes(), data) {
			t.Errorf("cat: %d, %v, %d bytes back of %d", code, err, out.Len(), len(data))
		}
	})

	t.Run("cancel signals the command", func(t *testing.T) {
		dir := t.TempDir()
		got, ready := filepath.Join(dir, "signal"), filepath.Join(dir, "ready")
		ctx, cancel := context.WithCancel(context.Background())
		res := make(chan error, 1)
		go func() {
			_, err := c.Run(ctx, fmt.Sprintf("trap 'echo TERM > %s; exit 9' TERM; touch %s; while :; do sleep 0.05; done", shell.Quote(got), shell.Quote(ready)), nil, nil, nil)
			res <- err
		}()
		waitFile(t, ready)
		cancel()
		if err := <-res; !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want context.Canceled", err)
		}
		waitFile(t, got)
	})

	t.Run("keepalive", func(t *testing.T) {
		if err := c.(*conn).ping(context.Background()); err != nil {
			t.Errorf("OpenSSH's answer to a keepalive was taken for a failure: %v", err)
		}
	})

	t.Run("upload", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "uploaded")
		data := []byte("#!/bin/sh\necho from upload\n")
		if err := Upload(context.Background(), c, path, 0o755, bytes.NewReader(data)); err != nil {
			t.Fatal(err)
		}
		if code, out, _ := run(t, c, shell.Quote(path), nil); code != 0 || out != "from upload\n" {
			t.Errorf("running the upload: %d, %q", code, out)
		}
	})

	t.Run("host key mismatch", func(t *testing.T) {
		other, _ := ssh.NewSignerFromKey(mustEd25519(t))
		ep := s.ep
		ep.HostKey = AuthorizedKey(other)
		var mm *HostKeyMismatchError
		if _, err := Dial(context.Background(), ep, s.signer); !errors.As(err, &mm) {
			t.Fatalf("err = %v, want a host key mismatch", err)
		}
	})

	t.Run("pool", func(t *testing.T) {
		p := NewPool(s.signer, nil)
		defer p.Close()
		var wg sync.WaitGroup
		for i := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				pc, err := p.Get(context.Background(), "vm", s.ep)
				if err != nil {
					t.Error(err)
					return
				}
				if code, err := pc.Run(context.Background(), fmt.Sprintf("exit %d", i), nil, nil, nil); err != nil || code != i {
					t.Errorf("run %d: %d, %v", i, code, err)
				}
			}()
		}
		wg.Wait()
	})
}

// The system ssh client accepts the daemon's key file and the known_hosts
// line, as `vm ssh` will use them, and refuses a host with another key.
func TestOpenSSHClientWithKnownHostsLine(t *testing.T) {
	if _, err := exec.LookPath("ssh"); err != nil {
		t.Skip("ssh client not installed")
	}
	s := startSSHD(t, "")
	s.ready(t)
	dir := t.TempDir()
	sshArgs := func(knownHosts string) []string {
		return []string{"-F", "/dev/null", "-i", s.keyPath, "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
			"-o", "StrictHostKeyChecking=yes", "-o", "UserKnownHostsFile=" + knownHosts,
			"-o", "GlobalKnownHostsFile=/dev/null", "-p", fmt.Sprint(s.ep.Port), "root@127.0.0.1", "echo via-ssh"}
	}
	good := filepath.Join(dir, "good")
	addr := net.JoinHostPort(s.ep.Host, fmt.Sprint(s.ep.Port))
	os.WriteFile(good, []byte(KnownHostsLine(addr, s.ep.HostKey)+"\n"), 0o600)
	out, err := exec.Command("ssh", sshArgs(good)...).CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "via-ssh" {
		t.Fatalf("ssh with the pinned known_hosts line: %v\n%s", err, out)
	}
	other, _ := ssh.NewSignerFromKey(mustEd25519(t))
	bad := filepath.Join(dir, "bad")
	os.WriteFile(bad, []byte(KnownHostsLine(addr, AuthorizedKey(other))+"\n"), 0o600)
	out, err = exec.Command("ssh", sshArgs(bad)...).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "HOST IDENTIFICATION HAS CHANGED") {
		t.Fatalf("ssh with another host key: %v\n%s", err, out)
	}
}

// Beyond sshd's MaxSessions a new session is refused; that is not a broken
// connection, so the pool neither drops nor redials it.
func TestOpenSSHMaxSessions(t *testing.T) {
	s := startSSHD(t, "MaxSessions 2")
	p := NewPool(s.signer, nil)
	defer p.Close()
	s.ready(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c, err := p.Get(ctx, "vm", s.ep)
	if err != nil {
		t.Fatal(err)
	}
	ready := filepath.Join(t.TempDir(), "ready")
	for i := range 2 {
		go c.Run(ctx, fmt.Sprintf("touch %s.%d; sleep 30", shell.Quote(ready), i), nil, nil, nil)
		waitFile(t, fmt.Sprintf("%s.%d", ready, i))
	}
	_, err = c.Run(context.Background(), "true", nil, nil, nil)
	if err == nil || !strings.Contains(err.Error(), "MaxSessions") || errors.Is(err, ErrConnLost) {
		t.Fatalf("third session: %v, want a refused-session error that is not ErrConnLost", err)
	}
}

// A command run on a terminal sees one of the size asked, follows a
// window change, reads what is typed (echoed by the terminal), and its
// exit code comes back; through the pool, as the daemon runs it.
func TestOpenSSHTerminal(t *testing.T) {
	s := startSSHD(t, "")
	p := NewPool(s.signer, nil)
	defer p.Close()
	s.ready(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := p.Get(ctx, "vm", s.ep)
	if err != nil {
		t.Fatal(err)
	}
	term, ok := c.(Terminal)
	if !ok {
		t.Fatal("a pooled client is not a Terminal")
	}
	inR, inW := io.Pipe()
	defer inW.Close()
	resize := make(chan WindowSize)
	var out syncBuf
	type result struct {
		code int
		err  error
	}
	done := make(chan result, 1)
	go func() {
		code, err := term.RunTerminal(ctx, `[ -t 0 ] && [ -t 1 ] && [ -t 2 ] && echo "tty $TERM"; stty size; read -r l; echo "got:$l"; stty size; exit 4`,
			PTY{Term: "xterm-256color", Cols: 100, Rows: 30}, inR, &out, resize)
		done <- result{code, err}
	}()
	waitOut := func(want string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !strings.Contains(out.String(), want) {
			if time.Now().After(deadline) {
				t.Fatalf("terminal output never held %q: %q", want, out.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitOut("tty xterm-256color\r\n30 100\r\n")
	resize <- WindowSize{Cols: 120, Rows: 40}
	time.Sleep(300 * time.Millisecond) // the window change goes out before the input
	io.WriteString(inW, "hello\n")
	r := <-done
	if r.err != nil || r.code != 4 {
		t.Fatalf("RunTerminal = %d, %v; output %q", r.code, r.err, out.String())
	}
	if got := out.String(); !strings.Contains(got, "hello\r\ngot:hello\r\n40 120\r\n") {
		t.Fatalf("output %q lacks the echo, the answer and the new size", got)
	}

	// A cancel hangs the terminal up: the command gets SIGHUP.
	cctx, ccancel := context.WithCancel(ctx)
	marker := filepath.Join(t.TempDir(), "hup")
	var out2 syncBuf
	go func() {
		for !strings.Contains(out2.String(), "ready") {
			time.Sleep(20 * time.Millisecond)
		}
		ccancel()
	}()
	_, err = term.RunTerminal(cctx, "trap "+shell.Quote("touch "+shell.Quote(marker)+"; exit 1")+" HUP; echo ready; while :; do sleep 0.1; done", PTY{Term: "vt100", Cols: 80, Rows: 24}, nil, &out2, nil)
	if err == nil {
		t.Fatal("a cancelled terminal command returned no error")
	}
	waitFile(t, marker)
}

// syncBuf is a buffer one goroutine writes while another reads.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
