package workspace

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"github.com/banger/banger/internal/storage"
)

// forcedGitConfig is set on every git run over a guest's repository at the
// command-line level (GIT_CONFIG_COUNT), above any file: hooks, fsmonitor,
// pagers and editors off, and git kept out of submodules and nested
// repositories, whose own configuration the repository's sanitising never
// saw.
var forcedGitConfig = [][2]string{
	{"core.hooksPath", "/dev/null"},
	{"core.fsmonitor", "false"},
	{"core.untrackedCache", "false"},
	{"core.pager", "cat"},
	{"core.editor", ":"},
	{"core.attributesFile", "/dev/null"},
	{"safe.directory", "*"},
	{"protocol.allow", "never"},
	{"diff.ignoreSubmodules", "all"},
	{"status.submoduleSummary", "false"},
	{"submodule.recurse", "false"},
	{"fetch.recurseSubmodules", "false"},
	{"commit.gpgSign", "false"},
	{"tag.gpgSign", "false"},
}

// HardenedGitEnv is the environment for running git, on the host, over a
// repository a guest made: no system or user configuration or attributes,
// and forcedGitConfig. SanitizeRepo removes the rest.
func HardenedGitEnv(home string) []string {
	env := []string{
		"HOME=" + home, "PATH=/usr/local/bin:/usr/bin:/bin", "LC_ALL=C",
		"GIT_CONFIG_NOSYSTEM=1", "GIT_CONFIG_GLOBAL=/dev/null", "GIT_ATTR_NOSYSTEM=1",
		"GIT_TERMINAL_PROMPT=0", "GIT_PAGER=cat", "GIT_EDITOR=:",
		fmt.Sprintf("GIT_CONFIG_COUNT=%d", len(forcedGitConfig)),
	}
	for i, kv := range forcedGitConfig {
		env = append(env, fmt.Sprintf("GIT_CONFIG_KEY_%d=%s", i, kv[0]), fmt.Sprintf("GIT_CONFIG_VALUE_%d=%s", i, kv[1]))
	}
	return env
}

var (
	formatVersionRE = regexp.MustCompile(`^[01]$`)
	objectFormatRE  = regexp.MustCompile(`^(sha1|sha256)$`)
	baseRE          = regexp.MustCompile(`^[0-9a-f]{4,64}$`)
)

// ErrUnsafeRepo is returned (wrapped) when a copied guest repository has
// something host git cannot be trusted with, or that banger cannot vouch
// for: export it while the VM runs.
var ErrUnsafeRepo = errors.New("not safe for host git")

// gitMeta: what in .git is removed, never read: programs (hooks), places
// elsewhere (alternates), attributes, excludes and grafts (info), other
// configuration (config.worktree), and submodules' and worktrees'
// repositories, with configurations of their own.
var gitMeta = []string{"hooks", "info", "objects/info/alternates", "objects/info/http-alternates", "config.worktree", "modules", "worktrees"}

// maxConfig bounds the guest's .git/config banger reads.
const maxConfig = 1 << 20

// SanitizeRepo makes a guest's repository, copied to the host at dir, safe
// for host git to work in: a repository's own files can name programs for
// git to run (filter drivers, diff drivers, hooks, fsmonitor, pagers in a
// config; hooks in .git/hooks) or point git at other places on the host (a
// .git file, commondir, alternates, symlinks). So:
//
//   - .git must be a real directory with no symlinks in it; hooks,
//     alternates, info/, modules/ and worktrees/ are removed;
//   - .git/config is replaced by one holding only the repository format,
//     the object format and banger.base (each checked); the guest's is
//     parsed by git as an unprivileged jail, never as root;
//   - every other .git in the tree (a nested repository, a submodule's
//     .git file or directory) is removed, so git sees the nested files as
//     plain files and never a configuration the guest wrote.
//
// Anything it cannot vouch for is an error wrapping ErrUnsafeRepo, never
// skipped. The work tree itself is data to git (attributes can name
// filters, but only configuration defines them). Every path is resolved
// beneath dir without following symlinks, so a tree that changes under
// it cannot lead it elsewhere.
func SanitizeRepo(ctx context.Context, dir string) error {
	_, err := sanitizeRepo(ctx, dir, nil)
	return err
}

