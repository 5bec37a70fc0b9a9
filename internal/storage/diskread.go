package storage

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// This file reads single paths, listings, file contents and tar archives
// of a stopped VM's work disk for the files API, with the same reader as
// the rest of the package: debugfs in a fresh jail over a lent read-only
// loop device, never a mount. Paths are resolved one component at a time
// and a symlink on the way is refused, never followed: a guest's link
// means something in the guest's root, which the work disk is not.

// DiskEntry describes one inode of a work disk.
type DiskEntry struct {
	// Path is relative to the listed directory; empty for a stat.
	Path string
	// Type is debugfs's word: "regular", "directory", "symlink", or
	// another ("character", "block", "FIFO", "socket").
	Type   string
	Mode   uint32 // permission bits with setuid, setgid and sticky
	Size   int64
	MTime  time.Time
	Target string // a symlink's target

	ino  uint64
	fast bool // a symlink whose target came with its stat
}

// Types of DiskEntry.Type that callers tell apart.
const (
	DiskRegular   = "regular"
	DiskDirectory = "directory"
	DiskSymlink   = "symlink"
)

// ErrThroughSymlink is returned (wrapped) when a path is reached through a
// symlink on the disk, which the reader does not follow.
var ErrThroughSymlink = errors.New("reached through a symlink")

// maxLinkTarget bounds a symlink's target (PATH_MAX).
const maxLinkTarget = 4096

// maxStatOut bounds what one batch of stat requests may print: each is a
// few hundred bytes plus its extent list, as long as the guest fragmented
// the file.
const maxStatOut = 64 << 20

var (
	statTypeRE  = regexp.MustCompile(`^Inode: ([0-9]+) +Type: (\S+) +Mode: +([0-7]+) `)
	statMTimeRE = regexp.MustCompile(`(?m)^ ?mtime: 0x([0-9a-f]{1,8})(?::([0-9a-f]{1,8}))? -- `)
)

// ParseDebugfsStat reads the head of one debugfs stat answer: inode, type,
// mode, size and mtime (with the nanoseconds and epoch bits of large
// inodes). It is pure.
func ParseDebugfsStat(s string) (DiskEntry, error) {
	var e DiskEntry
	lines := strings.SplitN(s, "\n", 4)
	m := statTypeRE.FindStringSubmatch(lines[0] + " ")
	if m == nil || len(lines) < 3 {
		return e, fmt.Errorf("debugfs stat said %.80q", s)
	}
	e.ino, _ = strconv.ParseUint(m[1], 10, 64)
	e.Type = m[2]
	mode, err := strconv.ParseUint(m[3], 8, 32)
	if err != nil || mode > 0o7777 {
		return e, fmt.Errorf("debugfs stat mode %q", m[3])
	}
	e.Mode = uint32(mode)
	sm := statSizeRE.FindStringSubmatch(lines[2])
	if sm == nil {
		return e, fmt.Errorf("no size in debugfs stat %.80q", lines[2])
	}
	if e.Size, err = strconv.ParseInt(sm[1], 10, 64); err != nil || e.Size < 0 {
		return e, fmt.Errorf("debugfs stat size %q", sm[1])
	}
	mt := statMTimeRE.FindStringSubmatch(s)
	if mt == nil {
		return e, fmt.Errorf("no mtime in debugfs stat")
	}
	lo, _ := strconv.ParseUint(mt[1], 16, 32)
	sec := int64(int32(uint32(lo)))
	var nsec int64
	if mt[2] != "" {
		extra, _ := strconv.ParseUint(mt[2], 16, 32)
		sec += int64(extra&3) << 32
		nsec = int64(extra >> 2)
		if nsec > 999_999_999 {
			nsec = 0
		}
	}
	e.MTime = time.Unix(sec, nsec).UTC()
	// A fast symlink (target in the inode) is printed as exactly its
	// size's bytes in quotes; debugfs's cat cannot read one.
	if e.Type == DiskSymlink {
		if _, after, ok := strings.Cut(s, "\nFast link dest: \""); ok {
			if int64(len(after)) < e.Size+1 || after[e.Size] != '"' {
				return e, fmt.Errorf("debugfs stat: a fast link's target does not match its size %d", e.Size)
			}
			e.Target, e.fast = after[:e.Size], true
		}
	}
	return e, nil
}

