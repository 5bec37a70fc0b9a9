package workspace

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"time"

	"golang.org/x/sys/unix"
)

// A tree is a directory of guest data that root works in. Every path is
// resolved by the kernel beneath the tree's root, refusing symlinks, magic
// links and mount crossings at any component (openat2), so nothing in the
// tree, however it changes under root's feet, can make root reach a file
// outside it.
type tree struct {
	root *os.File
	name string // for messages
}

func openTree(dir string) (*tree, error) {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: dir, Err: err}
	}
	return &tree{root: os.NewFile(uintptr(fd), dir), name: dir}, nil
}

func (t *tree) Close() error { return t.root.Close() }

const beneath = unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV

// open opens rel (relative, "." for the root) beneath the tree. The last
// component is never followed either (O_NOFOLLOW).
func (t *tree) open(rel string, flags int, mode uint32) (*os.File, error) {
	fd, err := unix.Openat2(int(t.root.Fd()), rel, &unix.OpenHow{
		Flags:   uint64(flags | unix.O_NOFOLLOW | unix.O_CLOEXEC),
		Mode:    uint64(mode),
		Resolve: beneath,
	})
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path.Join(t.name, rel), Err: err}
	}
	return os.NewFile(uintptr(fd), path.Join(t.name, rel)), nil
}

// openDir opens the directory rel beneath the tree.
func (t *tree) openDir(rel string) (*os.File, error) {
	return t.open(rel, unix.O_RDONLY|unix.O_DIRECTORY, 0)
}

// lstat returns what rel is, without following it.
func (t *tree) lstat(rel string) (os.FileInfo, error) {
	dir, base := path.Split(rel)
	if dir == "" {
		dir = "."
	}
	d, err := t.openDir(dir)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	var st unix.Stat_t
	if err := unix.Fstatat(int(d.Fd()), base, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return nil, &os.PathError{Op: "lstat", Path: path.Join(t.name, rel), Err: err}
	}
	return statInfo{name: base, st: st}, nil
}

// readFile reads the regular file rel, at most max bytes.
func (t *tree) readFile(rel string, max int64) ([]byte, error) {
	f, err := t.open(rel, unix.O_RDONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", f.Name())
	}
	if fi.Size() > max {
		return nil, fmt.Errorf("%s is %d bytes, more than the %d banger reads", f.Name(), fi.Size(), max)
	}
	return io.ReadAll(io.LimitReader(f, max))
}

// writeFile replaces rel with a new file holding data, with mode perm
// whatever the umask (bangerd's is 077, and a jail must read the file).
// The old entry is unlinked, never opened: it could be a hard link to a
// file elsewhere.
func (t *tree) writeFile(rel string, data []byte, perm uint32) error {
	if err := t.removeAll(rel); err != nil {
		return err
	}
	f, err := t.open(rel, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL, perm)
	if err != nil {
		return err
	}
	err = f.Chmod(os.FileMode(perm))
	if err == nil {
		_, err = f.Write(data)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// removeAll removes rel and, when it is a directory, everything in it;
// a missing rel is not an error. Directories are entered by descriptor,
// so a link anywhere in it is removed, never followed.
func (t *tree) removeAll(rel string) error {
	dir, base := path.Split(rel)
	if dir == "" {
		dir = "."
	}
	d, err := t.openDir(dir)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return err
	}
	defer d.Close()
	return removeAt(d, base, 0)
}

// removeAt removes name in the directory d, recursively.
func removeAt(d *os.File, name string, depth int) error {
	err := unix.Unlinkat(int(d.Fd()), name, 0)
	if err == nil || errors.Is(err, unix.ENOENT) {
		return nil
	}
	if !errors.Is(err, unix.EISDIR) && !errors.Is(err, unix.EPERM) {
		return &os.PathError{Op: "unlink", Path: path.Join(d.Name(), name), Err: err}
	}
	if depth > 4096 {
		return fmt.Errorf("%s: too deep", path.Join(d.Name(), name))
	}
	fd, err := unix.Openat(int(d.Fd()), name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return &os.PathError{Op: "open", Path: path.Join(d.Name(), name), Err: err}
	}
	sub := os.NewFile(uintptr(fd), path.Join(d.Name(), name))
	for {
		names, err := sub.Readdirnames(256)
		for _, n := range names {
			if rerr := removeAt(sub, n, depth+1); rerr != nil {
				sub.Close()
				return rerr
			}
		}
		if err == io.EOF || len(names) == 0 {
			break
		}
		if err != nil {
			sub.Close()
			return err
		}
		// Entries removed shift the directory's offsets: read from the
		// start again.
		if _, err := sub.Seek(0, io.SeekStart); err != nil {
			sub.Close()
			return err
		}
	}
	sub.Close()
	if err := unix.Unlinkat(int(d.Fd()), name, unix.AT_REMOVEDIR); err != nil && !errors.Is(err, unix.ENOENT) {
		return &os.PathError{Op: "rmdir", Path: path.Join(d.Name(), name), Err: err}
	}
	return nil
}

// walk calls fn for every entry under rel (not rel itself), parents first,
// with its path relative to the tree; fn returning skipDir for a
// directory keeps walk out of it.
func (t *tree) walk(rel string, fn func(rel string, fi os.FileInfo) error) error {
	d, err := t.openDir(rel)
	if err != nil {
		return err
	}
	var entries []os.DirEntry
	for {
		batch, err := d.ReadDir(1024)
		entries = append(entries, batch...)
		if err == io.EOF || len(batch) == 0 {
			break
		}
		if err != nil {
			d.Close()
			return err
		}
	}
	d.Close() // not held across the recursion: depth must not cost descriptors
	for _, e := range entries {
		p := path.Join(rel, e.Name())
		fi, err := t.lstat(p)
		if errors.Is(err, unix.ENOENT) {
			continue // removed by fn for an earlier entry
		}
		if err != nil {
			return err
		}
		err = fn(p, fi)
		if err == errSkipDir {
			continue
		}
		if err != nil {
			return err
		}
		if fi.IsDir() {
			if err := t.walk(p, fn); err != nil {
				return err
			}
		}
	}
	return nil
}

var errSkipDir = errors.New("skip this directory")

// statInfo is an os.FileInfo from a unix.Stat_t.
type statInfo struct {
	name string
	st   unix.Stat_t
}

func (s statInfo) Name() string { return s.name }
func (s statInfo) Size() int64  { return s.st.Size }
func (s statInfo) Mode() os.FileMode {
	m := os.FileMode(s.st.Mode & 0o777)
	switch s.st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		m |= os.ModeDir
	case unix.S_IFLNK:
		m |= os.ModeSymlink
	case unix.S_IFREG:
	case unix.S_IFIFO:
		m |= os.ModeNamedPipe
	case unix.S_IFSOCK:
		m |= os.ModeSocket
	default:
		m |= os.ModeDevice
	}
	return m
}
func (s statInfo) ModTime() time.Time { return time.Unix(s.st.Mtim.Unix()) }
func (s statInfo) IsDir() bool        { return s.st.Mode&unix.S_IFMT == unix.S_IFDIR }
func (s statInfo) Sys() any           { return &s.st }