// sanitizeRepo is SanitizeRepo; it parses the config in j (a fresh jail
// when nil and root) and returns the nested .git it removed.
func sanitizeRepo(ctx context.Context, dir string, j *storage.Jail) (stripped []string, err error) {
	t, err := openTree(dir)
	if err != nil {
		return nil, fmt.Errorf("the workspace: %w", err)
	}
	defer t.Close()
	unsafe := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrUnsafeRepo, fmt.Sprintf(format, args...))
	}
	fi, err := t.lstat(".git")
	if err != nil {
		return nil, unsafe("the workspace has no .git directory: %v", err)
	}
	if !fi.IsDir() {
		return nil, unsafe("the workspace's .git is not a directory (a worktree or a link): export it while the VM runs")
	}
	for _, name := range []string{"commondir", "gitdir"} {
		if _, err := t.lstat(".git/" + name); err == nil {
			return nil, unsafe("the workspace's .git has %s (a linked worktree): export it while the VM runs", name)
		}
	}
	err = t.walk(".git", func(rel string, fi os.FileInfo) error {
		if fi.Mode()&os.ModeSymlink != 0 {
			return unsafe("the workspace's %s is a symlink: export it while the VM runs", rel)
		}
		if !fi.IsDir() && !fi.Mode().IsRegular() {
			return unsafe("the workspace's %s is not a regular file", rel)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	raw, err := t.readFile(".git/config", maxConfig)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, unsafe("the workspace's git config: %v", err)
	}
	cfg, err := parseGitConfig(ctx, j, raw)
	if err != nil {
		return nil, unsafe("read the workspace's git config: %v", err)
	}
	one := func(key string) (string, error) {
		switch v := cfg[key]; len(v) {
		case 0:
			return "", nil
		case 1:
			return v[0], nil
		}
		return "", unsafe("the workspace's git config sets %s more than once", key)
	}
	version, err := one("core.repositoryformatversion")
	if err != nil {
		return nil, err
	}
	if version == "" {
		version = "0"
	}
	if !formatVersionRE.MatchString(version) {
		return nil, unsafe("the workspace's repository format version %q is not one banger knows", version)
	}
	var config strings.Builder
	fmt.Fprintf(&config, "[core]\n\trepositoryformatversion = %s\n\tbare = false\n\tfilemode = true\n\tlogallrefupdates = false\n", version)
	var exts []string
	for key := range cfg {
		if strings.HasPrefix(key, "extensions.") {
			exts = append(exts, key)
		}
	}
	sort.Strings(exts)
	for _, key := range exts {
		if key != "extensions.objectformat" {
			return nil, unsafe("the workspace's repository uses %s, which banger does not export offline: export it while the VM runs", key)
		}
		of, err := one(key)
		if err != nil {
			return nil, err
		}
		if !objectFormatRE.MatchString(of) {
			return nil, unsafe("the workspace's object format %q is not one banger knows", of)
		}
		fmt.Fprintf(&config, "[extensions]\n\tobjectformat = %s\n", of)
	}
	base, err := one("banger.base")
	if err != nil {
		return nil, err
	}
	if base != "" {
		if !baseRE.MatchString(base) {
			return nil, unsafe("the workspace's banger.base %q is not a commit id", base)
		}
		fmt.Fprintf(&config, "[banger]\n\tbase = %s\n", base)
	}
	for _, p := range gitMeta {
		if err := t.removeAll(".git/" + p); err != nil {
			return nil, err
		}
	}
	err = t.walk(".", func(rel string, fi os.FileInfo) error {
		if rel == ".git" {
			return errSkipDir // the repository's own, checked above
		}
		if path.Base(rel) != ".git" {
			return nil
		}
		if err := t.removeAll(rel); err != nil {
			return err
		}
		stripped = append(stripped, path.Dir(rel))
		return errSkipDir
	})
	if err != nil {
		return nil, err
	}
	return stripped, t.writeFile(".git/config", []byte(config.String()), 0o644)
}

// parseGitConfig parses a guest's git config file's text with git itself
// (no includes: they could name any file on the host), as jail j: a fresh
// one when j is nil and this process is root, else as this process.
func parseGitConfig(ctx context.Context, j *storage.Jail, raw []byte) (map[string][]string, error) {
	args := []string{"config", "--no-includes", "--file", "-", "--list", "-z"}
	var cmd *exec.Cmd
	if j == nil && os.Geteuid() == 0 {
		jj, err := storage.NewJail()
		if err != nil {
			return nil, err
		}
		defer jj.Close()
		j = jj
	}
	if j != nil {
		var err error
		if cmd, err = j.Command(ctx, "git", args...); err != nil {
			return nil, err
		}
		cmd.Env = HardenedGitEnv("/nonexistent")
	} else {
		cmd = exec.CommandContext(ctx, "git", args...)
		cmd.Env = HardenedGitEnv("/nonexistent")
		cmd.Dir = "/"
		cmd.WaitDelay = storage.WaitDelay
	}
	var out, errb bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = bytes.NewReader(raw), &out, &errb
	// The output is the input reformatted: about as large.
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("%w: %s", err, strings.TrimSpace(errb.String()))
	}
	cfg := map[string][]string{}
	for _, kv := range strings.Split(out.String(), "\x00") {
		if kv == "" {
			continue
		}
		k, v, _ := strings.Cut(kv, "\n")
		cfg[k] = append(cfg[k], v)
	}
	return cfg, nil
}