// statOne runs debugfs stat on spec (a quoted path or <inode>), reading
// only the head of its answer.
func statOne(ctx context.Context, j *Jail, disk, dev, spec, what string) (DiskEntry, error) {
	cmd, err := j.Command(ctx, "debugfs", "-c", "-R", "stat "+spec, dev)
	if err != nil {
		return DiskEntry{}, err
	}
	cmd.Env = append(cmd.Env, "DEBUGFS_PAGER=__none__", "PAGER=__none__")
	head := &capWriter{max: 4096}
	errb := &capWriter{max: stderrCap}
	cmd.Stdout, cmd.Stderr = head, errb
	if err := cmd.Run(); err != nil {
		return DiskEntry{}, fmt.Errorf("debugfs: %w: %s", err, strings.TrimSpace(errb.buf.String()))
	}
	if err := debugfsError(disk, what, errb.buf.String()); err != nil {
		return DiskEntry{}, err
	}
	e, err := ParseDebugfsStat(head.buf.String())
	if err != nil {
		return e, fmt.Errorf("%s on disk %s: %w", what, disk, err)
	}
	return e, nil
}

// resolve stats p (absolute, clean) without following a symlink: each
// parent must be a directory (a symlink is ErrThroughSymlink), the last
// component is described as it is.
func resolve(ctx context.Context, j *Jail, disk, dev, p string) (DiskEntry, error) {
	if !path.IsAbs(p) || path.Clean(p) != p {
		return DiskEntry{}, fmt.Errorf("disk path %q is not clean and absolute", p)
	}
	if strings.ContainsAny(p, "\n\r\x00") {
		return DiskEntry{}, fmt.Errorf("disk path %q has a NUL or newline: not readable with debugfs", p)
	}
	cur := "/"
	e, err := statOne(ctx, j, disk, dev, debugfsQuote(cur), cur)
	if err != nil || p == "/" {
		return e, err
	}
	for _, part := range strings.Split(p[1:], "/") {
		if e.Type != DiskDirectory {
			if e.Type == DiskSymlink {
				return e, fmt.Errorf("%s on disk %s: %s is a symlink: %w", p, disk, cur, ErrThroughSymlink)
			}
			return e, fmt.Errorf("%s on disk %s: %s is not a directory", p, disk, cur)
		}
		cur = path.Join(cur, part)
		// Every parent was checked to be a directory, so debugfs's own
		// lookup (which follows links in parents) follows none here.
		if e, err = statOne(ctx, j, disk, dev, debugfsQuote(cur), cur); err != nil {
			return e, err
		}
	}
	return e, nil
}

// linkTargets reads the targets of the slow symlinks in es (sizes known from
// their inodes) in one debugfs run: each answer is the echoed request
// and exactly the target's bytes, so a target cannot pass for another.
func linkTargets(ctx context.Context, j *Jail, disk, dev string, es []*DiskEntry) error {
	if len(es) == 0 {
		return nil
	}
	var req strings.Builder
	var total int64
	for _, e := range es {
		if e.Size > maxLinkTarget {
			return fmt.Errorf("a symlink on disk %s has a target of %d bytes: %w", disk, e.Size, ErrTooLarge)
		}
		fmt.Fprintf(&req, "cat <%d>\n", e.ino)
		total += e.Size + 64
	}
	out, stderr, err := j.run(ctx, strings.NewReader(req.String()), total+4096, "debugfs", "-c", "-f", "-", dev)
	if err != nil {
		return err
	}
	if err := debugfsError(disk, "symlinks", stderr); err != nil {
		return err
	}
	for _, e := range es {
		echo := fmt.Sprintf("debugfs: cat <%d>\n", e.ino)
		if !strings.HasPrefix(out, echo) || int64(len(out)-len(echo)) < e.Size {
			return fmt.Errorf("disk %s: debugfs answered a symlink's target unexpectedly", disk)
		}
		e.Target = out[len(echo) : int64(len(echo))+e.Size]
		out = out[int64(len(echo))+e.Size:]
	}
	return nil
}

