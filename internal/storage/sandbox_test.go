package storage

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// pidsOf returns the live processes running as uid (zombies wait for a
// reaper that may be slow here, and run nothing).
func pidsOf(uid uint32) []int {
	var pids []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		fi, err := os.Stat(filepath.Join("/proc", e.Name()))
		stat, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if i := strings.LastIndexByte(string(stat), ')'); i < 0 || strings.HasPrefix(string(stat[i:]), ") Z") {
			continue
		}
		if err == nil && fi.Sys().(*syscall.Stat_t).Uid == uid {
			pids = append(pids, pid)
		}
	}
	return pids
}

// TestJailKillsLeftovers: a tool in the jail that leaves a daemonised
// child holding its output neither hangs the caller nor survives Kill, and
// each jail has an id of its own.
func TestJailKillsLeftovers(t *testing.T) {
	needRoot(t)
	ctx := context.Background()
	j, err := NewJail()
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	k, err := NewJail()
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	if j.Sandbox() == k.Sandbox() || j.Sandbox().UID < JailIDs.First || j.Sandbox() == DefaultSandbox {
		t.Errorf("jails share or misplace their ids: %v %v", j.Sandbox(), k.Sandbox())
	}
	t.Logf("jail id %d, cgroup %q", j.Sandbox().UID, j.Cgroup())
	start := time.Now()
	// The grandchild escapes the session and keeps stdout open.
	out, _, err := j.run(ctx, nil, 1<<10, "sh", "-c", "setsid sh -c 'sleep 1000 & sleep 1000' & echo started")
	if err != nil || strings.TrimSpace(out) != "started" {
		t.Fatalf("run: %q %v", out, err)
	}
	if d := time.Since(start); d > WaitDelay+3*time.Second {
		t.Errorf("a leftover holding stdout held the caller for %v", d)
	}
	if len(pidsOf(j.Sandbox().UID)) == 0 {
		t.Fatal("the leftovers were not there to kill")
	}
	if err := j.Kill(); err != nil {
		t.Fatal(err)
	}
	if left := pidsOf(j.Sandbox().UID); len(left) != 0 {
		t.Errorf("processes of the jail survived Kill: %v", left)
	}
	// The jail is usable after a kill.
	if out, _, err := j.run(ctx, nil, 1<<10, "id", "-u"); err != nil || strings.TrimSpace(out) != fmt.Sprint(j.Sandbox().UID) {
		t.Errorf("after Kill: %q %v", out, err)
	}
	// Past its output limit a tool is killed, not buffered.
	if _, _, err := j.run(ctx, nil, 1<<20, "cat", "/dev/zero"); !errors.Is(err, errTooMuch) {
		t.Errorf("endless output: %v", err)
	}
	cg := j.Cgroup()
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(cg); cg != "" && err == nil {
		t.Errorf("cgroup %s left", cg)
	}
}

// sparseTree makes a work disk whose dir holds a file of 1 TiB that uses
// no blocks, as a guest makes with truncate -s 1T.
func sparseTree(t *testing.T, name string) string {
	t.Helper()
	src := t.TempDir()
	os.MkdirAll(filepath.Join(src, "repo", "sub"), 0o755)
	os.WriteFile(filepath.Join(src, "repo", "small"), []byte("small\n"), 0o644)
	f, err := os.Create(filepath.Join(src, "repo", "sub", name))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(1 << 40); err != nil {
		t.Skipf("no 1 TiB sparse file here: %v", err)
	}
	f.Close()
	return mkfsFrom(t, src)
}

// usage returns the bytes allocated under dir.
func usage(dir string) int64 {
	var n int64
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil {
			n += fi.Sys().(*syscall.Stat_t).Blocks * 512
		}
		return nil
	})
	return n
}

// TestReadFileSparse: a 1 TiB sparse file is refused from its size, fast,
// without the daemon holding any of it; a file within the limit reads.
func TestReadFileSparse(t *testing.T) {
	needRoot(t)
	need(t, "mkfs.ext4", "debugfs", "losetup")
	img := sparseTree(t, "status")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var m0, m1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m0)
	start := time.Now()
	_, err := ReadFile(ctx, img, "/repo/sub/status")
	took := time.Since(start)
	runtime.ReadMemStats(&m1)
	alloc := m1.TotalAlloc - m0.TotalAlloc
	t.Logf("ReadFile of a 1 TiB sparse file: %v in %v, %d bytes allocated", err, took, alloc)
	if !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), "/repo/sub/status") || !strings.Contains(err.Error(), "1099511627776 bytes") || !strings.Contains(err.Error(), fmt.Sprint(DefaultReadLimit)) {
		t.Errorf("err = %v, want ErrTooLarge naming the file, its size and the limit", err)
	}
	if took > 10*time.Second || alloc > 16<<20 {
		t.Errorf("refusing took %v and %d bytes", took, alloc)
	}
	if b, err := ReadFileLimit(ctx, img, "/repo/small", 6); err != nil || string(b) != "small\n" {
		t.Errorf("a file at the limit: %q %v", b, err)
	}
	if _, err := ReadFileLimit(ctx, img, "/repo/small", 5); !errors.Is(err, ErrTooLarge) {
		t.Errorf("a file one byte over: %v", err)
	}
	if names, err := ListDirLimit(ctx, img, "/repo", 2); err != nil || len(names) != 2 {
		t.Errorf("ListDirLimit at the limit: %v %v", names, err)
	}
	if _, err := ListDirLimit(ctx, img, "/repo", 1); !errors.Is(err, ErrTooLarge) {
		t.Errorf("ListDirLimit over the limit: %v", err)
	}
	if loops, _ := LoopsOf(img); len(loops) != 0 {
		t.Errorf("loop devices left: %v", loops)
	}
}

