package workspace

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/banger/banger/internal/storage"
)

func needOffline(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: loop devices and other ids")
	}
	for _, bin := range []string{"mkfs.ext4", "debugfs", "losetup", "bash"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("needs %s", bin)
		}
	}
}

// markers is a directory anyone may write in: the sandbox could not leave
// a marker in a private one whether or not a planted program ran.
func markers(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "banger-marker-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o777)
	return dir
}

func ran(t *testing.T, dir string) []string {
	t.Helper()
	names, _ := filepath.Glob(filepath.Join(dir, "*"))
	for i, n := range names {
		names[i] = filepath.Base(n)
	}
	return names
}

// hostileGuest makes a guest's /root with a workspace at /root/repo (base
// commit recorded, one commit since, edits left uncommitted) in which the
// guest planted every way it knows to make host git run a program: a
// committed submodule and an untracked nested repository whose own
// configs define clean and smudge filters, an external diff, a textconv
// and an fsmonitor; a .gitmodules naming a local path (git itself refuses
// one naming a command); a .git file leading to a repository with the same config; and
// the same in the workspace's own config, with a hook. Each program
// touches a marker named after it in mark.
func hostileGuest(t *testing.T, mark string) (root, base string) {
	t.Helper()
	root = t.TempDir()
	repo := filepath.Join(root, "repo")
	evil := func(dir, gitDir string) {
		cfg := filepath.Join(gitDir, "config")
		for k, v := range map[string]string{
			"filter.x.clean":          "touch " + mark + "/clean; cat",
			"filter.x.smudge":         "touch " + mark + "/smudge; cat",
			"filter.x.required":       "true",
			"diff.external":           "touch " + mark + "/external-diff #",
			"diff.t.textconv":         "touch " + mark + "/textconv; cat",
			"diff.t.command":          "touch " + mark + "/diff-command #",
			"core.fsmonitor":          "touch " + mark + "/fsmonitor; false",
			"core.pager":              "touch " + mark + "/pager; cat",
			"diff.submodule":          "log",
			"status.submodulesummary": "true",
		} {
			git(t, dir, "config", "--file", cfg, k, v)
		}
		write(t, filepath.Join(dir, ".gitattributes"), "* filter=x diff=t\n", 0o644)
		write(t, filepath.Join(gitDir, "hooks", "pre-commit"), "#!/bin/sh\ntouch "+mark+"/hook\n", 0o755)
	}
	git(t, root, "init", "-q", "-b", "main", repo)
	write(t, filepath.Join(repo, "a.txt"), "a\n", 0o644)
	git(t, repo, "add", "-A")
	git(t, repo, "commit", "-q", "-m", "base")
	base = strings.TrimSpace(git(t, repo, "rev-parse", "HEAD"))
	git(t, repo, "config", "banger.base", base)

	// A submodule, committed as a gitlink.
	sub := filepath.Join(repo, "sub")
	git(t, repo, "init", "-q", "-b", "main", sub)
	write(t, filepath.Join(sub, "s.txt"), "s\n", 0o644)
	git(t, sub, "add", "-A")
	git(t, sub, "commit", "-q", "-m", "sub")
	write(t, filepath.Join(repo, ".gitmodules"), "[submodule \"sub\"]\n\tpath = sub\n\turl = "+filepath.Join(root, "elsewhere")+"\n", 0o644)
	git(t, repo, "add", "sub", ".gitmodules")
	git(t, repo, "commit", "-q", "-m", "guest commit")
	evil(sub, filepath.Join(sub, ".git"))
	write(t, filepath.Join(sub, "s.txt"), "S\n", 0o644) // same size: git must hash it

	// An untracked nested repository.
	lib := filepath.Join(repo, "vendor", "lib")
	git(t, repo, "init", "-q", "-b", "main", lib)
	write(t, filepath.Join(lib, "l.txt"), "l\n", 0o644)
	git(t, lib, "add", "-A")
	git(t, lib, "commit", "-q", "-m", "lib")
	evil(lib, filepath.Join(lib, ".git"))

	// A .git file to a repository hidden in the workspace's own .git.
	hidden := filepath.Join(repo, ".git", "modules", "h")
	git(t, root, "init", "-q", "--bare", hidden)
	write(t, filepath.Join(repo, "linked", ".git"), "gitdir: ../.git/modules/h\n", 0o644)
	write(t, filepath.Join(repo, "linked", "f.txt"), "f\n", 0o644)
	evil(filepath.Join(repo, "linked"), hidden)

	// The workspace's own configuration and hooks.
	evil(repo, filepath.Join(repo, ".git"))
	write(t, filepath.Join(repo, "later.txt"), "left uncommitted\n", 0o644)
	return root, base
}