// StatDisk describes the path p (absolute in the disk's filesystem) of
// the ext4 image disk without following a final symlink (its target is
// read). A missing path is ErrNotFound; a path reached through a symlink
// is ErrThroughSymlink.
func StatDisk(ctx context.Context, disk, p string) (DiskEntry, error) {
	var e DiskEntry
	err := onDiskCurrent(ctx, disk, func(j *Jail, dev string) error {
		var err error
		if e, err = resolve(ctx, j, disk, dev, p); err != nil {
			return err
		}
		if e.Type == DiskSymlink && !e.fast {
			return linkTargets(ctx, j, disk, dev, []*DiskEntry{&e})
		}
		return nil
	})
	return e, err
}

// ListDisk lists the directory dir of the ext4 image disk down to depth
// levels, sorted by path (relative to dir). Symlinks are listed, never
// followed. More than max entries is ErrTooLarge; a directory linked
// twice (a hostile filesystem) is an error.
func ListDisk(ctx context.Context, disk, dir string, depth, max int) ([]DiskEntry, error) {
	var out []DiskEntry
	err := onDiskCurrent(ctx, disk, func(j *Jail, dev string) error {
		root, err := resolve(ctx, j, disk, dev, dir)
		if err != nil {
			return err
		}
		if root.Type != DiskDirectory {
			return fmt.Errorf("%s on disk %s is a %s, not a directory", dir, disk, root.Type)
		}
		type dirAt struct {
			ino uint64
			rel string
		}
		seen := map[uint64]bool{root.ino: true}
		level := []dirAt{{root.ino, ""}}
		var ents []DiskEntry
		for d := 0; d < depth && len(level) > 0; d++ {
			var req strings.Builder
			for _, l := range level {
				fmt.Fprintf(&req, "ls -p <%d>\n", l.ino)
			}
			maxOut := int64(max-len(ents)+2*len(level))*320 + 4096
			lsOut, stderr, err := j.run(ctx, strings.NewReader(req.String()), maxOut, "debugfs", "-c", "-f", "-", dev)
			if errors.Is(err, errTooMuch) {
				return fmt.Errorf("%s on disk %s has more than %d entries: %w", dir, disk, max, ErrTooLarge)
			}
			if err != nil {
				return err
			}
			if err := debugfsError(disk, dir, stderr); err != nil {
				return err
			}
			var next []dirAt
			cur := -1
			for _, line := range strings.Split(lsOut, "\n") {
				if line == "" {
					continue
				}
				if strings.HasPrefix(line, "debugfs: ls -p <") {
					cur++
					if cur >= len(level) || line != fmt.Sprintf("debugfs: ls -p <%d>", level[cur].ino) {
						return fmt.Errorf("%s on disk %s: debugfs answered a listing unexpectedly", dir, disk)
					}
					continue
				}
				m := lsEntryRE.FindStringSubmatch(line)
				if m == nil || cur < 0 {
					return fmt.Errorf("%s on disk %s has a name debugfs cannot list safely (a newline in it?): %.80q", dir, disk, line)
				}
				name := m[3]
				if name == "." || name == ".." || m[1] == "0" {
					continue
				}
				if name == "" || strings.Contains(name, "/") {
					return fmt.Errorf("%s on disk %s lists the name %q", dir, disk, name)
				}
				ino, _ := strconv.ParseUint(m[1], 10, 64)
				rel := path.Join(level[cur].rel, name)
				ents = append(ents, DiskEntry{Path: rel, ino: ino})
				if len(ents) > max {
					return fmt.Errorf("%s on disk %s has more than %d entries: %w", dir, disk, max, ErrTooLarge)
				}
				mode, _ := strconv.ParseUint(m[2], 8, 32)
				if mode&syscall.S_IFMT == syscall.S_IFDIR {
					if seen[ino] {
						return fmt.Errorf("%s on disk %s has directory inode %d linked twice (a corrupt or hostile filesystem)", dir, disk, ino)
					}
					seen[ino] = true
					next = append(next, dirAt{ino, rel})
				}
			}
			if cur != len(level)-1 {
				return fmt.Errorf("%s on disk %s: debugfs answered %d listings for %d directories", dir, disk, cur+1, len(level))
			}
			level = next
		}
		if err := statAll(ctx, j, disk, dev, ents); err != nil {
			return err
		}
		var links []*DiskEntry
		for i := range ents {
			if ents[i].Type == DiskSymlink && !ents[i].fast {
				links = append(links, &ents[i])
			}
		}
		if err := linkTargets(ctx, j, disk, dev, links); err != nil {
			return err
		}
		out = ents
		return nil
	})
	sort.Slice(out, func(a, b int) bool { return out[a].Path < out[b].Path })
	return out, err
}

