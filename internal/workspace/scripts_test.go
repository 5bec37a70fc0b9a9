package workspace

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/banger/banger/internal/shell"
	"github.com/banger/banger/internal/testenv"
	"github.com/banger/banger/internal/transfer"
)

// runScript runs a generated script with bash the way the daemon runs it in
// a guest (BashCommand through sh), here against local directories.
func runScript(t *testing.T, script string, env map[string]string, stdin []byte) (stdout []byte, stderr string, code int) {
	t.Helper()
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("bash is not installed")
	}
	cmd := exec.Command("sh", "-c", shell.BashCommand(script, env))
	cmd.Stdin = bytes.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return out.Bytes(), errb.String(), ee.ExitCode()
	}
	if err != nil {
		t.Fatal(err)
	}
	return out.Bytes(), errb.String(), 0
}

func tarOf(t *testing.T, dir string, opts TarOptions) []byte {
	t.Helper()
	var buf bytes.Buffer
	if _, err := WriteTar(context.Background(), dir, opts, &buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// guestRoot makes a directory standing for the guest's / and lifts any
// immutable attribute before it is removed.
func guestRoot(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	t.Cleanup(func() { _ = exec.Command("chattr", "-R", "-i", root).Run() })
	return root
}

func mustPrepare(t *testing.T, guest string, stream []byte, readOnly bool, mode string) string {
	t.Helper()
	out, stderr, code := runScript(t, PrepareScript(guest, TempPath(guest, "t1"), readOnly, mode, ""), nil, stream)
	if code != 0 {
		t.Fatalf("prepare exited %d: %s", code, stderr)
	}
	return ParsePrepareOutput(string(out))
}

func siblings(t *testing.T, guest string) []string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Dir(guest))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// TestPrepareExportImportRoundTrip is the whole path: a repository with
// uncommitted changes goes into a "guest" directory with the same git
// status; the guest commits one change and leaves another uncommitted; the
// export comes back as a branch of the origin without touching its working
// tree, index or HEAD.
func TestPrepareExportImportRoundTrip(t *testing.T) {
	gitEnv(t)
	origin := sampleRepo(t)
	guest := filepath.Join(guestRoot(t), "root", "repo")

	head := mustPrepare(t, guest, tarOf(t, origin, TarOptions{Mode: ModeFull}), false, ModeFull)
	hostHead := strings.TrimSpace(git(t, origin, "rev-parse", "HEAD"))
	if head != hostHead {
		t.Errorf("prepare reported head %q, want host HEAD %q", head, hostHead)
	}
	hostStatus := git(t, origin, "status", "--porcelain")
	if got := git(t, guest, "status", "--porcelain"); got != hostStatus {
		t.Errorf("guest status:\n%s\nwant host status:\n%s", got, hostStatus)
	}
	if got := git(t, guest, "log", "--format=%H %s"); got != git(t, origin, "log", "--format=%H %s") {
		t.Errorf("guest log differs from host: %s", got)
	}
	if got := strings.TrimSpace(git(t, guest, "config", "banger.base")); got != hostHead {
		t.Errorf("banger.base = %q, want %q", got, hostHead)
	}
	if got := git(t, guest, "config", "--global", "--get-all", "safe.directory"); !strings.Contains(got, guest+"\n") {
		t.Errorf("safe.directory = %q, want %s", got, guest)
	}
	for name, want := range map[string]string{"README.md": "hello, edited\n", "notes.txt": "untracked\n", "with space.txt": "spaced\n", "naïve-日本.txt": "unicode\n"} {
		if b, err := os.ReadFile(filepath.Join(guest, name)); err != nil || string(b) != want {
			t.Errorf("guest %s = %q, %v; want %q", name, b, err, want)
		}
	}
	if fi, err := os.Stat(filepath.Join(guest, "run.sh")); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("guest run.sh mode = %v, %v; want 0755", fi, err)
	}
	if l, err := os.Readlink(filepath.Join(guest, "link")); err != nil || l != "README.md" {
		t.Errorf("guest link -> %q, %v", l, err)
	}
	for _, ignored := range []string{"src/debug.log", "build", "x.tmp"} {
		if _, err := os.Lstat(filepath.Join(guest, ignored)); err == nil {
			t.Errorf("ignored %s reached the guest", ignored)
		}
	}

	// Nothing changed in the guest yet beyond what the host had uncommitted:
	// export commits that, so there is something. First, work in the guest.
	git(t, guest, "add", "-A")
	git(t, guest, "commit", "-q", "-m", "agent: take host edits")
	write(t, filepath.Join(guest, "src/main.go"), "package main\n\nfunc main() {}\n", 0o644)
	git(t, guest, "commit", "-q", "-am", "agent: add main")
	write(t, filepath.Join(guest, "run.sh"), "#!/bin/sh\necho changed\n", 0o755)
	write(t, filepath.Join(guest, "new file.txt"), "from the guest\n", 0o644)

	bundle, stderr, code := runScript(t, ExportScript(guest, FormatBundle, "banger: uncommitted changes from vm1"), nil, nil)
	if code != 0 {
		t.Fatalf("export exited %d: %s", code, stderr)
	}
	if got := git(t, guest, "status", "--porcelain"); got != "" {
		t.Errorf("guest not clean after export: %q", got)
	}
	bpath := filepath.Join(t.TempDir(), "ws.bundle")
	if err := os.WriteFile(bpath, bundle, 0o600); err != nil {
		t.Fatal(err)
	}

	hostIndex, _ := os.ReadFile(filepath.Join(origin, ".git", "index"))
	if err := ImportBundle(context.Background(), origin, bpath, "agent/1", false); err != nil {
		t.Fatal(err)
	}
	if got := git(t, origin, "status", "--porcelain"); got != hostStatus {
		t.Errorf("host status changed by import:\n%s\nwas:\n%s", got, hostStatus)
	}
	if got := strings.TrimSpace(git(t, origin, "rev-parse", "HEAD")); got != hostHead {
		t.Errorf("host HEAD moved to %s", got)
	}
	if idx, _ := os.ReadFile(filepath.Join(origin, ".git", "index")); !bytes.Equal(idx, hostIndex) {
		t.Error("host index changed by import")
	}
	if _, err := os.Stat(filepath.Join(origin, ".git", "FETCH_HEAD")); err == nil {
		t.Error("import wrote FETCH_HEAD")
	}
	log := git(t, origin, "log", "--format=%s", "main..agent/1")
	for _, want := range []string{"banger: uncommitted changes from vm1", "agent: add main", "agent: take host edits"} {
		if !strings.Contains(log, want) {
			t.Errorf("agent/1 log lacks %q:\n%s", want, log)
		}
	}
	if got := git(t, origin, "show", "agent/1:run.sh"); got != "#!/bin/sh\necho changed\n" {
		t.Errorf("agent/1:run.sh = %q", got)
	}
	if got := git(t, origin, "show", "agent/1:new file.txt"); got != "from the guest\n" {
		t.Errorf("agent/1:new file.txt = %q", got)
	}

	// An existing branch needs force; the checked-out one is never moved.
	err := ImportBundle(context.Background(), origin, bpath, "agent/1", false)
	if err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("second import without force: %v", err)
	}
	if err := ImportBundle(context.Background(), origin, bpath, "agent/1", true); err != nil {
		t.Errorf("import with force: %v", err)
	}
	if err := ImportBundle(context.Background(), origin, bpath, "main", true); err == nil || !strings.Contains(err.Error(), "checked out") {
		t.Errorf("import onto the checked-out branch: %v", err)
	}
	if err := ImportBundle(context.Background(), origin, bpath, "bad..name", false); err == nil || !strings.Contains(err.Error(), "not a valid") {
		t.Errorf("bad branch name: %v", err)
	}

	// Nothing new since the last export.
	git(t, guest, "config", "banger.base", strings.TrimSpace(git(t, guest, "rev-parse", "HEAD")))
	if _, stderr, code := runScript(t, ExportScript(guest, FormatBundle, "m"), nil, nil); code != ExitNothingToExport {
		t.Errorf("empty export exited %d (%s), want %d", code, stderr, ExitNothingToExport)
	}
	// BANGER_BASE overrides the recorded base; patch format.
	patch, stderr, code := runScript(t, ExportScript(guest, FormatPatch, "m"), map[string]string{"BANGER_BASE": hostHead}, nil)
	if code != 0 || !bytes.HasPrefix(patch, []byte("From ")) || bytes.Count(patch, []byte("\nSubject: ")) != 3 {
		t.Errorf("patch export exited %d (%s); got %d patches", code, stderr, bytes.Count(patch, []byte("\nSubject: ")))
	}
	if _, _, code := runScript(t, ExportScript(filepath.Join(filepath.Dir(guest), "none"), FormatBundle, "m"), nil, nil); code != ExitNoWorkspace {
		t.Errorf("export of a missing path exited %d, want %d", code, ExitNoWorkspace)
	}
	if _, _, code := runScript(t, ExportScript(guest, FormatBundle, "m"), map[string]string{"BANGER_BASE": strings.Repeat("ab", 20)}, nil); code != ExitBadBase {
		t.Errorf("export from an unknown base exited %d, want %d", code, ExitBadBase)
	}
}