func mkfsDisk(t *testing.T, root string) string {
	t.Helper()
	img := filepath.Join(t.TempDir(), "work.ext4")
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-d", root, img, "64M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	return img
}

// exportAsDaemonDid runs the offline export the way the daemon has
// (storage.CopyOut as the shared sandbox user, SanitizeRepo, then the
// script with HardenedGitEnv as that user): the pieces the daemon calls
// must hold on their own too.
func exportAsDaemonDid(t *testing.T, disk string) ([]byte, string, error) {
	t.Helper()
	ctx := context.Background()
	sb := storage.DefaultSandbox
	tmp, err := os.MkdirTemp("", "banger-export-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(tmp)
	os.Chown(tmp, int(sb.UID), int(sb.GID))
	copyDir := filepath.Join(tmp, "copy")
	if err := storage.CopyOut(ctx, disk, "/repo", copyDir, sb); err != nil {
		return nil, "", err
	}
	repo := filepath.Join(copyDir, "repo")
	if err := SanitizeRepo(ctx, repo); err != nil {
		return nil, "", err
	}
	home := filepath.Join(tmp, "home")
	os.Mkdir(home, 0o700)
	os.Chown(home, int(sb.UID), int(sb.GID))
	cmd := exec.CommandContext(ctx, "bash", "-c", ExportScript(repo, FormatBundle, "banger: uncommitted changes"))
	cmd.Dir = tmp
	cmd.Env = append(HardenedGitEnv(home), "TMPDIR="+home)
	cmd.SysProcAttr = sb.SysProcAttr()
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	return out.Bytes(), errb.String(), err
}

// TestOfflineExportRunsNothing: nothing the guest planted runs on the host,
// through the pieces the daemon has called and through ExportFromDisk, in
// both formats; the export still carries the guest's work, the nested
// repositories' files as plain files.
func TestOfflineExportRunsNothing(t *testing.T) {
	gitEnv(t)
	needOffline(t)
	mark := markers(t)
	root, base := hostileGuest(t, mark)
	disk := mkfsDisk(t, root)
	before, _ := os.ReadFile(disk)

	out, stderr, err := exportAsDaemonDid(t, disk)
	if err != nil || len(out) == 0 {
		t.Fatalf("export as the daemon did: %v\n%s", err, stderr)
	}
	if m := ran(t, mark); len(m) != 0 {
		t.Errorf("the guest's programs ran on the host through the daemon's pieces: %v", m)
	}

	ctx := context.Background()
	for _, format := range []string{FormatBundle, FormatPatch} {
		var out, errb bytes.Buffer
		code, err := ExportFromDisk(ctx, DiskExport{Disk: disk, Dir: "/repo", Format: format, Message: "banger: uncommitted changes"}, &out, &errb)
		if err != nil || code != 0 {
			t.Fatalf("ExportFromDisk %s: %d %v\n%s", format, code, err, errb.String())
		}
		if m := ran(t, mark); len(m) != 0 {
			t.Errorf("the guest's programs ran on the host through ExportFromDisk (%s): %v", format, m)
		}
		for _, nested := range []string{"sub", "vendor/lib", "linked"} {
			if !strings.Contains(errb.String(), "banger: "+nested+" is a nested repository") {
				t.Errorf("%s: no word of the nested repository %s: %s", format, nested, errb.String())
			}
		}
		if format == FormatPatch {
			for _, want := range []string{"Subject: [PATCH 1/2] guest commit", "vendor/lib/l.txt", "linked/f.txt", "later.txt"} {
				if !strings.Contains(out.String(), want) {
					t.Errorf("the patch lacks %q", want)
				}
			}
			continue
		}
		// Import it where it came from.
		origin := filepath.Join(root, "repo")
		bpath := filepath.Join(t.TempDir(), "b.bundle")
		os.WriteFile(bpath, out.Bytes(), 0o600)
		git(t, origin, "config", "--unset-all", "core.fsmonitor")
		git(t, origin, "config", "--remove-section", "filter.x")
		git(t, origin, "config", "--remove-section", "diff.t")
		git(t, origin, "config", "--unset", "diff.external")
		git(t, origin, "config", "--unset", "core.pager")
		os.RemoveAll(filepath.Join(origin, ".git", "hooks"))
		if err := ImportBundle(ctx, origin, bpath, "agent/1", false); err != nil {
			t.Fatal(err)
		}
		files := git(t, origin, "ls-tree", "-r", "--name-only", "agent/1")
		for _, want := range []string{"a.txt", "later.txt", "vendor/lib/l.txt", "linked/f.txt", "sub"} {
			if !strings.Contains(files, want+"\n") {
				t.Errorf("agent/1 lacks %s:\n%s", want, files)
			}
		}
		if got := git(t, origin, "log", "--format=%s", base+"..agent/1"); got != "banger: uncommitted changes\nguest commit\n" {
			t.Errorf("agent/1 adds %q", got)
		}
	}
	if after, _ := os.ReadFile(disk); !bytes.Equal(before, after) {
		t.Error("the export changed the work disk")
	}
	if loops, _ := storage.LoopsOf(disk); len(loops) != 0 {
		t.Errorf("loop devices left: %v", loops)
	}
}

// TestExportFromDiskUnderDaemonUmask: bangerd runs with umask 077, so
// whatever root writes into the copy for the jail to read must get its
// mode explicitly: the export works, and the sanitised config is 0644.
func TestExportFromDiskUnderDaemonUmask(t *testing.T) {
	gitEnv(t)
	needOffline(t)
	root := t.TempDir()
	repo := filepath.Join(root, "repo")
	git(t, root, "init", "-q", "-b", "main", repo)
	write(t, filepath.Join(repo, "a.txt"), "a\n", 0o644)
	git(t, repo, "add", "-A")
	git(t, repo, "commit", "-q", "-m", "base")
	write(t, filepath.Join(repo, "b.txt"), "uncommitted\n", 0o644)
	disk := mkfsDisk(t, root)
	old := syscall.Umask(0o077)
	defer syscall.Umask(old)
	var out, errb bytes.Buffer
	code, err := ExportFromDisk(context.Background(), DiskExport{Disk: disk, Dir: "/repo", Format: FormatPatch, Message: "m"}, &out, &errb)
	if err != nil || code != 0 {
		t.Fatalf("ExportFromDisk under umask 077: %d %v\n%s", code, err, errb.String())
	}
	if !strings.Contains(out.String(), "b.txt") {
		t.Errorf("the patch lacks b.txt:\n%s", out.String())
	}

	dir := t.TempDir()
	git(t, dir, "init", "-q", "-b", "main")
	if err := SanitizeRepo(context.Background(), dir); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Join(dir, ".git", "config")); err != nil || fi.Mode().Perm() != 0o644 {
		t.Errorf("sanitised config under umask 077: %v %v, want mode 0644", fi.Mode(), err)
	}
}

