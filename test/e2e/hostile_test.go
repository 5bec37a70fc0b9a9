package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/banger/banger/internal/api"
	"github.com/banger/banger/internal/model"
	"github.com/banger/banger/internal/storage"
	"github.com/banger/banger/internal/store"
)

// The tests here treat the guest as hostile: every byte that comes out of
// it (its disk, files, repository, state files) is the attacker's. Each
// plants one attack in a real guest and checks that the host's defence
// holds, measured from outside the daemon.

// procStatusBytes reads a "kB" field (VmHWM, VmRSS) of /proc/<pid>/status.
func procStatusBytes(pid int, field string) int64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), field+":"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// procUIDs is the real and effective uid and the parent of a process.
func procUIDs(pid int) (ruid, euid uint64, ppid int, ok bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, 0, false
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		switch {
		case len(f) >= 3 && f[0] == "Uid:":
			ruid, _ = strconv.ParseUint(f[1], 10, 32)
			euid, _ = strconv.ParseUint(f[2], 10, 32)
			ok = true
		case len(f) >= 2 && f[0] == "PPid:":
			ppid, _ = strconv.Atoi(f[1])
		}
	}
	return ruid, euid, ppid, ok
}

// jailProcs lists the live processes running as one of the ids jails are
// drawn from: none may outlive the operation that made the jail.
func jailProcs() map[int]string {
	procs := map[int]string{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		ruid, euid, _, ok := procUIDs(pid)
		if !ok || (ruid < uint64(storage.JailIDs.First) && euid < uint64(storage.JailIDs.First)) {
			continue
		}
		cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		procs[pid] = fmt.Sprintf("uid %d: %s", ruid, strings.ReplaceAll(string(cmd), "\x00", " "))
	}
	return procs
}

// assertNoJailSurvivors fails when a jail process outlives an operation.
// A second look a moment later leaves out another test's jail that was
// just ending.
func assertNoJailSurvivors(t *testing.T) {
	t.Helper()
	first := jailProcs()
	if len(first) == 0 {
		return
	}
	time.Sleep(2 * time.Second)
	var left []string
	for pid, desc := range jailProcs() {
		if first[pid] == desc {
			left = append(left, fmt.Sprintf("pid %d %s", pid, desc))
		}
	}
	if len(left) > 0 {
		t.Errorf("processes of a jail id survived:\n%s", strings.Join(left, "\n"))
	}
}

// exportTemps lists the offline exports' temp trees in the daemon's temp
// dir (the daemon inherits this process's TMPDIR through the CLI).
func exportTemps() map[string]bool {
	m := map[string]bool{}
	found, _ := filepath.Glob(filepath.Join(os.TempDir(), "banger-export-*"))
	for _, p := range found {
		// The CLI's own banger-export-*.bundle files are not the daemon's.
		if fi, err := os.Lstat(p); err == nil && fi.IsDir() {
			m[p] = true
		}
	}
	return m
}

// fsUsed is the space in use on the file system holding p.
func fsUsed(t *testing.T, p string) int64 {
	t.Helper()
	var st syscall.Statfs_t
	if err := syscall.Statfs(p, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Blocks-st.Bfree) * st.Bsize
}

// allocated is the space the files under root take on disk (sparse files
// count at what they hold), without following links.
func allocated(root string) int64 {
	var n int64
	_ = filepath.WalkDir(root, func(_ string, d os.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if fi, err := d.Info(); err == nil {
			if st, ok := fi.Sys().(*syscall.Stat_t); ok {
				n += st.Blocks * 512
			}
		}
		return nil
	})
	return n
}

// guard watches bangerd while an attack is fed to it: its resident
// memory, and the space taken by the state dir and by new export temp
// trees (what banger writes on the host; the file systems' own use moves
// with whatever else runs on a shared host, so it is only logged). Past
// maxRSS or maxDisk it kills bangerd and the jail processes bangerd
// started, so that a broken defence fails the test instead of exhausting
// the host.
type guard struct {
	h               *Harness
	pid             int
	maxRSS, maxDisk int64
	state0          int64
	temps0          map[string]bool
	fs0             int64
	stop, done      chan struct{}

	mu                  sync.Mutex
	peakRSS, peakGrowth int64
	tripped             string
}

