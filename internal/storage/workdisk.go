package storage

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"regexp"
	"strings"
)

// MinWorkDisk is the smallest work disk CreateWorkDisk makes: below it
// mkfs.ext4 has no room for a journal worth having.
const MinWorkDisk = 16 << 20

// WorkDiskLabel is the ext4 label of every work disk; the guest mounts the
// disk at /root by it.
const WorkDiskLabel = "banger-work"

// ErrNotFound is returned (wrapped) by ReadFile and ListDir when the path
// does not exist on the disk. It is fs.ErrNotExist, so errors.Is with
// either works.
var ErrNotFound = fs.ErrNotExist

// MkfsWorkDiskArgs returns the mkfs.ext4 argv that formats path as a work
// disk, filled with the tree under seedDir when it is not empty. Lazy inode
// table and journal init keep it fast for any size; no blocks are reserved
// for root since root is the only user; the root directory is owned by root
// as /root must be.
func MkfsWorkDiskArgs(mkfs, path, seedDir string) []string {
	argv := []string{mkfs, "-q", "-F", "-m", "0",
		"-E", "lazy_itable_init=1,lazy_journal_init=1,root_owner=0:0",
		"-L", WorkDiskLabel}
	if seedDir != "" {
		argv = append(argv, "-d", seedDir)
	}
	return append(argv, path)
}

// CreateWorkDisk makes an empty work disk: CreateWorkDiskWith without a
// seed.
func CreateWorkDisk(ctx context.Context, path string, size int64) error {
	return CreateWorkDiskWith(ctx, path, size, "")
}

// CreateWorkDiskWith makes a sparse file of size bytes at path and formats
// it ext4, holding a copy of the tree under seedDir (none when empty), with
// its files' modes and owners, at the disk's root. mkfs.ext4 -d writes the
// files itself: nothing is mounted, and what the guest is given never
// passes through a command line. An existing file is never overwritten:
// work disks hold user data. On failure the file is removed.
func CreateWorkDiskWith(ctx context.Context, path string, size int64, seedDir string) error {
	if size < MinWorkDisk {
		return fmt.Errorf("work disk size %d bytes is too small: use at least 16M", size)
	}
	mkfs, err := exec.LookPath("mkfs.ext4")
	if err != nil {
		return fmt.Errorf("work disk: mkfs.ext4 not found on PATH (install e2fsprogs)")
	}
	if seedDir != "" {
		if fi, err := os.Stat(seedDir); err != nil {
			return fmt.Errorf("work disk seed: %w", err)
		} else if !fi.IsDir() {
			return fmt.Errorf("work disk seed %s is not a directory", seedDir)
		}
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("work disk: %w", err)
	}
	err = f.Truncate(size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		_, err = runArgv(ctx, MkfsWorkDiskArgs(mkfs, path, seedDir))
	}
	if err != nil {
		os.Remove(path)
		return fmt.Errorf("work disk %s: %w", path, err)
	}
	return nil
}

// debugfsRequest quotes path for a debugfs request: debugfs splits on
// spaces unless inside double quotes, where a doubled quote stands for
// one; a newline ends the request, so paths with one (or NUL) are refused.
// Only absolute paths are taken.
func debugfsRequest(cmd, path string) (string, error) {
	if !strings.HasPrefix(path, "/") {
		return "", fmt.Errorf("disk path %q must be absolute", path)
	}
	if strings.ContainsAny(path, "\n\r\x00") {
		return "", fmt.Errorf("disk path %q has a NUL or newline: not readable with debugfs", path)
	}
	return cmd + " " + debugfsQuote(path), nil
}

// debugfsQuote quotes one argument for debugfs's request parser. It is not
// shell quoting (see internal/shell): debugfs's parser knows only double
// quotes, a doubled quote inside them standing for one; a shell's single
// quotes would reach it as part of the path.
func debugfsQuote(s string) string {
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
}

var debugfsBanner = regexp.MustCompile(`^debugfs [0-9.]+ \(.*\)$`)

// debugfsError turns debugfs's stderr into an error: debugfs exits 0 when
// a request fails and only says so on stderr, after its version banner.
func debugfsError(disk, path, stderr string) error {
	var msgs []string
	for _, line := range strings.Split(stderr, "\n") {
		line = strings.TrimSpace(line)
		// Owners cannot be kept by an unprivileged rdump; that is expected.
		if line == "" || debugfsBanner.MatchString(line) || strings.Contains(line, "while changing ownership") {
			continue
		}
		msgs = append(msgs, line)
	}
	if len(msgs) == 0 {
		return nil
	}
	msg := strings.Join(msgs, "; ")
	if strings.Contains(msg, "File not found by ext2_lookup") {
		return fmt.Errorf("%s on disk %s: %w", path, disk, ErrNotFound)
	}
	return fmt.Errorf("read %s on disk %s: %s", path, disk, msg)
}

