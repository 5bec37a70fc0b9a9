package workspace

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// SnapshotMessage is the message of a tracked workspace's one commit.
const SnapshotMessage = "banger: workspace snapshot"

// snapshotIdentity is the author and committer of a snapshot commit.
var snapshotIdentity = []string{
	"GIT_AUTHOR_NAME=banger", "GIT_AUTHOR_EMAIL=banger@localhost",
	"GIT_COMMITTER_NAME=banger", "GIT_COMMITTER_EMAIL=banger@localhost",
}

// snapshot is a makeSnapshot running in the background.
type snapshot struct {
	cancel context.CancelFunc
	done   chan struct{}
	gitDir string
	err    error
}

// startSnapshot starts makeSnapshot(ctx, top, files).
func startSnapshot(ctx context.Context, top string, files []string) *snapshot {
	ctx, cancel := context.WithCancel(ctx)
	s := &snapshot{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		s.gitDir, s.err = makeSnapshot(ctx, top, files)
	}()
	return s
}

// wait returns the snapshot's git directory once it is made.
func (s *snapshot) wait() (string, error) {
	<-s.done
	return s.gitDir, s.err
}

// discard stops the snapshot if it still runs and removes what it made.
func (s *snapshot) discard() {
	s.cancel()
	<-s.done
	if s.err == nil {
		os.RemoveAll(filepath.Dir(s.gitDir))
	}
}

// makeSnapshot builds, in a new temporary directory, the git directory of a
// tracked workspace: a fresh repository on branch main whose one commit
// holds files (paths relative to top, as ListFiles gives them) as they are
// on disk now, in one pack, with an index whose stat data matches those
// files. It runs on the host because hashing and compressing the tree
// natively is several times faster than in an emulated guest, and one pack
// is far fewer files for the guest to create than loose objects. The
// source repository is only read. The caller removes the returned git
// directory's parent.
//
// Two passes run side by side: git fast-import takes the files as blobs
// and writes the pack and the commit; git update-index --info-only hashes
// them again to make the index with their stat data, without objects.
func makeSnapshot(ctx context.Context, top string, files []string) (gitDir string, err error) {
	tmp, err := os.MkdirTemp("", "banger-snapshot-")
	if err != nil {
		return "", err
	}
	defer func() {
		if err != nil {
			os.RemoveAll(tmp)
		}
	}()
	gitDir = filepath.Join(tmp, ".git")
	// An empty template: no sample hooks or description to carry.
	if err := snapshotGit(ctx, top, "", nil, nil, "init", "-q", "-b", "main", "--template=", tmp); err != nil {
		return "", err
	}

	// Only files and symlinks, as in the tar stream: a socket or pipe in
	// the tree is left out there with a warning, and so here.
	kept := files[:0:0]
	for _, rel := range files {
		fi, err := os.Lstat(filepath.Join(top, filepath.FromSlash(rel)))
		if err != nil {
			return "", fmt.Errorf("make the tracked snapshot: %w", err)
		}
		if fi.Mode().IsRegular() || fi.Mode()&fs.ModeSymlink != 0 {
			kept = append(kept, rel)
		}
	}
	files = kept
	var list bytes.Buffer
	for _, f := range files {
		list.WriteString(f)
		list.WriteByte(0)
	}
	indexErr := make(chan error, 1)
	go func() {
		indexErr <- snapshotGit(ctx, top, gitDir, &list, nil, "update-index", "--add", "--info-only", "-z", "--stdin")
	}()

	pr, pw := io.Pipe()
	streamErr := make(chan error, 1)
	go func() {
		err := writeFastImport(pw, top, files, time.Now())
		pw.CloseWithError(err)
		streamErr <- err
	}()
	// No delta search (it costs more than it saves on a link this fast),
	// the fastest compression, one pack however few the objects, and --done
	// so a cut stream is an error.
	importErr := snapshotGit(ctx, top, gitDir, pr, nil, "-c", "pack.compression=1", "-c", "fastimport.unpackLimit=0", "fast-import", "--quiet", "--done", "--depth=0")
	pr.CloseWithError(errImportEnded)
	// A file that could not be read is the cause; git's complaint about
	// the cut stream that follows is not.
	if err := <-streamErr; err != nil && !errors.Is(err, errImportEnded) {
		<-indexErr
		return "", fmt.Errorf("make the tracked snapshot: %w", err)
	}
	if err := errors.Join(importErr, <-indexErr); err != nil {
		return "", err
	}
	return gitDir, nil
}

