package storage

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"
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
