package storage

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/banger/banger/internal/testenv"
)

func TestCaptureFileSparse(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "work.ext4")
	f, err := os.Create(src)
	if err != nil {
		t.Fatal(err)
	}
	const size = 256 << 20
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	for _, off := range []int64{0, 64 << 20, size - 4096} {
		if _, err := f.WriteAt(bytes.Repeat([]byte{byte(off>>20) | 1}, 4096), off); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	dst := filepath.Join(dir, "snap.ext4")
	cloned, err := CaptureFile(context.Background(), src, dst)
	if err != nil {
		t.Fatal(err)
	}
	a, _ := os.ReadFile(src)
	b, err := os.ReadFile(dst)
	if err != nil || !bytes.Equal(a, b) {
		t.Fatalf("copy differs (%v)", err)
	}
	fi, _ := os.Stat(dst)
	blocks := fi.Sys().(*syscall.Stat_t).Blocks * 512
	t.Logf("cloned %v, %d bytes allocated of %d", cloned, blocks, fi.Size())
	if !cloned && blocks > 1<<20 {
		t.Errorf("sparse copy allocated %d bytes for 12 KiB of data", blocks)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v", fi.Mode())
	}
	if _, err := os.Stat(dst + ".tmp"); err == nil {
		t.Error("tmp file left")
	}
	if _, err := CaptureFile(context.Background(), filepath.Join(dir, "nope"), filepath.Join(dir, "x")); err == nil {
		t.Error("capture of a missing file succeeded")
	}
	if _, err := CaptureFile(context.Background(), dir, filepath.Join(dir, "x")); err == nil {
		t.Error("capture of a directory succeeded")
	}
}

// TestCaptureFileClonesOnXFS shows the capture is a clone where the
// filesystem shares extents: every data extent of the copy is shared with
// the source (so the work does not grow with the data), the content is
// the same, and writing the copy leaves the source alone.
func TestCaptureFileClonesOnXFS(t *testing.T) {
	need(t, "filefrag")
	mnt := mountXFS(t)
	src := filepath.Join(mnt, "work.ext4")
	data := bytes.Repeat([]byte("banger-capture-"), 64<<20/15)
	if err := os.WriteFile(src, data, 0o600); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(mnt, "snap.ext4")
	cloned, err := CaptureFile(context.Background(), src, dst)
	if err != nil || !cloned {
		t.Fatalf("CaptureFile on XFS with reflink: cloned %v, %v", cloned, err)
	}
	shared, blocks, err := testenv.SharedBlocks(dst)
	if err != nil || blocks == 0 || shared != blocks {
		out, _ := exec.Command("filefrag", "-v", dst).CombinedOutput()
		t.Fatalf("%d of %d blocks of the capture are shared with its source (%v):\n%s", shared, blocks, err, out)
	}
	got, err := os.ReadFile(dst)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("the capture differs from its source (%v)", err)
	}
	f, err := os.OpenFile(dst, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("changed"), 0)
	f.Close()
	if now, _ := os.ReadFile(src); !bytes.Equal(now, data) {
		t.Fatal("writing the capture changed its source")
	}
}

// TestCaptureByClone clones where the filesystem shares extents and
// makes nothing, with no error, where it cannot (the test's temporary
// directory when it is not XFS or btrfs).
func TestCaptureByClone(t *testing.T) {
	try := func(dir string) (bool, []byte) {
		t.Helper()
		src, dst := filepath.Join(dir, "a"), filepath.Join(dir, "b")
		if err := os.WriteFile(src, []byte("banger"), 0o600); err != nil {
			t.Fatal(err)
		}
		cloned, err := CaptureByClone(src, dst)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(dst + ".tmp"); !os.IsNotExist(err) {
			t.Fatalf("scratch file left: %v", err)
		}
		got, _ := os.ReadFile(dst)
		return cloned, got
	}
	if cloned, got := try(t.TempDir()); !cloned && got != nil {
		t.Fatalf("no clone, yet %q was made", got)
	} else {
		t.Logf("temporary directory clones: %v", cloned)
	}
	if testing.Short() {
		return
	}
	need(t, "filefrag")
	if cloned, got := try(mountXFS(t)); !cloned || string(got) != "banger" {
		t.Fatalf("on XFS with reflink: cloned %v, %q", cloned, got)
	}
}

// TestHoles maps a file's holes, and punching them in a fully written
// copy gives back the original's allocation and bytes.
func TestHoles(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "a")
	f, err := os.Create(src)
	if err != nil {
		t.Fatal(err)
	}
	const size = 16 << 20
	f.Truncate(size)
	for _, off := range []int64{1 << 20, 8 << 20} {
		f.WriteAt(bytes.Repeat([]byte{7}, 1<<20), off)
	}
	f.Close()
	holes, err := Holes(src)
	if err != nil {
		t.Fatal(err)
	}
	want := []Extent{{0, 1 << 20}, {2 << 20, 6 << 20}, {9 << 20, 7 << 20}}
	if len(holes) != len(want) {
		t.Fatalf("holes = %v, want %v", holes, want)
	}
	for i := range want {
		if holes[i] != want[i] {
			t.Fatalf("holes = %v, want %v", holes, want)
		}
	}
	data, _ := os.ReadFile(src)
	dst := filepath.Join(dir, "b")
	if err := os.WriteFile(dst, data, 0o600); err != nil { // every byte written
		t.Fatal(err)
	}
	if err := PunchHoles(dst, holes); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(dst)
	var st syscall.Stat_t
	syscall.Stat(dst, &st)
	if !bytes.Equal(got, data) || st.Blocks*512 > 2<<20+64<<10 {
		t.Fatalf("after punching: same bytes %v, %d bytes allocated", bytes.Equal(got, data), st.Blocks*512)
	}
}

// TestShareFile: a second name for the same file where one filesystem
// holds both, a copy across filesystems, and a refusal of anything but a
// regular file.
func TestShareFile(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "state")
	if err := os.WriteFile(src, []byte("saved"), 0o600); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, "snap")
	linked, err := ShareFile(t.Context(), src, dst)
	a, _ := os.Stat(src)
	b, _ := os.Stat(dst)
	if err != nil || !linked || b == nil || !os.SameFile(a, b) {
		t.Fatalf("share on one filesystem: linked %v, %v", linked, err)
	}
	if _, err := ShareFile(t.Context(), src, dst); err == nil {
		t.Fatal("share over an existing name succeeded")
	}
	other, err := os.MkdirTemp("/dev/shm", "share-")
	if err != nil {
		t.Skip("no /dev/shm:", err)
	}
	defer os.RemoveAll(other)
	far := filepath.Join(other, "snap")
	if linked, err = ShareFile(t.Context(), src, far); err != nil || linked {
		t.Fatalf("share across filesystems: linked %v, %v", linked, err)
	}
	if got, _ := os.ReadFile(far); string(got) != "saved" {
		t.Fatalf("copy across filesystems holds %q", got)
	}
	// A file others may write is copied, not linked.
	open := filepath.Join(dir, "open")
	if err := os.WriteFile(open, []byte("saved"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(open, 0o666); err != nil {
		t.Fatal(err)
	}
	if linked, err = ShareFile(t.Context(), open, filepath.Join(dir, "open2")); err != nil || linked {
		t.Fatalf("share of a file others may write: linked %v, %v", linked, err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink("/etc/passwd", link); err != nil {
		t.Fatal(err)
	}
	if _, err := ShareFile(t.Context(), link, filepath.Join(dir, "x")); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Fatalf("share of a symlink: %v", err)
	}
}
