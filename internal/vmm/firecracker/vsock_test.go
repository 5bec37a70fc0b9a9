package firecracker

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/banger/banger/internal/guestctl"
	"github.com/banger/banger/internal/testenv"
	"github.com/banger/banger/internal/vmm"
	"github.com/banger/banger/internal/vmm/firecracker/fcapi"
)

// endpoint listens on a unix socket and answers each connection's first
// line with answer (after checking it), then echoes what follows.
func endpoint(t *testing.T, answer func(line string, c net.Conn)) string {
	t.Helper()
	return testenv.Serve(testenv.Listen(t, "unix", filepath.Join(t.TempDir(), "v.sock")), func(c net.Conn) {
		line, err := bufio.NewReader(io.LimitReader(c, 64)).ReadString('\n')
		if err == nil {
			answer(line, c)
		}
	})
}

// TestConnectHandshake: Firecracker's CONNECT handshake against a stub
// endpoint: an "OK" answer gives the stream (its first bytes intact), a
// closed connection is ErrPortClosed, and a hostile endpoint (garbage,
// an endless answer, no answer) gets a clear error within the bound.
func TestConnectHandshake(t *testing.T) {
	ctx := context.Background()
	t.Run("good", func(t *testing.T) {
		sock := endpoint(t, func(line string, c net.Conn) {
			if line != "CONNECT 1024\n" {
				return
			}
			// The answer and the stream's first bytes in one write: none
			// of the stream's may be eaten by the handshake.
			_, _ = io.WriteString(c, "OK 1073741824\nhello")
			_, _ = io.Copy(c, c)
		})
		conn, err := Connect(ctx, sock, 1024)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		b := make([]byte, 5)
		if _, err := io.ReadFull(conn, b); err != nil || string(b) != "hello" {
			t.Fatalf("stream after the answer: %q, %v", b, err)
		}
		if _, err := io.WriteString(conn, "ping"); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(conn, b[:4]); err != nil || string(b[:4]) != "ping" {
			t.Fatalf("echo: %q, %v", b[:4], err)
		}
	})
	for _, c := range []struct {
		name   string
		answer string
		want   string
	}{
		{"refused", "", "nothing listens"},
		{"garbage", "ERR no\n", `unexpected answer to CONNECT: "ERR no"`},
		{"not a port", "OK port\n", `unexpected answer to CONNECT: "OK port"`},
		{"cut short", "OK 12", "cut short"},
		{"oversized", strings.Repeat("A", 4096), "longer than 32 bytes"},
	} {
		t.Run(c.name, func(t *testing.T) {
			sock := endpoint(t, func(_ string, conn net.Conn) { _, _ = io.WriteString(conn, c.answer) })
			_, err := Connect(ctx, sock, 1024)
			if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "guest port 1024") {
				t.Fatalf("Connect: %v, want %q", err, c.want)
			}
			if c.answer == "" && !errors.Is(err, ErrPortClosed) {
				t.Fatalf("refused: %v is not ErrPortClosed", err)
			}
		})
	}
	t.Run("no answer", func(t *testing.T) {
		sock := endpoint(t, func(_ string, c net.Conn) { time.Sleep(5 * time.Second) })
		cctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := Connect(cctx, sock, 1024)
		if err == nil || !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 2*time.Second {
			t.Fatalf("Connect to a silent endpoint: %v after %v", err, time.Since(start))
		}
	})
	t.Run("no socket", func(t *testing.T) {
		_, err := Connect(ctx, filepath.Join(t.TempDir(), "none.sock"), 1024)
		if err == nil || errors.Is(err, ErrPortClosed) || !strings.Contains(err.Error(), "none.sock") {
			t.Fatalf("Connect without a socket: %v", err)
		}
	})
}

// guestSide serves the control channel the way banger-init does, on a
// unix socket fakefc relays guest port 1024 to, one connection at a
// time. It answers hello with the boot id it is given.
func guestSide(t *testing.T, bootID string) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "guest.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	h := func(req guestctl.Request) (guestctl.Reply, func(), error) {
		return guestctl.Reply{Version: guestctl.Version, BootID: bootID}, nil, nil
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			_ = guestctl.Serve(c, h, time.Now)
			c.Close()
		}
	}()
	return sock
}

