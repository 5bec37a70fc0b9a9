// Package testenv is the kit banger's tests share to reach real hosts:
// skips with a reason when root, BANGER_E2E=1 or a binary is missing; a
// throwaway network namespace per test; building banger-init; dialing from
// inside a namespace and running commands over SSH; a loop-mounted XFS
// with reflink and counting the blocks a file shares. It imports no banger
// package, so every package's tests (image's and kernel's too) can use its
// gates; the cached default image and kernel, and QEMU guests booted from
// them, live in testenv/artifacts.
//
// It must never send traffic to private addresses in the host's own network
// namespace: every dial it makes happens inside the test's namespace. It
// touches nothing outside its temp dirs and the namespaces it creates.
package testenv

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
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

// RequireBinary skips the test unless every one of names is on PATH.
func RequireBinary(t testing.TB, names ...string) {
	t.Helper()
	for _, name := range names {
		if _, err := exec.LookPath(name); err != nil {
			t.Skipf("needs %s on PATH", name)
		}
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

// BuildFakeFirecracker builds the Firecracker stand-in
// (internal/vmm/firecracker/fakefc) into dir as "firecracker" and returns
// its path.
func BuildFakeFirecracker(t testing.TB, dir string) string {
	t.Helper()
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "firecracker")
	cmd := exec.Command("go", "build", "-o", out, "./internal/vmm/firecracker/fakefc")
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build fakefc: %v: %s", err, b)
	}
	return out
}

// FakeKVM is a file that stands in for /dev/kvm where a VMM driver only
// opens it to see that KVM is usable (Firecracker's KVMDevice), for
// tests over fakefc, which runs no guest.
func FakeKVM(t testing.TB) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "kvm")
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
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