// TestCopyOutSparse: a tree holding a 1 TiB sparse file is refused before
// anything is written to the host's temp dir; a budget smaller than the
// tree is refused the same way.
func TestCopyOutSparse(t *testing.T) {
	needRoot(t)
	need(t, "mkfs.ext4", "debugfs", "losetup")
	img := sparseTree(t, "huge")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	parent := sandboxDir(t)
	dst := filepath.Join(parent, "out")
	var st0, st1 syscall.Statfs_t
	syscall.Statfs(parent, &st0)
	start := time.Now()
	err := CopyOut(ctx, img, "/repo", dst, testSandbox)
	took := time.Since(start)
	syscall.Statfs(parent, &st1)
	t.Logf("CopyOut of a tree with a 1 TiB sparse file: %v in %v; temp dir holds %d bytes; free space on its filesystem changed by %d bytes",
		err, took, usage(parent), (int64(st0.Bfree)-int64(st1.Bfree))*st0.Bsize)
	if !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), `"huge" alone is 1099511627776 bytes`) {
		t.Errorf("err = %v, want ErrTooLarge naming the file", err)
	}
	if _, err := os.Stat(dst); err == nil {
		t.Error("a refused copy left its destination")
	}
	if u := usage(parent); u > 1<<20 || took > 30*time.Second {
		t.Errorf("refusing took %v and %d bytes of temp space", took, u)
	}

	// A budget below the tree's size.
	src := t.TempDir()
	os.MkdirAll(filepath.Join(src, "repo"), 0o755)
	os.WriteFile(filepath.Join(src, "repo", "a"), make([]byte, 4096), 0o644)
	small := mkfsFrom(t, src)
	j, err := NewJail()
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	parent, err = os.MkdirTemp("", "banger-copyout-test-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(parent)
	os.Chmod(parent, 0o711)
	if err := CopyOutIn(ctx, j, small, "/repo", filepath.Join(parent, "o"), CopyLimits{MaxBytes: 4095}); !errors.Is(err, ErrTooLarge) {
		t.Errorf("over the byte budget: %v", err)
	}
	if err := CopyOutIn(ctx, j, small, "/repo", filepath.Join(parent, "o"), CopyLimits{MaxEntries: 0, MaxBytes: 4096}); err != nil {
		t.Errorf("at the byte budget: %v", err)
	}
	if loops, _ := LoopsOf(img); len(loops) != 0 {
		t.Errorf("loop devices left: %v", loops)
	}
}

// TestCopyOutRefusesHostileTrees: a directory linked into itself (rdump
// would write for ever) and a name with a newline (its listing cannot be
// read line by line) are refused.
func TestCopyOutRefusesHostileTrees(t *testing.T) {
	needRoot(t)
	need(t, "mkfs.ext4", "debugfs", "losetup")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	src := t.TempDir()
	os.MkdirAll(filepath.Join(src, "repo", "sub"), 0o755)
	cyclic := mkfsFrom(t, src)
	if out, err := exec.Command("debugfs", "-w", "-R", "link /repo /repo/sub/again", cyclic).CombinedOutput(); err != nil {
		t.Fatalf("debugfs link: %v\n%s", err, out)
	}
	dst := filepath.Join(sandboxDir(t), "out")
	if err := CopyOut(ctx, cyclic, "/repo", dst, testSandbox); err == nil || !strings.Contains(err.Error(), "linked twice") {
		t.Errorf("a directory cycle: %v", err)
	}

	src = t.TempDir()
	os.MkdirAll(filepath.Join(src, "repo"), 0o755)
	if err := os.WriteFile(filepath.Join(src, "repo", "x\n99"), make([]byte, 8192), 0o644); err != nil {
		t.Fatal(err)
	}
	forged := mkfsFrom(t, src)
	dst = filepath.Join(sandboxDir(t), "out")
	if err := CopyOut(ctx, forged, "/repo", dst, testSandbox); err == nil || !strings.Contains(err.Error(), "cannot list safely") {
		t.Errorf("a name with a newline: %v", err)
	}
}
