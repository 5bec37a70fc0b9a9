package storage

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
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

// CopyLimits bound what CopyOut writes on the host. A guest can make a
// file of any apparent size without using its disk (a sparse file), and a
// directory that contains itself: both are refused before anything is
// copied, so the host never allocates what the guest only pretends to have.
type CopyLimits struct {
	// MaxBytes bounds the apparent size of everything copied (regular
	// files and symlink targets); 0 means DefaultCopyLimits'. The copy must
	// also fit in the free space where it goes.
	MaxBytes int64
	// MaxEntries bounds the directory entries in the tree; 0 means
	// DefaultCopyLimits'.
	MaxEntries int
}

// DefaultCopyLimits: far above a source tree an agent works on, far below
// what would hurt the host.
var DefaultCopyLimits = CopyLimits{MaxBytes: 8 << 30, MaxEntries: 1 << 20}

// ErrTooLarge is returned (wrapped) when guest data is over a limit.
var ErrTooLarge = errors.New("over the limit")

func (l CopyLimits) orDefault() CopyLimits {
	if l.MaxBytes <= 0 {
		l.MaxBytes = DefaultCopyLimits.MaxBytes
	}
	if l.MaxEntries <= 0 {
		l.MaxEntries = DefaultCopyLimits.MaxEntries
	}
	return l
}

// CopyOut is CopyOutIn in a jail running as sb, with DefaultCopyLimits.
// sb may be shared with other operations; prefer CopyOutIn with NewJail.
func CopyOut(ctx context.Context, image, dir, dst string, sb Sandbox) error {
	j, err := JailAs(sb)
	if err != nil {
		return err
	}
	err = CopyOutIn(ctx, j, image, dir, dst, CopyLimits{})
	if cerr := j.Close(); err == nil {
		err = cerr
	}
	return err
}

