package envd

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/banger/banger/internal/testenv"
)

// SDKVersions are the npm `e2b` versions the SDK tests run: the pinned
// one and the previous minor. scripts/e2b-sdk.sh installs them.
var SDKVersions = []string{"2.51.0", "2.50.0"}

// sdkDir is where scripts/e2b-sdk.sh installed one SDK version; the test
// skips without it unless BANGER_E2E=1 (then `make test` installed it).
func sdkDir(t *testing.T, version string) string {
	dir := filepath.Join(testenv.CacheDir(), "npm", "e2b@"+version)
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "e2b", "package.json")); err != nil {
		if os.Getenv("BANGER_E2E") == "1" {
			t.Fatalf("e2b SDK %s missing under %s: run scripts/e2b-sdk.sh", version, dir)
		}
		t.Skipf("e2b SDK %s not installed under %s (scripts/e2b-sdk.sh)", version, dir)
	}
	return dir
}

// TestSDK runs the real npm SDK against envd: a minimal control plane
// answers create and kill with envd's URL and token, as bangerd does, and
// E2B_SANDBOX_URL points the SDK's envd calls straight at envd.
func TestSDK(t *testing.T) {
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("node not installed")
	}
	for _, version := range SDKVersions {
		t.Run(version, func(t *testing.T) {
			dir := sdkDir(t, version)
			const sandboxID = "sbx-test"
			var badHeader atomic.Value
			envdTS := testServer(t)
			inner := envdTS.Config.Handler
			envdTS.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if got := r.Header.Get("E2b-Sandbox-Id"); got != sandboxID && r.URL.Path != "/health" {
					badHeader.Store(r.URL.Path + ": E2b-Sandbox-Id " + got)
				}
				inner.ServeHTTP(w, r)
			})
			killed := make(chan struct{}, 1)
			api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Header.Get("X-API-Key") != "key" {
					w.WriteHeader(401)
					return
				}
				switch {
				case r.Method == "POST" && (r.URL.Path == "/v2/sandboxes" || r.URL.Path == "/sandboxes"):
					w.Header().Set("Content-Type", "application/json")
					w.WriteHeader(201)
					_ = json.NewEncoder(w).Encode(map[string]any{"templateID": "base", "sandboxID": sandboxID,
						"clientID": "banger", "envdVersion": Version, "envdAccessToken": testToken})
				case r.Method == "DELETE" && r.URL.Path == "/sandboxes/"+sandboxID:
					killed <- struct{}{}
					w.WriteHeader(204)
				default:
					http.Error(w, `{"code":404,"message":"not here"}`, 404)
				}
			}))
			defer api.Close()
			work := t.TempDir()
			cmd := exec.Command(node, "testdata/sdk_envd.cjs")
			cmd.Env = append(os.Environ(), "E2B_SDK_DIR="+dir, "E2B_API_URL="+api.URL,
				"E2B_SANDBOX_URL="+envdTS.URL, "E2B_API_KEY=key", "WORK_DIR="+work)
			timer := time.AfterFunc(3*time.Minute, func() {
				if cmd.Process != nil {
					_ = cmd.Process.Kill()
				}
			})
			defer timer.Stop()
			out, err := cmd.CombinedOutput()
			t.Logf("%s", out)
			if err != nil {
				t.Fatalf("SDK script: %v", err)
			}
			if !strings.Contains(string(out), "ok   kill") {
				t.Fatal("the script did not reach its last step")
			}
			select {
			case <-killed:
			default:
				t.Error("sandbox.kill() did not reach the control plane")
			}
			if v := badHeader.Load(); v != nil {
				t.Errorf("envd request without the sandbox header: %v", v)
			}
		})
	}
}