var errImportEnded = errors.New("git fast-import ended before its stream")

// writeFastImport writes a git fast-import stream of files under top: one
// blob each (a symlink's blob is its target), then one commit on
// refs/heads/main made at when, then "done".
func writeFastImport(w io.Writer, top string, files []string, when time.Time) error {
	bw := bufio.NewWriterSize(w, 256<<10)
	modes := make([]string, len(files))
	for i, rel := range files {
		path := filepath.Join(top, filepath.FromSlash(rel))
		fi, err := os.Lstat(path)
		if err != nil {
			return err
		}
		fmt.Fprintf(bw, "blob\nmark :%d\n", i+1)
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(path)
			if err != nil {
				return err
			}
			modes[i] = "120000"
			fmt.Fprintf(bw, "data %d\n%s\n", len(target), target)
			continue
		case !fi.Mode().IsRegular():
			return fmt.Errorf("%s is not a regular file or a symlink", rel)
		case fi.Mode()&0o100 != 0:
			modes[i] = "100755"
		default:
			modes[i] = "100644"
		}
		if err := copyBlob(bw, path, rel); err != nil {
			return err
		}
	}
	stamp := fmt.Sprintf("banger <banger@localhost> %d +0000", when.Unix())
	fmt.Fprintf(bw, "commit refs/heads/main\nauthor %s\ncommitter %s\ndata %d\n%s\n", stamp, stamp, len(SnapshotMessage), SnapshotMessage)
	for i, rel := range files {
		fmt.Fprintf(bw, "M %s :%d %s\n", modes[i], i+1, fastImportPath(rel))
	}
	bw.WriteString("\ndone\n")
	return bw.Flush()
}

// copyBlob writes one file as a fast-import data command. Its size is
// declared first, so a file that changes size while read is an error.
func copyBlob(w io.Writer, path, rel string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "data %d\n", fi.Size())
	if n, err := io.CopyN(w, f, fi.Size()); err != nil {
		if errors.Is(err, io.EOF) {
			return fmt.Errorf("%s changed while it was read (%d of %d bytes)", rel, n, fi.Size())
		}
		return err
	}
	_, err = io.WriteString(w, "\n")
	return err
}

// fastImportPath quotes a path for a fast-import filemodify command, C-style
// as git's own quoting: always quoted, so spaces, a leading quote and
// newlines are all safe; bytes from 0x80 up (UTF-8) pass as they are.
func fastImportPath(p string) string {
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(p); i++ {
		switch c := p[i]; {
		case c == '"' || c == '\\':
			b.WriteByte('\\')
			b.WriteByte(c)
		case c == '\n':
			b.WriteString(`\n`)
		case c < 0x20 || c == 0x7f:
			fmt.Fprintf(&b, "\\%03o", c)
		default:
			b.WriteByte(c)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// snapshotGit runs git for makeSnapshot in top, on gitDir (none: git's own
// choice, for init), ignoring system and user configuration so that a
// user's hooks, templates or index settings cannot shape the snapshot. A
// failure carries git's stderr.
func snapshotGit(ctx context.Context, top, gitDir string, stdin io.Reader, stdout io.Writer, args ...string) error {
	if gitDir != "" {
		args = append([]string{"--git-dir", gitDir, "--work-tree", top}, args...)
	}
	cmd := exec.CommandContext(ctx, "git", args...)
	cmd.Dir = top
	env := []string{"GIT_CONFIG_NOSYSTEM=1", "GIT_CONFIG_GLOBAL=/dev/null", "LC_ALL=C"}
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "GIT_") || k == "LC_ALL" {
			continue
		}
		env = append(env, kv)
	}
	cmd.Env = append(env, snapshotIdentity...)
	cmd.Stdin, cmd.Stdout = stdin, stdout
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("make the tracked snapshot: git %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return nil
}
