package storage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// CaptureFile copies the disk file src to dst as it is now, for a
// snapshot: a FICLONE clone where the filesystem shares blocks (XFS with
// reflink, btrfs: constant time), else a sparse copy of src's data
// extents (SEEK_DATA/SEEK_HOLE: time proportional to the data written,
// not the file's size). The caller keeps src unchanged meanwhile (the
// guest is paused). dst is written through dst+".tmp" and synced, so it
// is whole or absent; its mode is 0600. It reports whether it cloned.
func CaptureFile(ctx context.Context, src, dst string) (cloned bool, err error) {
	return captureFile(ctx, src, dst, true)
}

// CaptureByClone is CaptureFile that only clones: where the filesystem cannot,
// it makes nothing and reports false, with no error.
func CaptureByClone(src, dst string) (cloned bool, err error) {
	return captureFile(context.Background(), src, dst, false)
}

func captureFile(ctx context.Context, src, dst string, copyToo bool) (cloned bool, err error) {
	in, err := os.Open(src)
	if err != nil {
		return false, fmt.Errorf("capture %s: %w", src, err)
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return false, err
	}
	if !fi.Mode().IsRegular() {
		return false, fmt.Errorf("capture %s: not a regular file", src)
	}
	tmp := dst + ".tmp"
	out, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return false, fmt.Errorf("capture into %s: %w", dst, err)
	}
	fail := func(err error) (bool, error) {
		out.Close()
		os.Remove(tmp)
		return false, fmt.Errorf("capture %s into %s: %w", src, dst, err)
	}
	if unix.IoctlFileClone(int(out.Fd()), int(in.Fd())) == nil {
		cloned = true
	} else if !copyToo {
		out.Close()
		os.Remove(tmp)
		return false, nil
	} else if err := sparseCopy(ctx, in, out, fi.Size()); err != nil {
		return fail(err)
	}
	if err := out.Sync(); err != nil {
		return fail(err)
	}
	if err := out.Close(); err != nil {
		return fail(err)
	}
	return cloned, replaceFile(tmp, dst)
}

// ShareFile makes dst another name of the file src, in constant time: a
// hard link where both are on one filesystem and only this process's
// user may write src, else CaptureFile; dst must not exist. It is
// for files nothing ever writes in place once made (a paused VM's saved
// state: a pause writes a new one, a restore only reads), so both names
// may go on reading the same blocks. dst is whole or absent.
func ShareFile(ctx context.Context, src, dst string) (linked bool, err error) {
	fi, err := os.Lstat(src)
	if err != nil {
		return false, fmt.Errorf("share %s: %w", src, err)
	}
	if !fi.Mode().IsRegular() {
		return false, fmt.Errorf("share %s: not a regular file", src)
	}
	// Only a file no one but this process's user may write is shared:
	// one another user owns (a VMM's) could be written after the link.
	if st, ok := fi.Sys().(*syscall.Stat_t); !ok || int(st.Uid) != os.Geteuid() || fi.Mode().Perm()&0o022 != 0 {
		_, err = CaptureFile(ctx, src, dst)
		return false, err
	}
	err = os.Link(src, dst)
	if err == nil {
		return true, nil
	}
	if !errors.Is(err, unix.EXDEV) {
		return false, fmt.Errorf("share %s: %w", src, err)
	}
	_, err = CaptureFile(ctx, src, dst)
	return false, err
}

// sparseCopy copies in's data extents to the same offsets of out and
// sizes out to size, leaving holes where in has them.
func sparseCopy(ctx context.Context, in, out *os.File, size int64) error {
	if err := out.Truncate(size); err != nil {
		return err
	}
	buf := make([]byte, 1<<20)
	return walkData(in, size, func(d Extent) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		_, err := io.CopyBuffer(io.NewOffsetWriter(out, d.Off), io.NewSectionReader(in, d.Off, d.Len), buf)
		return err
	})
}

// ForkQcow2 makes dst a qcow2 overlay whose backing file is the qcow2
// file backing (a snapshot's captured system disk), in constant time:
// every read falls through to backing until the VM writes. backing must
// stay unchanged while dst exists. Made with qemu-img through dst+".tmp".
func ForkQcow2(ctx context.Context, backing, dst string) error {
	tmp := dst + ".tmp"
	if _, err := runArgv(ctx, []string{"qemu-img", "create", "-q", "-f", "qcow2", "-b", backing, "-F", "qcow2", tmp}); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("qcow2 overlay over %s: %w", backing, err)
	}
	return replaceFile(tmp, dst)
}

// FlattenQcow2 writes to dst a qcow2 file whose guest-visible content is
// that of the qcow2 chain topped by src, with the raw image as its only
// backing file (RebaseQcow2 onto image).
func FlattenQcow2(ctx context.Context, src, image, dst string) error {
	if err := RebaseQcow2(ctx, src, image, "raw", dst); err != nil {
		return fmt.Errorf("flatten %s: %w", src, err)
	}
	return nil
}

// RebaseQcow2 writes to dst a qcow2 file whose guest-visible content is
// that of the qcow2 chain topped by src, with backing (of format, "raw"
// or "qcow2", a file of that chain) as its backing file: what the files
// between src and backing hold is copied in (`qemu-img rebase` in its
// safe mode, over a capture of src). It takes time in what those files
// hold, not in the disk's size. The caller keeps the chain unchanged
// meanwhile and has checked its headers (CheckQcow2Chain): qemu-img opens
// every file they name. dst is written through dst+".flat" and synced,
// so it is whole or unchanged; dst may be src.
func RebaseQcow2(ctx context.Context, src, backing, format, dst string) (err error) {
	tmp := dst + ".flat"
	defer func() {
		if err != nil {
			os.Remove(tmp)
			err = fmt.Errorf("rebase %s onto %s: %w", src, backing, err)
		}
	}()
	if _, err := CaptureFile(ctx, src, tmp); err != nil {
		return err
	}
	if _, err := runArgv(ctx, []string{"qemu-img", "rebase", "-q", "-f", "qcow2", "-b", backing, "-F", format, tmp}); err != nil {
		return err
	}
	h, err := ReadQcow2Header(tmp)
	if err != nil {
		return err
	}
	if h.Backing != backing || h.BackingFormat != format {
		return fmt.Errorf("rebased file names %q (%q) as its backing file", h.Backing, h.BackingFormat)
	}
	return syncReplace(tmp, dst)
}

// Qcow2ToRaw writes to dst the guest-visible content of the qcow2 chain
// topped by src as a raw file (`qemu-img convert`: what reads as zeroes
// is left a hole), through dst+".tmp", synced: dst is whole or unchanged.
// The caller has checked the chain's headers (CheckQcow2Chain): qemu-img
// opens every file they name, and writes the virtual size they state.
func Qcow2ToRaw(ctx context.Context, src, dst string) (err error) {
	tmp := dst + ".tmp"
	defer func() {
		if err != nil {
			os.Remove(tmp)
			err = fmt.Errorf("convert %s to raw: %w", src, err)
		}
	}()
	if _, err := runArgv(ctx, []string{"qemu-img", "convert", "-q", "-f", "qcow2", "-O", "raw", src, tmp}); err != nil {
		return err
	}
	return syncReplace(tmp, dst)
}

// syncReplace syncs the file tmp and renames it over dst.
func syncReplace(tmp, dst string) error {
	f, err := os.OpenFile(tmp, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return replaceFile(tmp, dst)
}