func (h *Harness) guard(t *testing.T, maxRSS, maxDisk int64) *guard {
	g := &guard{h: h, pid: h.DaemonPID(), maxRSS: maxRSS, maxDisk: maxDisk,
		state0: allocated(h.StateDir), temps0: exportTemps(), fs0: fsUsed(t, os.TempDir()),
		stop: make(chan struct{}), done: make(chan struct{})}
	go g.run()
	return g
}

func (g *guard) growth() int64 {
	n := allocated(g.h.StateDir) - g.state0
	for p := range exportTemps() {
		if !g.temps0[p] {
			n += allocated(p)
		}
	}
	return n
}

func (g *guard) run() {
	defer close(g.done)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for first := true; ; first = false {
		if !first {
			select {
			case <-g.stop:
				return
			case <-tick.C:
			}
		}
		rss, growth := procStatusBytes(g.pid, "VmRSS"), g.growth()
		g.mu.Lock()
		g.peakRSS, g.peakGrowth = max(g.peakRSS, rss), max(g.peakGrowth, growth)
		over := ""
		switch {
		case rss > g.maxRSS:
			over = fmt.Sprintf("bangerd's RSS reached %d MiB", rss>>20)
		case growth > g.maxDisk:
			over = fmt.Sprintf("banger's files on the host grew by %d MiB", growth>>20)
		}
		if over != "" && g.tripped == "" {
			g.tripped = over
		}
		g.mu.Unlock()
		if over != "" {
			g.killDaemonTree()
			return
		}
	}
}

// killDaemonTree kills bangerd and its jail descendants, by pid.
func (g *guard) killDaemonTree() {
	var jailed []int
	for pid := range jailProcs() {
		for p, i := pid, 0; p > 1 && i < 16; i++ {
			_, _, pp, ok := procUIDs(p)
			if !ok {
				break
			}
			if pp == g.pid {
				jailed = append(jailed, pid)
				break
			}
			p = pp
		}
	}
	_ = syscall.Kill(g.pid, syscall.SIGKILL)
	for _, pid := range jailed {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	// The killed daemon cannot remove the temp trees it was filling.
	time.Sleep(500 * time.Millisecond)
	for p := range exportTemps() {
		if !g.temps0[p] {
			os.RemoveAll(p)
		}
	}
}

// end stops watching and returns the peaks seen and why it tripped ("" if
// it did not); it logs how the temp file system's use moved meanwhile.
func (g *guard) end(t *testing.T) (peakRSS, peakGrowth int64, tripped string) {
	close(g.stop)
	<-g.done
	g.mu.Lock()
	defer g.mu.Unlock()
	t.Logf("meanwhile the file system of %s (shared with the rest of the host) went %+d MiB", os.TempDir(), (fsUsed(t, os.TempDir())-g.fs0)>>20)
	return g.peakRSS, g.peakGrowth, g.tripped
}

// timedRun is h.Run bounded by d: past it the CLI is interrupted, as by
// Ctrl-C, and killed if it does not end within 10s of that.
func (h *Harness) timedRun(dir string, d time.Duration, args ...string) (stdout, stderr string, code int, took time.Duration) {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	cmd := h.Command(ctx, args...)
	cmd.Dir = dir
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = 10 * time.Second
	var o, e strings.Builder
	cmd.Stdout, cmd.Stderr = &o, &e
	start := time.Now()
	err := cmd.Run()
	took = time.Since(start)
	code = 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		code = -1
	}
	if ctx.Err() != nil {
		code = -2
	}
	return o.String(), e.String(), code, took
}