// statAll fills in es (by inode) from batches of stat requests. Every
// answer starts with the echoed request; their count must be the count
// asked, so a symlink target that forges one is refused.
func statAll(ctx context.Context, j *Jail, disk, dev string, es []DiskEntry) error {
	const batch = 4096
	for start := 0; start < len(es); start += batch {
		part := es[start:min(start+batch, len(es))]
		var req strings.Builder
		for _, e := range part {
			fmt.Fprintf(&req, "stat <%d>\n", e.ino)
		}
		out, stderr, err := j.run(ctx, strings.NewReader(req.String()), maxStatOut, "debugfs", "-c", "-f", "-", dev)
		if errors.Is(err, errTooMuch) {
			return fmt.Errorf("disk %s: the entries' descriptions are over %d MiB (very fragmented files?): list less depth: %w", disk, maxStatOut>>20, ErrTooLarge)
		}
		if err != nil {
			return err
		}
		if err := debugfsError(disk, "entries", stderr); err != nil {
			return err
		}
		segs := strings.Split("\n"+out, "\ndebugfs: stat <")
		if len(segs) != len(part)+1 {
			return fmt.Errorf("disk %s: debugfs answered %d descriptions for %d entries", disk, len(segs)-1, len(part))
		}
		for i := range part {
			head, rest, ok := strings.Cut(segs[i+1], ">\n")
			if !ok || head != strconv.FormatUint(part[i].ino, 10) {
				return fmt.Errorf("disk %s: debugfs answered a description unexpectedly", disk)
			}
			e, err := ParseDebugfsStat(rest)
			if err != nil || e.ino != part[i].ino {
				return fmt.Errorf("disk %s: entry %s: %v", disk, part[i].Path, err)
			}
			e.Path = part[i].Path
			part[i] = e
		}
	}
	return nil
}

// StreamDiskFile writes the bytes of the regular file p of the ext4 image
// disk to w, from offset, at most length bytes (0: to the end). The
// file's size is read first and nothing past it is written, whatever
// debugfs prints.
func StreamDiskFile(ctx context.Context, disk, p string, offset, length int64, w io.Writer) error {
	return onDiskCurrent(ctx, disk, func(j *Jail, dev string) error {
		e, err := resolve(ctx, j, disk, dev, p)
		if err != nil {
			return err
		}
		if e.Type != DiskRegular {
			return fmt.Errorf("%s on disk %s is a %s, not a regular file", p, disk, e.Type)
		}
		if offset >= e.Size {
			return nil
		}
		want := e.Size - offset
		if length > 0 && length < want {
			want = length
		}
		runCtx, cancel := context.WithCancel(ctx)
		defer cancel()
		cmd, err := j.Command(runCtx, "debugfs", "-c", "-R", fmt.Sprintf("cat <%d>", e.ino), dev)
		if err != nil {
			return err
		}
		cmd.Env = append(cmd.Env, "DEBUGFS_PAGER=__none__", "PAGER=__none__")
		errb := &capWriter{max: stderrCap}
		cmd.Stderr = errb
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			return err
		}
		if err := cmd.Start(); err != nil {
			return err
		}
		_, err = io.CopyN(io.Discard, stdout, offset)
		if err == nil {
			_, err = io.CopyN(w, stdout, want)
		}
		if err != nil {
			cancel()
			j.Kill()
			_ = cmd.Wait()
			if errors.Is(err, io.EOF) {
				return fmt.Errorf("%s on disk %s: debugfs ended before the file's %d bytes: %s", p, disk, e.Size, strings.TrimSpace(errb.buf.String()))
			}
			return err
		}
		// The rest (past a range) is not wanted.
		cancel()
		j.Kill()
		_ = cmd.Wait()
		return nil
	})
}

