package image

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger/banger/internal/progress"
	"github.com/banger/banger/internal/testenv"
)

// These tests drive Build into its failure paths with the real mmdebstrap and
// check each gives a clear error and leaves nothing behind: no work
// directory next to the destination, no destination, no cache entry, no
// mount under the test's directories and no process of the build still
// running. They need root and mmdebstrap, and run only with BANGER_E2E=1.

// realBuild skips unless a real build can run here, and returns a fresh
// banger-init binary to put into the image.
func realBuild(t *testing.T) string {
	t.Helper()
	testenv.RequireE2E(t)
	testenv.RequireRoot(t)
	testenv.RequireBinary(t, "mmdebstrap")
	// Orphans of the build (an apt or dpkg whose mmdebstrap died) are
	// re-parented to this process, so leftBehind can find them.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Fatalf("become a child subreaper: %v", err)
	}
	return testenv.BuildInit(t, t.TempDir())
}

// buildCase is one failing build: its own destination directory (nothing
// else lives there) and a fresh cache.
type buildCase struct {
	root, destDir, dest, cache string
	opts                       BuildOptions
	mu                         sync.Mutex
	lines                      []string // progress, for the failure message
}

func newBuildCase(t *testing.T, initBin, destDir string) *buildCase {
	root := t.TempDir()
	if destDir == "" {
		destDir = filepath.Join(root, "images")
		if err := os.Mkdir(destDir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	c := &buildCase{root: root, destDir: destDir, dest: filepath.Join(destDir, "img.ext4"), cache: filepath.Join(root, "cache")}
	c.opts = BuildOptions{Name: t.Name(), InitBinary: initBin, CacheDir: c.cache, NoCache: true, SizeBytes: 512 << 20}
	// Runs before t.TempDir's removal: never let a recursive delete walk
	// into a mount (a bind of the host's /dev) that a failed build left.
	t.Cleanup(func() { unmountUnder(t, c.root, c.destDir) })
	return c
}

func (c *buildCase) progress(t *testing.T, also func(progress.Event)) progress.Func {
	return func(p progress.Event) {
		c.mu.Lock()
		c.lines = append(c.lines, fmt.Sprintf("%5.1fs %s: %s", p.Elapsed, p.Phase, p.Message))
		c.mu.Unlock()
		if also != nil {
			also(p)
		}
	}
}

func (c *buildCase) logTail(t *testing.T, n int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	from := max(0, len(c.lines)-n)
	t.Logf("last progress lines:\n%s", strings.Join(c.lines[from:], "\n"))
}

// build runs Build and returns its error, failing the test if it succeeds.
func (c *buildCase) build(t *testing.T) error {
	start := time.Now()
	res, err := Build(context.Background(), c.opts, c.dest, c.progress(t, nil))
	t.Logf("Build returned after %s", time.Since(start).Round(time.Millisecond))
	if err == nil {
		t.Fatalf("build succeeded: %+v", res)
	}
	return err
}

// checkNothingLeft fails the test for anything the failed build left.
// Processes first: a live one could still be writing files.
func (c *buildCase) checkNothingLeft(t *testing.T) {
	t.Helper()
	if procs := leftBehind(c.root, c.destDir); len(procs) > 0 {
		t.Errorf("processes of the build still running:\n%s", strings.Join(procs, "\n"))
	}
	if mounts := mountsBelow(c.root, c.destDir); len(mounts) > 0 {
		t.Errorf("mounts left under the build's directories: %v", mounts)
	}
	if _, err := os.Lstat(c.dest); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("destination %s exists after a failed build (lstat: %v)", c.dest, err)
	}
	if ents, err := os.ReadDir(c.destDir); err != nil {
		t.Errorf("read %s: %v", c.destDir, err)
	} else if len(ents) > 0 {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Errorf("left next to the destination: %v", names)
	}
	recipe, err := NewRecipe(c.opts)
	if err != nil {
		t.Fatalf("recipe: %v", err)
	}
	key := recipe.Key()
	_ = filepath.WalkDir(c.cache, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("walk cache: %v", err)
			}
			return nil
		}
		if strings.Contains(d.Name(), key) {
			t.Errorf("cache entry for the failed recipe: %s", p)
		} else if !d.IsDir() {
			t.Errorf("file in the cache after a failed build: %s", p)
		}
		return nil
	})
}

