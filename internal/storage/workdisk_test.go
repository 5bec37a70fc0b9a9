package storage

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
)

func statBlocks(t testing.TB, path string) int64 {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Sys().(*syscall.Stat_t).Blocks
}

func TestCreateWorkDisk(t *testing.T) {
	need(t, "mkfs.ext4", "debugfs", "dumpe2fs")
	ctx := context.Background()
	dir := t.TempDir()
	disk := filepath.Join(dir, "work.ext4")
	if err := CreateWorkDisk(ctx, disk, 4<<30); err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(disk)
	if st.Size() != 4<<30 {
		t.Fatalf("size %d, want 4 GiB", st.Size())
	}
	if used := statBlocks(t, disk) * 512; used > 256<<20 {
		t.Fatalf("work disk allocates %d bytes: not sparse/lazy", used)
	}
	out, err := exec.Command("dumpe2fs", "-h", disk).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "Filesystem volume name:   banger-work") {
		t.Fatalf("dumpe2fs: %v: %s", err, out)
	}
	names, err := ListDir(ctx, disk, "/")
	if err != nil || !slices.Contains(names, "lost+found") {
		t.Fatalf("ListDir / = %q, %v", names, err)
	}
	// Never overwrites a disk.
	if err := CreateWorkDisk(ctx, disk, 4<<30); err == nil {
		t.Fatal("CreateWorkDisk overwrote an existing disk")
	}
	if _, err := os.Stat(disk); err != nil {
		t.Fatalf("refused create removed the existing disk: %v", err)
	}
}

// inodeOf reads the mode bits and owner of path on an ext4 image with
// debugfs.
func inodeOf(t *testing.T, disk, path string) (mode, owner string) {
	t.Helper()
	out, err := exec.Command("debugfs", "-R", "stat "+debugfsQuote(path), disk).Output()
	if err != nil {
		t.Fatalf("debugfs stat %s: %v", path, err)
	}
	f := strings.Fields(string(out))
	for i := 0; i+1 < len(f); i++ {
		switch f[i] {
		case "Mode:":
			mode = f[i+1]
		case "User:":
			owner = f[i+1]
		}
	}
	return mode, owner
}

func TestCreateWorkDiskWithSeed(t *testing.T) {
	need(t, "mkfs.ext4", "debugfs")
	ctx := context.Background()
	dir := t.TempDir()
	seed := filepath.Join(dir, "seed")
	os.MkdirAll(filepath.Join(seed, ".banger"), 0o700)
	os.Chmod(filepath.Join(seed, ".banger"), 0o700)
	os.WriteFile(filepath.Join(seed, ".banger", "key"), []byte("private\n"), 0o600)
	os.WriteFile(filepath.Join(seed, ".banger", "key.pub"), []byte("public\n"), 0o644)
	disk := filepath.Join(dir, "work.ext4")
	if err := CreateWorkDiskWith(ctx, disk, 1<<30, seed); err != nil {
		t.Fatal(err)
	}
	if used := statBlocks(t, disk) * 512; used > 128<<20 {
		t.Fatalf("seeded work disk allocates %d bytes: not sparse/lazy", used)
	}
	for path, want := range map[string]string{"/.banger/key": "private\n", "/.banger/key.pub": "public\n"} {
		got, err := ReadFile(ctx, disk, path)
		if err != nil || string(got) != want {
			t.Errorf("ReadFile(%s) = %q, %v; want %q", path, got, err, want)
		}
	}
	uid := fmt.Sprint(os.Geteuid())
	for path, want := range map[string]string{"/.banger": "0700", "/.banger/key": "0600", "/.banger/key.pub": "0644"} {
		if mode, owner := inodeOf(t, disk, path); mode != want || owner != uid {
			t.Errorf("%s on the disk: mode %s owner %s, want %s owned by %s", path, mode, owner, want, uid)
		}
	}
	// The root stays root's whatever the seed's owner: the guest mounts it at /root.
	if _, owner := inodeOf(t, disk, "/"); owner != "0" {
		t.Errorf("disk root owned by %s, want 0", owner)
	}
	names, err := ListDir(ctx, disk, "/")
	slices.Sort(names)
	if err != nil || !slices.Equal(names, []string{".banger", "lost+found"}) {
		t.Errorf("ListDir / = %q, %v", names, err)
	}

	// A missing seed is refused before anything is made.
	other := filepath.Join(dir, "other.ext4")
	if err := CreateWorkDiskWith(ctx, other, 64<<20, filepath.Join(dir, "nope")); err == nil {
		t.Fatal("a missing seed directory was accepted")
	}
	if _, err := os.Stat(other); !os.IsNotExist(err) {
		t.Fatalf("refused CreateWorkDiskWith left %s: %v", other, err)
	}
}

