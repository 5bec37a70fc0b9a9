// Package testenv is the kit banger's end-to-end tests share: skips with a
// reason when root, BANGER_E2E=1 or a binary is missing; a throwaway network
// namespace per test; the default image and kernel built once into a cache
// and reused by every later run; and booting a guest with plain QEMU inside
// a test namespace, before (and independently of) the daemon.
//
// It must never send traffic to private addresses in the host's own network
// namespace: every bridge, tap, guest and SSH dial lives in the test's
// namespace. It touches nothing outside its temp dirs, the cache directory
// and the namespaces it creates.
package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/banger/banger/internal/image"
	"github.com/banger/banger/internal/kernel"
	"github.com/banger/banger/internal/progress"
)

// RequireRoot skips the test unless it runs as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces, taps, image builds)")
	}
}

// RequireE2E skips the test unless BANGER_E2E=1: real-VM tests take minutes.
func RequireE2E(t testing.TB) {
	t.Helper()
	if os.Getenv("BANGER_E2E") != "1" {
		t.Skip("set BANGER_E2E=1 to run tests that build images and boot real guests")
	}
}

// RequireBinary skips the test unless name is on PATH.
func RequireBinary(t testing.TB, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		t.Skipf("needs %s on PATH", name)
	}
}

// CacheDir is BANGER_CACHE_DIR, or /var/cache/banger.
func CacheDir() string {
	if d := os.Getenv("BANGER_CACHE_DIR"); d != "" {
		return d
	}
	return "/var/cache/banger"
}

func randomSuffix() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Netns creates a network namespace banger-t-<random> with lo up and
// deletes it when the test ends, killing whatever still runs inside.
func Netns(t testing.TB) string {
	t.Helper()
	name := "banger-t-" + randomSuffix()
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	t.Cleanup(func() {
		out, _ := exec.Command("ip", "netns", "pids", name).Output()
		for _, f := range strings.Fields(string(out)) {
			var pid int
			// The test process itself may show up: a thread that entered
			// the namespace to dial can be its main thread.
			if _, err := fmt.Sscan(f, &pid); err == nil && pid > 1 && pid != os.Getpid() {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	if out, err := exec.Command("ip", "-n", name, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("lo up in %s: %v: %s", name, err, out)
	}
	return name
}

// Artifacts returns the default image (fast init) and the default kernel.
func Artifacts(t testing.TB) (image.Result, kernel.Artifacts) {
	t.Helper()
	return Image(t, image.InitFast), Kernel(t)
}

// Image builds the default image with the given init mode into the cache
// (once: later calls and runs hard-link the cached file) and returns it at
// a path private to the test. A file lock keeps parallel test packages from
// building the same image twice.
func Image(t testing.TB, init string) image.Result {
	t.Helper()
	RequireRoot(t)
	RequireBinary(t, "mkfs.ext4")
	dir := t.TempDir()
	bin := BuildInit(t, dir)
	unlock := lockCache(t)
	defer unlock()
	start := time.Now()
	res, err := image.Build(context.Background(), image.BuildOptions{
		Name: "default", Init: init, InitBinary: bin, CacheDir: CacheDir(),
	}, filepath.Join(dir, "image.ext4"), progressLogger(t, "image"))
	if err != nil {
		t.Fatalf("build the default %s image: %v", init, err)
	}
	t.Logf("image (%s init) ready in %s (cached %v): %s", init, time.Since(start).Round(time.Millisecond), res.Cached, res.RecipeKey[:12])
	return res
}

// Kernel pulls the default catalog kernel through the cache.
func Kernel(t testing.TB) kernel.Artifacts {
	t.Helper()
	RequireRoot(t)
	e, ok := kernel.Lookup("debian-cloud-bookworm")
	if !ok {
		t.Fatal("default kernel missing from the catalog")
	}
	unlock := lockCache(t)
	defer unlock()
	a, err := kernel.Pull(context.Background(), e, filepath.Join(t.TempDir(), "kernel"), CacheDir(), progressLogger(t, "kernel"))
	if err != nil {
		t.Fatalf("pull kernel %s: %v", e.Name, err)
	}
	return a
}

// BuildInit builds cmd/banger-init (static) into dir and returns its path.
// -trimpath keeps the binary, and so the image recipe, stable across
// checkouts.
func BuildInit(t testing.TB, dir string) string {
	t.Helper()
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "banger-init")
	cmd := exec.Command("go", "build", "-trimpath", "-buildvcs=false", "-o", out, "./cmd/banger-init")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/banger-init: %v: %s", err, b)
	}
	return out
}

// moduleRoot walks up from the working directory to go.mod.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.mod above the test's working directory")
		}
		dir = parent
	}
}

// lockCache takes an exclusive lock on the cache directory; builds and
// pulls of different test binaries then run one at a time.
func lockCache(t testing.TB) func() {
	t.Helper()
	if err := os.MkdirAll(CacheDir(), 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(filepath.Join(CacheDir(), ".test-lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		t.Fatal(err)
	}
	return func() {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}
}

// progressLogger logs phases, and only every 40th line of a noisy phase.
func progressLogger(t testing.TB, what string) progress.Func {
	last, n := "", 0
	return func(p progress.Event) {
		n++
		if p.Phase != last || n%40 == 0 {
			t.Logf("%s %6.1fs %s: %s", what, p.Elapsed, p.Phase, p.Message)
		}
		last = p.Phase
	}
}
