// Package artifacts is the part of banger's test kit that needs banger's own
// image and kernel packages: the default image and kernel built once into
// the test cache and reused by every later run, and booting a guest from
// them with plain QEMU inside a test namespace, before (and independently
// of) the daemon. Gates and namespaces live in testenv, which imports no
// banger package so that image's and kernel's own tests can use it.
//
// Like testenv it never sends traffic to private addresses in the host's
// own network namespace, and touches nothing outside its temp dirs, the
// cache directory and the namespaces it is given.
package artifacts

import (
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/banger/banger/internal/image"
	"github.com/banger/banger/internal/kernel"
	"github.com/banger/banger/internal/progress"
	"github.com/banger/banger/internal/testenv"
)

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
	testenv.RequireRoot(t)
	testenv.RequireBinary(t, "mkfs.ext4")
	dir := t.TempDir()
	bin := testenv.BuildInit(t, dir)
	unlock := lockCache(t)
	defer unlock()
	start := time.Now()
	res, err := image.Build(context.Background(), image.BuildOptions{
		Name: "default", Init: init, InitBinary: bin, CacheDir: testenv.CacheDir(),
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
	testenv.RequireRoot(t)
	e, ok := kernel.Lookup("debian-cloud-bookworm")
	if !ok {
		t.Fatal("default kernel missing from the catalog")
	}
	unlock := lockCache(t)
	defer unlock()
	a, err := kernel.Pull(context.Background(), e, filepath.Join(t.TempDir(), "kernel"), testenv.CacheDir(), progressLogger(t, "kernel"))
	if err != nil {
		t.Fatalf("pull kernel %s: %v", e.Name, err)
	}
	return a
}

// lockCache takes an exclusive lock on the cache directory; builds and
// pulls of different test binaries then run one at a time.
func lockCache(t testing.TB) func() {
	t.Helper()
	if err := os.MkdirAll(testenv.CacheDir(), 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(filepath.Join(testenv.CacheDir(), ".test-lock"), os.O_CREATE|os.O_RDWR, 0o644)
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