func TestCreateWorkDiskFailureLeavesNothing(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	if err := CreateWorkDisk(ctx, filepath.Join(dir, "small"), 1<<20); err == nil || !strings.Contains(err.Error(), "at least 16M") {
		t.Fatalf("tiny disk: %v", err)
	}
	// A failing mkfs.ext4 first on PATH.
	bin := filepath.Join(dir, "bin")
	os.Mkdir(bin, 0o755)
	os.WriteFile(filepath.Join(bin, "mkfs.ext4"), []byte("#!/bin/sh\necho mkfs failed >&2\nexit 1\n"), 0o755)
	t.Setenv("PATH", bin+":"+os.Getenv("PATH"))
	disk := filepath.Join(dir, "work.ext4")
	err := CreateWorkDisk(ctx, disk, 64<<20)
	if err == nil || !strings.Contains(err.Error(), "mkfs failed") {
		t.Fatalf("CreateWorkDisk with failing mkfs: %v", err)
	}
	if _, err := os.Stat(disk); !os.IsNotExist(err) {
		t.Fatalf("failed CreateWorkDisk left %s: %v", disk, err)
	}
}

// diskWith makes an ext4 image holding the given files (path → content).
func diskWith(t *testing.T, files map[string]string) string {
	t.Helper()
	need(t, "mkfs.ext4", "debugfs")
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	for p, c := range files {
		full := filepath.Join(src, p)
		os.MkdirAll(filepath.Dir(full), 0o755)
		if err := os.WriteFile(full, []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	disk := filepath.Join(dir, "disk.ext4")
	sparseImage(t, disk, 32<<20)
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-d", src, disk).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4 -d: %v: %s", err, out)
	}
	return disk
}

func TestReadFileAndListDir(t *testing.T) {
	ctx := context.Background()
	disk := diskWith(t, map[string]string{
		".local/state/banger/sessions/s1/status":   "running\n",
		".local/state/banger/sessions/s1/exitcode": "",
		"dir with space/it's $(here).txt":          "odd\nname\n",
		"top.txt":                                  "top",
	})
	tests := []struct {
		path, want string
	}{
		{"/.local/state/banger/sessions/s1/status", "running\n"},
		{"/.local/state/banger/sessions/s1/exitcode", ""},
		{"/dir with space/it's $(here).txt", "odd\nname\n"},
		{"/top.txt", "top"},
	}
	for _, tt := range tests {
		got, err := ReadFile(ctx, disk, tt.path)
		if err != nil || string(got) != tt.want {
			t.Errorf("ReadFile(%q) = %q, %v; want %q", tt.path, got, err, tt.want)
		}
	}
	if _, err := ReadFile(ctx, disk, "/nope"); !errors.Is(err, ErrNotFound) || !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("ReadFile of a missing file: %v, want ErrNotFound", err)
	}
	if _, err := ReadFile(ctx, disk, "/dir with space"); err == nil || errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("ReadFile of a directory: %v", err)
	}
	if _, err := ReadFile(ctx, disk, `/a"b`); err == nil {
		t.Error("ReadFile accepted a path with a double quote")
	}
	names, err := ListDir(ctx, disk, "/.local/state/banger/sessions/s1")
	slices.Sort(names)
	if err != nil || !slices.Equal(names, []string{"exitcode", "status"}) {
		t.Errorf("ListDir = %q, %v", names, err)
	}
	names, err = ListDir(ctx, disk, "/dir with space")
	if err != nil || !slices.Equal(names, []string{"it's $(here).txt"}) {
		t.Errorf("ListDir of a dir with a space = %q, %v", names, err)
	}
	if _, err := ListDir(ctx, disk, "/nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("ListDir of a missing dir: %v, want ErrNotFound", err)
	}
	if _, err := ListDir(ctx, disk, "/top.txt"); err == nil || errors.Is(err, ErrNotFound) {
		t.Errorf("ListDir of a file: %v, want a not-a-directory error", err)
	}
	if _, err := ListDir(ctx, filepath.Join(t.TempDir(), "missing.ext4"), "/"); err == nil {
		t.Error("ListDir of a missing disk succeeded")
	}
}
