package vmm

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// CapLog keeps a log a VMM appends to (the guest console, the VMM's own
// output) near maxBytes, since the guest decides how much is written to
// it: when the file is larger than maxBytes, its last maxBytes/2 bytes
// (from the first line start in them, when there is one) replace
// path+".1", and the file is truncated to zero. A file at or under
// maxBytes, or missing, is left alone.
//
// The writer must have opened the file with O_APPEND (QEMU's chardev with
// append=on, proc.StartDetached's output): its next write then lands at
// the new end. A writer at its own offset would leave a hole the size the
// file had. Bytes appended between the copy and the truncation are lost;
// at the daemon's polling rate that is a few milliseconds of output.
//
// Safe to call repeatedly and concurrently with the writer and with other
// CapLog calls on the same path (they take turns on an flock). It never
// follows a symlink at path.
func CapLog(path string, maxBytes int64) error {
	if maxBytes <= 0 {
		return fmt.Errorf("cap log %s: max %d must be positive", path, maxBytes)
	}
	f, err := os.OpenFile(path, os.O_RDWR|unix.O_NOFOLLOW, 0)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("cap log: %w", err)
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		return fmt.Errorf("cap log: lock %s: %w", path, err)
	}
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("cap log: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("cap log: %s is not a regular file", path)
	}
	size := fi.Size()
	if size <= maxBytes {
		return nil
	}
	keep := maxBytes / 2
	buf := make([]byte, keep)
	n, err := f.ReadAt(buf, size-keep)
	if err != nil && err != io.EOF {
		return fmt.Errorf("cap log: read %s: %w", path, err)
	}
	buf = buf[:n]
	if i := bytes.IndexByte(buf, '\n'); i >= 0 && i+1 < len(buf) {
		buf = buf[i+1:] // start the kept part at a line
	}
	if err := writeReplace(path+".1", buf); err != nil {
		return fmt.Errorf("cap log: %w", err)
	}
	if err := f.Truncate(0); err != nil {
		return fmt.Errorf("cap log: truncate %s: %w", path, err)
	}
	return nil
}

// writeReplace puts b at path through a temporary file and a rename, so a
// reader sees the old or the new content, never a part.
func writeReplace(path string, b []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	_, err = tmp.Write(b)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		_ = os.Remove(tmp.Name())
	}
	return err
}
