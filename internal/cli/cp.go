package cli

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
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/banger/banger/internal/api"
	"github.com/banger/banger/internal/errdefs"
)

// guestHome is what a relative guest path in `VM:rel` is relative to.
const guestHome = "/root"

// cpLoc is one side of `vm cp`: a guest path in VM, a local path, or
// stdin/stdout ("-").
type cpLoc struct {
	VM    string
	Path  string
	Stdio bool
}

func (l cpLoc) remote() bool { return l.VM != "" }

// parseCpLoc reads `VM:/abs`, `VM:rel` (relative to /root), `-` or a local
// path. A colon counts only before any slash, so ./a:b and /x:y are local.
func parseCpLoc(s string) (cpLoc, error) {
	if s == "" {
		return cpLoc{}, errors.New("empty path")
	}
	if s == "-" {
		return cpLoc{Stdio: true}, nil
	}
	if i := strings.IndexByte(s, ':'); i > 0 && !strings.Contains(s[:i], "/") {
		p := s[i+1:]
		if !path.IsAbs(p) {
			p = path.Join(guestHome, p)
		}
		return cpLoc{VM: s[:i], Path: path.Clean(p)}, nil
	}
	if strings.HasPrefix(s, ":") {
		return cpLoc{}, fmt.Errorf("%q names no VM: write VM:PATH", s)
	}
	return cpLoc{Path: s}, nil
}

// parseCp reads both sides: exactly one is in a VM, and "-" only stands
// for the local side.
func parseCp(src, dst string) (cpLoc, cpLoc, error) {
	s, err := parseCpLoc(src)
	if err != nil {
		return s, cpLoc{}, err
	}
	d, err := parseCpLoc(dst)
	if err != nil {
		return s, d, err
	}
	switch {
	case s.remote() && d.remote():
		return s, d, errors.New("both sides are in a VM: copy through the host, one side local")
	case !s.remote() && !d.remote():
		return s, d, errors.New("both sides are local: write one side as VM:PATH")
	}
	return s, d, nil
}

func (a *app) vmCpCommand() *cobra.Command {
	var recursive bool
	cmd := &cobra.Command{
		Use:   "cp [-r] SRC DST",
		Short: "Copy files between the host and a VM (VM:PATH on one side; - for stdin/stdout)",
		Long: "Copy a file or, with -r, a directory tree between the host and a VM. One side is VM:PATH\n" +
			"(relative paths are relative to /root), the other a local path or - (a single file from stdin or\n" +
			"to stdout). A destination that is an existing directory receives the source under its own name.\n" +
			"Trees keep modes, mtimes and symlinks. Copies out of a stopped VM read its work disk (paths under /root).",
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			src, dst, err := parseCp(args[0], args[1])
			if err != nil {
				return errdefs.Invalid(err)
			}
			c, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			if dst.remote() {
				return a.cpIn(cmd.Context(), c, src, dst, recursive)
			}
			return a.cpOut(cmd.Context(), c, src, dst, recursive)
		},
	}
	cmd.Flags().BoolVarP(&recursive, "recursive", "r", false, "copy directories as whole trees")
	return cmd
}

// guestTarget is where a copy into dst lands: under dst when it is a
// directory, else dst itself.
func guestTarget(ctx context.Context, c *api.Client, dst cpLoc, name string) (string, error) {
	info, err := c.StatFile(ctx, dst.VM, dst.Path)
	switch {
	case err == nil && info.Type == api.FileTypeDir && name != "":
		return path.Join(dst.Path, name), nil
	case err == nil || errdefs.IsNotFound(err):
		return dst.Path, nil
	}
	return "", err
}

func (a *app) cpIn(ctx context.Context, c *api.Client, src, dst cpLoc, recursive bool) error {
	if src.Stdio {
		_, err := c.WriteFile(ctx, dst.VM, api.FileWriteRequest{Path: dst.Path}, a.stdin)
		return err
	}
	st, err := os.Stat(src.Path)
	if err != nil {
		return errdefs.Errorf(errdefs.CodeNotFound, "%v", err)
	}
	target, err := guestTarget(ctx, c, dst, filepath.Base(src.Path))
	if err != nil {
		return err
	}
	if st.IsDir() {
		if !recursive {
			return errdefs.Errorf(errdefs.CodeInvalid, "%s is a directory: use cp -r", src.Path)
		}
		pr, pw := io.Pipe()
		go func() { pw.CloseWithError(writeTree(src.Path, pw)) }()
		_, err := c.WriteArchive(ctx, dst.VM, target, pr)
		pr.CloseWithError(errors.New("upload ended"))
		return err
	}
	f, err := os.Open(src.Path)
	if err != nil {
		return err
	}
	defer f.Close()
	mode := uint32(st.Mode().Perm())
	_, err = c.WriteFile(ctx, dst.VM, api.FileWriteRequest{Path: target, Mode: &mode}, f)
	return err
}