// DiskExport says what ExportFromDisk exports.
type DiskExport struct {
	Disk    string            // the stopped VM's work disk (an ext4 image)
	Dir     string            // the workspace in that filesystem: /repo for /root/repo
	Format  string            // FormatBundle or FormatPatch
	Message string            // of the commit of uncommitted changes
	Env     map[string]string // BANGER_* variables for the script (BANGER_BASE)
	TempDir string            // where the copy is made, open to others as /tmp is; "" means os.TempDir()
	Limits  storage.CopyLimits
}

var envNameRE = regexp.MustCompile(`^BANGER_[A-Z0-9_]+$`)

// ExportFromDisk exports the workspace x.Dir of a stopped VM's work disk
// without booting the VM, writing ExportScript's output to stdout and its
// messages to stderr; code is the script's exit code (0 or an Exit*).
//
// Everything that touches the guest's data runs in one jail
// (storage.NewJail): an id no other process has, in a cgroup killed after
// each step, so nothing the guest could make a tool start outlives the
// step or the export. The temp tree is root's (0711), the jail owns only
// the copy and a home inside it.
//
//  1. storage.CopyOutIn copies x.Dir out of the disk, within x.Limits,
//     without mounting it (missing: storage.ErrNotFound; too large:
//     storage.ErrTooLarge);
//  2. with the jail killed, root sanitises the copy (SanitizeRepo, every
//     path resolved beneath it with no symlinks; refused: ErrUnsafeRepo)
//     and the effective git configuration is checked to hold nothing but
//     what banger wrote (ErrUnsafeRepo otherwise);
//  3. the export script runs over the copy in the jail with
//     HardenedGitEnv.
//
// The work disk is only read; the temp tree is removed afterwards.
func ExportFromDisk(ctx context.Context, x DiskExport, stdout, stderr io.Writer) (code int, err error) {
	if !path.IsAbs(x.Dir) || path.Clean(x.Dir) != x.Dir || x.Dir == "/" {
		return 0, fmt.Errorf("export from %s: %q is not a clean absolute directory path", x.Disk, x.Dir)
	}
	if err := ValidateFormat(x.Format); err != nil {
		return 0, err
	}
	if x.Format == "" {
		x.Format = FormatBundle
	}
	for k := range x.Env {
		if !envNameRE.MatchString(k) {
			return 0, fmt.Errorf("export from %s: environment variable %q is not a BANGER_ one", x.Disk, k)
		}
	}
	j, err := storage.NewJail()
	if err != nil {
		return 0, err
	}
	tmp, err := os.MkdirTemp(x.TempDir, "banger-export-")
	if err != nil {
		j.Close()
		return 0, err
	}
	defer func() {
		// The jail first: then nothing can change the tree while it goes.
		if cerr := j.Close(); err == nil && cerr != nil {
			err = cerr
		}
		os.RemoveAll(tmp)
	}()
	if err := os.Chmod(tmp, 0o711); err != nil {
		return 0, err
	}
	sb := j.Sandbox()
	copyDir := filepath.Join(tmp, "copy")
	if err := storage.CopyOutIn(ctx, j, x.Disk, x.Dir, copyDir, x.Limits); err != nil {
		return 0, err
	}
	repo := filepath.Join(copyDir, path.Base(x.Dir))
	stripped, err := sanitizeRepo(ctx, repo, j)
	if err != nil {
		return 0, err
	}
	for _, s := range stripped {
		fmt.Fprintf(stderr, "banger: %s is a nested repository: its files are exported as plain files, its .git is left out\n", s)
	}
	home := filepath.Join(tmp, "home")
	if err := os.Mkdir(home, 0o700); err != nil {
		return 0, err
	}
	if err := os.Chown(home, int(sb.UID), int(sb.GID)); err != nil {
		return 0, err
	}
	env := append(HardenedGitEnv(home), "TMPDIR="+home)
	for k, v := range x.Env {
		env = append(env, k+"="+v)
	}
	if err := checkGitConfig(ctx, j, repo, env); err != nil {
		return 0, err
	}
	cmd, err := j.Command(ctx, "bash", "-c", ExportScript(repo, x.Format, x.Message))
	if err != nil {
		return 0, err
	}
	cmd.Dir, cmd.Env = home, env
	cmd.Stdout, cmd.Stderr = stdout, stderr
	err = cmd.Run()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		return ee.ExitCode(), nil
	case errors.Is(err, exec.ErrWaitDelay) && cmd.ProcessState.Success():
		return 0, nil // what it left holding its output dies with the jail
	case err != nil:
		return 0, fmt.Errorf("export %s from %s: %w", x.Dir, x.Disk, err)
	}
	return 0, nil
}