// TestBuildInterruptedReal cancels a build while mmdebstrap downloads, and
// while dpkg installs with /dev, /proc and /sys mounted in the tree, as
// Ctrl-C on `image build` does: Build must return soon, say it was
// cancelled, and leave no tree, mount or apt/dpkg behind.
func TestBuildInterruptedReal(t *testing.T) {
	initBin := realBuild(t)
	for _, stage := range []struct{ name, line string }{
		{"downloading", `(?i)downloading packages`},
		{"installing", `(?i)installing essential packages`},
	} {
		t.Run(stage.name, func(t *testing.T) { interruptAt(t, initBin, regexp.MustCompile(stage.line)) })
	}
}

// interruptAt cancels a build a second after mmdebstrap prints a line
// matching at.
func interruptAt(t *testing.T, initBin string, at *regexp.Regexp) {
	c := newBuildCase(t, initBin, "")
	started := make(chan string, 1)
	report := c.progress(t, func(p progress.Event) {
		if p.Phase == "mmdebstrap" && at.MatchString(p.Message) {
			select {
			case started <- p.Message:
			default:
			}
		}
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := Build(ctx, c.opts, c.dest, report)
		done <- err
	}()
	// Whatever happens below, the build must be over before the temp dir
	// is removed.
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(3 * time.Minute):
			t.Error("build still running three minutes after the cancel")
		}
	})
	start := time.Now()
	select {
	case line := <-started:
		time.Sleep(time.Second) // into the work that line announced
		t.Logf("cancelling %s into the build, a second after %q, with %d mounts in the tree",
			time.Since(start).Round(100*time.Millisecond), line, len(mountsBelow(c.root)))
	case err := <-done:
		c.logTail(t, 30)
		t.Fatalf("build ended before mmdebstrap got busy: %v", err)
	case <-time.After(5 * time.Minute):
		c.logTail(t, 30)
		t.Fatal("mmdebstrap never reported downloading or installing within 5 minutes")
	}
	cancel()
	cancelled := time.Now()
	var err error
	select {
	case err = <-done:
		done <- err // for the cleanup above
	case <-time.After(40 * time.Second):
		c.logTail(t, 30)
		t.Fatalf("Build did not return within 40s of the cancel; still running: %v", leftBehind(c.root, c.destDir))
	}
	t.Logf("Build returned %s after the cancel: %v", time.Since(cancelled).Round(time.Millisecond), err)
	if err == nil {
		t.Fatal("cancelled build succeeded")
	}
	if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "cancelled") {
		c.logTail(t, 30)
		t.Errorf("error %q does not say the build was cancelled", err)
	}
	c.checkNothingLeft(t)
}

// TestBuildUnreachableMirrorReal builds from a loopback port nothing
// listens on: the error must name the mirror and the failed fetch.
func TestBuildUnreachableMirrorReal(t *testing.T) {
	initBin := realBuild(t)
	c := newBuildCase(t, initBin, "")
	c.opts.Mirror = "http://127.0.0.1:9/debian"
	err := c.build(t)
	t.Logf("error: %v", err)
	msg := err.Error()
	if !strings.Contains(msg, "127.0.0.1:9") {
		t.Errorf("error does not name the mirror 127.0.0.1:9: %q", msg)
	}
	if !regexp.MustCompile(`(?i)failed to fetch|could not connect|connection refused|unable to connect`).MatchString(msg) {
		t.Errorf("error does not say the fetch failed: %q", msg)
	}
	c.checkNothingLeft(t)
}

