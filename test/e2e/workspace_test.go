package e2e

import (
	"context"
	"fmt"
	mathrand "math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/banger/banger/internal/api"
	"github.com/banger/banger/internal/hostnet"
)

func gitIn(t *testing.T, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command("git", append([]string{"-C", dir}, args...)...)
	cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=Test", "GIT_AUTHOR_EMAIL=t@example.com",
		"GIT_COMMITTER_NAME=Test", "GIT_COMMITTER_EMAIL=t@example.com", "GIT_CONFIG_NOSYSTEM=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("git %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// runIn runs the banger CLI with dir as its working directory.
func (h *Harness) runIn(dir string, args ...string) (string, string, int) {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	cmd := h.Command(ctx, args...)
	cmd.Dir = dir
	var o, e strings.Builder
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		code = -1
	}
	return o.String(), e.String(), code
}

// guestSh runs a shell command in the VM and returns its stdout.
func (h *Harness) guestSh(vm, script string) (string, int) {
	h.t.Helper()
	out, _, code := h.Run("vm", "exec", vm, "--", "sh", "-c", script)
	return out, code
}

// TestWorkspace: a repository goes into a guest with its history and
// uncommitted state, and the guest's work comes back as a branch without
// touching the host's working tree.
func TestWorkspace(t *testing.T) {
	h := NewHarness(t)
	repo := t.TempDir()
	gitIn(t, repo, "init", "-q", "-b", "main")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.WriteFile(filepath.Join(repo, "README.md"), []byte("hello\n"), 0o644))
	must(os.WriteFile(filepath.Join(repo, "build.sh"), []byte("#!/bin/sh\necho built\n"), 0o755))
	must(os.WriteFile(filepath.Join(repo, "file with spaces.txt"), []byte("spaces\n"), 0o644))
	must(os.WriteFile(filepath.Join(repo, ".gitignore"), []byte("secret.env\n"), 0o644))
	must(os.Symlink("README.md", filepath.Join(repo, "readme-link")))
	gitIn(t, repo, "add", "-A")
	gitIn(t, repo, "commit", "-q", "-m", "initial")
	must(os.WriteFile(filepath.Join(repo, "secret.env"), []byte("TOKEN=x\n"), 0o644))
	must(os.WriteFile(filepath.Join(repo, "notes.txt"), []byte("untracked\n"), 0o644))
	must(os.WriteFile(filepath.Join(repo, "README.md"), []byte("hello, edited\n"), 0o644))
	hostStatus := gitIn(t, repo, "status", "--porcelain")
	hostHead := strings.TrimSpace(gitIn(t, repo, "rev-parse", "HEAD"))

	vm := h.StartVM("ws")
	// The data channel relies on the tap guard: the VM's tap has one.
	if out, err := h.InNetns("nft", "list", "table", "bridge", "banger-"+hostnet.TapName(vm.ID)); err != nil || !strings.Contains(out, "ether saddr != "+vm.GuestMAC) {
		t.Errorf("the VM's tap is not guarded: %v\n%s", err, out)
	}
	var info api.WorkspaceInfo
	h.JSON(&info, "vm", "workspace", "prepare", "ws", "--source", repo, "--guest-path", "/root/repo")
	// The default image's banger-init receives: the stream took the data
	// channel, not the SSH session.
	if info.Transport != "tcp" || info.Files != 6 || info.Head != hostHead {
		t.Errorf("prepare answered %+v, want transport tcp, 6 files, head %s", info, hostHead)
	}

	if out, _ := h.guestSh("ws", "cd /root/repo && git status --porcelain"); out != hostStatus {
		t.Errorf("guest git status:\n%s\nwant the host's:\n%s", out, hostStatus)
	}
	if out, _ := h.guestSh("ws", "cd /root/repo && git rev-parse HEAD"); strings.TrimSpace(out) != hostHead {
		t.Errorf("guest HEAD %q, want %s", out, hostHead)
	}
	if out, _ := h.guestSh("ws", "cd /root/repo && git log --format='%H %an %s' --all"); out != gitIn(t, repo, "log", "--format=%H %an %s", "--all") {
		t.Errorf("guest git log:\n%s\nwant the host's", out)
	}
	checks := map[string]string{
		"cat /root/repo/README.md":                     "hello, edited\n",
		"cat /root/repo/notes.txt":                     "untracked\n",
		"cat '/root/repo/file with spaces.txt'":        "spaces\n",
		"/root/repo/build.sh":                          "built\n",
		"readlink /root/repo/readme-link":              "README.md\n",
		"test -e /root/repo/secret.env || echo absent": "absent\n",
	}
	for cmd, want := range checks {
		if out, _ := h.guestSh("ws", cmd); out != want {
			t.Errorf("guest %s = %q, want %q", cmd, out, want)
		}
	}

	// Read-only: nothing in it can be written, even by root.
	h.MustRun("vm", "workspace", "prepare", "ws", "--source", repo, "--guest-path", "/root/ro", "--readonly")
	if _, code := h.guestSh("ws", "echo x >> /root/ro/README.md"); code == 0 {
		t.Error("writing into a read-only workspace succeeded")
	}
	if _, code := h.guestSh("ws", "touch /root/ro/new"); code == 0 {
		t.Error("creating a file in a read-only workspace succeeded")
	}

	// Disk full in the guest: a clear error, the old tree as it was, no
	// temp dir left, the space given back.
	if _, code := h.guestSh("ws", `fallocate -l $(( $(df --output=avail -B1 /root | tail -1) - 16*1024*1024 )) /root/filler`); code != 0 {
		t.Fatal("filling the guest's disk failed")
	}
	big := t.TempDir()
	gitIn(t, big, "init", "-q", "-b", "main")
	blob := make([]byte, 24<<20)
	rng := mathrand.NewChaCha8([32]byte{3})
	rng.Read(blob)
	must(os.WriteFile(filepath.Join(big, "big.bin"), blob, 0o644))
	gitIn(t, big, "add", "-A")
	gitIn(t, big, "commit", "-q", "-m", "big")
	if _, errOut, code := h.Run("vm", "workspace", "prepare", "ws", "--source", big, "--guest-path", "/root/repo"); code == 0 || !strings.Contains(errOut, "the guest's disk is full") {
		t.Errorf("prepare onto a full disk: exit %d, stderr %q; want a failure naming the full disk", code, errOut)
	} else {
		t.Logf("prepare onto a full disk: %s", strings.TrimSpace(errOut))
	}
	if out, _ := h.guestSh("ws", "ls -a /root | grep -c banger-tmp; cat /root/repo/README.md"); out != "0\nhello, edited\n" {
		t.Errorf("after the failed prepare: %q, want no temp dir and the old tree", out)
	}
	if out, _ := h.guestSh("ws", "df --output=avail -B1 /root | tail -1"); strings.TrimSpace(out) == "" {
		t.Error("df failed")
	} else if avail, _ := strconv.ParseInt(strings.TrimSpace(out), 10, 64); avail < 8<<20 {
		t.Errorf("the failed prepare kept its space: %d bytes free", avail)
	}
	h.guestSh("ws", "rm -f /root/filler")

	// Tracked: the same files in a fresh one-commit repository, made on
	// the host, clean in the guest's eyes.
	h.JSON(&info, "vm", "workspace", "prepare", "ws", "--source", repo, "--guest-path", "/root/tracked", "--mode", "tracked")
	if info.Files != 6 || info.Head == "" || info.Head == hostHead {
		t.Errorf("tracked prepare answered %+v, want 6 files and a new head", info)
	}
	tracked := map[string]string{
		"cd /root/tracked && git status --porcelain":                  "",
		"cd /root/tracked && git log --format='%an|%s'":               "banger|banger: workspace snapshot\n",
		"cd /root/tracked && git ls-files -s readme-link | cut -c1-6": "120000\n",
		"cd /root/tracked && git show HEAD:README.md":                 "hello, edited\n",
		"cd /root/tracked && git show HEAD:notes.txt":                 "untracked\n",
		"/root/tracked/build.sh":                                      "built\n",
		"test -e /root/tracked/secret.env || echo absent":             "absent\n",
	}
	for cmd, want := range tracked {
		if out, _ := h.guestSh("ws", cmd); out != want {
			t.Errorf("guest %s = %q, want %q", cmd, out, want)
		}
	}

	// The guest commits one change and leaves another uncommitted.
	if _, code := h.guestSh("ws", `cd /root/repo && git add -A && git -c user.name=agent -c user.email=a@b commit -q -m "agent: commit" && echo more >> build.sh && echo guest > guest.txt`); code != 0 {
		t.Fatal("guest work failed")
	}
	if out, errOut, code := h.runIn(repo, "vm", "workspace", "export", "ws", "--guest-path", "/root/repo", "--branch", "agent/1"); code != 0 {
		t.Fatalf("export: exit %d\n%s%s", code, out, errOut)
	}
	if _, errOut, code := h.runIn(repo, "vm", "workspace", "export", "ws", "--guest-path", "/root/repo", "--branch", "agent/1"); code == 0 {
		t.Error("a second export onto the existing branch without --force succeeded")
	} else {
		t.Logf("second export refused: %s", strings.TrimSpace(errOut))
	}
	log := gitIn(t, repo, "log", "--format=%s", "main..agent/1")
	for _, want := range []string{"agent: commit", "banger: uncommitted changes from ws"} {
		if !strings.Contains(log, want) {
			t.Errorf("agent/1 lacks %q:\n%s", want, log)
		}
	}
	if got := gitIn(t, repo, "show", "agent/1:guest.txt"); got != "guest\n" {
		t.Errorf("agent/1:guest.txt = %q", got)
	}
	if got := gitIn(t, repo, "status", "--porcelain"); got != hostStatus {
		t.Errorf("host status changed by export:\n%s\nwas:\n%s", got, hostStatus)
	}
	if got := strings.TrimSpace(gitIn(t, repo, "rev-parse", "HEAD")); got != hostHead {
		t.Errorf("host HEAD moved to %s", got)
	}

	// After the VM stops: more guest work comes back read from its disk,
	// without a boot.
	if _, code := h.guestSh("ws", `cd /root/repo && echo after >> README.md && git -c user.name=agent -c user.email=a@b commit -qam "agent: before stop" && echo late > late.txt`); code != 0 {
		t.Fatal("guest work before stop failed")
	}
	h.MustRun("vm", "stop", "ws")
	if st := h.VM("ws").State; st != "stopped" {
		t.Fatalf("vm state %s after stop", st)
	}
	if out, errOut, code := h.runIn(repo, "vm", "workspace", "export", "ws", "--guest-path", "/root/repo", "--branch", "agent/2"); code != 0 {
		t.Fatalf("export from the stopped vm: exit %d\n%s%s", code, out, errOut)
	}
	if got := gitIn(t, repo, "log", "--format=%s", "agent/1..agent/2"); got != "banger: uncommitted changes from ws\nagent: before stop\n" {
		t.Errorf("agent/2 adds %q", got)
	}
	if got := gitIn(t, repo, "show", "agent/2:late.txt"); got != "late\n" {
		t.Errorf("agent/2:late.txt = %q", got)
	}
	if st := h.VM("ws").State; st != "stopped" {
		t.Errorf("export from a stopped vm left it %s", st)
	}
	if got := gitIn(t, repo, "status", "--porcelain"); got != hostStatus {
		t.Errorf("host status changed by export:\n%s\nwas:\n%s", got, hostStatus)
	}
}