// sanitizedKeys are the keys SanitizeRepo writes.
var sanitizedKeys = map[string]bool{
	"core.repositoryformatversion": true, "core.bare": true, "core.filemode": true,
	"core.logallrefupdates": true, "extensions.objectformat": true, "banger.base": true,
}

// checkGitConfig asks git, as the jail and with env, for the whole
// configuration it would use in repo, and refuses anything but
// forcedGitConfig and what SanitizeRepo writes: no filter, diff or merge
// driver, textconv, external diff, fsmonitor, hook path, include or other
// command can be in effect, whatever source git found it in.
func checkGitConfig(ctx context.Context, j *storage.Jail, repo string, env []string) error {
	cmd, err := j.Command(ctx, "git", "config", "--list", "--show-scope", "-z")
	if err != nil {
		return err
	}
	cmd.Dir, cmd.Env = repo, env
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%w: git config in the copy: %v: %s", ErrUnsafeRepo, err, strings.TrimSpace(errb.String()))
	}
	forced := map[string]string{}
	for _, kv := range forcedGitConfig {
		forced[strings.ToLower(kv[0])] = kv[1]
	}
	// Records are scope NUL key LF value NUL.
	recs := strings.Split(out.String(), "\x00")
	for i := 0; i+1 < len(recs); i += 2 {
		scope := recs[i]
		key, value, _ := strings.Cut(recs[i+1], "\n")
		ok := false
		switch scope {
		case "command":
			v, known := forced[key]
			ok = known && v == value
		case "local":
			ok = sanitizedKeys[key]
		}
		if !ok {
			return fmt.Errorf("%w: git would use %s=%q (%s) in the copy", ErrUnsafeRepo, key, value, scope)
		}
	}
	return nil
}
