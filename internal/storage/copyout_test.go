package storage

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var testSandbox = Sandbox{UID: 65534, GID: 65534}

// sandboxDir is a directory the sandbox user can reach and write in (a
// test's own temp dirs are closed to others).
func sandboxDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "banger-copyout-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chown(dir, int(testSandbox.UID), int(testSandbox.GID)); err != nil {
		t.Fatal(err)
	}
	return dir
}

func mkfsFrom(t *testing.T, src string) string {
	t.Helper()
	img := filepath.Join(t.TempDir(), "work.ext4")
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-d", src, img, "32M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	if err := os.Chmod(img, 0o600); err != nil { // as work disks are
		t.Fatal(err)
	}
	return img
}

func TestCopyOut(t *testing.T) {
	needRoot(t)
	need(t, "mkfs.ext4", "debugfs", "losetup")
	src := t.TempDir()
	repo := filepath.Join(src, `my "repo"`)
	files := map[string]string{
		"a.txt":                "a\n",
		"empty":                "",
		"dir with space/b.txt": "b\n",
		"naïve/日本.txt":         "u\n",
		".git/HEAD":            "ref: refs/heads/main\n",
	}
	for name, body := range files {
		p := filepath.Join(repo, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		os.WriteFile(p, []byte(body), 0o644)
	}
	os.WriteFile(filepath.Join(repo, "run.sh"), []byte("#!/bin/sh\n"), 0o755)
	os.Symlink("a.txt", filepath.Join(repo, "link"))
	os.WriteFile(filepath.Join(src, "outside"), []byte("x"), 0o644)
	img := mkfsFrom(t, src)
	ctx := context.Background()

	dst := filepath.Join(sandboxDir(t), "out")
	if err := CopyOut(ctx, img, `/my "repo"`, dst, testSandbox); err != nil {
		t.Fatal(err)
	}
	got := filepath.Join(dst, `my "repo"`)
	for name, body := range files {
		if b, err := os.ReadFile(filepath.Join(got, name)); err != nil || string(b) != body {
			t.Errorf("%s = %q, %v; want %q", name, b, err, body)
		}
	}
	if fi, err := os.Stat(filepath.Join(got, "run.sh")); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("run.sh mode: %v %v", fi, err)
	}
	if l, err := os.Readlink(filepath.Join(got, "link")); err != nil || l != "a.txt" {
		t.Errorf("link = %q, %v", l, err)
	}
	if _, err := os.Stat(filepath.Join(dst, "outside")); err == nil {
		t.Error("a file outside the directory came out")
	}
	if loops, _ := LoopsOf(img); len(loops) != 0 {
		t.Errorf("loop devices left on the image: %v", loops)
	}

	// Missing, not a directory, not clean: clear errors, nothing left.
	for dir, want := range map[string]string{
		"/nope":             "file does not exist",
		"/outside":          "is not a directory",
		"/my \"repo\"/../x": "not a clean absolute",
	} {
		dst := filepath.Join(sandboxDir(t), "out")
		err := CopyOut(ctx, img, dir, dst, testSandbox)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("CopyOut %s: %v, want %q", dir, err, want)
		}
		if _, serr := os.Stat(dst); serr == nil {
			t.Errorf("CopyOut %s left %s", dir, dst)
		}
	}
	if err := CopyOut(ctx, img, "/nope", filepath.Join(sandboxDir(t), "o"), testSandbox); !errors.Is(err, ErrNotFound) {
		t.Errorf("missing dir: %v, want ErrNotFound", err)
	}
	if loops, _ := LoopsOf(img); len(loops) != 0 {
		t.Errorf("loop devices left on the image: %v", loops)
	}
}

// TestCopyOutReplaysJournal: an image copied while mounted (as a killed VM
// leaves its work disk) has a journal to replay; what was written before
// comes out, and the image itself is not written (the replay runs on a
// private copy, removed afterwards).
func TestCopyOutReplaysJournal(t *testing.T) {
	needRoot(t)
	need(t, "mkfs.ext4", "debugfs", "losetup", "e2fsck", "mount")
	src := t.TempDir()
	os.MkdirAll(filepath.Join(src, "repo"), 0o755)
	img := mkfsFrom(t, src)
	mnt := t.TempDir()
	if out, err := exec.Command("mount", "-o", "loop", img, mnt).CombinedOutput(); err != nil {
		t.Skipf("cannot loop-mount ext4 here: %v\n%s", err, out)
	}
	os.WriteFile(filepath.Join(mnt, "repo", "late.txt"), []byte("written while mounted\n"), 0o644)
	exec.Command("sync").Run()
	dirty := filepath.Join(t.TempDir(), "dirty.ext4")
	cp := exec.Command("cp", "--sparse=always", img, dirty).Run()
	if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
		t.Fatalf("umount: %v\n%s", err, out)
	}
	if cp != nil {
		t.Fatal(cp)
	}
	// umount detaches the loop device in the background; the image is
	// whole only once it is gone.
	for i := 0; i < 100; i++ {
		if loops, err := LoopsOf(img); err == nil && len(loops) == 0 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if ok, err := NeedsRecovery(dirty); err != nil || !ok {
		t.Fatalf("an image copied while mounted needs no recovery? %v %v", ok, err)
	}
	if ok, err := NeedsRecovery(img); err != nil || ok {
		t.Fatalf("a cleanly unmounted image needs recovery? %v %v", ok, err)
	}
	before, _ := os.ReadFile(dirty)
	dst := filepath.Join(sandboxDir(t), "out")
	if err := CopyOut(context.Background(), dirty, "/repo", dst, testSandbox); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(dst, "repo", "late.txt")); err != nil || string(b) != "written while mounted\n" {
		t.Errorf("late.txt = %q, %v", b, err)
	}
	if after, _ := os.ReadFile(dirty); !bytes.Equal(before, after) {
		t.Error("the journal was replayed on the image itself")
	}
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(dirty), ".banger-replay-*")); len(left) != 0 {
		t.Errorf("the private copy was left: %v", left)
	}
	if loops, _ := Loops(filepath.Dir(dirty)); len(loops) != 0 {
		t.Errorf("loop devices left: %v", loops)
	}
	if _, err := NeedsRecovery(filepath.Join(src, "repo")); err == nil {
		t.Error("a directory passed for an ext4 image")
	}
}
