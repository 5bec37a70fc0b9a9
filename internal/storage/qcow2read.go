package storage

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
)

// qcow2MaxBackingOffset bounds where a header may put the backing file
// name: within the first cluster of the largest cluster size (2 MiB),
// so a reader never seeks far on a file's word.
const qcow2MaxBackingOffset = 2 << 20

// ParseQcow2Backing reads the backing file name of a qcow2 image from
// the start of the file, head (at least the header's first 20 bytes),
// and at (reads of the name where the header points). It answers "" for
// an image without a backing file. The file may have been written by a
// VMM the guest took over: its offsets and lengths are checked, never
// trusted.
func ParseQcow2Backing(head []byte, at io.ReaderAt) (string, error) {
	if len(head) < 20 || !bytes.Equal(head[:4], []byte("QFI\xfb")) {
		return "", errors.New("not a qcow2 image (no QFI\\xfb magic)")
	}
	be := binary.BigEndian
	if v := be.Uint32(head[4:]); v != 2 && v != 3 {
		return "", fmt.Errorf("qcow2 version %d; want 2 or 3", v)
	}
	off, n := be.Uint64(head[8:]), be.Uint32(head[16:])
	if off == 0 {
		return "", nil
	}
	if n == 0 || n > qcow2MaxBackingName || off > qcow2MaxBackingOffset {
		return "", fmt.Errorf("qcow2 backing file name of %d bytes at offset %d: out of bounds", n, off)
	}
	name := make([]byte, n)
	if _, err := at.ReadAt(name, int64(off)); err != nil {
		return "", fmt.Errorf("qcow2 backing file name: %w", err)
	}
	if bytes.IndexByte(name, 0) >= 0 {
		return "", errors.New("qcow2 backing file name holds a NUL byte")
	}
	return string(name), nil
}

// Qcow2Backing is the backing file name recorded in the qcow2 image at
// path ("" when it has none), read as ParseQcow2Backing does. It opens
// nothing but path, which must be a regular file (a symlink is refused).
func Qcow2Backing(path string) (string, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return "", err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", err
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("%s is not a regular file", path)
	}
	head := make([]byte, 20)
	if _, err := io.ReadFull(f, head); err != nil {
		return "", fmt.Errorf("%s: qcow2 header: %w", path, err)
	}
	name, err := ParseQcow2Backing(head, f)
	if err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	return name, nil
}