func (a *app) cpOut(ctx context.Context, c *api.Client, src, dst cpLoc, recursive bool) error {
	info, err := c.StatFile(ctx, src.VM, src.Path)
	if err != nil {
		return err
	}
	isDir := info.Type == api.FileTypeDir
	if info.Type == api.FileTypeSymlink {
		// cp follows a symlink it is given: one that lists is a directory.
		_, lerr := c.ListFiles(ctx, src.VM, src.Path, 1)
		isDir = lerr == nil
	}
	if dst.Stdio {
		if isDir {
			return errdefs.Errorf(errdefs.CodeInvalid, "%s:%s is a directory: only a single file goes to stdout", src.VM, src.Path)
		}
		return c.ReadFile(ctx, src.VM, api.FileReadRequest{Path: src.Path}, a.stdout)
	}
	target := dst.Path
	if st, err := os.Stat(dst.Path); err == nil && st.IsDir() {
		target = filepath.Join(dst.Path, path.Base(src.Path))
	}
	if isDir {
		if !recursive {
			return errdefs.Errorf(errdefs.CodeInvalid, "%s:%s is a directory: use cp -r", src.VM, src.Path)
		}
		// The tree is unpacked beside its target and moved into place only
		// once whole: a copy cut short (the daemon's budget, a broken
		// stream, Ctrl-C) leaves nothing of itself behind.
		tmp, err := os.MkdirTemp(filepath.Dir(target), ".banger-cp-*")
		if err != nil {
			return err
		}
		defer os.RemoveAll(tmp)
		pr, pw := io.Pipe()
		done := make(chan error, 1)
		go func() {
			err := extractTree(tmp, pr)
			if err == nil {
				// tar pads its end past the end-of-archive blocks.
				_, err = io.Copy(io.Discard, pr)
			}
			pr.CloseWithError(errors.New("extraction ended"))
			done <- err
		}()
		err = c.ReadArchive(ctx, src.VM, src.Path, pw)
		pw.CloseWithError(err)
		if xerr := <-done; err == nil {
			err = xerr
		}
		if err != nil {
			return err
		}
		return placeTree(tmp, target)
	}
	return readToFile(ctx, c, src, target, fs.FileMode(info.Mode&0o777))
}

// readToFile writes a guest file next to target and renames it into place
// once complete, so a failed copy leaves no half file.
func readToFile(ctx context.Context, c *api.Client, src cpLoc, target string, mode fs.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(target), ".banger-cp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	err = c.ReadFile(ctx, src.VM, api.FileReadRequest{Path: src.Path}, tmp)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp.Name(), mode)
	}
	if err != nil {
		return err
	}
	return os.Rename(tmp.Name(), target)
}

// placeTree moves the unpacked tree tmp to target: a rename when target
// does not exist, else a merge into the existing directory (files and
// links replace what is at their names; directories merge).
func placeTree(tmp, target string) error {
	st, err := os.Lstat(target)
	if errors.Is(err, fs.ErrNotExist) {
		if err := os.Chmod(tmp, 0o755); err != nil { // as mkdir -p would
			return err
		}
		return os.Rename(tmp, target)
	}
	if err != nil {
		return err
	}
	if !st.IsDir() {
		return fmt.Errorf("%s exists and is not a directory", target)
	}
	return mergeInto(tmp, target)
}