// ArchiveDisk writes a tar of the contents of directory dir of the ext4
// image disk (names relative to it) to w: regular files, directories and
// symlinks, with modes and mtimes, no owners. The tree is first copied
// out by CopyOutIn (within lim, into a directory made under tmpDir, ""
// for os.TempDir()), then archived from the copy without following a
// symlink; the copy is removed afterwards.
func ArchiveDisk(ctx context.Context, disk, dir, tmpDir string, lim CopyLimits, w io.Writer) (err error) {
	j, err := NewJail()
	if err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(tmpDir, "banger-archive-")
	if err != nil {
		j.Close()
		return err
	}
	defer func() {
		if cerr := j.Close(); err == nil && cerr != nil {
			err = cerr
		}
		os.RemoveAll(tmp)
	}()
	if err := os.Chmod(tmp, 0o711); err != nil {
		return err
	}
	copyDir := filepath.Join(tmp, "copy")
	// CopyOutIn resolves dir with debugfs, which follows links in its
	// parents: check them first.
	if err := onDiskCurrent(ctx, disk, func(j *Jail, dev string) error {
		e, err := resolve(ctx, j, disk, dev, dir)
		if err == nil && e.Type != DiskDirectory {
			err = fmt.Errorf("%s on disk %s is a %s, not a directory", dir, disk, e.Type)
		}
		return err
	}); err != nil {
		return err
	}
	if err := CopyOutIn(ctx, j, disk, dir, copyDir, lim); err != nil {
		return err
	}
	root := copyDir
	if dir != "/" {
		root = filepath.Join(copyDir, path.Base(dir))
	}
	// The jail was killed when CopyOutIn gave its device back: nothing
	// changes the copy now.
	return tarTree(root, w)
}

// onDiskCurrent is onDisk over what the disk holds now: when its VM was
// killed and left a journal to replay, the journal is replayed on a
// private copy (as CopyOutIn does) and that is read, never the disk.
func onDiskCurrent(ctx context.Context, disk string, fn func(j *Jail, dev string) error) error {
	dirty, err := NeedsRecovery(disk)
	if err != nil || !dirty {
		return onDisk(ctx, disk, fn)
	}
	j, err := NewJail()
	if err != nil {
		return err
	}
	defer j.Close()
	priv, done, err := replayPrivate(ctx, j, disk)
	if err != nil {
		return fmt.Errorf("replay the journal of %s: %w", disk, err)
	}
	defer done()
	return withLentLoop(ctx, priv, true, j, func(dev string) error { return fn(j, dev) })
}

// tarTree writes a tar of root's contents, never following a symlink.
func tarTree(root string, w io.Writer) error {
	tw := tar.NewWriter(w)
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, p)
		if err != nil || rel == "." {
			return err
		}
		info, err := d.Info() // lstat
		if err != nil {
			return err
		}
		link := ""
		if info.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(p); err != nil {
				return err
			}
		}
		if !info.Mode().IsRegular() && !info.IsDir() && link == "" {
			return nil
		}
		hdr, err := tar.FileInfoHeader(info, link)
		if err != nil {
			return err
		}
		hdr.Name = "./" + filepath.ToSlash(rel)
		if info.IsDir() {
			hdr.Name += "/"
		}
		hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname = 0, 0, "", ""
		hdr.Format = tar.FormatPAX
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if !info.Mode().IsRegular() {
			return nil
		}
		f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
		if err != nil {
			return err
		}
		defer f.Close()
		n, err := io.Copy(tw, f)
		if err == nil && n != hdr.Size {
			err = fmt.Errorf("%s changed while archived", rel)
		}
		return err
	})
	if err != nil {
		return err
	}
	return tw.Close()
}
