package e2e

import (
	"crypto/rand"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestVMCp copies a tree (a symlink, an executable, a 50 MiB file) into a
// real guest and back, single files both ways, and checks the errors.
func TestVMCp(t *testing.T) {
	h := NewHarness(t)
	h.StartVM("cp")

	src := filepath.Join(t.TempDir(), "tree")
	os.MkdirAll(filepath.Join(src, "bin"), 0o755)
	os.WriteFile(filepath.Join(src, "bin", "run.sh"), []byte("#!/bin/sh\necho ran\n"), 0o755)
	os.Symlink("bin/run.sh", filepath.Join(src, "link"))
	big, err := os.Create(filepath.Join(src, "big.bin"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.CopyN(big, rand.Reader, 50<<20); err != nil {
		t.Fatal(err)
	}
	big.Close()
	bigSum := fileSum(t, filepath.Join(src, "big.bin"))

	h.MustRun("vm", "cp", "-r", src, "cp:/root/tree")
	out := h.MustRun("vm", "exec", "cp", "--", "sh", "-c",
		"sha256sum /root/tree/big.bin; stat -c '%a %F' /root/tree/bin/run.sh; readlink /root/tree/link; /root/tree/link")
	t.Logf("in the guest:\n%s", out)
	for _, want := range []string{bigSum, "755 regular file", "bin/run.sh", "ran"} {
		if !strings.Contains(out, want) {
			t.Errorf("guest output lacks %q:\n%s", want, out)
		}
	}

	back := filepath.Join(t.TempDir(), "back")
	h.MustRun("vm", "cp", "-r", "cp:tree", back)
	if got := fileSum(t, filepath.Join(back, "big.bin")); got != bigSum {
		t.Errorf("big.bin back: sha256 %s, want %s", got, bigSum)
	}
	if st, err := os.Stat(filepath.Join(back, "bin", "run.sh")); err != nil || st.Mode().Perm() != 0o755 {
		t.Errorf("run.sh back: %v, %v", st, err)
	}
	if l, err := os.Readlink(filepath.Join(back, "link")); err != nil || l != "bin/run.sh" {
		t.Errorf("link back: %q, %v", l, err)
	}
	t.Logf("tree round trip: big.bin sha256 %s, run.sh 0755, link -> bin/run.sh", bigSum)

	// Single files both ways, and through stdin/stdout.
	one := filepath.Join(t.TempDir(), "one.txt")
	os.WriteFile(one, []byte("one file\n"), 0o640)
	h.MustRun("vm", "cp", one, "cp:/tmp/")
	if out := h.MustRun("vm", "exec", "cp", "--", "stat", "-c", "%a %s", "/tmp/one.txt"); strings.TrimSpace(out) != "640 9" {
		t.Errorf("one.txt in the guest: %q", out)
	}
	got := filepath.Join(t.TempDir(), "got.txt")
	h.MustRun("vm", "cp", "cp:/tmp/one.txt", got)
	if b, _ := os.ReadFile(got); string(b) != "one file\n" {
		t.Errorf("one.txt back: %q", b)
	}
	if _, _, code := h.RunInput([]byte("from stdin"), "vm", "cp", "-", "cp:/tmp/stdin.txt"); code != 0 {
		t.Error("cp from stdin failed")
	}
	if out := h.MustRun("vm", "cp", "cp:/tmp/stdin.txt", "-"); out != "from stdin" {
		t.Errorf("cp to stdout: %q", out)
	}

	// Errors: a missing path, a directory given as a file.
	_, stderr, code := h.Run("vm", "cp", "cp:/nope", filepath.Join(t.TempDir(), "x"))
	t.Logf("missing: exit %d: %s", code, strings.TrimSpace(stderr))
	if code == 0 || !strings.Contains(stderr, "/nope") {
		t.Errorf("cp of a missing path: exit %d, %s", code, stderr)
	}
	_, stderr, code = h.Run("vm", "cp", "cp:/root/tree", filepath.Join(t.TempDir(), "x"))
	t.Logf("directory without -r: exit %d: %s", code, strings.TrimSpace(stderr))
	if code == 0 || !strings.Contains(stderr, "is a directory") {
		t.Errorf("cp of a directory without -r: exit %d, %s", code, stderr)
	}
	_, stderr, code = h.Run("vm", "cp", "cp:/root/tree", "-")
	if code == 0 || !strings.Contains(stderr, "is a directory") {
		t.Errorf("cp of a directory to stdout: exit %d, %s", code, stderr)
	}
	_, stderr, code = h.RunInput([]byte("x"), "vm", "cp", "-", "cp:/root/tree")
	t.Logf("file onto a directory: exit %d: %s", code, strings.TrimSpace(stderr))
	if code == 0 || !strings.Contains(stderr, "is a directory") {
		t.Errorf("write onto a directory: exit %d, %s", code, stderr)
	}

	// A full guest disk is named as such.
	h.MustRun("vm", "exec", "cp", "--", "sh", "-c", "mkdir -p /mnt/small && mount -t tmpfs -o size=1m tmpfs /mnt/small")
	two := filepath.Join(t.TempDir(), "two.bin")
	os.WriteFile(two, make([]byte, 2<<20), 0o644)
	_, stderr, code = h.Run("vm", "cp", two, "cp:/mnt/small/two.bin")
	t.Logf("full disk: exit %d: %s", code, strings.TrimSpace(stderr))
	if code == 0 || !strings.Contains(stderr, "disk is full") {
		t.Errorf("cp onto a full disk: exit %d, %s", code, stderr)
	}
	if out := h.MustRun("vm", "exec", "cp", "--", "ls", "-A", "/mnt/small"); strings.TrimSpace(out) != "" {
		t.Errorf("a failed write left %q", out)
	}

	// A stopped VM says so.
	h.MustRun("vm", "stop", "cp")
	_, stderr, code = h.Run("vm", "cp", "cp:/etc/hostname", "-")
	t.Logf("stopped: exit %d: %s", code, strings.TrimSpace(stderr))
	if code == 0 || !strings.Contains(stderr, "not running") {
		t.Errorf("cp from a stopped VM: exit %d, %s", code, stderr)
	}
}
