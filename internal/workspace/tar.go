package workspace

import (
	"archive/tar"
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Workspace modes.
const (
	// ModeFull copies the working tree and the whole .git directory: the
	// guest has the host's history and HEAD.
	ModeFull = "full"
	// ModeTracked copies the working tree with a fresh repository holding
	// one commit of it, made on the host: no history of the source.
	ModeTracked = "tracked"
)

// TarOptions selects what WriteTar puts in the stream.
type TarOptions struct {
	Mode  string // ModeFull (default when empty) or ModeTracked
	NoGit bool   // dir is a plain directory: copy all of it, no git involved
}

// Stats describes a written stream. Files and Bytes count the working tree
// (files and symlinks, and the bytes of regular files); .git is not counted.
type Stats struct {
	Files, Bytes int64
	Head         string   // HEAD commit of the repository; empty when unborn or NoGit
	Warnings     []string // things left out, and why
}

// ValidateMode checks a workspace mode; empty means ModeFull.
func ValidateMode(mode string) error {
	switch mode {
	case "", ModeFull, ModeTracked:
		return nil
	}
	return fmt.Errorf("workspace mode %q is not allowed: use %q (files and git history) or %q (files only, fresh repository in the guest)", mode, ModeFull, ModeTracked)
}

// WriteTar writes dir's workspace to w as one tar stream: the files of
// ListFiles as they are on disk (uncommitted edits included) and a .git.
// In full mode the .git is the repository's own and comes first; in
// tracked mode it is a fresh one-commit repository of those files, made in
// a temporary directory while they stream (see makeSnapshot), and comes
// last. With NoGit all of dir is copied, except in tracked mode a
// top-level .git, since the guest then makes the one commit. Symlinks stay symlinks, permission bits and empty files are
// kept, names are stored exactly (PAX records when not plain ASCII); owners
// are written as root, since the guest unpacks as root. Sockets, pipes and
// devices are left out with a warning. Nothing is written to dir.
func WriteTar(ctx context.Context, dir string, opts TarOptions, w io.Writer) (Stats, error) {
	if err := ValidateMode(opts.Mode); err != nil {
		return Stats{}, err
	}
	bw := bufio.NewWriterSize(w, 1<<20)
	tw := &treeWriter{ctx: ctx, tw: tar.NewWriter(bw), buf: make([]byte, 256<<10)}
	var st Stats
	if opts.NoGit {
		abs, err := filepath.Abs(dir)
		if err != nil {
			return st, err
		}
		if fi, err := os.Stat(abs); err != nil {
			return st, fmt.Errorf("source directory: %w", err)
		} else if !fi.IsDir() {
			return st, fmt.Errorf("source %s is not a directory", abs)
		}
		tw.skipGit = opts.Mode == ModeTracked
		if err := tw.walk(abs, "", &st, true); err != nil {
			return st, err
		}
	} else {
		files, warnings, err := ListFiles(ctx, dir)
		if err != nil {
			return st, err
		}
		st.Warnings = append(st.Warnings, warnings...)
		top, _ := filepath.Abs(dir)
		if out, err := gitOutput(ctx, top, "rev-parse", "--verify", "-q", "HEAD"); err == nil {
			st.Head = strings.TrimSpace(string(out))
		}
		writeGit := func(gitDir string) error {
			var gst Stats
			err := tw.walk(gitDir, ".git", &gst, false)
			st.Warnings = append(st.Warnings, gst.Warnings...)
			return err
		}
		writeFiles := func() error {
			for _, rel := range files {
				if err := tw.add(filepath.Join(top, filepath.FromSlash(rel)), rel, &st); err != nil {
					return err
				}
			}
			return nil
		}
		if opts.Mode == ModeTracked {
			// The snapshot is made while the files stream (the guest, not
			// the host, is the slow end), and follows them.
			snap := startSnapshot(ctx, top, files)
			if err := writeFiles(); err != nil {
				snap.discard()
				return st, err
			}
			gitDir, err := snap.wait()
			if err != nil {
				return st, err
			}
			err = writeGit(gitDir)
			snap.discard()
			if err != nil {
				return st, err
			}
		} else {
			gitDir := filepath.Join(top, ".git")
			fi, err := os.Lstat(gitDir)
			if err != nil {
				return st, fmt.Errorf("full mode copies .git: %w", err)
			}
			if !fi.IsDir() {
				return st, fmt.Errorf("%s is not a directory (a worktree or a submodule checkout points elsewhere): full mode cannot copy it; use mode %q", gitDir, ModeTracked)
			}
			if err := writeGit(gitDir); err != nil {
				return st, err
			}
			if err := writeFiles(); err != nil {
				return st, err
			}
		}
	}
	if err := tw.tw.Close(); err != nil {
		return st, err
	}
	return st, bw.Flush()
}

type treeWriter struct {
	ctx     context.Context
	tw      *tar.Writer
	buf     []byte
	skipGit bool // walk leaves out a top-level .git
}

// walk adds the tree at root under the name prefix (empty: top level),
// directories included.
func (t *treeWriter) walk(root, prefix string, st *Stats, count bool) error {
	return filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, path)
		if err != nil {
			return err
		}
		name := filepath.ToSlash(rel)
		if prefix != "" {
			name = prefix + "/" + name
			if rel == "." {
				name = prefix
			}
		} else if rel == "." {
			return nil
		} else if t.skipGit && name == ".git" {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if count {
			return t.add(path, name, st)
		}
		// .git: warnings are kept but nothing is counted.
		var scratch Stats
		err = t.add(path, name, &scratch)
		st.Warnings = append(st.Warnings, scratch.Warnings...)
		return err
	})
}

