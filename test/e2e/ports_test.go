package e2e

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/banger/banger/internal/model"
)

// fetch GETs url until it answers 200 (the guest's server may still be
// starting) and returns the body.
func fetch(t *testing.T, url string, limit time.Duration) string {
	t.Helper()
	client := http.Client{Timeout: 10 * time.Second}
	deadline := time.Now().Add(limit)
	for {
		resp, err := client.Get(url)
		body := ""
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			body = string(b)
			if resp.StatusCode == 200 {
				return body
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET %s: %v %q", url, err, body)
		}
		time.Sleep(time.Second)
	}
}

// serveHTTP starts a session named name serving /root/www on the guest's
// loopback.
func serveHTTP(h *Harness, vm, name string) {
	h.MustRun("session", "start", vm, "--name", name, "--cwd", "/root/www", "--require", "python3", "--",
		"python3", "-m", "http.server", "--bind", "127.0.0.1", "8000")
}

// TestVMPort publishes a port of a server bound to the guest's loopback
// at create (--publish, HOSTPORT 0), fetches through it from the host's
// 127.0.0.1 (the daemon lives in a test network namespace: the listener
// must be in this one), refuses a host port already taken (leaving no VM)
// and a second forward to the same host port, keeps the forward across
// kill -9 of bangerd and a vm stop and restart, publishes a port of the
// stopped VM that opens at its boot, and checks the ports close with the
// VM.
func TestVMPort(t *testing.T) {
	h := NewHarness(t)

	// A host port another program holds fails the create, leaving nothing.
	other, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	taken := other.Addr().(*net.TCPAddr).Port
	_, errOut, code := h.Run("vm", "create", "--name", "clash", "--publish", "0:8000", "--publish", strconv.Itoa(taken)+":80")
	other.Close()
	if code == 0 || !strings.Contains(errOut, "is taken") {
		t.Fatalf("create with a taken host port: exit %d, %q", code, errOut)
	}
	t.Logf("create with a taken host port refused: %s", strings.TrimSpace(errOut))
	if _, _, code := h.Run("vm", "show", "clash"); code == 0 {
		t.Fatal("the refused create left a vm")
	}
	h.AssertNoLeaks()

	vm := h.StartVM("web", "--publish", "0:8000")
	if len(vm.Ports) != 1 || vm.Ports[0].HostPort == 0 || vm.Ports[0].State != model.ForwardListening {
		t.Fatalf("vm show after create --publish 0:8000: %+v", vm.Ports)
	}
	f := vm.Ports[0]
	h.MustRun("vm", "exec", "web", "--", "sh", "-c", "mkdir -p /root/www && echo published-from-guest > /root/www/hello.txt")
	serveHTTP(h, "web", "http")
	url := fmt.Sprintf("http://127.0.0.1:%d/hello.txt", f.HostPort)
	if body := fetch(t, url, 60*time.Second); strings.TrimSpace(body) != "published-from-guest" {
		t.Fatalf("GET %s = %q", url, body)
	}
	t.Logf("GET %s through the forward published at create: ok", url)

	list := h.MustRun("vm", "port", "list", "web")
	show := h.MustRun("vm", "show", "web")
	want := fmt.Sprintf("127.0.0.1:%d", f.HostPort)
	if !strings.Contains(list, want) || !strings.Contains(list, "listening") || !strings.Contains(show, want+" -> 8000/tcp (listening)") {
		t.Errorf("port list:\n%s\nvm show:\n%s\nwant %s", list, show, want)
	}
	if !strings.Contains(show, "image:") || strings.Contains(show, "image:        "+vm.ImageID) || vm.ImageName == "" || vm.KernelName == "" {
		t.Errorf("vm show names no image or kernel:\n%s", show)
	}

	_, errOut, code = h.Run("vm", "port", "add", "web", strconv.Itoa(f.HostPort)+":22")
	if code == 0 || !strings.Contains(errOut, "already published") {
		t.Fatalf("second forward to host port %d: exit %d, %q", f.HostPort, code, errOut)
	}
	t.Logf("second forward to the same host port refused: %s", strings.TrimSpace(errOut))
	if got := h.MustRun("vm", "port", "list", "web"); strings.Count(got, "\n") != 2 {
		t.Errorf("forwards after the refusal:\n%s", got)
	}

	// kill -9 of bangerd: the next CLI call starts a daemon that listens
	// again for the recorded forward.
	pid := h.DaemonPID()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitGone(t, pid)
	if c, err := net.DialTimeout("tcp", want, 2*time.Second); err == nil {
		c.Close()
		t.Fatalf("%s answers with no daemon", want)
	}
	h.MustRun("vm", "show", "web") // starts a new daemon
	if npid := h.DaemonPID(); npid == pid {
		t.Fatal("daemon pid unchanged after kill -9")
	}
	if body := fetch(t, url, 30*time.Second); strings.TrimSpace(body) != "published-from-guest" {
		t.Fatalf("GET %s after kill -9 of bangerd = %q", url, body)
	}
	t.Logf("GET %s after kill -9 of bangerd: ok", url)

	// vm restart: the listener closes with the VM and opens again at its
	// boot; the guest's server is a new session.
	h.MustRun("vm", "stop", "web")
	if c, err := net.DialTimeout("tcp", want, 2*time.Second); err == nil {
		c.Close()
		t.Fatalf("%s answers while the vm is stopped", want)
	}
	if st := h.VM("web").Ports; len(st) != 1 || st[0].State != model.ForwardStopped {
		t.Fatalf("forwards of the stopped vm: %+v", st)
	}
	// Added to the stopped VM: recorded now (port picked), listened on at
	// its next boot.
	var later model.Forward
	h.JSON(&later, "vm", "port", "add", "web", "0:8000")
	if later.HostPort == 0 || later.State != model.ForwardStopped {
		t.Fatalf("port add on the stopped vm: %+v", later)
	}
	h.MustRun("vm", "restart", "web")
	serveHTTP(h, "web", "http-again") // the first one's record stays, exited
	if st := h.VM("web").Ports; len(st) != 2 || st[0].State != model.ForwardListening || st[1].State != model.ForwardListening {
		t.Fatalf("forwards after the restart: %+v", st)
	}
	laterURL := fmt.Sprintf("http://127.0.0.1:%d/hello.txt", later.HostPort)
	if body := fetch(t, laterURL, 60*time.Second); strings.TrimSpace(body) != "published-from-guest" {
		t.Fatalf("GET %s (added while stopped) = %q", laterURL, body)
	}
	if body := fetch(t, url, 60*time.Second); strings.TrimSpace(body) != "published-from-guest" {
		t.Fatalf("GET %s after vm restart = %q", url, body)
	}
	t.Logf("GET %s after vm stop and restart: ok", url)

	h.MustRun("vm", "delete", "--force", "web")
	for _, addr := range []string{want, fmt.Sprintf("127.0.0.1:%d", later.HostPort)} {
		if c, err := net.DialTimeout("tcp", addr, 2*time.Second); err == nil {
			c.Close()
			t.Fatalf("%s still answers after vm delete", addr)
		} else {
			t.Logf("after vm delete, %s: %v", addr, err)
		}
	}
	h.AssertNoLeaks()
}
