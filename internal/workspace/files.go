package workspace

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
)

// ErrNotRepo is returned (wrapped) when a directory is not the top level of
// a git repository.
var ErrNotRepo = errors.New("not a git repository")

// gitCmd runs git in dir with an environment cleared of the variables that
// would point it at another repository than dir's.
func gitCmd(ctx context.Context, dir string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "git", append([]string{"-C", dir}, args...)...)
	env := make([]string, 0, len(os.Environ()))
	for _, kv := range os.Environ() {
		switch strings.SplitN(kv, "=", 2)[0] {
		case "GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY",
			"GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_COMMON_DIR", "GIT_NAMESPACE":
			continue
		}
		env = append(env, kv)
	}
	cmd.Env = env
	return cmd
}

// gitOutput runs git and returns its stdout; a failure carries git's stderr.
func gitOutput(ctx context.Context, dir string, args ...string) ([]byte, error) {
	cmd := gitCmd(ctx, dir, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("git %s in %s: %w: %s", strings.Join(args, " "), dir, err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// repoTop checks that dir is the top-level directory of a git work tree and
// returns its cleaned absolute path.
func repoTop(ctx context.Context, dir string) (string, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	if fi, err := os.Stat(abs); err != nil {
		return "", fmt.Errorf("source directory: %w", err)
	} else if !fi.IsDir() {
		return "", fmt.Errorf("source %s is not a directory", abs)
	}
	out, err := gitOutput(ctx, abs, "rev-parse", "--show-toplevel")
	if err != nil {
		return "", fmt.Errorf("%s: %w (git found none here or above it); copy it as a plain directory instead", abs, ErrNotRepo)
	}
	top := strings.TrimSpace(string(out))
	realAbs, err := filepath.EvalSymlinks(abs)
	if err != nil {
		return "", err
	}
	realTop, err := filepath.EvalSymlinks(top)
	if err != nil {
		return "", err
	}
	if realAbs != realTop {
		return "", fmt.Errorf("%s is inside the git repository %s: give the repository's top-level directory", abs, top)
	}
	return abs, nil
}

// ListFiles lists the files of the git repository at dir that a workspace
// carries: tracked files and untracked files git does not ignore, as paths
// relative to dir with '/' separators, sorted. Tracked files deleted from
// the working tree are left out (the guest's git then sees them deleted, as
// the host's does). Submodules and nested repositories are left out with a
// warning each. dir must be the repository's top level; otherwise the error
// wraps ErrNotRepo or names the top level.
func ListFiles(ctx context.Context, dir string) (files []string, warnings []string, err error) {
	top, err := repoTop(ctx, dir)
	if err != nil {
		return nil, nil, err
	}
	staged, err := gitOutput(ctx, top, "ls-files", "--cached", "--stage", "-z")
	if err != nil {
		return nil, nil, err
	}
	untracked, err := gitOutput(ctx, top, "ls-files", "--others", "--exclude-standard", "-z")
	if err != nil {
		return nil, nil, err
	}
	seen := map[string]bool{}
	var candidates []string
	for _, rec := range splitNUL(staged) {
		// "<mode> <object> <stage>\t<path>"
		meta, path, ok := strings.Cut(rec, "\t")
		if !ok {
			return nil, nil, fmt.Errorf("git ls-files --stage: unexpected record %q", rec)
		}
		if seen[path] {
			continue // unmerged paths appear once per stage
		}
		seen[path] = true
		if strings.HasPrefix(meta, "160000 ") {
			warnings = append(warnings, fmt.Sprintf("skipped submodule %s: submodules are not copied", path))
			continue
		}
		candidates = append(candidates, path)
	}
	for _, path := range splitNUL(untracked) {
		if strings.HasSuffix(path, "/") {
			// git lists an untracked nested repository as its directory.
			warnings = append(warnings, fmt.Sprintf("skipped nested git repository %s: it is not copied", path))
			continue
		}
		if !seen[path] {
			seen[path] = true
			candidates = append(candidates, path)
		}
	}
	for _, path := range candidates {
		fi, err := os.Lstat(filepath.Join(top, filepath.FromSlash(path)))
		switch {
		case errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR):
			continue // deleted in the working tree
		case err != nil:
			return nil, nil, err
		case fi.IsDir():
			continue // a tracked file became a directory: its files come as untracked
		}
		files = append(files, path)
	}
	sort.Strings(files)
	return files, warnings, nil
}

func splitNUL(b []byte) []string {
	s := strings.TrimSuffix(string(b), "\x00")
	if s == "" {
		return nil
	}
	return strings.Split(s, "\x00")
}