// add writes one entry; path is on disk, name in the stream.
func (t *treeWriter) add(path, name string, st *Stats) error {
	if err := t.ctx.Err(); err != nil {
		return err
	}
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		st.Warnings = append(st.Warnings, fmt.Sprintf("skipped %s: it vanished while being copied", name))
		return nil
	}
	if err != nil {
		return err
	}
	hdr := &tar.Header{
		Name: name,
		Mode: int64(fi.Mode().Perm()),
		// Seconds, truncated as GNU tar and git's index see them: left
		// whole, archive/tar rounds to the nearest second, so half the
		// files would arrive a second newer than the index says and git in
		// the guest would rehash them.
		ModTime: fi.ModTime().Truncate(time.Second),
		Uname:   "root",
		Gname:   "root",
	}
	if fi.Mode()&fs.ModeSetuid != 0 {
		hdr.Mode |= 0o4000
	}
	if fi.Mode()&fs.ModeSetgid != 0 {
		hdr.Mode |= 0o2000
	}
	if fi.Mode()&fs.ModeSticky != 0 {
		hdr.Mode |= 0o1000
	}
	switch {
	case fi.Mode().IsRegular():
		hdr.Typeflag = tar.TypeReg
		hdr.Size = fi.Size()
	case fi.Mode()&fs.ModeSymlink != 0:
		hdr.Typeflag = tar.TypeSymlink
		if hdr.Linkname, err = os.Readlink(path); err != nil {
			return err
		}
	case fi.IsDir():
		hdr.Typeflag = tar.TypeDir
		hdr.Name += "/"
	default:
		st.Warnings = append(st.Warnings, fmt.Sprintf("skipped %s: a %s is not copied", name, fileKind(fi.Mode())))
		return nil
	}
	if hdr.Typeflag != tar.TypeReg {
		if err := t.tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("tar %s: %w", name, err)
		}
		if hdr.Typeflag == tar.TypeSymlink {
			st.Files++
		}
		return nil
	}
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("read %s: %w", name, err)
	}
	defer f.Close()
	if err := t.tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("tar %s: %w", name, err)
	}
	n, err := io.CopyBuffer(t.tw, io.LimitReader(f, hdr.Size), t.buf)
	if err != nil {
		return fmt.Errorf("read %s: %w", name, err)
	}
	if n != hdr.Size {
		return fmt.Errorf("read %s: it shrank from %d to %d bytes while being copied; retry when it is no longer being written", name, hdr.Size, n)
	}
	st.Files++
	st.Bytes += n
	return nil
}

func fileKind(m fs.FileMode) string {
	switch {
	case m&fs.ModeNamedPipe != 0:
		return "named pipe"
	case m&fs.ModeSocket != 0:
		return "socket"
	case m&fs.ModeDevice != 0:
		return "device"
	}
	return "special file"
}

// CountTar reads a tar stream to its end and counts what WriteTar counts in
// Stats: working-tree files and symlinks, and regular-file bytes, outside
// .git. It fails on a stream that is not tar.
func CountTar(r io.Reader) (files, bytes int64, err error) {
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return files, bytes, nil
		}
		if err != nil {
			return files, bytes, fmt.Errorf("workspace stream is not a valid tar stream: %w", err)
		}
		name := strings.TrimPrefix(hdr.Name, "./")
		if name == ".git" || strings.HasPrefix(name, ".git/") {
			continue
		}
		switch hdr.Typeflag {
		case tar.TypeReg:
			files++
			bytes += hdr.Size
		case tar.TypeSymlink:
			files++
		}
	}
}