// CopyOutIn copies the directory dir (absolute, inside the filesystem) of
// the ext4 image file image to dst, which must not exist, without mounting
// it: the host kernel never parses a guest-made filesystem. debugfs reads
// it in userspace in the jail, through a read-only loop device lent to the
// jail's id for the copy; the jail is killed before the device is taken
// back and detached, so nothing it started can keep the device open.
//
// Before copying, the tree is listed (by inode, so no name can be
// misread) and refused when it is over lim (ErrTooLarge), does not fit in
// the free space at dst, or has a directory linked twice.
//
// A journal left to replay (the VM was killed) is replayed on a private
// copy of the image (a reflink where the filesystem can, else a sparse
// copy beside the image), never on the image: the work disk is only read.
//
// dir lands in dst under its own name (dst/NAME), except "/", whose
// contents land in dst itself. Regular files, directories and symlinks
// come out with their modes and times; owners are the jail's id. dst's parent must be reachable by the
// jail's id. The image must not be in use (its VM stopped). A missing dir
// is ErrNotFound. On failure dst is removed.
func CopyOutIn(ctx context.Context, j *Jail, image, dir, dst string, lim CopyLimits) (err error) {
	if !path.IsAbs(dir) || path.Clean(dir) != dir {
		return fmt.Errorf("copy out of %s: %q is not a clean absolute directory path", image, dir)
	}
	lim = lim.orDefault()
	dirty, err := NeedsRecovery(image)
	if err != nil {
		return err
	}
	src := image
	if dirty {
		priv, done, err := replayPrivate(ctx, j, image)
		if err != nil {
			return fmt.Errorf("replay the journal of %s: %w", image, err)
		}
		defer done()
		src = priv
	}
	if err := os.Mkdir(dst, 0o700); err != nil {
		return err
	}
	defer func() {
		if err != nil {
			os.RemoveAll(dst)
		}
	}()
	// Through a descriptor: dst's parent may be writable by others, who
	// could swap dst for a link between the mkdir and the chown.
	df, err := os.OpenFile(dst, os.O_RDONLY|syscall.O_DIRECTORY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	err = df.Chown(int(j.sb.UID), int(j.sb.GID))
	df.Close()
	if err != nil {
		return err
	}
	return withLentLoop(ctx, src, true, j, func(dev string) error {
		ino, err := dirInode(ctx, j, image, dev, dir)
		if err != nil {
			return err
		}
		if err := checkTree(ctx, j, image, dev, dir, ino, dst, lim); err != nil {
			return err
		}
		req, _ := debugfsRequest("rdump", dir)
		_, stderr, err := j.run(ctx, nil, 1<<20, "debugfs", "-c", "-R", req+" "+debugfsQuote(dst), dev)
		if err != nil {
			return err
		}
		return debugfsError(image, dir, stderr)
	})
}

var statInodeRE = regexp.MustCompile(`^Inode: ([0-9]+) +Type: (\S+)`)

// statHead runs debugfs stat on path and returns the inode, type and size
// it reports. Only the head of the output is read: the extent list after
// it is as long as the guest made the file fragmented.
func statHead(ctx context.Context, j *Jail, disk, dev, p string) (ino uint64, kind string, size int64, err error) {
	req, err := debugfsRequest("stat", p)
	if err != nil {
		return 0, "", 0, err
	}
	cmd, err := j.Command(ctx, "debugfs", "-c", "-R", req, dev)
	if err != nil {
		return 0, "", 0, err
	}
	cmd.Env = append(cmd.Env, "DEBUGFS_PAGER=__none__", "PAGER=__none__")
	head := &capWriter{max: 4096}
	errb := &capWriter{max: stderrCap}
	cmd.Stdout, cmd.Stderr = head, errb
	if err := cmd.Run(); err != nil {
		return 0, "", 0, fmt.Errorf("debugfs: %w: %s", err, strings.TrimSpace(errb.buf.String()))
	}
	if err := debugfsError(disk, p, errb.buf.String()); err != nil {
		return 0, "", 0, err
	}
	lines := strings.SplitN(head.buf.String(), "\n", 4)
	m := statInodeRE.FindStringSubmatch(lines[0])
	if m == nil || len(lines) < 3 {
		return 0, "", 0, fmt.Errorf("%s on disk %s: debugfs stat said %.80q", p, disk, head.buf.String())
	}
	ino, _ = strconv.ParseUint(m[1], 10, 64)
	// "User: 0 Group: 0 Project: 0 Size: N", the third line.
	sm := statSizeRE.FindStringSubmatch(lines[2])
	if sm == nil {
		return 0, "", 0, fmt.Errorf("%s on disk %s: no size in debugfs stat", p, disk)
	}
	size, err = strconv.ParseInt(sm[1], 10, 64)
	if err != nil {
		return 0, "", 0, fmt.Errorf("%s on disk %s: size %s: %w", p, disk, sm[1], err)
	}
	return ino, m[2], size, nil
}

var statSizeRE = regexp.MustCompile(`^User: .* Size: ([0-9]+)$`)

func dirInode(ctx context.Context, j *Jail, disk, dev, dir string) (uint64, error) {
	ino, kind, _, err := statHead(ctx, j, disk, dev, dir)
	if err != nil {
		return 0, err
	}
	if kind != "directory" {
		return 0, fmt.Errorf("%s on disk %s is not a directory", dir, disk)
	}
	return ino, nil
}

// lsEntryRE is one line of "debugfs ls -p": /inode/mode/uid/gid/name/size/.
// A name with a newline in it leaves a line that cannot match (it has too
// few slashes), so a guest cannot forge or hide an entry.
var lsEntryRE = regexp.MustCompile(`^/([0-9]+)/([0-7]+)/[0-9]+/[0-9]+/(.*)/([0-9]*)/$`)

// checkTree lists the tree under inode root one level at a time (one
// debugfs per level, directories named by inode) and refuses it when it
// is over lim, has a directory linked twice (a cycle would make rdump
// write for ever), or does not fit in the free space at dst.
func checkTree(ctx context.Context, j *Jail, disk, dev, dir string, root uint64, dst string, lim CopyLimits) error {
	seen := map[uint64]bool{root: true}
	level := []uint64{root}
	var total int64
	entries := 0
	for len(level) > 0 {
		var req strings.Builder
		for _, ino := range level {
			fmt.Fprintf(&req, "ls -p <%d>\n", ino)
		}
		// A line is at most ~300 bytes (a 255-byte name); the rest is
		// refused anyway.
		maxOut := int64(lim.MaxEntries-entries+2*len(level))*320 + 4096
		out, stderr, err := j.run(ctx, strings.NewReader(req.String()), maxOut, "debugfs", "-c", "-f", "-", dev)
		if errors.Is(err, errTooMuch) {
			return fmt.Errorf("%s on disk %s has more than %d entries: %w", dir, disk, lim.MaxEntries, ErrTooLarge)
		}
		if err != nil {
			return err
		}
		if err := debugfsError(disk, dir, stderr); err != nil {
			return err
		}
		var next []uint64
		for _, line := range strings.Split(out, "\n") {
			if line == "" || strings.HasPrefix(line, "debugfs: ls -p <") {
				continue
			}
			m := lsEntryRE.FindStringSubmatch(line)
			if m == nil {
				return fmt.Errorf("%s on disk %s has a name debugfs cannot list safely (a newline in it?): %.80q", dir, disk, line)
			}
			name := m[3]
			if name == "." || name == ".." || m[1] == "0" {
				continue
			}
			entries++
			if entries > lim.MaxEntries {
				return fmt.Errorf("%s on disk %s has more than %d entries: %w", dir, disk, lim.MaxEntries, ErrTooLarge)
			}
			ino, _ := strconv.ParseUint(m[1], 10, 64)
			mode, _ := strconv.ParseUint(m[2], 8, 32)
			switch mode & syscall.S_IFMT {
			case syscall.S_IFDIR:
				if seen[ino] {
					return fmt.Errorf("%s on disk %s has directory inode %d linked twice (a corrupt or hostile filesystem)", dir, disk, ino)
				}
				seen[ino] = true
				next = append(next, ino)
			case syscall.S_IFREG, syscall.S_IFLNK:
				size, err := strconv.ParseInt(m[4], 10, 64)
				if err != nil || size < 0 {
					return fmt.Errorf("%s on disk %s: %q has size %q", dir, disk, name, m[4])
				}
				if mode&syscall.S_IFMT == syscall.S_IFLNK && size > 4096 {
					return fmt.Errorf("%s on disk %s has a symlink %q of %d bytes: %w", dir, disk, name, size, ErrTooLarge)
				}
				if size > lim.MaxBytes-total {
					return fmt.Errorf("%s on disk %s holds more than %d bytes (%q alone is %d bytes; a sparse file counts at its full size): %w", dir, disk, lim.MaxBytes, name, size, ErrTooLarge)
				}
				total += size
			}
		}
		level = next
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(filepath.Dir(dst), &st); err == nil {
		if free := int64(st.Bavail) * st.Bsize; total+16<<20 > free {
			return fmt.Errorf("%s on disk %s holds %d bytes, more than the %d free at %s: %w", dir, disk, total, free, filepath.Dir(dst), ErrTooLarge)
		}
	}
	return nil
}

// replayPrivate makes a private copy of image beside it (a reflink where
// the filesystem can, else sparse) and replays its journal there, in the
// jail through a lent read-write loop device. done removes the copy.
func replayPrivate(ctx context.Context, j *Jail, image string) (copy string, done func(), err error) {
	fi, err := os.Stat(image)
	if err != nil {
		return "", nil, err
	}
	used := fi.Sys().(*syscall.Stat_t).Blocks * 512
	dir := filepath.Dir(image)
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err == nil {
		if free := int64(st.Bavail) * st.Bsize; used+64<<20 > free {
			return "", nil, fmt.Errorf("a private copy to replay it on needs up to %d bytes, and %s has %d free: start the VM and stop it cleanly, then export", used, dir, free)
		}
	}
	f, err := os.CreateTemp(dir, ".banger-replay-*")
	if err != nil {
		return "", nil, err
	}
	copy = f.Name()
	f.Close()
	done = func() { os.Remove(copy) }
	if _, err := runArgv(ctx, []string{"cp", "--reflink=auto", "--sparse=always", image, copy}); err != nil {
		done()
		return "", nil, err
	}
	if err := withLentLoop(ctx, copy, false, j, func(dev string) error {
		_, _, err := j.run(ctx, nil, 1<<20, "e2fsck", "-E", "journal_only", "-p", dev)
		return err
	}); err != nil {
		done()
		return "", nil, err
	}
	return copy, done, nil
}

// withLentLoop attaches image to a loop device (read-only when ro), lets
// the jail's id open it for the length of fn, then kills the jail (so
// nothing it started holds the device), takes the device back and
// detaches it.
func withLentLoop(ctx context.Context, image string, ro bool, j *Jail, fn func(dev string) error) error {
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
		cmd := exec.CommandContext(ctx, udevadm, "settle", "--timeout=5")
		cmd.WaitDelay = WaitDelay
		_ = cmd.Run()
	}
	fi, err := os.Stat(dev)
	if err != nil {
		return err
	}
	st := fi.Sys().(*syscall.Stat_t)
	if err := os.Chown(dev, int(j.sb.UID), int(j.sb.GID)); err != nil {
		return err
	}
	defer os.Chown(dev, int(st.Uid), int(st.Gid))
	err = fn(dev)
	if kerr := j.Kill(); err == nil && kerr != nil {
		err = kerr
	}
	return err
}
