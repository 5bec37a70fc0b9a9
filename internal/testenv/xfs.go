package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// MountXFS mounts a fresh XFS made with reflink=1 (extents shared by
// FICLONE) on mnt, from a sparse image file of size bytes at img, through
// a loop device. Cleanup unmounts it, retrying while a process that just
// ended still holds it, then frees the loop and removes img. It skips
// the test without root or xfsprogs.
func MountXFS(t testing.TB, img, mnt string, size int64) {
	t.Helper()
	RequireRoot(t)
	for _, b := range []string{"mkfs.xfs", "losetup", "mount", "umount"} {
		RequireBinary(t, b)
	}
	run := func(name string, args ...string) string {
		t.Helper()
		out, err := exec.Command(name, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
		}
		return strings.TrimSpace(string(out))
	}
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(img, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(img) })
	err = f.Truncate(size)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	run("mkfs.xfs", "-q", "-f", "-m", "reflink=1", img)
	loop := run("losetup", "--find", "--show", img)
	t.Cleanup(func() {
		exec.Command("losetup", "--detach", loop).Run()
		// A detach while something (udev's probe after the umount) still
		// has the device open is deferred to its last close: wait for it,
		// so that what runs next finds no loop over img.
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			if out, err := exec.Command("losetup", "--associated", img).Output(); err == nil && len(strings.TrimSpace(string(out))) == 0 {
				return
			}
		}
		// Still open elsewhere: a process that made a mount namespace
		// while the XFS was mounted (`ip netns exec` in a test running
		// alongside) keeps a copy of the mount until it exits. The
		// kernel frees the loop then (autoclear); anything else is a
		// leak.
		if raw, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(loop), "loop", "autoclear")); err == nil && strings.TrimSpace(string(raw)) == "1" {
			t.Logf("loop %s over %s is held open elsewhere; the kernel detaches it at its last close", loop, img)
			return
		}
		t.Errorf("loop %s over %s still attached 10s after its detach", loop, img)
	})
	run("mount", loop, mnt)
	t.Cleanup(func() {
		var out []byte
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			if out, err = exec.Command("umount", mnt).CombinedOutput(); err == nil || time.Now().After(deadline) {
				break
			}
		}
		if err != nil {
			t.Errorf("umount %s: %v: %s", mnt, err, out)
			exec.Command("umount", "-l", mnt).Run()
		}
	})
}

// SharedBlocks counts path's data blocks and those of them in extents
// shared with another file (filefrag's "shared" flag): a FICLONE copy
// shares all of them with its source until either is written.
func SharedBlocks(path string) (shared, total int64, err error) {
	out, err := exec.Command("filefrag", "-v", path).CombinedOutput()
	if err != nil {
		return 0, 0, fmt.Errorf("filefrag %s: %v: %s", path, err, out)
	}
	// "   0:        0..    2047:         24..      2071:   2048:   last,shared,eof"
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) < 6 || !strings.HasSuffix(f[0], ":") {
			continue
		}
		if _, err := strconv.Atoi(strings.TrimSuffix(f[0], ":")); err != nil {
			continue // the header
		}
		n, err := strconv.ParseInt(strings.TrimSuffix(f[5], ":"), 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("filefrag %s: extent line %q", path, line)
		}
		total += n
		if strings.Contains(f[len(f)-1], "shared") {
			shared += n
		}
	}
	return shared, total, nil
}