// TestBuildUnknownPackageReal asks for a package the archive lacks: the
// error must carry apt's "Unable to locate package" line.
func TestBuildUnknownPackageReal(t *testing.T) {
	initBin := realBuild(t)
	c := newBuildCase(t, initBin, "")
	c.opts.Packages = []string{"no-such-package-banger"}
	err := c.build(t)
	t.Logf("error: %v", err)
	if !strings.Contains(err.Error(), "Unable to locate package no-such-package-banger") {
		t.Errorf("error lacks apt's \"Unable to locate package no-such-package-banger\": %q", err)
	}
	c.checkNothingLeft(t)
}

// TestBuildDiskFullReal builds into a 64 MiB tmpfs: the work tree next to
// the destination runs out of space, and the error must say so.
func TestBuildDiskFullReal(t *testing.T) {
	initBin := realBuild(t)
	small := filepath.Join(t.TempDir(), "small")
	if err := os.Mkdir(small, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=64m,mode=0755", "banger-test-full", small).CombinedOutput(); err != nil {
		t.Fatalf("mount a 64 MiB tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", small).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", small, err, out)
		}
	})
	c := newBuildCase(t, initBin, small)
	err := c.build(t)
	t.Logf("error: %v", err)
	if !regexp.MustCompile(`(?i)no space left|not enough free space|enough free space`).MatchString(err.Error()) {
		c.logTail(t, 30)
		t.Errorf("error does not say the disk is full: %q", err)
	}
	c.checkNothingLeft(t)
	var st unix.Statfs_t
	if err := unix.Statfs(small, &st); err == nil {
		if used := (st.Blocks - st.Bfree) * uint64(st.Bsize); used > 1<<20 {
			t.Errorf("%d KiB still used on the tmpfs after the failed build", used>>10)
		}
	}
}

// TestInspectCorruptReal offers Inspect files that cannot be a banger
// image: random bytes, and an ext4 made from a tree without sshd or
// banger-init. It needs only e2fsprogs, so it is not behind BANGER_E2E.
func TestInspectCorruptReal(t *testing.T) {
	testenv.RequireBinary(t, "mkfs.ext4")
	testenv.RequireBinary(t, "debugfs")
	dir := t.TempDir()

	junk := filepath.Join(dir, "random.img")
	b := make([]byte, 4<<20)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(junk, b, 0o644); err != nil {
		t.Fatal(err)
	}
	r, err := Inspect(junk)
	t.Logf("random bytes: %+v, %v", r, err)
	if err == nil && (r.Ext4 || !containsAll(r.Missing, "ext4 file system")) {
		t.Errorf("random bytes: report %+v, want Ext4 false and \"ext4 file system\" missing", r)
	}

	tree := filepath.Join(dir, "tree")
	for path, content := range map[string]string{
		"etc/hostname":        "plain\n",
		"usr/bin/bash":        "#!/not/really\n",
		"etc/ssh/sshd_config": "Port 22\n",
	} {
		p := filepath.Join(tree, path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	img := filepath.Join(dir, "nosshd.ext4")
	if err := os.WriteFile(img, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 64<<20); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-d", tree, img).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4 -d: %v: %s", err, out)
	}
	r, err = Inspect(img)
	t.Logf("ext4 without sshd: %+v, %v", r, err)
	if err != nil {
		t.Fatal(err)
	}
	if !r.Ext4 || r.HasSSHD || r.HasBangerInit || !r.HasBash {
		t.Errorf("ext4 without sshd: report %+v, want Ext4 and bash, no sshd, no banger-init", r)
	}
	if !containsAll(r.Missing, "sshd", "banger-init") {
		t.Errorf("Missing %q does not name sshd and banger-init", r.Missing)
	}
}