func TestPrepareReplacesAndFailsCleanly(t *testing.T) {
	gitEnv(t)
	origin := sampleRepo(t)
	guest := filepath.Join(guestRoot(t), "root", "repo")
	mustPrepare(t, guest, tarOf(t, origin, TarOptions{}), false, ModeFull)
	write(t, filepath.Join(guest, "guest-only.txt"), "x\n", 0o644)
	// A leftover of an interrupted prepare is cleared.
	write(t, TempPath(guest, "stale")+"/junk", "x\n", 0o644)

	// A broken stream: the old tree stays as it was, no temp dir is left.
	_, stderr, code := runScript(t, PrepareScript(guest, TempPath(guest, "t2"), false, ModeFull, ""), nil, []byte(strings.Repeat("garbage ", 200)))
	if code == 0 || !strings.Contains(stderr, "unpacking") {
		t.Errorf("garbage stream: exit %d, stderr %q", code, stderr)
	}
	if _, err := os.Stat(filepath.Join(guest, "guest-only.txt")); err != nil {
		t.Errorf("failed prepare damaged the old tree: %v", err)
	}
	if got := siblings(t, guest); len(got) != 1 || got[0] != "repo" {
		t.Errorf("after a failed prepare the parent holds %q, want only repo", got)
	}

	// A good stream replaces the tree whole.
	mustPrepare(t, guest, tarOf(t, origin, TarOptions{}), false, ModeFull)
	if _, err := os.Stat(filepath.Join(guest, "guest-only.txt")); err == nil {
		t.Error("a file of the old tree survived the new prepare")
	}
	if got := siblings(t, guest); len(got) != 1 || got[0] != "repo" {
		t.Errorf("after prepare the parent holds %q, want only repo", got)
	}
	// A base that is not in the stream's history is refused.
	_, stderr, code = runScript(t, PrepareScript(guest, TempPath(guest, "t3"), false, ModeFull, strings.Repeat("cd", 20)), nil, tarOf(t, origin, TarOptions{}))
	if code == 0 || !strings.Contains(stderr, "not in the workspace's history") {
		t.Errorf("unknown base: exit %d, stderr %q", code, stderr)
	}
}

