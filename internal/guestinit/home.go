package guestinit

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

const (
	// UserHome is the home of the image's unprivileged account "user".
	UserHome = "/home/user"
	// WorkUserHome is where that home lives on the work disk, relative to
	// the disk's root: banger-init bind-mounts it on UserHome, so what the
	// user keeps at home is on the VM's own sized, persistent disk.
	WorkUserHome = ".banger/home/user"
	// maxSeed bounds what SeedUserHome copies from the image's home (its
	// skeleton files are a few KiB).
	maxSeed = 16 << 20
)

// SeedUserHome prepares the user's home on the work disk, under root ("/"
// in the guest), and returns its path: on a work disk without one it is
// made from the image's UserHome (its files, modes and owners; symlinks
// kept as links), on one that has it already it is left as it is. It
// returns "" and does nothing when the image has no UserHome (an image
// without the account). The work disk must be mounted at WorkMount.
func SeedUserHome(root string) (string, error) {
	src := filepath.Join(root, UserHome)
	sfi, err := os.Lstat(src)
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	if !sfi.IsDir() {
		return "", fmt.Errorf("%s is not a directory", src)
	}
	dst := filepath.Join(root, WorkMount, WorkUserHome)
	if fi, err := os.Lstat(dst); err == nil {
		if !fi.IsDir() {
			return "", fmt.Errorf("%s on the work disk is not a directory", dst)
		}
		return dst, nil
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return "", err
	}
	// Made beside its place and renamed in, so a boot that dies half way
	// seeds again rather than keep half a home.
	tmp := dst + ".seeding"
	if err := os.RemoveAll(tmp); err != nil {
		return "", err
	}
	budget := int64(maxSeed)
	if err := copyTree(src, tmp, &budget); err != nil {
		_ = os.RemoveAll(tmp)
		return "", fmt.Errorf("seed %s from %s: %w", dst, src, err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		_ = os.RemoveAll(tmp)
		return "", err
	}
	return dst, nil
}

// copyTree copies the directory src to dst (which must not exist) with
// modes and owners, spending at most *budget bytes of file content.
func copyTree(src, dst string, budget *int64) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		switch {
		case fi.IsDir():
			if err := os.Mkdir(target, 0o700); err != nil {
				return err
			}
		case fi.Mode()&fs.ModeSymlink != 0:
			link, err := os.Readlink(p)
			if err != nil {
				return err
			}
			if err := os.Symlink(link, target); err != nil {
				return err
			}
		case fi.Mode().IsRegular():
			if *budget -= fi.Size(); *budget < 0 {
				return fmt.Errorf("%s: more than %d MiB to copy", src, maxSeed>>20)
			}
			if err := copyFile(p, target); err != nil {
				return err
			}
		default:
			return nil // sockets, fifos, devices: not a home's business
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			if err := os.Lchown(target, int(st.Uid), int(st.Gid)); err != nil {
				return err
			}
		}
		if fi.Mode()&fs.ModeSymlink == 0 {
			return os.Chmod(target, fi.Mode().Perm()|fi.Mode()&(fs.ModeSetgid|fs.ModeSticky))
		}
		return nil
	})
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
