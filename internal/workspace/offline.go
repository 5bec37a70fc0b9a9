package workspace

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
)

// HardenedGitEnv is the environment for running git, on the host, over a
// repository a guest made: no system or user configuration, and the
// settings through which a repository's files could make git run programs
// forced off (hooks, fsmonitor). SanitizeRepo removes the rest.
func HardenedGitEnv(home string) []string {
	forced := [][2]string{
		{"core.hooksPath", "/dev/null"},
		{"core.fsmonitor", "false"},
		{"core.untrackedCache", "false"},
		{"safe.directory", "*"},
		{"protocol.allow", "never"},
	}
	env := []string{
		"HOME=" + home, "PATH=/usr/local/bin:/usr/bin:/bin", "LC_ALL=C",
		"GIT_CONFIG_NOSYSTEM=1", "GIT_CONFIG_GLOBAL=/dev/null", "GIT_TERMINAL_PROMPT=0",
		fmt.Sprintf("GIT_CONFIG_COUNT=%d", len(forced)),
	}
	for i, kv := range forced {
		env = append(env, fmt.Sprintf("GIT_CONFIG_KEY_%d=%s", i, kv[0]), fmt.Sprintf("GIT_CONFIG_VALUE_%d=%s", i, kv[1]))
	}
	return env
}

var (
	formatVersionRE = regexp.MustCompile(`^[01]$`)
	objectFormatRE  = regexp.MustCompile(`^(sha1|sha256)$`)
	baseRE          = regexp.MustCompile(`^[0-9a-f]{4,64}$`)
)

// SanitizeRepo makes a guest's repository, copied to the host at dir, safe
// for host git to work in: a repository's own files can name programs for
// git to run (filter drivers, hooks, fsmonitor, pagers in .git/config;
// hooks in .git/hooks) or point git at other places on the host (a .git
// file, commondir, alternates, symlinks). So .git must be a real directory
// with no symlinks in it; hooks, alternates and info/ are removed; and
// .git/config is replaced by one holding only the repository format, the
// object format and banger.base (each checked). Anything it cannot vouch
// for is an error, never skipped. The work tree itself is data to git
// (attributes can name filters, but only config defines them).
func SanitizeRepo(ctx context.Context, dir string) error {
	gitDir := filepath.Join(dir, ".git")
	fi, err := os.Lstat(gitDir)
	if err != nil {
		return fmt.Errorf("the workspace has no .git directory: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("the workspace's .git is not a directory (a worktree or a link): export it while the VM runs")
	}
	for _, name := range []string{"commondir", "gitdir"} {
		if _, err := os.Lstat(filepath.Join(gitDir, name)); err == nil {
			return fmt.Errorf("the workspace's .git has %s (a linked worktree): export it while the VM runs", name)
		}
	}
	err = filepath.WalkDir(gitDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type()&fs.ModeSymlink != 0 {
			rel, _ := filepath.Rel(dir, p)
			return fmt.Errorf("the workspace's %s is a symlink: export it while the VM runs", rel)
		}
		if !d.IsDir() && !d.Type().IsRegular() {
			rel, _ := filepath.Rel(dir, p)
			return fmt.Errorf("the workspace's %s is not a regular file", rel)
		}
		return nil
	})
	if err != nil {
		return err
	}
	cfgPath := filepath.Join(gitDir, "config")
	get := func(key string) (string, error) {
		// --file reads the file as data: no includes, nothing run.
		out, err := exec.CommandContext(ctx, "git", "config", "--file", cfgPath, "--get", key).Output()
		var ee *exec.ExitError
		if errors.As(err, &ee) && ee.ExitCode() == 1 {
			return "", nil // not set
		}
		if err != nil {
			return "", fmt.Errorf("read the workspace's git config (%s): %w", key, err)
		}
		return strings.TrimSpace(string(out)), nil
	}
	version, err := get("core.repositoryformatversion")
	if err != nil {
		return err
	}
	if version == "" {
		version = "0"
	}
	if !formatVersionRE.MatchString(version) {
		return fmt.Errorf("the workspace's repository format version %q is not one banger knows", version)
	}
	var config strings.Builder
	fmt.Fprintf(&config, "[core]\n\trepositoryformatversion = %s\n\tbare = false\n\tfilemode = true\n\tlogallrefupdates = false\n", version)
	out, _ := exec.CommandContext(ctx, "git", "config", "--file", cfgPath, "--name-only", "--get-regexp", `^extensions\.`).Output()
	for _, key := range strings.Fields(string(out)) {
		if key != "extensions.objectformat" {
			return fmt.Errorf("the workspace's repository uses %s, which banger does not export offline: export it while the VM runs", key)
		}
		of, err := get(key)
		if err != nil {
			return err
		}
		if !objectFormatRE.MatchString(of) {
			return fmt.Errorf("the workspace's object format %q is not one banger knows", of)
		}
		fmt.Fprintf(&config, "[extensions]\n\tobjectformat = %s\n", of)
	}
	base, err := get("banger.base")
	if err != nil {
		return err
	}
	if base != "" {
		if !baseRE.MatchString(base) {
			return fmt.Errorf("the workspace's banger.base %q is not a commit id", base)
		}
		fmt.Fprintf(&config, "[banger]\n\tbase = %s\n", base)
	}
	for _, p := range []string{"hooks", "info", "objects/info/alternates", "objects/info/http-alternates", "config.worktree"} {
		if err := os.RemoveAll(filepath.Join(gitDir, p)); err != nil {
			return err
		}
	}
	return os.WriteFile(cfgPath, []byte(config.String()), 0o644)
}