func TestPrepareReadOnly(t *testing.T) {
	gitEnv(t)
	if os.Geteuid() != 0 {
		t.Skip("needs root: the immutable attribute is what stops root's writes")
	}
	if _, err := exec.LookPath("chattr"); err != nil {
		t.Skip("chattr (e2fsprogs) is not installed")
	}
	origin := sampleRepo(t)
	guest := filepath.Join(guestRoot(t), "root", "repo")
	mustPrepare(t, guest, tarOf(t, origin, TarOptions{}), true, ModeFull)
	if err := os.WriteFile(filepath.Join(guest, "README.md"), []byte("x"), 0o644); err == nil {
		t.Error("writing a file of a read-only workspace succeeded")
	}
	if err := os.WriteFile(filepath.Join(guest, "new.txt"), []byte("x"), 0o644); err == nil {
		t.Error("creating a file in a read-only workspace succeeded")
	}
	if got := git(t, guest, "log", "--oneline"); !strings.Contains(got, "initial") {
		t.Errorf("git log in a read-only workspace: %q", got)
	}
	// It can be replaced by a new, writable prepare.
	mustPrepare(t, guest, tarOf(t, origin, TarOptions{}), false, ModeFull)
	if err := os.WriteFile(filepath.Join(guest, "new.txt"), []byte("x"), 0o644); err != nil {
		t.Errorf("writing after a writable re-prepare: %v", err)
	}
}