// Limits of what the daemon reads of a stopped VM's work disk into its own
// memory: a session's state files are a few bytes, its output logs are
// tailed, and a guest can make any of them look as large as it likes.
const (
	DefaultReadLimit = 64 << 20
	DefaultListLimit = 100_000
)

// onDisk lends disk's read-only loop to a fresh jail for fn: the
// guest-made filesystem is parsed by an unprivileged process of an id of
// its own, killed with everything it started before the loop goes back.
func onDisk(ctx context.Context, disk string, fn func(j *Jail, dev string) error) error {
	if _, err := os.Stat(disk); err != nil {
		return fmt.Errorf("disk: %w", err)
	}
	j, err := NewJail()
	if err != nil {
		return err
	}
	err = withLentLoop(ctx, disk, true, j, func(dev string) error { return fn(j, dev) })
	if cerr := j.Close(); err == nil {
		err = cerr
	}
	return err
}

// ReadFile is ReadFileLimit with DefaultReadLimit.
func ReadFile(ctx context.Context, disk, path string) ([]byte, error) {
	return ReadFileLimit(ctx, disk, path, DefaultReadLimit)
}

// ReadFileLimit returns the content of the regular file path on the ext4
// disk image, without mounting it. A file larger than limit bytes is
// refused (ErrTooLarge) from its size alone, before any of it is read: a
// guest's sparse file can claim a terabyte. A missing path is ErrNotFound;
// a directory or other non-regular file is an error. The disk should not
// be in use by a running VM: its view may be stale.
func ReadFileLimit(ctx context.Context, disk, path string, limit int64) ([]byte, error) {
	req, err := debugfsRequest("cat", path)
	if err != nil {
		return nil, err
	}
	var out string
	err = onDisk(ctx, disk, func(j *Jail, dev string) error {
		_, kind, size, err := statHead(ctx, j, disk, dev, path)
		if err != nil {
			return err
		}
		if kind != "regular" {
			return fmt.Errorf("%s on disk %s is a %s, not a regular file", path, disk, kind)
		}
		if size > limit {
			return fmt.Errorf("%s on disk %s is %d bytes, over the limit of %d: %w", path, disk, size, limit, ErrTooLarge)
		}
		stdout, stderr, err := j.run(ctx, nil, size, "debugfs", "-c", "-R", req, dev)
		if err != nil {
			return err
		}
		out = stdout
		return debugfsError(disk, path, stderr)
	})
	if err != nil {
		return nil, err
	}
	return []byte(out), nil
}

// ListDir is ListDirLimit with DefaultListLimit.
func ListDir(ctx context.Context, disk, path string) ([]string, error) {
	return ListDirLimit(ctx, disk, path, DefaultListLimit)
}

// ListDirLimit returns the names in directory path on the ext4 disk image,
// without "." and "..", in directory order, without mounting it. A
// directory of more than max entries is refused (ErrTooLarge). A missing
// path is ErrNotFound; a path that is not a directory is an error.
func ListDirLimit(ctx context.Context, disk, path string, max int) ([]string, error) {
	req, err := debugfsRequest("ls -p", path)
	if err != nil {
		return nil, err
	}
	var names []string
	err = onDisk(ctx, disk, func(j *Jail, dev string) error {
		stdout, stderr, err := j.run(ctx, nil, int64(max+2)*320+4096, "debugfs", "-c", "-R", req, dev)
		if errors.Is(err, errTooMuch) {
			return fmt.Errorf("%s on disk %s has more than %d entries: %w", path, disk, max, ErrTooLarge)
		}
		if err != nil {
			return err
		}
		if err := debugfsError(disk, path, stderr); err != nil {
			return err
		}
		names = ParseDebugfsLs(stdout)
		if len(names) > max {
			return fmt.Errorf("%s on disk %s has more than %d entries: %w", path, disk, max, ErrTooLarge)
		}
		return nil
	})
	return names, err
}

// ParseDebugfsLs reads "debugfs ls -p" output, lines of the form
// "/inode/mode/uid/gid/name/size/", into names without "." and "..".
// Names may hold '/' only in theory (ext4 forbids it), so the name is what
// lies between the fifth and the last-but-one slash.
func ParseDebugfsLs(out string) []string {
	var names []string
	for _, line := range strings.Split(out, "\n") {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, "/") || !strings.HasSuffix(line, "/") {
			continue
		}
		parts := strings.SplitN(line[1:], "/", 5) // inode, mode, uid, gid, rest
		if len(parts) != 5 {
			continue
		}
		rest := strings.TrimSuffix(parts[4], "/")
		i := strings.LastIndex(rest, "/")
		if i < 0 {
			continue
		}
		name := rest[:i]
		if name == "." || name == ".." || name == "" {
			continue
		}
		// Deleted entries still show with inode 0.
		if parts[0] == "0" {
			continue
		}
		names = append(names, name)
	}
	return names
}