func hello(t *testing.T, d *Driver, dir string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := d.DialControl(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	c := guestctl.NewClient(conn)
	defer c.Close()
	rep, err := c.Call(ctx, guestctl.Request{Op: guestctl.OpHello})
	if err != nil {
		t.Fatal(err)
	}
	return rep.BootID
}

// TestFakeControlChannel: the driver's Controller against fakefc with a
// guest side behind port 1024: DialControl after Start, after a Restore
// in the same directory (a resume) and in another VM's directory while
// the first still runs (a fork: its own vsock socket and disks, not its
// parent's), the vsock socket removed at Kill, and a guest that does not
// listen failing with ErrPortClosed once the caller's deadline passes.
func TestFakeControlChannel(t *testing.T) {
	ctx := context.Background()
	t.Setenv("FAKEFC_VSOCK_FORWARD", "1024="+guestSide(t, "boot-1"))
	d := New(Options{Binary: fakeBin})
	spec := fakeSpec(t)
	if spec.VsockPath != filepath.Join(spec.Dir, vmm.VsockFile) {
		t.Fatalf("spec's vsock %s is not where DialControl looks", spec.VsockPath)
	}
	h := startVM(t, d, spec)
	if got := hello(t, d, spec.Dir); got != "boot-1" {
		t.Fatalf("hello after Start: boot id %q", got)
	}
	// Twice: one connection at a time, each its own stream.
	if got := hello(t, d, spec.Dir); got != "boot-1" {
		t.Fatalf("second hello: %q", got)
	}

	state := filepath.Join(spec.Dir, "state")
	if err := os.Mkdir(state, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := d.Save(ctx, h, state); err != nil {
		t.Fatal(err)
	}
	if err := d.Resume(ctx, h); err != nil {
		t.Fatal(err)
	}

	// A fork: restored in its own directory, from copies of the disks,
	// while the parent still runs and holds its vsock socket.
	fork := fakeSpec(t)
	fork.APISocket = filepath.Join(fork.Dir, "api.sock")
	fork.Net = &vmm.NetIface{Tap: "tap-fork", MAC: "02:00:ac:10:00:09"}
	hf, err := d.Restore(ctx, fork, state)
	if err != nil {
		t.Fatal(err)
	}
	cleanupVM(t, d, fork.APISocket)
	if got := hello(t, d, fork.Dir); got != "boot-1" {
		t.Fatalf("hello to the fork: %q", got)
	}
	var cfg fcapi.VMConfig
	if err := newClient(fork.APISocket).do(ctx, "GET", "/vm/config", nil, &cfg); err != nil {
		t.Fatal(err)
	}
	if err := CheckRestored(fork, cfg); err != nil || len(cfg.Drives) != 2 {
		t.Fatalf("the fork's machine: %+v: %v", cfg, err)
	}
	if st := instanceState(t, fork.APISocket); st != "Running" {
		t.Fatalf("fork's state %q", st)
	}
	if err := d.Kill(ctx, hf); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(fork.VsockPath); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("fork's vsock socket left after Kill: %v", err)
	}
	if got := hello(t, d, spec.Dir); got != "boot-1" {
		t.Fatalf("the parent after its fork went: %q", got)
	}

	// Pause to disk and resume in the same directory.
	if err := d.Save(ctx, h, state); err != nil {
		t.Fatal(err)
	}
	if err := d.Kill(ctx, h); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(spec.VsockPath); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("vsock socket left after Kill: %v", err)
	}
	cctx, cancel := context.WithTimeout(ctx, time.Second)
	if _, err := d.DialControl(cctx, spec.Dir); err == nil || errors.Is(err, ErrPortClosed) {
		t.Fatalf("DialControl with no firecracker: %v", err)
	}
	cancel()
	h, err = d.Restore(ctx, spec, state)
	if err != nil {
		t.Fatal(err)
	}
	if got := hello(t, d, spec.Dir); got != "boot-1" {
		t.Fatalf("hello after Restore: %q", got)
	}
	if err := d.Kill(ctx, h); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(spec.VsockPath); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("vsock socket left after Kill of the restored firecracker: %v", err)
	}

	// A guest that does not listen on the port.
	t.Setenv("FAKEFC_VSOCK_FORWARD", "")
	quiet := fakeSpec(t)
	startVM(t, d, quiet)
	cctx, cancel = context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if _, err := d.DialControl(cctx, quiet.Dir); !errors.Is(err, ErrPortClosed) {
		t.Fatalf("DialControl to a guest not listening: %v", err)
	}
}

// TestCheckRestored: a loaded machine whose drives or vsock socket are
// another VM's (a snapshot saved with absolute paths) is refused.
func TestCheckRestored(t *testing.T) {
	spec := baseSpec("/v")
	ok := fcapi.VMConfig{
		Drives: []fcapi.Drive{{DriveID: "root", PathOnHost: "root.img"}, {DriveID: "work", PathOnHost: "/v/work.img"}},
		Vsock:  &fcapi.Vsock{UDSPath: "vsock.sock"},
	}
	if err := CheckRestored(spec, ok); err != nil {
		t.Fatal(err)
	}
	parentDisk := ok
	parentDisk.Drives = []fcapi.Drive{{DriveID: "root", PathOnHost: "/parent/root.img"}}
	if err := CheckRestored(spec, parentDisk); err == nil || !strings.Contains(err.Error(), "/parent/root.img") {
		t.Fatalf("another vm's disk: %v", err)
	}
	parentSock := ok
	parentSock.Vsock = &fcapi.Vsock{UDSPath: "/parent/vsock.sock"}
	if err := CheckRestored(spec, parentSock); err == nil || !strings.Contains(err.Error(), "take a new snapshot") {
		t.Fatalf("another vm's vsock: %v", err)
	}
	unknown := ok
	unknown.Drives = append([]fcapi.Drive{}, fcapi.Drive{DriveID: "extra", PathOnHost: "x.img"})
	if err := CheckRestored(spec, unknown); err == nil {
		t.Fatal("a drive the spec does not have was accepted")
	}
	if InDir("/v", "/v/a.img") != "a.img" || InDir("/v", "/w/a.img") != "/w/a.img" || InDir("", "/v/a") != "/v/a" || InDir("/v", "/v/s/a") != "/v/s/a" {
		t.Fatal("InDir")
	}
}
