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
	f, err := openRegular(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
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

// openRegular opens path for reading if it is a regular file, never
// following a symlink: a qcow2 file's header is read from the file
// itself, not from where a link points.
func openRegular(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err == nil && !fi.Mode().IsRegular() {
		err = fmt.Errorf("%s is not a regular file", path)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// Qcow2Header is what CheckQcow2Chain needs of a qcow2 header.
type Qcow2Header struct {
	Backing       string // backing file name; "" for none
	BackingFormat string // from the backing format extension; "" when absent
	// Size is the virtual size the header states, in bytes: what the
	// VMM shows the guest and what qemu-img walks over.
	Size uint64
}

// qcow2 header fields and extensions a VMM would act on by opening
// another file.
const (
	qcow2IncompatDataFile = 1 << 2     // external data file
	qcow2ExtDataFile      = 0x44415441 // its name
	qcow2MaxExtensions    = 64
)

// ParseQcow2Header reads a qcow2 header: its backing file name and
// format, refusing what would have a VMM open a file other than the
// backing file: an external data file (the feature bit or its name's
// extension) and encryption. head is the file's start, at least its
// first cluster's header and extensions as far as they go (a short head
// fails, never reads beyond it); at reads the backing name.
func ParseQcow2Header(head []byte, at io.ReaderAt) (Qcow2Header, error) {
	var h Qcow2Header
	name, err := ParseQcow2Backing(head, at)
	if err != nil {
		return h, err
	}
	h.Backing = name
	be := binary.BigEndian
	if len(head) < 72 {
		return h, errors.New("qcow2 header: short")
	}
	h.Size = be.Uint64(head[24:])
	if be.Uint32(head[32:]) != 0 {
		return h, errors.New("qcow2 image is encrypted")
	}
	extAt := 72 // version 2
	if be.Uint32(head[4:]) == 3 {
		if len(head) < 104 {
			return h, errors.New("qcow2 version 3 header: short")
		}
		if be.Uint64(head[72:])&qcow2IncompatDataFile != 0 {
			return h, errors.New("qcow2 image has an external data file")
		}
		extAt = int(be.Uint32(head[100:]))
		if extAt < 104 {
			return h, fmt.Errorf("qcow2 header length %d: want at least 104", extAt)
		}
	}
	for i := 0; ; i++ {
		if i == qcow2MaxExtensions {
			return h, fmt.Errorf("qcow2 header: more than %d extensions", qcow2MaxExtensions)
		}
		if extAt+8 > len(head) {
			return h, errors.New("qcow2 header extensions run past the header")
		}
		typ, n := be.Uint32(head[extAt:]), int(be.Uint32(head[extAt+4:]))
		data := extAt + 8
		if n < 0 || n > len(head)-data {
			return h, fmt.Errorf("qcow2 header extension %#x of %d bytes runs past the header", typ, n)
		}
		switch typ {
		case qcow2ExtEnd:
			return h, nil
		case qcow2ExtDataFile:
			return h, errors.New("qcow2 image names an external data file")
		case qcow2ExtBackingFormat:
			h.BackingFormat = string(head[data : data+n])
		}
		extAt = data + (n+7)&^7
	}
}

// ReadQcow2Header is ParseQcow2Header of the file at path, which must
// be a regular file (a symlink is refused); it reads at most the first
// 64 KiB as the header.
func ReadQcow2Header(path string) (Qcow2Header, error) {
	f, err := openRegular(path)
	if err != nil {
		return Qcow2Header{}, err
	}
	defer f.Close()
	head := make([]byte, qcow2ClusterSize)
	n, err := io.ReadFull(f, head)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
		return Qcow2Header{}, fmt.Errorf("%s: qcow2 header: %w", path, err)
	}
	h, err := ParseQcow2Header(head[:n], f)
	if err != nil {
		return h, fmt.Errorf("%s: %w", path, err)
	}
	return h, nil
}

// MaxQcow2Chain bounds the qcow2 files CheckQcow2Chain follows.
const MaxQcow2Chain = 32

// CheckQcow2Chain checks, before a VMM opens the qcow2 image top, every
// file the VMM would open through it. A qcow2 header is written by the
// VMM, which a guest may have taken over, and a VMM opens backing files
// before it drops its privileges: a header naming the host's disk would
// hand it to the guest. Each backing file must be one of allowed (clean
// absolute paths, each with its format: the VM's image "raw", snapshots'
// system disks "qcow2"), named with that format (never left to the VMM's
// probing), and no file may have an external data file or encryption.
// Every qcow2 file's virtual size must be at most maxSize (banger writes
// the image's size): qemu-img rebase and convert walk the whole stated
// size, so a header stating petabytes would keep one busy for hours. The
// walk ends at a raw file or a qcow2 file without a backing file, within
// MaxQcow2Chain files.
func CheckQcow2Chain(top string, allowed map[string]string, maxSize int64) error {
	cur := top
	for range MaxQcow2Chain {
		h, err := ReadQcow2Header(cur)
		if err != nil {
			return err
		}
		if maxSize < 0 || h.Size > uint64(maxSize) {
			return fmt.Errorf("%s: virtual size of %d bytes exceeds the %d bytes of the vm's image", cur, h.Size, maxSize)
		}
		if h.Backing == "" {
			return nil
		}
		format, ok := allowed[h.Backing]
		if !ok {
			return fmt.Errorf("%s: backing file %q is not the vm's image or the system disk of a snapshot it descends from", cur, h.Backing)
		}
		if h.BackingFormat != format {
			return fmt.Errorf("%s: backing file %s named with format %q, want %q", cur, h.Backing, h.BackingFormat, format)
		}
		if format != "qcow2" {
			return nil
		}
		cur = h.Backing
	}
	return fmt.Errorf("%s: qcow2 backing chain longer than %d files", top, MaxQcow2Chain)
}
