package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/banger/banger/internal/model"
)

// TestVMPort publishes a port of a server bound to the guest's loopback,
// fetches through it from the host's 127.0.0.1 (the daemon lives in a test
// network namespace: the listener must be in this one), refuses a second
// forward to the same host port, and checks the port closes with the VM.
func TestVMPort(t *testing.T) {
	h := NewHarness(t)
	h.StartVM("web")
	h.MustRun("vm", "exec", "web", "--", "sh", "-c", "mkdir -p /root/www && echo published-from-guest > /root/www/hello.txt")
	h.MustRun("session", "start", "web", "--name", "http", "--cwd", "/root/www", "--require", "python3", "--",
		"python3", "-m", "http.server", "--bind", "127.0.0.1", "8000")

	var f model.Forward
	if err := json.Unmarshal([]byte(h.MustRun("--json", "vm", "port", "add", "web", "0:8000")), &f); err != nil || f.HostPort == 0 {
		t.Fatalf("port add: %+v, %v", f, err)
	}
	url := fmt.Sprintf("http://127.0.0.1:%d/hello.txt", f.HostPort)
	client := http.Client{Timeout: 10 * time.Second}
	var body string
	deadline := time.Now().Add(60 * time.Second) // the server may still be starting
	for {
		resp, err := client.Get(url)
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			body = string(b)
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET %s: %v %q", url, err, body)
		}
		time.Sleep(time.Second)
	}
	if strings.TrimSpace(body) != "published-from-guest" {
		t.Fatalf("GET %s = %q", url, body)
	}
	t.Logf("GET %s through the forward: %q", url, strings.TrimSpace(body))

	list := h.MustRun("vm", "port", "list", "web")
	show := h.MustRun("vm", "show", "web")
	want := fmt.Sprintf("127.0.0.1:%d", f.HostPort)
	if !strings.Contains(list, want) || !strings.Contains(show, want+" -> 8000/tcp") {
		t.Errorf("port list:\n%s\nvm show:\n%s\nwant %s", list, show, want)
	}

	_, errOut, code := h.Run("vm", "port", "add", "web", strconv.Itoa(f.HostPort)+":22")
	if code == 0 || !strings.Contains(errOut, "already published") {
		t.Fatalf("second forward to host port %d: exit %d, %q", f.HostPort, code, errOut)
	}
	t.Logf("second forward to the same host port refused: %s", strings.TrimSpace(errOut))
	if got := h.MustRun("vm", "port", "list", "web"); strings.Count(got, "\n") != 2 {
		t.Errorf("forwards after the refusal:\n%s", got)
	}

	h.MustRun("vm", "delete", "--force", "web")
	if c, err := net.DialTimeout("tcp", want, 2*time.Second); err == nil {
		c.Close()
		t.Fatalf("%s still answers after vm delete", want)
	} else {
		t.Logf("after vm delete, %s: %v", want, err)
	}
	h.AssertNoLeaks()
}
