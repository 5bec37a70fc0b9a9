package storage

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/banger/banger/internal/vmm"
)

// Reflink clones the image with FICLONE into a raw file: any VMM, on a
// filesystem that shares extents (XFS with reflink=1, btrfs).
type Reflink struct{}

// Name returns "reflink".
func (Reflink) Name() string { return "reflink" }

// Format returns "raw".
func (Reflink) Format() string { return vmm.FormatRaw }

// Available clones a probe file within dir and reports whether the
// filesystem allowed it.
func (Reflink) Available(dir string) (bool, string) {
	src, err := os.CreateTemp(dir, ".banger-reflink-probe-*")
	if err != nil {
		return false, fmt.Sprintf("reflink probe in %s: %v", dir, err)
	}
	defer os.Remove(src.Name())
	defer src.Close()
	if _, err := src.Write(make([]byte, 4096)); err != nil {
		return false, fmt.Sprintf("reflink probe in %s: %v", dir, err)
	}
	dst, err := os.CreateTemp(dir, ".banger-reflink-probe-*")
	if err != nil {
		return false, fmt.Sprintf("reflink probe in %s: %v", dir, err)
	}
	defer os.Remove(dst.Name())
	defer dst.Close()
	if err := unix.IoctlFileClone(int(dst.Fd()), int(src.Fd())); err != nil {
		return false, fmt.Sprintf("reflink not supported in %s (%s filesystem): FICLONE: %v; put it on XFS made with reflink=1 or on btrfs",
			dir, fsName(dir), err)
	}
	return true, ""
}

// Create clones image into VMDIR/system.img, replacing a previous clone.
// Image and vmDir must be on the same reflink-capable filesystem.
func (Reflink) Create(ctx context.Context, image, vmDir string) error {
	path := filepath.Join(vmDir, CloneFile)
	tmp := path + ".tmp"
	src, err := os.Open(image)
	if err != nil {
		return fmt.Errorf("reflink clone: image: %w", err)
	}
	defer src.Close()
	dst, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("reflink clone: %w", err)
	}
	if err := unix.IoctlFileClone(int(dst.Fd()), int(src.Fd())); err != nil {
		dst.Close()
		os.Remove(tmp)
		return fmt.Errorf("reflink clone of %s into %s: FICLONE: %w (needs both on one XFS-with-reflink or btrfs filesystem)", image, vmDir, err)
	}
	if err := dst.Close(); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("reflink clone: %w", err)
	}
	return replaceFile(tmp, path)
}

// Attach makes nothing and returns the clone.
func (Reflink) Attach(ctx context.Context, image, vmDir string) (SystemDisk, error) {
	path := filepath.Join(vmDir, CloneFile)
	if _, err := os.Stat(path); err != nil {
		return SystemDisk{}, fmt.Errorf("reflink system disk: %w (was the VM created?)", err)
	}
	return SystemDisk{Path: path, Format: vmm.FormatRaw}, nil
}

// Detach has nothing to undo.
func (Reflink) Detach(ctx context.Context, d SystemDisk) error { return nil }

// Remove deletes the clone.
func (Reflink) Remove(ctx context.Context, vmDir string) error {
	p := filepath.Join(vmDir, CloneFile)
	return removeFiles(p, p+".tmp")
}

// fsName names the filesystem under dir for messages.
func fsName(dir string) string {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return "unknown"
	}
	switch st.Type {
	case unix.EXT4_SUPER_MAGIC:
		return "ext4"
	case unix.XFS_SUPER_MAGIC:
		return "xfs"
	case unix.BTRFS_SUPER_MAGIC:
		return "btrfs"
	case unix.TMPFS_MAGIC:
		return "tmpfs"
	case unix.OVERLAYFS_SUPER_MAGIC:
		return "overlayfs"
	}
	return fmt.Sprintf("type %#x", st.Type)
}