// TestExportFromDiskErrors: a missing workspace, a tree over the limits,
// and a repository sanitising refuses each say so with their own error.
func TestExportFromDiskErrors(t *testing.T) {
	gitEnv(t)
	needOffline(t)
	root := t.TempDir()
	repo := filepath.Join(root, "repo")
	git(t, root, "init", "-q", "-b", "main", repo)
	write(t, filepath.Join(repo, "a.txt"), "a\n", 0o644)
	git(t, repo, "add", "-A")
	git(t, repo, "commit", "-q", "-m", "base")
	os.Symlink("/etc", filepath.Join(repo, ".git", "refs", "evil"))
	os.MkdirAll(filepath.Join(root, "big"), 0o755)
	if err := os.Truncate(filepath.Join(root, "big", "f"), 0); err != nil {
		os.WriteFile(filepath.Join(root, "big", "f"), nil, 0o644)
	}
	if err := os.Truncate(filepath.Join(root, "big", "f"), 1<<40); err != nil {
		t.Skipf("no 1 TiB sparse file here: %v", err)
	}
	disk := mkfsDisk(t, root)
	ctx := context.Background()
	// The jail goes through it to its copy, as through /tmp.
	tmp, err := os.MkdirTemp("", "banger-tmpdir-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(tmp)
	os.Chmod(tmp, 0o711)
	for dir, want := range map[string]error{"/none": storage.ErrNotFound, "/big": storage.ErrTooLarge, "/repo": ErrUnsafeRepo} {
		var out, errb bytes.Buffer
		_, err := ExportFromDisk(ctx, DiskExport{Disk: disk, Dir: dir, TempDir: tmp}, &out, &errb)
		if !errors.Is(err, want) {
			t.Errorf("%s: %v, want %v", dir, err, want)
		}
		if out.Len() != 0 {
			t.Errorf("%s: a failed export wrote %d bytes", dir, out.Len())
		}
	}
	if _, err := ExportFromDisk(ctx, DiskExport{Disk: disk, Dir: "/repo", Env: map[string]string{"GIT_DIR": "/etc"}}, &bytes.Buffer{}, &bytes.Buffer{}); err == nil {
		t.Error("a GIT_ variable passed")
	}
	if left, _ := filepath.Glob(filepath.Join(tmp, "*")); len(left) != 0 {
		t.Errorf("left behind: %v", left)
	}
}

// TestSanitizeRepoStaysInside: a process racing SanitizeRepo, swapping the
// repository's .git for a symlink to a directory outside and back, never
// makes it remove or write anything there; nor does a .git/config that is
// a hard link to a file outside.
func TestSanitizeRepoStaysInside(t *testing.T) {
	gitEnv(t)
	outside := t.TempDir()
	write(t, filepath.Join(outside, "hooks", "keep"), "keep\n", 0o644)
	write(t, filepath.Join(outside, "info", "keep"), "keep\n", 0o644)
	write(t, filepath.Join(outside, "config"), "[core]\n\tbare = false\n", 0o644)
	write(t, filepath.Join(outside, "secret"), "precious\n", 0o644)
	intact := func() bool {
		for _, p := range []string{"hooks/keep", "info/keep", "config", "secret"} {
			if _, err := os.Stat(filepath.Join(outside, p)); err != nil {
				return false
			}
		}
		b, _ := os.ReadFile(filepath.Join(outside, "secret"))
		c, _ := os.ReadFile(filepath.Join(outside, "config"))
		return string(b) == "precious\n" && string(c) == "[core]\n\tbare = false\n"
	}

	dir := t.TempDir()
	git(t, dir, "init", "-q", "-b", "main")
	os.Remove(filepath.Join(dir, ".git", "config"))
	if err := os.Link(filepath.Join(outside, "secret"), filepath.Join(dir, ".git", "config")); err != nil {
		t.Fatal(err)
	}
	if err := SanitizeRepo(context.Background(), dir); err != nil {
		t.Logf("a hard-linked config: %v", err)
	}
	if !intact() {
		t.Fatal("SanitizeRepo wrote through a hard link to a file outside the repository")
	}

	dir = t.TempDir()
	git(t, dir, "init", "-q", "-b", "main")
	gitDir, real := filepath.Join(dir, ".git"), filepath.Join(dir, ".git.real")
	var stop atomic.Bool
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; !stop.Load(); i++ {
			os.Rename(gitDir, real)
			os.Symlink(outside, gitDir)
			// Each state held for a varying while, to land in every
			// window between sanitising's steps.
			time.Sleep(time.Duration(i%50) * 10 * time.Microsecond)
			os.Remove(gitDir)
			os.Rename(real, gitDir)
			time.Sleep(time.Duration(i%7) * 10 * time.Microsecond)
		}
	}()
	deadline := time.Now().Add(3 * time.Second)
	runs, errs := 0, 0
	for time.Now().Before(deadline) && intact() {
		// Recreate what sanitising removes, so every run has work to do.
		os.MkdirAll(filepath.Join(gitDir, "hooks"), 0o755)
		os.MkdirAll(filepath.Join(gitDir, "info"), 0o755)
		if err := SanitizeRepo(context.Background(), dir); err != nil {
			errs++
		}
		runs++
	}
	stop.Store(true)
	<-done
	t.Logf("%d runs against a racing swap, %d refused", runs, errs)
	if !intact() {
		t.Error("a .git swapped for a symlink made SanitizeRepo touch a directory outside the repository")
	}
}

