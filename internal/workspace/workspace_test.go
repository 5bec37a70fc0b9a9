package workspace

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"
)

// gitEnv isolates git from the machine's configuration.
func gitEnv(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("git is not installed")
	}
	home := t.TempDir()
	t.Setenv("HOME", home)
	t.Setenv("XDG_CONFIG_HOME", filepath.Join(home, ".config"))
	t.Setenv("GIT_CONFIG_NOSYSTEM", "1")
	// A repository above the temp dir must not make a plain temp dir look
	// like part of it.
	t.Setenv("GIT_CEILING_DIRECTORIES", filepath.Dir(home))
	t.Setenv("GIT_AUTHOR_NAME", "Test")
	t.Setenv("GIT_AUTHOR_EMAIL", "test@example.com")
	t.Setenv("GIT_COMMITTER_NAME", "Test")
	t.Setenv("GIT_COMMITTER_EMAIL", "test@example.com")
}

func run(t *testing.T, dir string, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s in %s: %v\n%s", name, strings.Join(args, " "), dir, err, out)
	}
	return string(out)
}

func git(t *testing.T, dir string, args ...string) string {
	t.Helper()
	return run(t, dir, "git", args...)
}

func write(t *testing.T, path, content string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

// sampleRepo makes a repository with the kinds of files a workspace must
// carry, one commit, then uncommitted changes of each kind.
func sampleRepo(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	git(t, dir, "init", "-q", "-b", "main")
	write(t, filepath.Join(dir, "README.md"), "hello\n", 0o644)
	write(t, filepath.Join(dir, ".gitignore"), "build/\n*.tmp\n", 0o644)
	write(t, filepath.Join(dir, "src/.gitignore"), "*.log\n", 0o644)
	write(t, filepath.Join(dir, "src/main.go"), "package main\n", 0o644)
	write(t, filepath.Join(dir, "run.sh"), "#!/bin/sh\necho run\n", 0o755)
	write(t, filepath.Join(dir, "with space.txt"), "spaced\n", 0o644)
	write(t, filepath.Join(dir, "naïve-日本.txt"), "unicode\n", 0o644)
	write(t, filepath.Join(dir, "empty"), "", 0o644)
	write(t, filepath.Join(dir, "gone.txt"), "to be deleted\n", 0o644)
	if err := os.Symlink("README.md", filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	git(t, dir, "add", "-A")
	git(t, dir, "commit", "-q", "-m", "initial")
	// Uncommitted state: an edit, a deletion, an untracked file, ignored files.
	write(t, filepath.Join(dir, "README.md"), "hello, edited\n", 0o644)
	if err := os.Remove(filepath.Join(dir, "gone.txt")); err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(dir, "notes.txt"), "untracked\n", 0o644)
	write(t, filepath.Join(dir, "src/debug.log"), "ignored by nested .gitignore\n", 0o644)
	write(t, filepath.Join(dir, "build/out.bin"), "ignored dir\n", 0o644)
	write(t, filepath.Join(dir, "x.tmp"), "ignored by root .gitignore\n", 0o644)
	return dir
}

func TestListFiles(t *testing.T) {
	gitEnv(t)
	dir := sampleRepo(t)
	// A registered submodule and an untracked nested repository.
	other := t.TempDir()
	git(t, other, "init", "-q", "-b", "main")
	write(t, filepath.Join(other, "f"), "f\n", 0o644)
	git(t, other, "add", "f")
	git(t, other, "commit", "-q", "-m", "other")
	git(t, dir, "-c", "protocol.file.allow=always", "submodule", "add", "-q", other, "vendor/sub")
	nested := filepath.Join(dir, "nested")
	git(t, dir, "init", "-q", nested)

	files, warnings, err := ListFiles(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{".gitignore", ".gitmodules", "README.md", "empty", "link", "naïve-日本.txt", "notes.txt", "run.sh", "src/.gitignore", "src/main.go", "with space.txt"}
	if !reflect.DeepEqual(files, want) {
		t.Errorf("files:\n got %q\nwant %q", files, want)
	}
	if len(warnings) != 2 || !strings.Contains(warnings[0], "submodule vendor/sub") || !strings.Contains(warnings[1], "nested git repository nested/") {
		t.Errorf("warnings = %q, want the submodule and the nested repository", warnings)
	}
}

func TestListFilesErrors(t *testing.T) {
	gitEnv(t)
	plain := t.TempDir()
	if _, _, err := ListFiles(context.Background(), plain); !errors.Is(err, ErrNotRepo) {
		t.Errorf("plain directory: err = %v, want ErrNotRepo", err)
	}
	dir := sampleRepo(t)
	_, _, err := ListFiles(context.Background(), filepath.Join(dir, "src"))
	if err == nil || !strings.Contains(err.Error(), "top-level") {
		t.Errorf("subdirectory: err = %v, want a top-level error", err)
	}
	if _, _, err := ListFiles(context.Background(), filepath.Join(plain, "missing")); err == nil {
		t.Error("missing directory: no error")
	}
}

type entry struct {
	typ  byte
	mode int64
	size int64
	link string
	body string
}

func readTar(t *testing.T, b []byte) map[string]entry {
	t.Helper()
	out := map[string]entry{}
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(tr)
		if h.Uid != 0 || h.Gid != 0 {
			t.Errorf("%s: owner %d:%d, want 0:0", h.Name, h.Uid, h.Gid)
		}
		out[h.Name] = entry{h.Typeflag, h.Mode, h.Size, h.Linkname, string(body)}
	}
}

func TestWriteTar(t *testing.T) {
	gitEnv(t)
	dir := sampleRepo(t)
	for _, mode := range []string{ModeFull, ModeTracked} {
		t.Run(mode, func(t *testing.T) {
			var buf bytes.Buffer
			st, err := WriteTar(context.Background(), dir, TarOptions{Mode: mode}, &buf)
			if err != nil {
				t.Fatal(err)
			}
			ents := readTar(t, buf.Bytes())
			checks := map[string]entry{
				"README.md":      {typ: tar.TypeReg, mode: 0o644, body: "hello, edited\n"},
				"run.sh":         {typ: tar.TypeReg, mode: 0o755, body: "#!/bin/sh\necho run\n"},
				"empty":          {typ: tar.TypeReg, mode: 0o644, body: ""},
				"with space.txt": {typ: tar.TypeReg, mode: 0o644, body: "spaced\n"},
				"naïve-日本.txt":   {typ: tar.TypeReg, mode: 0o644, body: "unicode\n"},
				"notes.txt":      {typ: tar.TypeReg, mode: 0o644, body: "untracked\n"},
				"link":           {typ: tar.TypeSymlink, mode: 0o777, link: "README.md"},
			}
			for name, w := range checks {
				g, ok := ents[name]
				if !ok {
					t.Errorf("%s missing from the stream", name)
					continue
				}
				if g.typ != w.typ || g.mode != w.mode || g.link != w.link || g.body != w.body {
					t.Errorf("%s = %+v, want %+v", name, g, w)
				}
			}
			for _, name := range []string{"gone.txt", "src/debug.log", "build/out.bin", "x.tmp"} {
				if _, ok := ents[name]; ok {
					t.Errorf("%s is in the stream; it is deleted or ignored", name)
				}
			}
			if _, ok := ents[".git/HEAD"]; !ok {
				t.Errorf(".git/HEAD is not in the stream in mode %s", mode)
			}
			if mode == ModeTracked {
				// The snapshot's .git, not the source's: one pack, no
				// hooks, no loose objects, no source history.
				packs := 0
				for name := range ents {
					switch {
					case strings.HasPrefix(name, ".git/objects/pack/") && strings.HasSuffix(name, ".pack"):
						packs++
					case strings.HasPrefix(name, ".git/hooks/"):
						t.Errorf("%s is in the snapshot", name)
					case len(name) == len(".git/objects/xx/")+38 && strings.HasPrefix(name, ".git/objects/") && !strings.HasPrefix(name, ".git/objects/pack/"):
						t.Errorf("loose object %s is in the snapshot", name)
					}
				}
				if packs != 1 {
					t.Errorf("snapshot has %d packs, want 1", packs)
				}
			}
			files, n, err := CountTar(bytes.NewReader(buf.Bytes()))
			if err != nil {
				t.Fatal(err)
			}
			if st.Files != 10 || files != st.Files || n != st.Bytes {
				t.Errorf("stats %d files %d bytes, CountTar %d files %d bytes; want 10 files", st.Files, st.Bytes, files, n)
			}
			head := strings.TrimSpace(git(t, dir, "rev-parse", "HEAD"))
			if st.Head != head {
				t.Errorf("head %q, want %q", st.Head, head)
			}
		})
	}
}

func TestWriteTarPlainAndErrors(t *testing.T) {
	gitEnv(t)
	plain := t.TempDir()
	write(t, filepath.Join(plain, "a/b.txt"), "b\n", 0o600)
	if err := os.Mkdir(filepath.Join(plain, "emptydir"), 0o750); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if _, err := WriteTar(context.Background(), plain, TarOptions{}, &buf); !errors.Is(err, ErrNotRepo) {
		t.Fatalf("plain dir without NoGit: err = %v, want ErrNotRepo", err)
	}
	buf.Reset()
	st, err := WriteTar(context.Background(), plain, TarOptions{NoGit: true, Mode: ModeTracked}, &buf)
	if err != nil {
		t.Fatal(err)
	}
	ents := readTar(t, buf.Bytes())
	if e := ents["a/b.txt"]; e.body != "b\n" || e.mode != 0o600 {
		t.Errorf("a/b.txt = %+v", e)
	}
	if e, ok := ents["emptydir/"]; !ok || e.typ != tar.TypeDir || e.mode != 0o750 {
		t.Errorf("emptydir/ = %+v (present %v)", e, ok)
	}
	if st.Files != 1 || st.Bytes != 2 || st.Head != "" {
		t.Errorf("stats = %+v", st)
	}
	if _, err := WriteTar(context.Background(), plain, TarOptions{Mode: "everything"}, io.Discard); err == nil || !strings.Contains(err.Error(), `"full"`) {
		t.Errorf("bad mode: err = %v", err)
	}
	if _, _, err := CountTar(strings.NewReader(strings.Repeat("not a tar stream ", 64))); err == nil {
		t.Error("CountTar accepted garbage")
	}
}

func TestValidateGuestPath(t *testing.T) {
	for _, tc := range []struct {
		path string
		ok   bool
		msg  string
	}{
		{"/root/repo", true, ""},
		{"/root/work/my repo", true, ""},
		{"/root/.config/x", true, ""},
		{"", false, "empty"},
		{"root/repo", false, "relative"},
		{"/root", false, "not under /root"},
		{"/root/", false, "empty component"},
		{"/home/user/repo", false, "not under /root"},
		{"/rootfs/repo", false, "not under /root"},
		{"/root/../etc", false, `".."`},
		{"/root/./repo", false, `"."`},
		{"/root//repo", false, "empty component"},
		{"/root/repo\nx", false, "control character"},
		{"/root/.ssh", false, ".ssh"},
		{"/root/.ssh/keys", false, ".ssh"},
	} {
		err := ValidateGuestPath(tc.path)
		if (err == nil) != tc.ok || (err != nil && !strings.Contains(err.Error(), tc.msg)) {
			t.Errorf("ValidateGuestPath(%q) = %v, want ok=%v containing %q", tc.path, err, tc.ok, tc.msg)
		}
	}
}

func TestPureHelpers(t *testing.T) {
	if got := TempPath("/root/repo", "ab12"); got != "/root/.repo.banger-tmp-ab12" {
		t.Errorf("TempPath = %q", got)
	}
	for _, tc := range []struct{ out, head string }{
		{"banger-head=abc\n", "abc"},
		{"noise\nbanger-head=\n", ""},
		{"", ""},
	} {
		if got := ParsePrepareOutput(tc.out); got != tc.head {
			t.Errorf("ParsePrepareOutput(%q) = %q, want %q", tc.out, got, tc.head)
		}
	}
	for _, m := range []string{"", ModeFull, ModeTracked} {
		if err := ValidateMode(m); err != nil {
			t.Errorf("ValidateMode(%q) = %v", m, err)
		}
	}
	if err := ValidateMode("all"); err == nil {
		t.Error(`ValidateMode("all") = nil`)
	}
}

// TestWriteTarKeepsMtimeSeconds: the stream carries each file's mtime
// truncated to the second, as git's index compares it; rounding would
// make files with a late sub-second look modified in the guest, and git
// there would rehash them.
func TestWriteTarKeepsMtimeSeconds(t *testing.T) {
	gitEnv(t)
	dir := sampleRepo(t)
	late := time.Unix(1700000000, 900_000_000)
	if err := os.Chtimes(filepath.Join(dir, "README.md"), late, late); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if _, err := WriteTar(context.Background(), dir, TarOptions{}, &buf); err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(&buf)
	for {
		hdr, err := tr.Next()
		if err != nil {
			t.Fatalf("README.md not in the stream: %v", err)
		}
		if hdr.Name == "README.md" {
			if got := hdr.ModTime.Unix(); got != late.Unix() {
				t.Errorf("README.md mtime %d in the stream, want %d", got, late.Unix())
			}
			return
		}
	}
}

func TestMakeSnapshot(t *testing.T) {
	gitEnv(t)
	t.Setenv("TMPDIR", t.TempDir())
	dir := sampleRepo(t)
	// Names fast-import must be given quoted, and a pipe (left out).
	write(t, filepath.Join(dir, `say "hi"\now.txt`), "quoted\n", 0o644)
	write(t, filepath.Join(dir, "two\nlines.txt"), "newline\n", 0o644)
	if err := syscall.Mkfifo(filepath.Join(dir, "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	// The user's own configuration must not shape the snapshot.
	git(t, dir, "config", "--global", "index.version", "4")
	statusBefore := git(t, dir, "status", "--porcelain")
	objectsBefore := git(t, dir, "count-objects", "-v")
	files, _, err := ListFiles(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	gitDir, err := makeSnapshot(context.Background(), dir, files)
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(filepath.Dir(gitDir))
	snap := func(args ...string) string {
		return git(t, dir, append([]string{"--git-dir", gitDir, "--work-tree", dir}, args...)...)
	}
	if got := strings.Fields(snap("ls-files")); len(got) == 0 {
		t.Fatal("snapshot index is empty")
	}
	var want []string
	for _, f := range files {
		if f != "fifo" {
			want = append(want, f)
		}
	}
	if got := strings.Split(strings.TrimSuffix(snap("ls-files", "-z"), "\x00"), "\x00"); strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("snapshot index holds %q, want %q", got, want)
	}
	if got := strings.Split(strings.TrimSuffix(snap("ls-tree", "-r", "-z", "--name-only", "HEAD"), "\x00"), "\x00"); strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("snapshot commit holds %q, want %q", got, want)
	}
	if index, head := snap("write-tree"), snap("rev-parse", "HEAD^{tree}"); index != head {
		t.Errorf("index tree %s differs from the commit's %s", index, head)
	}
	// diff-files does not refresh: a clean answer means the index's stat
	// data matches the files, so nobody rehashes them.
	if out := snap("diff-files", "--name-only"); out != "" {
		t.Errorf("snapshot index is stat-dirty for %q", out)
	}
	if out := snap("status", "--porcelain"); out != "" {
		t.Errorf("snapshot is not clean: %q", out)
	}
	if got := strings.TrimSpace(snap("log", "--format=%an|%s")); got != "banger|"+SnapshotMessage {
		t.Errorf("snapshot history %q, want one banger commit", got)
	}
	if got := strings.TrimSpace(snap("symbolic-ref", "HEAD")); got != "refs/heads/main" {
		t.Errorf("snapshot HEAD is %q", got)
	}
	stage := snap("ls-files", "-s", "run.sh", "link", "README.md")
	for _, want := range []string{"100755 ", "120000 ", "100644 "} {
		if !strings.Contains(stage, want) {
			t.Errorf("snapshot modes %q lack %q", stage, want)
		}
	}
	if got := snap("show", "HEAD:link"); got != "README.md" {
		t.Errorf("snapshot link blob = %q, want its target", got)
	}
	if got := snap("show", "HEAD:README.md"); got != "hello, edited\n" {
		t.Errorf("snapshot README.md = %q, want the uncommitted edit", got)
	}
	if b, _ := os.ReadFile(filepath.Join(gitDir, "index")); len(b) < 8 || b[7] != 2 {
		t.Errorf("snapshot index is not version 2 (the user's index.version leaked in)")
	}
	if got := git(t, dir, "status", "--porcelain"); got != statusBefore {
		t.Errorf("source status changed:\n%s\nwas\n%s", got, statusBefore)
	}
	if got := git(t, dir, "count-objects", "-v"); got != objectsBefore {
		t.Errorf("source objects changed:\n%s\nwas\n%s", got, objectsBefore)
	}

	// A file that vanished: a clear error and no temporary directory left.
	if _, err := makeSnapshot(context.Background(), dir, append(files, "vanished.txt")); err == nil || !strings.Contains(err.Error(), "tracked snapshot") || !strings.Contains(err.Error(), "vanished.txt") {
		t.Errorf("snapshot of a vanished file: %v", err)
	}
	left, _ := filepath.Glob(filepath.Join(os.Getenv("TMPDIR"), "banger-snapshot-*"))
	if len(left) != 1 { // the good snapshot, still deferred
		t.Errorf("temporary snapshot directories: %v", left)
	}
}

func TestFastImportPath(t *testing.T) {
	for in, want := range map[string]string{
		"a/b.txt":      `"a/b.txt"`,
		"with space":   `"with space"`,
		`say "hi"\now`: `"say \"hi\"\\now"`,
		"two\nlines":   `"two\nlines"`,
		"tab\there":    `"tab\011here"`,
		"naïve-日本.txt": `"naïve-日本.txt"`,
	} {
		if got := fastImportPath(in); got != want {
			t.Errorf("fastImportPath(%q) = %s, want %s", in, got, want)
		}
	}
}

type failingWriter struct{ left int }

func (w *failingWriter) Write(p []byte) (int, error) {
	if len(p) > w.left {
		return 0, errors.New("reader went away")
	}
	w.left -= len(p)
	return len(p), nil
}

// TestWriteTarTrackedCleansUp: a tracked stream whose reader goes away, or
// whose snapshot fails, leaves no temporary snapshot behind.
func TestWriteTarTrackedCleansUp(t *testing.T) {
	gitEnv(t)
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	dir := sampleRepo(t)
	// Big enough to pass the 1 MiB buffer, so the writer is reached.
	write(t, filepath.Join(dir, "big.bin"), strings.Repeat("x", 3<<20), 0o644)
	if _, err := WriteTar(context.Background(), dir, TarOptions{Mode: ModeTracked}, &failingWriter{left: 1 << 20}); err == nil || !strings.Contains(err.Error(), "reader went away") {
		t.Errorf("broken writer: %v", err)
	}
	if _, err := WriteTar(context.Background(), dir, TarOptions{Mode: ModeTracked}, io.Discard); err != nil {
		t.Errorf("whole stream: %v", err)
	}
	if left, _ := filepath.Glob(filepath.Join(tmp, "banger-snapshot-*")); len(left) != 0 {
		t.Errorf("left behind: %v", left)
	}
}

func TestSanitizeRepo(t *testing.T) {
	gitEnv(t)
	ctx := context.Background()
	fresh := func() string {
		dir := t.TempDir()
		git(t, dir, "init", "-q", "-b", "main")
		git(t, dir, "config", "banger.base", "0123abcd")
		git(t, dir, "config", "filter.evil.clean", "touch /tmp/x")
		git(t, dir, "config", "core.pager", "evil")
		write(t, filepath.Join(dir, ".git/hooks/pre-commit"), "#!/bin/sh\n", 0o755)
		write(t, filepath.Join(dir, ".git/objects/info/alternates"), "/etc\n", 0o644)
		return dir
	}
	dir := fresh()
	if err := SanitizeRepo(ctx, dir); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(filepath.Join(dir, ".git/config"))
	cfg := string(b)
	for _, gone := range []string{"evil", "pager", "filter"} {
		if strings.Contains(cfg, gone) {
			t.Errorf("sanitized config keeps %q:\n%s", gone, cfg)
		}
	}
	if !strings.Contains(cfg, "base = 0123abcd") || !strings.Contains(cfg, "repositoryformatversion = 0") {
		t.Errorf("sanitized config lost what export needs:\n%s", cfg)
	}
	for _, p := range []string{".git/hooks", ".git/objects/info/alternates", ".git/info"} {
		if _, err := os.Lstat(filepath.Join(dir, p)); err == nil {
			t.Errorf("%s survived", p)
		}
	}
	if out := git(t, dir, "status", "--porcelain"); out != "" {
		t.Errorf("sanitized repository is not usable: %q", out)
	}

	for name, spoil := range map[string]func(dir string){
		"symlink": func(dir string) { os.Symlink("/etc/passwd", filepath.Join(dir, ".git/refs/evil")) },
		"gitfile": func(dir string) {
			os.RemoveAll(filepath.Join(dir, ".git"))
			write(t, filepath.Join(dir, ".git"), "gitdir: /etc\n", 0o644)
		},
		"commondir": func(dir string) { write(t, filepath.Join(dir, ".git/commondir"), "/etc\n", 0o644) },
		"extension": func(dir string) {
			git(t, dir, "config", "core.repositoryformatversion", "1")
			git(t, dir, "config", "extensions.worktreeConfig", "true")
		},
		"base": func(dir string) { git(t, dir, "config", "banger.base", "HEAD; rm -rf /") },
	} {
		dir := fresh()
		spoil(dir)
		if err := SanitizeRepo(ctx, dir); err == nil {
			t.Errorf("%s: a repository sanitize cannot vouch for was accepted", name)
		}
	}
}