func TestPrepareTrackedMode(t *testing.T) {
	gitEnv(t)
	origin := sampleRepo(t)
	guest := filepath.Join(guestRoot(t), "root", "repo")
	head := mustPrepare(t, guest, tarOf(t, origin, TarOptions{Mode: ModeTracked}), false, ModeTracked)
	if head == "" {
		t.Fatal("tracked prepare reported no head")
	}
	if got := strings.Count(git(t, guest, "log", "--oneline"), "\n"); got != 1 {
		t.Errorf("tracked workspace has %d commits, want 1", got)
	}
	if got := git(t, guest, "status", "--porcelain"); got != "" {
		t.Errorf("tracked workspace is not clean: %q", got)
	}
	if got := git(t, guest, "show", "HEAD:README.md"); got != "hello, edited\n" {
		t.Errorf("snapshot README.md = %q", got)
	}
	write(t, filepath.Join(guest, "README.md"), "guest edit\n", 0o644)
	patch, stderr, code := runScript(t, ExportScript(guest, FormatPatch, "guest work"), nil, nil)
	if code != 0 || !bytes.Contains(patch, []byte("+guest edit")) {
		t.Fatalf("patch export: exit %d (%s)\n%s", code, stderr, patch)
	}
	// Its history is its own: a bundle does not import into the origin.
	bundle, stderr, code := runScript(t, ExportScript(guest, FormatBundle, "m"), map[string]string{"BANGER_BASE": head}, nil)
	if code != 0 {
		t.Fatalf("bundle export: exit %d (%s)", code, stderr)
	}
	bpath := filepath.Join(t.TempDir(), "b")
	if err := os.WriteFile(bpath, bundle, 0o600); err != nil {
		t.Fatal(err)
	}
	err := ImportBundle(context.Background(), origin, bpath, "agent/x", false)
	if err == nil || !strings.Contains(err.Error(), head) || !strings.Contains(err.Error(), "patch") {
		t.Errorf("import of a tracked-mode bundle: %v", err)
	}
	if out := git(t, origin, "branch", "--list", "agent/x"); out != "" {
		t.Errorf("a failed import left branch %q", out)
	}
}

func TestPreparePlainDirectory(t *testing.T) {
	gitEnv(t)
	plain := t.TempDir()
	write(t, filepath.Join(plain, "a.txt"), "a\n", 0o644)
	guest := filepath.Join(guestRoot(t), "root", "plain")
	// Full mode without .git: a plain copy, no git set up.
	if head := mustPrepare(t, guest, tarOf(t, plain, TarOptions{NoGit: true}), false, ModeFull); head != "" {
		t.Errorf("plain full prepare head = %q, want none", head)
	}
	if _, err := os.Stat(filepath.Join(guest, ".git")); err == nil {
		t.Error("plain full prepare made a .git")
	}
	if _, _, code := runScript(t, ExportScript(guest, FormatBundle, "m"), nil, nil); code != ExitNotRepo {
		t.Errorf("export of a plain workspace exited %d, want %d", code, ExitNotRepo)
	}
	// Tracked mode makes it a repository.
	if head := mustPrepare(t, guest, tarOf(t, plain, TarOptions{NoGit: true, Mode: ModeTracked}), false, ModeTracked); head == "" {
		t.Error("plain tracked prepare made no commit")
	}
}

func TestScriptsShellcheck(t *testing.T) {
	if _, err := exec.LookPath("shellcheck"); err != nil {
		t.Skip("shellcheck is not installed")
	}
	for name, script := range map[string]string{
		"prepare":  PrepareScript("/root/my repo", TempPath("/root/my repo", "x"), true, ModeTracked, "abc"),
		"export":   ExportScript("/root/it's", FormatPatch, `say "hi" $(x)`),
		"bashInSh": "#!/bin/sh\n" + shell.BashCommand("echo 'q'", map[string]string{"BANGER_BASE": "a'b"}),
	} {
		if !strings.HasPrefix(script, "#!") {
			script = "#!/bin/bash\n" + script
		}
		cmd := exec.Command("shellcheck", "-S", "warning", "-")
		cmd.Stdin = strings.NewReader(script)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("shellcheck %s: %v\n%s", name, err, out)
		}
	}
}

