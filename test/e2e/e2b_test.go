package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/banger/banger/internal/model"
	"github.com/banger/banger/internal/testenv"
)

// e2bSDKVersions are the npm `e2b` versions the e2e runs, the pinned one
// first, then the previous minor (installed by scripts/e2b-sdk.sh).
var e2bSDKVersions = []string{"2.51.0", "2.50.0"}

// TestE2BSDK runs the real E2B SDK against bangerd and real guests: the
// control plane listens on the host's 127.0.0.1 (the daemon lives in the
// test namespace), and the Node script gets only E2B_API_URL,
// E2B_SANDBOX_URL and E2B_API_KEY (testdata/e2b_sdk.cjs lists the calls),
// once per SDK version. The script pauses and resumes a sandbox and lets
// an onTimeout-pause one pause at its deadline; with the pinned SDK it
// forks the sandbox once.
func TestE2BSDK(t *testing.T) {
	h := NewHarness(t)
	// The first create builds the default image and pulls the kernel,
	// which takes longer than the SDK waits for a request: do it here.
	// Labels on the way: kept, shown and selected by `vm list --label`.
	h.MustRun("vm", "create", "--name", "warm", "--label", "app=web", "--label", "example.com/tier=a b")
	var vms []model.VM
	h.JSON(&vms, "vm", "list", "--label", "app=web,example.com/tier=a b")
	if len(vms) != 1 || vms[0].Name != "warm" || vms[0].Labels["example.com/tier"] != "a b" {
		t.Fatalf("vm list --label app=web: %+v", vms)
	}
	if h.JSON(&vms, "vm", "list", "--label", "app=db"); len(vms) != 0 {
		t.Fatalf("vm list --label app=db: %+v", vms)
	}
	h.MustRun("vm", "delete", "warm")
	h.E2BServe()

	for _, version := range e2bSDKVersions {
		t.Run(version, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
			defer cancel()
			cmd := e2bNode(t, ctx, h, version, "testdata/e2b_sdk.cjs")
			if version == e2bSDKVersions[0] {
				// One fork (a snapshot of the running sandbox and a VM
				// restored from it), with the pinned SDK only.
				cmd.Env = append(cmd.Env, "E2B_FORK=1")
			}
			out, err := cmd.CombinedOutput()
			t.Logf("SDK %s script:\n%s", version, out)
			if err != nil {
				t.Fatalf("SDK script: %v", err)
			}
			if !strings.Contains(string(out), "ok   wrong API key") {
				t.Fatal("the SDK script did not reach its last step")
			}
		})
	}
	// Every envd was started (or, in the fork, rekeyed) over the control
	// channel: no SSH session or shell on a create's path.
	logb, err := os.ReadFile(filepath.Join(h.StateDir, "bangerd.log"))
	if err != nil {
		t.Fatal(err)
	}
	if log := string(logb); strings.Contains(log, "over SSH, not over the control channel") || !strings.Contains(log, "e2b sandbox created") {
		t.Errorf("envd was not given its token over the control channel:\n%s", grepLines(log, "e2b"))
	}
	// The timed-out sandbox stops answering before its deletion ends.
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(time.Second) {
		h.JSON(&vms, "vm", "list")
		if len(vms) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("sandboxes left a minute after kill and timeout: %+v", vms)
		}
	}
	h.AssertNoLeaks()
}

// grepLines is the lines of s that contain sub.
func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestE2BDomain runs the pinned SDK with only E2B_DOMAIN and E2B_API_KEY
// (and NODE_EXTRA_CA_CERTS): the listener serves HTTPS on the host's
// 127.0.0.1 and answers DNS for every name under its domain on a loopback
// address of its own, which the Node process's resolv.conf names (bound
// over /etc/resolv.conf in a mount namespace of its own, so the host's
// resolver is untouched). The SDK reaches api.<domain> and
// <port>-<id>.<domain> by name, and a getHost URL is fetched as it is.
func TestE2BDomain(t *testing.T) {
	h := NewHarness(t)
	port := testenv.QuietPort(t)
	dnsIP := fmt.Sprintf("127.53.%d.%d", rand.IntN(250)+1, rand.IntN(250)+1)
	domain := fmt.Sprintf("sb.test:%d", port)
	var st struct{ Listen, Domain, DNS string }
	h.JSON(&st, "e2b", "serve", "--tls", "--listen", fmt.Sprintf("127.0.0.1:%d", port), "--domain", domain, "--dns", dnsIP+":53")
	if st.Domain != domain || st.DNS != dnsIP+":53" {
		t.Fatalf("e2b serve answered %+v", st)
	}
	if out := h.MustRun("e2b", "status"); !strings.Contains(out, "E2B_DOMAIN="+domain) {
		t.Fatalf("e2b status does not say E2B_DOMAIN:\n%s", out)
	}
	key := strings.TrimSpace(h.MustRun("e2b", "key", "create", "domain"))
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.pem")
	resolv := filepath.Join(dir, "resolv.conf")
	if err := os.WriteFile(ca, []byte(h.MustRun("e2b", "ca")), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(resolv, []byte("nameserver "+dnsIP+"\noptions timeout:2 attempts:2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	version := e2bSDKVersions[0]
	sdk := filepath.Join(testenv.CacheDir(), "npm", "e2b@"+version)
	if _, err := os.Stat(filepath.Join(sdk, "node_modules", "e2b", "package.json")); err != nil {
		t.Fatalf("e2b SDK %s missing under %s: run scripts/e2b-sdk.sh", version, sdk)
	}
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatal("node is required for the E2B SDK tests")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "unshare", "--mount", "--propagation", "private", "sh", "-c",
		`mount --bind "$0" /etc/resolv.conf && exec "$1" "$2"`, resolv, node, "testdata/e2b_domain.cjs")
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + dir, "E2B_SDK_DIR=" + sdk,
		"E2B_DOMAIN=" + domain, "E2B_API_KEY=" + key, "NODE_EXTRA_CA_CERTS=" + ca}
	out, err := cmd.CombinedOutput()
	t.Logf("SDK %s with E2B_DOMAIN:\n%s", version, out)
	if err != nil || !strings.Contains(string(out), "ok   done") {
		t.Fatalf("SDK script: %v", err)
	}
	h.MustRun("e2b", "stop")
	h.AssertNoLeaks()
}