// containsAll reports whether every want is a substring of some item.
func containsAll(items []string, wants ...string) bool {
	for _, w := range wants {
		found := false
		for _, it := range items {
			if strings.Contains(it, w) {
				found = true
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// mountsBelow lists mount points at or below any of dirs, deepest first;
// a dir that is itself the mount point of a test's own tmpfs is not listed.
func mountsBelow(dirs ...string) []string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return []string{"cannot read /proc/self/mountinfo: " + err.Error()}
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		mp := unescapeMountinfo(f[4])
		for _, d := range dirs {
			if strings.HasPrefix(mp, d+"/") {
				out = append(out, mp)
				break
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	return out
}

// unmountUnder lazily unmounts whatever is left below dirs, so that the
// test's temp dir removal cannot delete through a bind mount. A build that
// passes its checks leaves nothing for it to do.
func unmountUnder(t *testing.T, dirs ...string) {
	for _, mp := range mountsBelow(dirs...) {
		out, err := exec.Command("umount", "-l", mp).CombinedOutput()
		t.Logf("cleanup: umount -l %s: %v %s", mp, err, bytes.TrimSpace(out))
	}
}

// leftBehind lists the live processes that belong to a build: descendants
// of this test process (orphans come back to it, a child subreaper) and
// any mmdebstrap, apt or dpkg whose command line, working directory or
// root lies under one of dirs. It waits up to a second for exiting ones.
func leftBehind(dirs ...string) []string {
	var procs []string
	for deadline := time.Now().Add(time.Second); ; time.Sleep(100 * time.Millisecond) {
		procs = scanProcs(dirs)
		if len(procs) == 0 || time.Now().After(deadline) {
			return procs
		}
	}
}

var buildTools = regexp.MustCompile(`^(mmdebstrap|apt|apt-get|apt-config|dpkg|dpkg-deb|http|https|gpgv|store|copy|file|sh|perl|tar|mount)$`)

func scanProcs(dirs []string) []string {
	self := os.Getpid()
	type proc struct {
		ppid        int
		comm, state string
	}
	all := map[int]proc{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid …; comm may hold spaces and parentheses.
		s := string(stat)
		open, closing := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if open < 0 || closing < open {
			continue
		}
		rest := strings.Fields(s[closing+1:])
		if len(rest) < 2 {
			continue
		}
		ppid, _ := strconv.Atoi(rest[1])
		all[pid] = proc{ppid: ppid, comm: s[open+1 : closing], state: rest[0]}
	}
	var out []string
	for pid, p := range all {
		if p.state == "Z" || pid == self {
			continue
		}
		descendant := false
		for q, hops := p.ppid, 0; q > 1 && hops < 64; q, hops = all[q].ppid, hops+1 {
			if q == self {
				descendant = true
				break
			}
		}
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		args := strings.ReplaceAll(strings.TrimRight(string(cmdline), "\x00"), "\x00", " ")
		under := false
		if buildTools.MatchString(p.comm) {
			cwd, _ := os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid))
			root, _ := os.Readlink(fmt.Sprintf("/proc/%d/root", pid))
			for _, d := range dirs {
				if strings.Contains(args, d) || strings.HasPrefix(cwd, d) || strings.HasPrefix(root, d) {
					under = true
				}
			}
		}
		if descendant || under {
			out = append(out, fmt.Sprintf("pid %d ppid %d %s [%s]: %s", pid, p.ppid, p.comm, p.state, args))
		}
	}
	sort.Strings(out)
	return out
}

func TestUnescapeMountinfo(t *testing.T) {
	for in, want := range map[string]string{
		"/tmp/plain":         "/tmp/plain",
		`/tmp/a\040b`:        "/tmp/a b",
		`/tmp/tab\011x\134y`: "/tmp/tab\tx\\y",
		`/tmp/trailing\04`:   `/tmp/trailing\04`,
		`/tmp/not\999octal`:  `/tmp/not\999octal`,
	} {
		if got := unescapeMountinfo(in); got != want {
			t.Errorf("unescapeMountinfo(%q) = %q, want %q", in, got, want)
		}
	}
}
