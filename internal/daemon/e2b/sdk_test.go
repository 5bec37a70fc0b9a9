package e2b

import (
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/banger/banger/internal/testenv"
)

// sdkVersions are the npm `e2b` versions tested (scripts/e2b-sdk.sh).
var sdkVersions = []string{"2.51.0", "2.50.0"}

// RunSDKScript runs a Node script of testdata with the SDK version's
// install and env set, failing the test with the script's output when it
// fails. It skips when node or the SDK is missing, unless BANGER_E2E=1.
func runSDKScript(t *testing.T, version, script string, env ...string) string {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("node not installed")
	}
	dir := filepath.Join(testenv.CacheDir(), "npm", "e2b@"+version)
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "e2b", "package.json")); err != nil {
		if os.Getenv("BANGER_E2E") == "1" {
			t.Fatalf("e2b SDK %s missing under %s: run scripts/e2b-sdk.sh", version, dir)
		}
		t.Skipf("e2b SDK %s not installed under %s (scripts/e2b-sdk.sh)", version, dir)
	}
	cmd := exec.Command(node, script)
	cmd.Env = append(os.Environ(), append([]string{"E2B_SDK_DIR=" + dir}, env...)...)
	timer := time.AfterFunc(5*time.Minute, func() {
		if cmd.Process != nil {
			_ = cmd.Process.Kill()
		}
	})
	defer timer.Stop()
	out, err := cmd.CombinedOutput()
	t.Logf("%s", out)
	if err != nil {
		t.Fatalf("%s: %v", script, err)
	}
	return string(out)
}

// TestSDKControlPlane runs the real SDK against the control plane, with
// fake VMs whose "guest" is an envd on 127.0.0.1; the newest SDK also over
// HTTPS, trusting banger's CA through NODE_EXTRA_CA_CERTS alone.
func TestSDKControlPlane(t *testing.T) {
	type run struct {
		version string
		tls     bool
	}
	runs := []run{{sdkVersions[0], true}}
	for _, v := range sdkVersions {
		runs = append(runs, run{v, false})
	}
	for _, r := range runs {
		name := r.version
		if r.tls {
			name += "-tls"
		}
		t.Run(name, func(t *testing.T) {
			fx := newFixtureTLS(t, r.tls)
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			web := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				_, _ = w.Write([]byte("guest web"))
			})}
			go func() { _ = web.Serve(ln) }()
			defer web.Close()
			fx.vms.mu.Lock()
			fx.vms.ports[8000] = ln.Addr().String()
			fx.vms.mu.Unlock()
			capped, _, err := fx.svc.CreateKey(t.Context(), "capped", 1)
			if err != nil {
				t.Fatal(err)
			}
			env := []string{"E2B_API_URL=" + fx.url, "E2B_SANDBOX_URL=" + fx.url, "E2B_API_KEY=" + fx.key,
				"GUEST_WEB_PORT=" + strconv.Itoa(8000), "E2B_CAPPED_KEY=" + capped}
			if r.tls {
				ca, err := fx.svc.CA()
				if err != nil {
					t.Fatal(err)
				}
				env = append(env, "NODE_EXTRA_CA_CERTS="+ca.Path)
			}
			out := runSDKScript(t, r.version, "testdata/sdk_control.cjs", env...)
			if !strings.Contains(out, "ok   a key over its sandbox cap") || !strings.Contains(out, "ok   wrong API key") {
				t.Fatal("the script did not reach its last step")
			}
		})
	}
}
