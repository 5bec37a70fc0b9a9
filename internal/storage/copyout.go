package storage

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path"
	"strings"
	"syscall"
)

// ext4 superblock fields CopyOut reads itself.
const (
	sbOffset        = 1024
	sbMagicAt       = 0x38
	sbIncompatAt    = 0x60
	ext4Magic       = 0xEF53
	incompatRecover = 0x4 // the journal holds changes not yet in place
)

// NeedsRecovery reports whether the ext4 filesystem in the image file at
// path was left with a journal to replay (its VM was killed rather than
// shut down): what a reader that skips the journal sees is then stale.
func NeedsRecovery(path string) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	sb := make([]byte, 0x64)
	if _, err := f.ReadAt(sb, sbOffset); err != nil {
		return false, fmt.Errorf("read the superblock of %s: %w", path, err)
	}
	if binary.LittleEndian.Uint16(sb[sbMagicAt:]) != ext4Magic {
		return false, fmt.Errorf("%s holds no ext4 filesystem", path)
	}
	return binary.LittleEndian.Uint32(sb[sbIncompatAt:])&incompatRecover != 0, nil
}

// Sandbox is the unprivileged user that parses a guest's filesystem.
type Sandbox struct{ UID, GID uint32 }

// SysProcAttr makes a child process run as the sandbox user, with no
// supplementary groups.
func (sb Sandbox) SysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: sb.UID, Gid: sb.GID, Groups: []uint32{}}}
}

// DefaultSandbox is an id no account uses, so that no other process on
// the host can reach what the sandbox reads or writes while it works.
var DefaultSandbox = Sandbox{UID: 0x7fff_fff0, GID: 0x7fff_fff0}

// CopyOut copies the directory dir (absolute, inside the filesystem) of
// the ext4 image file image to dst, which must not exist, without mounting
// it: the host kernel never parses a guest-made filesystem. debugfs reads
// it in userspace as the sandbox user, through a loop device lent to that
// user for the copy, so a hostile filesystem meets an unprivileged parser.
// A journal left to replay is replayed first (e2fsck -E journal_only, as
// the sandbox user), as a mount would. Regular files, directories and
// symlinks come out with their modes and times; owners are the sandbox
// user's. dst's parent must be reachable by the sandbox user. The image
// must not be in use (its VM stopped). A missing dir is ErrNotFound. On
// failure dst is removed.
func CopyOut(ctx context.Context, image, dir, dst string, sb Sandbox) (err error) {
	if !path.IsAbs(dir) || path.Clean(dir) != dir || dir == "/" {
		return fmt.Errorf("copy out of %s: %q is not a clean absolute directory path", image, dir)
	}
	dirty, err := NeedsRecovery(image)
	if err != nil {
		return err
	}
	if dirty {
		if err := withLentLoop(ctx, image, false, sb, func(dev string) error {
			_, _, err := sandboxed(ctx, sb, "e2fsck", "-E", "journal_only", "-p", dev)
			return err
		}); err != nil {
			return fmt.Errorf("replay the journal of %s: %w", image, err)
		}
	}
	if err := os.Mkdir(dst, 0o700); err != nil {
		return err
	}
	defer func() {
		if err != nil {
			os.RemoveAll(dst)
		}
	}()
	if err := os.Chown(dst, int(sb.UID), int(sb.GID)); err != nil {
		return err
	}
	return withLentLoop(ctx, image, true, sb, func(dev string) error {
		req, err := debugfsRequest("stat", dir)
		if err != nil {
			return err
		}
		out, stderr, err := sandboxed(ctx, sb, "debugfs", "-c", "-R", req, dev)
		if err != nil {
			return err
		}
		if err := debugfsError(image, dir, stderr); err != nil {
			return err
		}
		if m := statTypeRE.FindStringSubmatch(out); m == nil || m[1] != "directory" {
			return fmt.Errorf("%s on disk %s is not a directory", dir, image)
		}
		req, _ = debugfsRequest("rdump", dir)
		_, stderr, err = sandboxed(ctx, sb, "debugfs", "-c", "-R", req+" "+debugfsQuote(dst), dev)
		if err != nil {
			return err
		}
		return debugfsError(image, dir, stderr)
	})
}

// withLentLoop attaches image to a loop device (read-only when ro), lets
// the sandbox user open it for the length of fn, then takes it back and
// detaches it.
func withLentLoop(ctx context.Context, image string, ro bool, sb Sandbox, fn func(dev string) error) error {
	losetup, err := exec.LookPath("losetup")
	if err != nil {
		return fmt.Errorf("losetup not found: %w", err)
	}
	out, err := runArgv(ctx, LosetupAttachArgs(losetup, image, ro))
	if err != nil {
		return fmt.Errorf("attach %s to a loop device: %w", image, err)
	}
	dev := strings.TrimSpace(out)
	defer runArgv(context.Background(), LosetupDetachArgs(losetup, dev))
	// udev resets a new loop device's owner when it handles the attach:
	// let it finish first, or it could take the device back mid-read.
	if udevadm, err := exec.LookPath("udevadm"); err == nil {
		_ = exec.CommandContext(ctx, udevadm, "settle", "--timeout=5").Run()
	}
	fi, err := os.Stat(dev)
	if err != nil {
		return err
	}
	st := fi.Sys().(*syscall.Stat_t)
	if err := os.Chown(dev, int(sb.UID), int(sb.GID)); err != nil {
		return err
	}
	defer os.Chown(dev, int(st.Uid), int(st.Gid))
	return fn(dev)
}

// sandboxed runs a tool as the sandbox user, with no supplementary groups,
// and returns its stdout and stderr.
func sandboxed(ctx context.Context, sb Sandbox, name string, args ...string) (string, string, error) {
	bin, err := exec.LookPath(name)
	if err != nil {
		return "", "", fmt.Errorf("%s not found (apt-get install e2fsprogs): %w", name, err)
	}
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.SysProcAttr = sb.SysProcAttr()
	cmd.Dir = "/"
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C", "DEBUGFS_PAGER=__none__", "PAGER=__none__"}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), errb.String(), fmt.Errorf("%s: %w: %s", name, err, strings.TrimSpace(errb.String()+" "+out.String()))
	}
	return out.String(), errb.String(), nil
}