// TestWorkspaceBench compares prepare with a plain `tar | ssh tar` of the
// same files to the same guest in the same run (set BANGER_BENCH=1). The
// repository is source-like (~5,000 files, ~200 MB of compressible text,
// one commit); prepare is measured in the default full mode (which also
// carries .git) and in tracked mode, and reported as time ratios and as
// working-tree throughput.
func TestWorkspaceBench(t *testing.T) {
	if os.Getenv("BANGER_BENCH") != "1" {
		t.Skip("set BANGER_BENCH=1 (with BANGER_E2E=1) to run the workspace throughput bench")
	}
	h := NewHarness(t)
	repo := t.TempDir()
	gitIn(t, repo, "init", "-q", "-b", "main")
	words := strings.Fields("func return if else for range var const type struct interface map chan go defer select case switch package import err nil true false len append make new string int byte error context")
	rng := mathrand.New(mathrand.NewPCG(1, 2))
	var total int64
	var line strings.Builder
	for i := 0; i < 5000; i++ {
		var b strings.Builder
		for b.Len() < 40<<10 {
			line.Reset()
			for w := 0; w < 8; w++ {
				line.WriteString(words[rng.IntN(len(words))])
				line.WriteByte(' ')
			}
			fmt.Fprintf(&b, "%s%d\n", line.String(), rng.IntN(1<<20))
		}
		p := filepath.Join(repo, fmt.Sprintf("d%02d", i%50), fmt.Sprintf("f%04d.go", i))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
		total += int64(b.Len())
	}
	gitIn(t, repo, "add", "-A")
	gitIn(t, repo, "commit", "-q", "-m", "bulk")
	h.StartVM("bench", "--disk", "4G")

	timed := func(f func()) time.Duration {
		start := time.Now()
		f()
		return time.Since(start)
	}
	baseline := func(name, files string) time.Duration {
		cmd := exec.Command("sh", "-c", files+` | tar --null -T - -cf - | "$BANGER" vm ssh bench -- 'mkdir -p /root/`+name+` && tar -xf - -C /root/`+name+`'`)
		cmd.Dir = repo
		cmd.Env = append(h.env, "BANGER="+filepath.Join(binDir, "banger"))
		return timed(func() {
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("baseline %s: %v\n%s", name, err, out)
			}
		})
	}
	// The baseline of the spec: the working tree only.
	base := baseline("base", "git ls-files -z")
	// The same bytes as a full prepare: the working tree and .git.
	sameBytes := baseline("base-git", "{ git ls-files -z; find .git -type f -print0; }")
	full := timed(func() {
		h.MustRun("vm", "workspace", "prepare", "bench", "--source", repo, "--guest-path", "/root/ws")
	})
	tracked := timed(func() {
		h.MustRun("vm", "workspace", "prepare", "bench", "--source", repo, "--guest-path", "/root/ws-tracked", "--mode", "tracked")
	})
	mb := float64(total) / (1 << 20)
	t.Logf("working tree %.0f MB in 5000 files", mb)
	t.Logf("tar|ssh of the working tree %.1fs (%.1f MB/s); with .git %.1fs", base.Seconds(), mb/base.Seconds(), sameBytes.Seconds())
	t.Logf("prepare full (default, with .git) %.1fs (%.1f MB/s of working tree): ratio %.2f to the working-tree baseline, %.2f to the same bytes over tar|ssh",
		full.Seconds(), mb/full.Seconds(), full.Seconds()/base.Seconds(), full.Seconds()/sameBytes.Seconds())
	t.Logf("prepare tracked (fresh one-commit repo made on the host) %.1fs: ratio %.2f", tracked.Seconds(), tracked.Seconds()/base.Seconds())
}