// prepareOverChannel runs PrepareScript as the daemon does with a guest
// whose banger-init can receive: it waits for the announcement on stderr
// and sends stream to that port (on loopback) with transfer.Send.
func prepareOverChannel(t *testing.T, initBin, guest string, stream []byte) (stdout, stderr string, code int, sendErr error) {
	t.Helper()
	tok, err := transfer.NewToken()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sh", "-c", shell.BashCommand(PrepareScript(guest, TempPath(guest, "tcp"), false, ModeFull, ""),
		map[string]string{transfer.TokenEnv: tok, "BANGER_INIT": initBin}))
	var out bytes.Buffer
	cmd.Stdout = &out
	errPipe, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var errText strings.Builder
	sc := bufio.NewScanner(errPipe)
	announced := false
	for sc.Scan() {
		line := sc.Text()
		errText.WriteString(line + "\n")
		port, stdin, ok := transfer.ParseAnnounce(line)
		if !ok || announced {
			continue
		}
		announced = true
		if stdin {
			t.Fatalf("the script fell back to stdin with a banger-init that can receive")
		}
		conn, err := net.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			t.Fatal(err)
		}
		_, sendErr = transfer.Send(context.Background(), conn, tok, bytes.NewReader(stream))
	}
	err = cmd.Wait()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	if !announced {
		t.Fatalf("no announcement on stderr: %s", errText.String())
	}
	return out.String(), errText.String(), code, sendErr
}

func TestPrepareOverDataChannel(t *testing.T) {
	gitEnv(t)
	initBin := testenv.BuildInit(t, t.TempDir())
	origin := sampleRepo(t)
	guest := filepath.Join(guestRoot(t), "root", "repo")
	stdout, stderr, code, sendErr := prepareOverChannel(t, initBin, guest, tarOf(t, origin, TarOptions{}))
	if code != 0 || sendErr != nil {
		t.Fatalf("prepare over the data channel: exit %d, send %v: %s", code, sendErr, stderr)
	}
	if head := ParsePrepareOutput(stdout); head != strings.TrimSpace(git(t, origin, "rev-parse", "HEAD")) {
		t.Errorf("head %q", head)
	}
	if a, b := git(t, origin, "status", "--porcelain"), git(t, guest, "status", "--porcelain"); a != b {
		t.Errorf("guest status %q, host %q", b, a)
	}

	// A stream that is not tar fails with tar's own words, and leaves the
	// tree that was there and no temp files.
	write(t, filepath.Join(guest, "guest-only.txt"), "x\n", 0o644)
	_, stderr, code, _ = prepareOverChannel(t, initBin, guest, []byte(strings.Repeat("garbage ", 200)))
	if code == 0 || !strings.Contains(stderr, "unpacking the workspace stream failed: tar:") {
		t.Errorf("garbage stream: exit %d, stderr %q", code, stderr)
	}
	if _, err := os.Stat(filepath.Join(guest, "guest-only.txt")); err != nil {
		t.Errorf("failed prepare damaged the old tree: %v", err)
	}
	if got := siblings(t, guest); len(got) != 1 || got[0] != "repo" {
		t.Errorf("after a failed prepare the parent holds %q, want only repo", got)
	}
}

// TestPrepareDiskFull: a stream that does not fit is a clear error naming
// the full disk, and nothing of it stays.
func TestPrepareDiskFull(t *testing.T) {
	gitEnv(t)
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small tmpfs")
	}
	disk := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", disk).CombinedOutput(); err != nil {
		t.Skipf("mount tmpfs: %v %s", err, out)
	}
	defer exec.Command("umount", disk).Run()
	src := t.TempDir()
	git(t, src, "init", "-q", "-b", "main")
	write(t, filepath.Join(src, "big.bin"), strings.Repeat("x", 3<<20), 0o644)
	guest := filepath.Join(disk, "repo")
	_, stderr, code := runScript(t, PrepareScript(guest, TempPath(guest, "t1"), false, ModeFull, ""), nil, tarOf(t, src, TarOptions{}))
	if code == 0 || !strings.Contains(stderr, "the guest's disk is full") || !strings.Contains(stderr, "larger --disk") {
		t.Errorf("prepare onto a full disk: exit %d, %q", code, stderr)
	}
	if names := siblings(t, guest); len(names) != 0 {
		t.Errorf("left on the full disk: %v", names)
	}
}