// mergeInto moves src's entries into the directory dst.
func mergeInto(src, dst string) error {
	ents, err := os.ReadDir(src)
	if err != nil {
		return err
	}
	for _, e := range ents {
		s, d := filepath.Join(src, e.Name()), filepath.Join(dst, e.Name())
		dst, err := os.Lstat(d)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			err = os.Rename(s, d)
		case err != nil:
		case e.IsDir() && dst.IsDir():
			if err = mergeInto(s, d); err == nil {
				var si fs.FileInfo
				if si, err = os.Lstat(s); err == nil {
					_ = os.Chmod(d, si.Mode().Perm())
					_ = os.Chtimes(d, si.ModTime(), si.ModTime())
				}
			}
		case e.IsDir() || dst.IsDir():
			err = fmt.Errorf("%s: a directory and a file meet at this name", d)
		default:
			err = os.Rename(s, d)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// writeTree writes a tar of dir's contents (names relative to it), with
// modes, mtimes and symlinks, no owners.
func writeTree(dir string, w io.Writer) error {
	tw := tar.NewWriter(w)
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil || rel == "." {
			return err
		}
		info, err := d.Info()
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
			return nil // sockets, devices, fifos stay behind
		}
		hdr, err := tar.FileInfoHeader(info, link)
		if err != nil {
			return err
		}
		hdr.Name = filepath.ToSlash(rel)
		if info.IsDir() {
			hdr.Name += "/"
		}
		hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname = 0, 0, "", ""
		hdr.Format = tar.FormatPAX // nanosecond mtimes, any name length
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if info.Mode().IsRegular() {
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			_, err = io.Copy(tw, f)
			f.Close()
			return err
		}
		return nil
	})
	if err != nil {
		return err
	}
	return tw.Close()
}

// extractTree unpacks a guest's tar into dir. The guest is hostile: a
// name must stay below dir, no name is written through a symlink (every
// parent is checked, and a file or link replaces what was at its name
// rather than writing through it), and owners are ignored.
func extractTree(dir string, r io.Reader) error {
	tr := tar.NewReader(r)
	type dirTime struct {
		path string
		t    time.Time
	}
	var dirs []dirTime
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		name := path.Clean(strings.TrimPrefix(hdr.Name, "./"))
		if name == "." {
			continue
		}
		if !filepath.IsLocal(name) {
			return fmt.Errorf("the guest's archive names %q, outside the destination", hdr.Name)
		}
		target := filepath.Join(dir, filepath.FromSlash(name))
		if err := noSymlinkParents(dir, name); err != nil {
			return err
		}
		mode := fs.FileMode(hdr.Mode) & (fs.ModePerm)
		switch hdr.Typeflag {
		case tar.TypeDir:
			if st, err := os.Lstat(target); err == nil && !st.IsDir() {
				if err := os.Remove(target); err != nil {
					return err
				}
			}
			if err := os.Mkdir(target, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
				return err
			}
			if err := os.Chmod(target, mode); err != nil {
				return err
			}
			dirs = append(dirs, dirTime{target, hdr.ModTime})
		case tar.TypeReg:
			if err := removeNonDir(target); err != nil {
				return err
			}
			f, err := os.OpenFile(target, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
			if err != nil {
				return err
			}
			_, err = io.Copy(f, tr)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err == nil {
				err = os.Chmod(target, mode)
			}
			if err == nil {
				err = os.Chtimes(target, hdr.ModTime, hdr.ModTime)
			}
			if err != nil {
				return err
			}
		case tar.TypeSymlink:
			if err := removeNonDir(target); err != nil {
				return err
			}
			if err := os.Symlink(hdr.Linkname, target); err != nil {
				return err
			}
		default:
			// Hard links, devices and fifos from a guest are not made on
			// the host.
		}
	}
	// Directories' mtimes last: filling them changed them.
	for i := len(dirs) - 1; i >= 0; i-- {
		_ = os.Chtimes(dirs[i].path, dirs[i].t, dirs[i].t)
	}
	return nil
}

// noSymlinkParents refuses a name whose parent directories below dir
// include a symlink (one the archive made earlier, pointing anywhere).
func noSymlinkParents(dir, name string) error {
	parts := strings.Split(name, "/")
	p := dir
	for _, part := range parts[:len(parts)-1] {
		p = filepath.Join(p, part)
		st, err := os.Lstat(p)
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("the guest's archive names %q before its directory", name)
		}
		if err != nil {
			return err
		}
		if !st.IsDir() {
			return fmt.Errorf("the guest's archive names %q below a non-directory (a symlink?)", name)
		}
	}
	return nil
}

// removeNonDir removes what is at p unless it is a directory or missing.
func removeNonDir(p string) error {
	st, err := os.Lstat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if st.IsDir() {
		return fmt.Errorf("%s is a directory", p)
	}
	return os.Remove(p)
}