// TestImportBundleChecksObjects: a bundle carrying a malformed commit, or a
// .gitmodules git refuses (an option for a URL), is refused and the branch
// is not made; a sound one imports.
func TestImportBundleChecksObjects(t *testing.T) {
	gitEnv(t)
	origin := sampleRepo(t)
	base := strings.TrimSpace(git(t, origin, "rev-parse", "HEAD"))
	tree := strings.TrimSpace(git(t, origin, "rev-parse", "HEAD^{tree}"))
	hashIn := func(dir, kind, body string) string {
		cmd := exec.Command("git", "hash-object", "-t", kind, "-w", "--stdin", "--literally")
		cmd.Dir, cmd.Stdin = dir, strings.NewReader(body)
		out, err := cmd.Output()
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(out))
	}
	// Objects are written into a clone that the bundle is made from.
	cases := map[string]func(dir string) string{
		"bad date": func(dir string) string {
			return hashIn(dir, "commit", fmt.Sprintf("tree %s\nparent %s\nauthor Guest <g@vm> not-a-date +0000\ncommitter Guest <g@vm> 1 +0000\n\nbad\n", tree, base))
		},
		"gitmodules url": func(dir string) string {
			blob := hashIn(dir, "blob", "[submodule \"x\"]\n\tpath = x\n\turl = -u./payload\n")
			cmd := exec.Command("git", "mktree")
			cmd.Dir = dir
			cmd.Stdin = strings.NewReader("100644 blob " + blob + "\t.gitmodules\n")
			out, err := cmd.Output()
			if err != nil {
				t.Fatal(err)
			}
			return hashIn(dir, "commit", fmt.Sprintf("tree %s\nparent %s\nauthor Guest <g@vm> 1 +0000\ncommitter Guest <g@vm> 1 +0000\n\nmodules\n", strings.TrimSpace(string(out)), base))
		},
	}
	for name, plant := range cases {
		src := t.TempDir()
		git(t, src, "clone", "-q", origin, ".")
		commit := plant(src)
		git(t, src, "update-ref", "HEAD", commit)
		p := filepath.Join(t.TempDir(), "b.bundle")
		git(t, src, "bundle", "create", "-q", p, base+"..HEAD")
		err := ImportBundle(context.Background(), origin, p, "agent/"+strings.ReplaceAll(name, " ", "-"), false)
		if err == nil || !strings.Contains(err.Error(), "fsck") {
			t.Errorf("%s: %v, want a refusal from fsck", name, err)
		}
		if out, _ := exec.Command("git", "-C", origin, "branch", "--list", "agent/*").Output(); len(out) != 0 {
			t.Errorf("%s: a branch was made: %s", name, out)
		}
	}
	src := t.TempDir()
	git(t, src, "clone", "-q", origin, ".")
	write(t, filepath.Join(src, "new.txt"), "new\n", 0o644)
	git(t, src, "add", "-A")
	git(t, src, "commit", "-q", "-m", "sound")
	p := filepath.Join(t.TempDir(), "b.bundle")
	git(t, src, "bundle", "create", "-q", p, base+"..HEAD")
	if err := ImportBundle(context.Background(), origin, p, "agent/ok", false); err != nil {
		t.Errorf("a sound bundle: %v", err)
	}
}
