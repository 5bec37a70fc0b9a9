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
//
// A guest serving an endless file is cut at max_copy_out (64M here) and
// leaves nothing on the host; once the VM is stopped, the tree is copied
// out of its work disk, byte-identical with modes and links kept.
func TestVMCp(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "config.json")
	os.WriteFile(cfg, []byte(`{"max_copy_out": "64M"}`), 0o644)
	h := NewHarness(t, "BANGER_CONFIG="+cfg)
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

	// A hostile guest's endless file stops at the budget, leaving nothing.
	endless := filepath.Join(t.TempDir(), "endless")
	_, stderr, code = h.Run("vm", "cp", "cp:/dev/zero", endless)
	t.Logf("endless file: exit %d: %s", code, strings.TrimSpace(stderr))
	if code == 0 || !strings.Contains(stderr, "max_copy_out") {
		t.Errorf("cp of an endless file: exit %d, %s", code, stderr)
	}
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(endless), "*")); len(left) != 0 {
		t.Errorf("an endless copy left %v", left)
	}

	// The user's home is on the work disk too (bound from it at boot).
	h.MustRun("vm", "exec", "cp", "--", "su", "user", "-c", "echo mine > /home/user/note.txt")
	if out := h.MustRun("vm", "exec", "cp", "--", "sh", "-c", "findmnt -n -o SOURCE /home/user; stat -c %U:%a /home/user"); !strings.Contains(out, "user:750") {
		t.Errorf("/home/user in the guest: %q", out)
	}

	// A stopped VM: reads come from its work disk.
	h.MustRun("vm", "stop", "cp")
	if out := h.MustRun("vm", "cp", "cp:/home/user/note.txt", "-"); out != "mine\n" {
		t.Errorf("/home/user/note.txt from the stopped VM: %q", out)
	}
	off := filepath.Join(t.TempDir(), "offline")
	h.MustRun("vm", "cp", "-r", "cp:tree", off)
	if got := fileSum(t, filepath.Join(off, "big.bin")); got != bigSum {
		t.Errorf("big.bin from the stopped VM: sha256 %s, want %s", got, bigSum)
	}
	if st, err := os.Stat(filepath.Join(off, "bin", "run.sh")); err != nil || st.Mode().Perm() != 0o755 {
		t.Errorf("run.sh from the stopped VM: %v, %v", st, err)
	}
	if l, err := os.Readlink(filepath.Join(off, "link")); err != nil || l != "bin/run.sh" {
		t.Errorf("link from the stopped VM: %q, %v", l, err)
	}
	if st, err := os.Stat(filepath.Join(back, "big.bin")); err == nil {
		if so, err := os.Stat(filepath.Join(off, "big.bin")); err != nil || so.ModTime().Unix() != st.ModTime().Unix() {
			t.Errorf("big.bin mtime offline %v, online %v (to the second: the disk reader sets whole seconds)", so.ModTime(), st.ModTime())
		}
	}
	if out := h.MustRun("vm", "cp", "cp:/root/tree/bin/run.sh", "-"); out != "#!/bin/sh\necho ran\n" {
		t.Errorf("a single file from the stopped VM: %q", out)
	}
	t.Logf("offline tree: big.bin sha256 %s, run.sh 0755, link -> bin/run.sh", bigSum)
	_, stderr, code = h.Run("vm", "cp", "cp:/root/nope", filepath.Join(t.TempDir(), "x"))
	t.Logf("stopped, missing: exit %d: %s", code, strings.TrimSpace(stderr))
	if code == 0 || !strings.Contains(stderr, "/root/nope") || !strings.Contains(stderr, "no such file") {
		t.Errorf("cp of a missing path from a stopped VM: exit %d, %s", code, stderr)
	}
	_, stderr, code = h.Run("vm", "cp", "cp:/etc/hostname", "-")
	t.Logf("stopped, system disk: exit %d: %s", code, strings.TrimSpace(stderr))
	if code == 0 || !strings.Contains(stderr, "system disk") {
		t.Errorf("cp from a stopped VM's system disk: exit %d, %s", code, stderr)
	}
	_, stderr, code = h.RunInput([]byte("x"), "vm", "cp", "-", "cp:/root/x")
	t.Logf("stopped, write: exit %d: %s", code, strings.TrimSpace(stderr))
	if code == 0 || !strings.Contains(stderr, "not running") {
		t.Errorf("cp into a stopped VM: exit %d, %s", code, stderr)
	}
}
