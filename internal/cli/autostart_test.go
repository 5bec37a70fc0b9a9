package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/banger/banger/internal/api"
)

// TestMain lets the test binary stand in for bangerd: linked as "bangerd"
// and run with BANGER_FAKE_BANGERD set, it plays one (see fakeBangerd).
func TestMain(m *testing.M) {
	if mode := os.Getenv("BANGER_FAKE_BANGERD"); mode != "" && filepath.Base(os.Args[0]) == "bangerd" {
		os.Exit(fakeBangerd(mode))
	}
	os.Exit(m.Run())
}

// fakeBangerd counts its launches in the state dir. In mode "race" the
// first launch exits as a bangerd does when another still holds the lock;
// later ones serve /v1/health for two seconds. In mode "broken" every
// launch exits with another error.
func fakeBangerd(mode string) int {
	state := os.Getenv("BANGER_STATE_DIR")
	countFile := filepath.Join(state, "launches")
	b, _ := os.ReadFile(countFile)
	n, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	n++
	os.WriteFile(countFile, []byte(strconv.Itoa(n)), 0o600)
	if mode == "broken" {
		fmt.Fprintln(os.Stderr, "bangerd: config file: bad")
		return 1
	}
	if n == 1 {
		fmt.Fprintf(os.Stderr, "bangerd: another bangerd (pid 1) is already running on state dir %s\n", state)
		return 1
	}
	sock := filepath.Join(state, "bangerd.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	time.AfterFunc(2*time.Second, func() { os.Remove(sock); os.Exit(0) })
	http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(api.Health{})
	}))
	return 0
}

func fakeBangerdEnv(t *testing.T, mode string) (*app, string) {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := t.TempDir()
	if err := os.Symlink(self, filepath.Join(bin, "bangerd")); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", bin+":"+os.Getenv("PATH"))
	t.Setenv("BANGER_FAKE_BANGERD", mode)
	state := t.TempDir()
	t.Setenv("BANGER_STATE_DIR", state)
	return &app{stderr: &bytes.Buffer{}, stdout: &bytes.Buffer{}, getenv: os.Getenv}, state
}

// TestStartDaemonRelaunch: a bangerd that exits at once because a dying
// one still held the lock is started again, and the CLI gets its daemon.
func TestStartDaemonRelaunch(t *testing.T) {
	a, state := fakeBangerdEnv(t, "race")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := a.startDaemon(ctx, api.NewClient(a.resolvedSocket())); err != nil {
		t.Fatalf("start: %v\n%s", err, a.stderr)
	}
	if b, _ := os.ReadFile(filepath.Join(state, "launches")); string(b) != "2" {
		t.Errorf("launches = %q, want 2", b)
	}
	if n := strings.Count(a.stderr.(*bytes.Buffer).String(), "started bangerd"); n != 2 {
		t.Errorf("%d starts reported, want 2:\n%s", n, a.stderr)
	}
	t.Cleanup(func() {
		// The fake serves for two seconds; do not leave it behind.
		for i := 0; i < 50; i++ {
			if _, err := os.Stat(filepath.Join(state, "bangerd.sock")); err != nil {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		_ = syscall.Unlink(filepath.Join(state, "bangerd.sock"))
	})
}

// TestStartDaemonBroken: a bangerd that fails for another reason is not
// started again; the error carries its log.
func TestStartDaemonBroken(t *testing.T) {
	a, state := fakeBangerdEnv(t, "broken")
	err := a.startDaemon(context.Background(), api.NewClient(a.resolvedSocket()))
	if err == nil || !strings.Contains(err.Error(), "exited without serving") || !strings.Contains(err.Error(), "config file: bad") {
		t.Fatalf("start of a broken bangerd: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(state, "launches")); string(b) != "1" {
		t.Errorf("launches = %q, want 1", b)
	}
}
