package storage

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/banger/banger/internal/vmm"
)

// The layout of an empty qcow2 overlay, as qemu-img lays it out: cluster 0
// holds the header, its extensions and the backing file name; cluster 1 the
// refcount table; cluster 2 the one refcount block; the L1 table follows
// from cluster 3. No L2 table or data cluster exists until the VMM writes.
const (
	qcow2ClusterBits   = 16
	qcow2ClusterSize   = 1 << qcow2ClusterBits
	qcow2HeaderLength  = 112 // v3 header through compression_type, padded to 8
	qcow2RefcountOrder = 4   // 16-bit refcounts
	// qcow2MaxBackingName is the format's limit on the backing file name.
	qcow2MaxBackingName = 1023
	// qcow2MaxL1Bytes is QEMU's limit on the L1 table (QCOW_MAX_L1_SIZE):
	// it caps the virtual size at 2 PiB with 64 KiB clusters.
	qcow2MaxL1Bytes = 32 << 20

	qcow2ExtBackingFormat = 0xE2792ACA
	qcow2ExtEnd           = 0

	qcow2RefcountTable = 1 * qcow2ClusterSize
	qcow2RefcountBlock = 2 * qcow2ClusterSize
	qcow2L1Table       = 3 * qcow2ClusterSize
)

// Qcow2MaxSize is the largest virtual size Qcow2Overlay accepts.
const Qcow2MaxSize = int64(qcow2MaxL1Bytes/8) * qcow2ClusterSize * (qcow2ClusterSize / 8)

// Qcow2Overlay returns the bytes of an empty qcow2 (version 3) image of
// virtual size size whose backing file is the raw image at backing, the same
// image `qemu-img create -f qcow2 -F raw -b backing` makes. backing must be
// an absolute path of at most 1023 bytes; size must be a positive multiple
// of 512 bytes, at most Qcow2MaxSize. It does no I/O: the backing file is
// neither opened nor checked.
//
// The result is 192 KiB plus 8 bytes per 512 MiB of virtual size (the L1
// table); a reader treats the L1 table's zero entries as unallocated, so
// every read falls through to the backing file.
func Qcow2Overlay(backing string, size int64) ([]byte, error) {
	return Qcow2OverlayOf(backing, vmm.FormatRaw, size)
}

// Qcow2OverlayOf is Qcow2Overlay over a backing file of format (raw or
// qcow2), named in the header as such.
func Qcow2OverlayOf(backing, format string, size int64) ([]byte, error) {
	switch {
	case format != vmm.FormatRaw && format != vmm.FormatQcow2:
		return nil, fmt.Errorf("qcow2 overlay: backing format %q; want raw or qcow2", format)
	case backing == "":
		return nil, fmt.Errorf("qcow2 overlay: backing file name is empty; want an absolute path")
	case !filepath.IsAbs(backing):
		return nil, fmt.Errorf("qcow2 overlay: backing file %q is relative; want an absolute path (qemu would resolve it against the overlay's directory)", backing)
	case len(backing) > qcow2MaxBackingName:
		return nil, fmt.Errorf("qcow2 overlay: backing file name is %d bytes; qcow2 allows at most %d", len(backing), qcow2MaxBackingName)
	case strings.IndexByte(backing, 0) >= 0:
		return nil, fmt.Errorf("qcow2 overlay: backing file name %q holds a NUL byte", backing)
	case size <= 0:
		return nil, fmt.Errorf("qcow2 overlay: virtual size %d; want more than 0 bytes", size)
	case size%512 != 0:
		return nil, fmt.Errorf("qcow2 overlay: virtual size %d is not a multiple of 512 bytes", size)
	case size > Qcow2MaxSize:
		return nil, fmt.Errorf("qcow2 overlay: virtual size %d exceeds the %d bytes a %d-byte L1 table can map", size, Qcow2MaxSize, qcow2MaxL1Bytes)
	}

	// One L1 entry points at an L2 table that maps a cluster of 8-byte
	// entries, each mapping one cluster.
	const perL1 = int64(qcow2ClusterSize) * (qcow2ClusterSize / 8)
	l1Entries := (size + perL1 - 1) / perL1
	l1Bytes := l1Entries * 8
	l1Clusters := (l1Bytes + qcow2ClusterSize - 1) / qcow2ClusterSize
	// Ends with the L1 entries, as qemu-img's does: clusters allocated
	// later go after the L1 table's last cluster whatever the file length.
	buf := make([]byte, qcow2L1Table+l1Bytes)

	be := binary.BigEndian
	h := buf[:qcow2HeaderLength]
	copy(h[0:4], "QFI\xfb")
	be.PutUint32(h[4:], 3) // version
	// backing_file_offset at 8 is filled in below, once the extensions
	// are laid out.
	be.PutUint32(h[16:], uint32(len(backing)))
	be.PutUint32(h[20:], qcow2ClusterBits)
	be.PutUint64(h[24:], uint64(size))
	be.PutUint32(h[32:], 0) // no encryption
	be.PutUint32(h[36:], uint32(l1Entries))
	be.PutUint64(h[40:], qcow2L1Table)
	be.PutUint64(h[48:], qcow2RefcountTable)
	be.PutUint32(h[56:], 1) // refcount table clusters
	// nb_snapshots, snapshots_offset, the three feature bitmaps and
	// compression_type (zlib) stay 0.
	be.PutUint32(h[96:], qcow2RefcountOrder)
	be.PutUint32(h[100:], qcow2HeaderLength)

	off := qcow2HeaderLength
	off = putExtension(buf, off, qcow2ExtBackingFormat, []byte(format))
	off = putExtension(buf, off, qcow2ExtEnd, nil)
	be.PutUint64(h[8:], uint64(off))
	copy(buf[off:], backing)

	// The refcount table's first entry points at the refcount block, which
	// counts one reference to each metadata cluster.
	be.PutUint64(buf[qcow2RefcountTable:], qcow2RefcountBlock)
	for c := int64(0); c < 3+l1Clusters; c++ {
		be.PutUint16(buf[qcow2RefcountBlock+2*c:], 1)
	}
	return buf, nil
}

// putExtension writes a header extension at off in buf and returns the
// offset after it, with its data padded to 8 bytes.
func putExtension(buf []byte, off int, typ uint32, data []byte) int {
	binary.BigEndian.PutUint32(buf[off:], typ)
	binary.BigEndian.PutUint32(buf[off+4:], uint32(len(data)))
	copy(buf[off+8:], data)
	return off + 8 + (len(data)+7)&^7
}

// writeQcow2Overlay writes an empty overlay over the raw image backing, of
// virtual size size, to path, replacing a file left there; on failure it
// removes what it wrote. The file is synced so that a host crash after Create
// returns cannot leave an empty overlay under a VM record.
func writeQcow2Overlay(path, backing string, size int64) error {
	return WriteQcow2Overlay(path, backing, vmm.FormatRaw, size)
}

// WriteQcow2Overlay is writeQcow2Overlay over a backing file of format.
// It opens no backing file: a file written by a guest's VMM is not parsed.
func WriteQcow2Overlay(path, backing, format string, size int64) (err error) {
	b, err := Qcow2OverlayOf(backing, format, size)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("qcow2 overlay: %w", err)
	}
	defer func() {
		if cerr := f.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("qcow2 overlay: %w", cerr)
		}
		if err != nil {
			os.Remove(path)
		}
	}()
	if _, err := f.Write(b); err != nil {
		return fmt.Errorf("qcow2 overlay: %w", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("qcow2 overlay: sync %s: %w", path, err)
	}
	return nil
}