// hostileRepo makes a host repository with one commit and prepares it as
// /root/repo in a fresh VM.
func hostileRepo(t *testing.T, h *Harness, vm string) string {
	t.Helper()
	repo := t.TempDir()
	gitIn(t, repo, "init", "-q", "-b", "main")
	if err := os.WriteFile(filepath.Join(repo, "README.md"), []byte("hello\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	gitIn(t, repo, "add", "-A")
	gitIn(t, repo, "commit", "-q", "-m", "initial")
	h.StartVM(vm)
	h.MustRun("vm", "workspace", "prepare", vm, "--source", repo, "--guest-path", "/root/repo")
	return repo
}

// TestHostileNestedRepoExport: a stopped VM's workspace holds a nested
// repository (untracked) and a committed one (a gitlink), each with a
// filter, smudge, external diff, textconv and fsmonitor that would touch
// a file on the host, and the top repository's config names the same.
// The offline export runs none of them: it succeeds, the nested files
// arrive as plain files, no temp tree or jail process is left.
func TestHostileNestedRepoExport(t *testing.T) {
	h := NewHarness(t)
	const vm = "hnest"
	repo := hostileRepo(t, h, vm)

	// World-writable, as a jail's id could write it: a command the guest
	// planted, run by any uid, leaves its name here.
	marks, err := os.MkdirTemp("", "banger-hostile-marks-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(marks) })
	if err := os.Chmod(marks, 0o777); err != nil {
		t.Fatal(err)
	}
	planted := func(who string) string {
		m := func(what string) string { return fmt.Sprintf("touch %s/%s-%s", marks, who, what) }
		return fmt.Sprintf(`
[filter "x"]
	clean = %s
	smudge = %s
	process = %s
[diff "x"]
	textconv = %s
	command = %s
[diff]
	external = %s
[core]
	fsmonitor = %s
	pager = %s
[uploadpack]
	packObjectsHook = %s
`, m("clean"), m("smudge"), m("process"), m("textconv"), m("diffcmd"), m("external"), m("fsmonitor"), m("pager"), m("packobjects"))
	}
	// The planted configs go in last: the guest's own git must not trip
	// over them while the tree is built.
	script := fmt.Sprintf(`set -eu
cd /root/repo
g() { git -c user.name=agent -c user.email=a@b "$@"; }
mkdir mod && (cd mod && git init -q && echo m1 > m.txt && g add m.txt && g commit -qm mod)
g add mod 2>/dev/null && g commit -qm "mod as a gitlink"
mkdir sub && (cd sub && git init -q && echo s1 > s.txt && g add s.txt && g commit -qm sub)
# Same sizes: git must hash each to tell it changed (through a filter,
# were one in effect).
echo HELLO > README.md
echo M1 > mod/m.txt
echo S1 > sub/s.txt
for d in . mod sub; do printf '* filter=x diff=x\n' > "$d/.gitattributes"; done
cat >> .git/config <<'EOF'
%s
EOF
cat >> mod/.git/config <<'EOF'
%s
EOF
cat >> sub/.git/config <<'EOF'
%s
EOF
sync
`, planted("top"), planted("mod"), planted("sub"))
	if out, errOut, code := h.Run("vm", "exec", vm, "--", "bash", "-c", script); code != 0 {
		t.Fatalf("planting the nested repositories: exit %d\n%s%s", code, out, errOut)
	}
	h.MustRun("vm", "stop", vm)

	temps := exportTemps()
	out, errOut, code, took := h.timedRun(repo, 5*time.Minute, "vm", "workspace", "export", vm, "--guest-path", "/root/repo", "--branch", "b")
	t.Logf("offline export: exit %d in %.1fs\nstdout: %s\nstderr: %s", code, took.Seconds(), out, errOut)
	if ran, _ := os.ReadDir(marks); len(ran) > 0 {
		var names []string
		for _, e := range ran {
			names = append(names, e.Name())
		}
		t.Errorf("commands the guest planted ran on the host: %v", names)
	}
	// The export succeeds: nested .git directories are stripped, not
	// refused, and the top config is rewritten.
	if code != 0 {
		t.Fatalf("offline export failed (exit %d): %s", code, errOut)
	}
	for path, want := range map[string]string{
		"README.md":      "HELLO\n",
		"sub/s.txt":      "S1\n",
		".gitattributes": "* filter=x diff=x\n",
	} {
		if got := gitIn(t, repo, "show", "b:"+path); got != want {
			t.Errorf("b:%s = %q, want %q", path, got, want)
		}
	}
	// sub came as plain files, mod stayed the gitlink the guest committed.
	tree := gitIn(t, repo, "ls-tree", "-r", "b")
	if !strings.Contains(tree, "100644 blob") || !strings.Contains(tree, "\tsub/s.txt\n") {
		t.Errorf("sub's files are not plain files on b:\n%s", tree)
	}
	if !strings.Contains(tree, "160000 commit") || strings.Contains(tree, "\tsub\n") {
		t.Errorf("b's tree:\n%s\nwant mod as a gitlink and sub as files", tree)
	}
	for p := range exportTemps() {
		if !temps[p] {
			t.Errorf("the export left its temp tree %s", p)
		}
	}
	assertNoJailSurvivors(t)
	h.MustRun("vm", "delete", vm)
	h.AssertNoLeaks()
}

// hwm is bangerd's peak resident memory so far.
func (h *Harness) hwm() int64 { return procStatusBytes(h.DaemonPID(), "VmHWM") }

// TestHostileSparseSessionStatus: a session's status file made 1 TiB
// (sparse: it costs the guest nothing) in a VM then stopped. Listing the
// sessions reads the state files from the work disk: it answers quickly,
// the session is failed, the file is refused by its size, and bangerd's
// memory stays small.
func TestHostileSparseSessionStatus(t *testing.T) {
	h := NewHarness(t)
	const vm = "hsess"
	h.StartVM(vm)
	var s model.Session
	if err := json.Unmarshal([]byte(h.MustRun("session", "start", vm, "--json", "--name", "sleeper", "--", "sleep", "100000")), &s); err != nil || s.StateDir == "" {
		t.Fatalf("session start --json: %v %+v", err, s)
	}
	// The runner is killed first, so that nothing in the guest rewrites
	// status at power-off.
	script := fmt.Sprintf(`set -eu
d=%s
kill -9 "$(cat "$d/monitor_pid")"
truncate -s 1T "$d/status"
sync
stat -c %%s "$d/status"`, s.StateDir)
	if out, errOut, code := h.Run("vm", "exec", vm, "--", "bash", "-c", script); code != 0 || strings.TrimSpace(out) != "1099511627776" {
		t.Fatalf("making the status file 1 TiB: exit %d %q %s", code, out, errOut)
	}
	h.MustRun("vm", "stop", vm)

	g := h.guard(t, 1<<30, 1<<30)
	out, errOut, code, took := h.timedRun("", 60*time.Second, "session", "list", vm, "--json")
	peak, growth, tripped := g.end(t)
	t.Logf("session list: exit %d in %.2fs; bangerd RSS peak during it %d MiB, banger's host files grew %d MiB\n%s%s",
		code, took.Seconds(), peak>>20, growth>>20, out, errOut)
	if tripped != "" {
		t.Fatalf("bangerd was killed: %s", tripped)
	}
	if code == -2 {
		t.Fatalf("session list did not answer within 60s")
	}
	hwm := h.hwm()
	t.Logf("bangerd VmHWM %d MiB", hwm>>20)
	if hwm > 200<<20 {
		t.Errorf("bangerd's peak RSS %d MiB is over 200 MiB", hwm>>20)
	}
	if code != 0 {
		t.Fatalf("session list: exit %d: %s", code, errOut)
	}
	var got model.Session
	h.JSON(&got, "session", "show", vm, "sleeper")
	if got.Status != model.SessionFailed || got.Error == "" {
		t.Errorf("sleeper after the vm stopped: status %s error %q, want failed with a reason", got.Status, got.Error)
	}
	log, _ := os.ReadFile(filepath.Join(h.StateDir, "bangerd.log"))
	if !strings.Contains(string(log), "/status on disk") || !strings.Contains(string(log), "is 1099511627776 bytes, over the limit") {
		t.Errorf("bangerd.log does not name the refused status file and its size")
	}
	assertNoJailSurvivors(t)
	h.MustRun("vm", "delete", vm)
	h.AssertNoLeaks()
}

// TestHostileSparseWorkspaceFile: a 1 TiB sparse file in a stopped VM's
// workspace. The offline export refuses it by its apparent size, at once,
// with the file named, and the host's temp and state file systems and
// bangerd's memory stay as they were. Then, with the VM running, the
// export of the same file is observed (git in the guest hashes it; the
// guest pays for that) under a cap, and the host's side is checked.
func TestHostileSparseWorkspaceFile(t *testing.T) {
	h := NewHarness(t)
	const vm = "hbig"
	repo := hostileRepo(t, h, vm)
	if out, code := h.guestSh(vm, "cd /root/repo && truncate -s 1T big.bin && echo edited >> README.md && sync && stat -c %s big.bin"); code != 0 || strings.TrimSpace(out) != "1099511627776" {
		t.Fatalf("making a 1 TiB sparse file in the guest: exit %d %q", code, out)
	}
	h.MustRun("vm", "stop", vm)

	temps := exportTemps()
	g := h.guard(t, 1<<30, 1<<30)
	out, errOut, code, took := h.timedRun(repo, 2*time.Minute, "vm", "workspace", "export", vm, "--guest-path", "/root/repo", "--branch", "big")
	peak, growth, tripped := g.end(t)
	t.Logf("offline export of a 1 TiB sparse file: exit %d in %.2fs; bangerd RSS peak %d MiB; banger's host files grew %d KiB\nstdout: %s\nstderr: %s",
		code, took.Seconds(), peak>>20, growth>>10, out, errOut)
	if tripped != "" {
		t.Fatalf("bangerd was killed: %s", tripped)
	}
	if code == -2 {
		t.Fatal("the offline export did not end within 2 minutes")
	}
	if code == 0 || !strings.Contains(errOut, `"big.bin" alone is 1099511627776 bytes`) {
		t.Errorf("offline export: exit %d %q; want a refusal naming big.bin and its size", code, errOut)
	}
	if growth > 64<<20 {
		t.Errorf("banger's files on the host grew by %d MiB", growth>>20)
	}
	if hwm := h.hwm(); hwm > 200<<20 {
		t.Errorf("bangerd's peak RSS %d MiB is over 200 MiB", hwm>>20)
	} else {
		t.Logf("bangerd VmHWM %d MiB", hwm>>20)
	}
	if exec.Command("git", "-C", repo, "rev-parse", "--verify", "-q", "refs/heads/big").Run() == nil {
		t.Error("a refused export made the branch")
	}
	for p := range exportTemps() {
		if !temps[p] {
			t.Errorf("the export left its temp tree %s", p)
		}
	}
	assertNoJailSurvivors(t)

	// Running: the guest's git hashes the file itself. Observed, capped.
	h.MustRun("vm", "start", vm)
	bundles0, _ := filepath.Glob(filepath.Join(os.TempDir(), "banger-export-*.bundle"))
	g = h.guard(t, 1<<30, 1<<30)
	during := make(chan string, 1)
	go func() {
		time.Sleep(30 * time.Second)
		out, _, _ := h.Run("vm", "exec", vm, "--", "sh", "-c", "ps -C git -o pid,etimes,time,rss,args; ls -l /root/repo/.git/objects/pack")
		during <- out
	}()
	// Hashing 1 TiB takes the guest hours; 45 s of it shows the host side
	// stays bounded and the cut ends the guest's work.
	_, errOut, code, took = h.timedRun(repo, 45*time.Second, "vm", "workspace", "export", vm, "--guest-path", "/root/repo", "--branch", "big-live")
	peak, growth, tripped = g.end(t)
	t.Logf("guest 30s into the running export:\n%s", <-during)
	t.Logf("running export of a 1 TiB sparse file: exit %d (-2: cut at the cap) after %.1fs; bangerd RSS peak %d MiB; banger's host files grew %d KiB\nstderr: %.400s",
		code, took.Seconds(), peak>>20, growth>>10, errOut)
	if tripped != "" {
		t.Fatalf("bangerd was killed: %s", tripped)
	}
	if growth > 64<<20 {
		t.Errorf("banger's files on the host grew by %d MiB", growth>>20)
	}
	// The cancelled request ends the guest's git too: the daemon kills
	// the command's process group when its client goes.
	deadline := time.Now().Add(15 * time.Second)
	for {
		ps, _ := h.guestSh(vm, "ps -C git -o pid=,args= || true")
		if strings.TrimSpace(ps) == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("git still runs in the guest 15s after the export was cut:\n%s", ps)
			break
		}
		time.Sleep(time.Second)
	}
	// The interrupted CLI removed the file it was receiving the bundle in.
	bundles, _ := filepath.Glob(filepath.Join(os.TempDir(), "banger-export-*.bundle"))
	if len(bundles) > len(bundles0) {
		t.Errorf("the interrupted export left its bundle file: %v (before: %v)", bundles, bundles0)
	}
	du, _ := h.guestSh(vm, "du -sh /root/repo/.git; df -h /root | tail -1")
	t.Logf("guest after the capped export:\n%s", du)
	h.MustRun("vm", "delete", "--force", vm)
	h.AssertNoLeaks()
}

// TestHostileEmptyDatabase: a state directory whose database lost its
// records. With the database gone the daemon refuses to start and says
// which file and directory; with an empty one it starts, lists no VM, and
// has moved the unknown VM's directory whole to lost+found (its work disk
// byte for byte), which doctor reports.
func TestHostileEmptyDatabase(t *testing.T) {
	h := NewHarness(t)
	const vm = "hdb"
	v := h.StartVM(vm, "--disk", "1G")
	h.MustRun("vm", "exec", vm, "--", "sh", "-c", "echo data > /root/keep && sync")
	h.MustRun("vm", "stop", vm)
	fi, err := os.Stat(v.WorkDisk)
	if err != nil {
		t.Fatal(err)
	}
	sum := fileSum(t, v.WorkDisk)
	h.MustRun("daemon", "stop")
	db := filepath.Join(h.StateDir, "banger.db")
	removeDB := func() {
		for _, suffix := range []string{"", "-wal", "-shm"} {
			if err := os.Remove(db + suffix); err != nil && !errors.Is(err, os.ErrNotExist) {
				t.Fatal(err)
			}
		}
	}

	// No database at all: refused, with the file and the directory named.
	removeDB()
	_, errOut, code := h.Run("vm", "list")
	t.Logf("vm list without a database: exit %d\n%s", code, errOut)
	if code == 0 || !strings.Contains(errOut, db+" is missing") || !strings.Contains(errOut, filepath.Join(h.StateDir, "vms")) {
		t.Errorf("without a database: exit %d %q; want a refusal naming %s and the vms directory", code, errOut, db)
	}
	if _, err := os.Stat(db); err == nil {
		t.Error("the refusing daemon made a database")
	}
	if _, err := os.Stat(v.Dir); err != nil {
		t.Errorf("the vm directory went while the daemon refused: %v", err)
	}

	// An empty database, as a fresh state directory's.
	st, err := store.Open(db)
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
	var vms []model.VM
	h.JSON(&vms, "vm", "list")
	if len(vms) != 0 {
		t.Errorf("vm list over an empty database: %+v", vms)
	}
	lost, _ := filepath.Glob(filepath.Join(h.StateDir, "lost+found", v.ID+"-*"))
	if len(lost) != 1 {
		t.Fatalf("lost+found holds %v, want one directory for %s", lost, v.ID)
	}
	t.Cleanup(func() { os.RemoveAll(filepath.Join(h.StateDir, "lost+found")) })
	if _, err := os.Stat(v.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the vm directory is still in vms/: %v", err)
	}
	moved := filepath.Join(lost[0], filepath.Base(v.WorkDisk))
	if mfi, err := os.Stat(moved); err != nil || mfi.Size() != fi.Size() || fileSum(t, moved) != sum {
		t.Errorf("the work disk in lost+found differs from the one before (%v)", err)
	}
	// The guest's file is in it, read without mounting.
	if out, err := exec.Command("debugfs", "-R", "cat /keep", moved).Output(); err != nil || string(out) != "data\n" {
		t.Errorf("/root/keep in the moved work disk: %q %v", out, err)
	}
	var rep api.DoctorReport
	h.JSON(&rep, "doctor")
	found := false
	for _, c := range rep.Checks {
		if c.Name == "lost+found" {
			found = true
			t.Logf("doctor: %+v", c)
			if c.OK || !strings.Contains(c.Detail, filepath.Join(h.StateDir, "lost+found")) {
				t.Errorf("doctor's lost+found check: %+v, want failing and naming the directory", c)
			}
		}
	}
	if !found {
		t.Error("doctor has no lost+found check")
	}
	// What reconcile tears down: nothing of the VM runs or is attached.
	h.AssertNoLeaks()
}

// TestHostileEndlessGuestAnswer: banger runs its guest scripts as `bash -c`
// through root's login shell, which finds bash on PATH, so a guest can
// answer every script with output that never ends. Listing sessions of
// the running VM reads such an answer: bangerd keeps at most a bounded
// amount of it, stops the guest's command, and answers in time.
func TestHostileEndlessGuestAnswer(t *testing.T) {
	h := NewHarness(t)
	const vm = "hans"
	h.StartVM(vm)
	h.MustRun("session", "start", vm, "--name", "sleeper", "--", "sleep", "100000")
	if out, code := h.guestSh(vm, `printf '#!/bin/sh\nexec yes banger-state-of-mind\n' > /usr/local/bin/bash && chmod +x /usr/local/bin/bash && command -v bash`); code != 0 || strings.TrimSpace(out) != "/usr/local/bin/bash" {
		t.Fatalf("planting an endless bash: exit %d %q", code, out)
	}

	g := h.guard(t, 1<<30, 1<<30)
	out, errOut, code, took := h.timedRun("", 60*time.Second, "session", "list", vm, "--json")
	peak, _, tripped := g.end(t)
	t.Logf("session list against an endless answer: exit %d in %.1fs; bangerd RSS peak %d MiB\n%.300s%.300s", code, took.Seconds(), peak>>20, out, errOut)
	if tripped != "" {
		t.Fatalf("bangerd was killed: %s", tripped)
	}
	if code == -2 {
		t.Fatal("session list did not answer within 60s")
	}
	if peak > 200<<20 {
		t.Errorf("bangerd's RSS reached %d MiB reading the guest's answer", peak>>20)
	}
	if log, _ := os.ReadFile(filepath.Join(h.StateDir, "bangerd.log")); !strings.Contains(string(log), "answered a command with more than") {
		t.Error("bangerd.log does not say the guest's answer was over the bound")
	}
	// The guest's command was stopped, not left writing.
	time.Sleep(2 * time.Second)
	if ps, _ := h.guestSh(vm, "ps -C yes -o pid=,args= || true"); strings.TrimSpace(ps) != "" {
		t.Errorf("the endless answer still runs in the guest:\n%s", ps)
	}
	h.MustRun("vm", "delete", "--force", vm)
	h.AssertNoLeaks()
}
