package guestaccess

import (
	"context"
	"errors"
	"io"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/banger/banger/internal/api"
	"github.com/banger/banger/internal/model"
	"github.com/banger/banger/internal/store"
	"github.com/banger/banger/internal/testenv"
)

func TestExecCommandQuoting(t *testing.T) {
	got, err := ExecCommand(api.ExecRequest{Command: []string{"sh", "-c", "echo $HOME 'x'"}, Cwd: "/root/my repo", Env: map[string]string{"B": "2", "A": "it's"}})
	if err != nil {
		t.Fatal(err)
	}
	want := `cd '/root/my repo' && env 'A=it'\''s' 'B=2' sh -c 'echo $HOME '\''x'\'''`
	if got != want {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
	if _, err := ExecCommand(api.ExecRequest{Command: []string{"true"}, Env: map[string]string{"1A": "x"}}); err == nil {
		t.Fatal("bad env key accepted")
	}
}

func TestEndpointPinsTheVMsOwnHostKey(t *testing.T) {
	ctx := context.Background()
	st, err := store.Open(filepath.Join(t.TempDir(), "banger.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	im := model.Image{ID: "img1", Name: "default", HostKey: "ssh-ed25519 AAAAimage", CreatedAt: time.Now()}
	if err := st.CreateImage(ctx, im); err != nil {
		t.Fatal(err)
	}
	sv := New(Deps{Store: st})
	vm := model.VM{Name: "a", ImageID: im.ID, GuestIP: "172.16.0.2", HostKey: "ssh-ed25519 AAAAvm"}
	if ep, err := sv.endpoint(ctx, vm); err != nil || ep.HostKey != vm.HostKey || ep.Host != vm.GuestIP {
		t.Fatalf("endpoint of a VM with its own key = %+v, %v", ep, err)
	}
	// A VM made before VMs had their own key: its image's.
	vm.HostKey = ""
	if ep, err := sv.endpoint(ctx, vm); err != nil || ep.HostKey != im.HostKey {
		t.Fatalf("endpoint of an older VM = %+v, %v; want the image's key", ep, err)
	}
	vm.ImageID = "gone"
	if _, err := sv.endpoint(ctx, vm); err == nil {
		t.Fatal("an older VM without its image got an endpoint")
	}
}

func TestTerminalOf(t *testing.T) {
	if p, err := terminalOf(api.ExecRequest{TTY: true}); err != nil || p.Term != DefaultTerm || p.Cols != 80 || p.Rows != 24 {
		t.Fatalf("defaults: %+v %v", p, err)
	}
	if p, err := terminalOf(api.ExecRequest{TTY: true, Term: "screen.xterm-256color", Size: &api.WindowSize{Cols: 132, Rows: 43}}); err != nil || p.Term != "screen.xterm-256color" || p.Cols != 132 || p.Rows != 43 {
		t.Fatalf("given: %+v %v", p, err)
	}
	for _, bad := range []api.ExecRequest{
		{TTY: true, Term: "xterm; rm -rf /"},
		{TTY: true, Term: strings.Repeat("x", 65)},
		{TTY: true, Size: &api.WindowSize{Cols: 0, Rows: 24}},
		{TTY: true, Size: &api.WindowSize{Cols: 80, Rows: api.MaxWindowSide + 1}},
	} {
		if _, err := terminalOf(bad); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
}

func TestWaitListening(t *testing.T) {
	ctx := context.Background()
	// A port nothing listens on, that no port-0 bind is given meanwhile.
	port := testenv.QuietPort(t)
	sv := New(Deps{SSHPort: port})
	vm := model.VM{Name: "a", GuestIP: "127.0.0.1", HostKey: "ssh-ed25519 AAAAvm", LogPath: filepath.Join(t.TempDir(), "vmm.log")}

	// Nothing listens and the VMM is gone: it says so rather than wait.
	err := sv.WaitListening(ctx, vm, func() bool { return false })
	if err == nil || !strings.Contains(err.Error(), "vmm exited") {
		t.Fatalf("nothing listening, vmm gone: %v", err)
	}
	// Its caller gives up: the caller's error.
	cctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	err = sv.WaitListening(cctx, vm, func() bool { return true })
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("nothing listening, caller gave up: %v", err)
	}

	// sshd starts listening a while after the wait began: the wait ends
	// with one connection, which it closes without a word.
	accepted := make(chan []byte, 1)
	go func() {
		time.Sleep(400 * time.Millisecond)
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			accepted <- []byte("listen: " + err.Error())
			return
		}
		defer l.Close()
		c, err := l.Accept()
		if err != nil {
			accepted <- []byte("accept: " + err.Error())
			return
		}
		defer c.Close()
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		b, err := io.ReadAll(c)
		if err != nil {
			b = append(b, []byte(" read: "+err.Error())...)
		}
		accepted <- b
	}()
	start := time.Now()
	if err := sv.WaitListening(ctx, vm, func() bool { return true }); err != nil {
		t.Fatalf("sshd listening: %v", err)
	}
	if took := time.Since(start); took < 400*time.Millisecond {
		t.Fatalf("the wait ended after %s, before anything listened", took)
	}
	if b := <-accepted; len(b) != 0 {
		t.Fatalf("the probe connection carried %q; want nothing, then its close", b)
	}
}
