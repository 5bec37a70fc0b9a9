// Package integration runs the built banger and bangerd binaries together
// against a temporary state directory: cold start, restarts after kill -9,
// racing starts, permissions, the single-instance lock and stop. It boots
// no VM. The daemon's networking (bridge, NAT, DNS) lives in a network
// namespace of the test's own, deleted at the end, so the host's is never
// touched.
package integration

import (
	"bytes"
	"encoding/json"
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

	"github.com/banger/banger/internal/testenv"
)

// binDir holds banger and bangerd: BANGER_TEST_BIN when set (prebuilt),
// else built once from this module.
var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// built is the directory this run built into, removed at the end.
var built string

func TestMain(m *testing.M) {
	code := m.Run()
	if built != "" {
		os.RemoveAll(built)
	}
	os.Exit(code)
}

func binaries(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		if d := os.Getenv("BANGER_TEST_BIN"); d != "" {
			binDir = d
			return
		}
		dir, err := os.MkdirTemp("", "banger-integration-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binDir, built = dir, dir
		cmd := exec.Command("go", "build", "-o", dir+"/", "../../cmd/banger", "../../cmd/bangerd")
		out, err := cmd.CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binDir
}

// env is the environment for one test's binaries: the caller's, minus any
// BANGER_* setting, plus the state dir.
type env struct {
	t        *testing.T
	bin      string
	stateDir string
	vars     []string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	testenv.RequireRoot(t) // bangerd manages host state
	e := &env{t: t, bin: binaries(t), stateDir: filepath.Join(t.TempDir(), "state")}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "BANGER_") {
			e.vars = append(e.vars, kv)
		}
	}
	testenv.RequireBinary(t, "ip") // for the test's network namespace
	ns := fmt.Sprintf("banger-test-%d-%d", os.Getpid(), time.Now().UnixNano()%1e9)
	e.vars = append(e.vars, "BANGER_STATE_DIR="+e.stateDir, "BANGER_CACHE_DIR="+filepath.Join(e.stateDir, "..", "cache"),
		"BANGER_NETNS="+ns)
	// Cleanups run last-first: the daemons die before their namespace goes.
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	t.Cleanup(e.killAll)
	return e
}

type result struct {
	code           int
	stdout, stderr string
}

func (e *env) run(name string, args ...string) result {
	e.t.Helper()
	cmd := exec.Command(filepath.Join(e.bin, name), args...)
	cmd.Env = e.vars
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		e.t.Fatalf("%s %v: %v", name, args, err)
	}
	return result{code, out.String(), errb.String()}
}

func (e *env) banger(args ...string) result {
	e.t.Helper()
	return e.run("banger", args...)
}

func (e *env) mustBanger(args ...string) string {
	e.t.Helper()
	r := e.banger(args...)
	if r.code != 0 {
		e.t.Fatalf("banger %v: exit %d\nstdout: %s\nstderr: %s\ndaemon log:\n%s", args, r.code, r.stdout, r.stderr, e.log())
	}
	return r.stdout
}

func (e *env) log() string {
	b, _ := os.ReadFile(filepath.Join(e.stateDir, "bangerd.log"))
	return string(b)
}

// daemons returns the pids of live bangerd processes of this test's state
// dir, found by executable and environment.
func (e *env) daemons() []int {
	want := filepath.Join(e.bin, "bangerd")
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, ent := range ents {
		pid, err := strconv.Atoi(ent.Name())
		if err != nil {
			continue
		}
		exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
		if err != nil || exe != want {
			continue
		}
		stat, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if i := bytes.LastIndexByte(stat, ')'); i > 0 && len(stat) > i+2 && stat[i+2] == 'Z' {
			continue // exited, not yet reaped
		}
		environ, _ := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
		for _, kv := range bytes.Split(environ, []byte{0}) {
			if string(kv) == "BANGER_STATE_DIR="+e.stateDir {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}

func (e *env) killAll() {
	for _, pid := range e.daemons() {
		syscall.Kill(pid, syscall.SIGKILL)
	}
}

func waitUntil(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestDaemonLifecycle(t *testing.T) {
	e := newEnv(t)

	// Cold start: the first call starts the daemon.
	r := e.banger("vm", "list", "--json")
	if r.code != 0 || strings.TrimSpace(r.stdout) != "[]" {
		t.Fatalf("cold vm list: exit %d, stdout %q, stderr %q\nlog:\n%s", r.code, r.stdout, r.stderr, e.log())
	}
	if !strings.Contains(r.stderr, "started bangerd") {
		t.Errorf("cold start did not say it started bangerd: %q", r.stderr)
	}
	pids := e.daemons()
	if len(pids) != 1 {
		t.Fatalf("bangerd processes after cold start: %v, want one", pids)
	}
	first := pids[0]

	if out := strings.TrimSpace(e.mustBanger("image", "list", "--json")); out != "[]" {
		t.Errorf("image list --json = %q, want []", out)
	}
	var kernels []json.RawMessage
	if err := json.Unmarshal([]byte(e.mustBanger("kernel", "list", "--json")), &kernels); err != nil {
		t.Errorf("kernel list --json is not a JSON array: %v", err)
	}
	for _, tc := range [][]string{{"vm", "list"}, {"image", "list"}, {"kernel", "list"}} {
		out := e.mustBanger(tc...)
		if f := strings.Fields(strings.SplitN(out, "\n", 2)[0]); len(f) < 2 || f[0] != "ID" || f[1] != "NAME" {
			t.Errorf("banger %v: first line %q, want a table header", tc, out)
		}
	}

	// Permissions.
	fi, err := os.Stat(e.stateDir)
	if err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("state dir mode: %v %v, want 0700", fi.Mode(), err)
	}
	fi, err = os.Stat(filepath.Join(e.stateDir, "bangerd.sock"))
	if err != nil || fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode: %v %v, want a 0600 socket", fi.Mode(), err)
	}

	// A second bangerd on the same state dir refuses, naming the first.
	r = e.run("bangerd")
	want := fmt.Sprintf("another bangerd (pid %d) is already running on state dir %s", first, e.stateDir)
	if r.code == 0 || !strings.Contains(r.stderr, want) {
		t.Errorf("second bangerd: exit %d, stderr %q; want non-zero with %q", r.code, r.stderr, want)
	}

	// Something durable, then kill -9 and a CLI call: the daemon comes
	// back with it.
	durable := e.makeDurable()
	if err := syscall.Kill(first, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the killed bangerd to be gone", 5*time.Second, func() bool { return len(e.daemons()) == 0 })
	durable.check(t)
	pids = e.daemons()
	if len(pids) != 1 || pids[0] == first {
		t.Fatalf("bangerd after kill -9 and a call: %v, want one new process", pids)
	}

	// daemon status, then stop.
	if out := e.mustBanger("daemon", "status"); !strings.Contains(out, strconv.Itoa(pids[0])) {
		t.Errorf("daemon status does not name pid %d:\n%s", pids[0], out)
	}
	e.mustBanger("daemon", "stop")
	if d := e.daemons(); len(d) != 0 {
		t.Fatalf("bangerd still running after daemon stop: %v", d)
	}
	if _, err := os.Stat(filepath.Join(e.stateDir, "bangerd.sock")); !os.IsNotExist(err) {
		t.Errorf("socket left after stop: %v", err)
	}
	if r := e.banger("daemon", "status"); r.code == 0 || !strings.Contains(r.stdout, "not running") {
		t.Errorf("daemon status after stop: exit %d %q", r.code, r.stdout)
	}
}

// durable is a fact checked again after the daemon was killed: an
// imported image.
type durable struct {
	e     *env
	image string
}

// makeDurable imports a small ext4 image made with mkfs.ext4 -d. It holds
// what an import checks for (sshd, banger-init, bash, an ed25519 host key)
// as placeholders: it is never booted.
func (e *env) makeDurable() durable {
	t := e.t
	src := filepath.Join(t.TempDir(), "root")
	for _, f := range []string{"usr/sbin/sshd", "usr/local/sbin/banger-init", "usr/bin/bash"} {
		p := filepath.Join(src, f)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	key := filepath.Join(src, "etc", "ssh", "ssh_host_ed25519_key")
	os.MkdirAll(filepath.Dir(key), 0o755)
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen (openssh-client): %v: %s", err, out)
	}
	img := filepath.Join(t.TempDir(), "itest.ext4")
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-d", src, img, "16M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4 (e2fsprogs): %v: %s", err, out)
	}
	e.mustBanger("image", "import", img, "--name", "itest", "--json")
	return durable{e: e, image: "itest"}
}

func (d durable) check(t *testing.T) {
	t.Helper()
	var ims []struct {
		Name string `json:"name"`
	}
	if err := json.Unmarshal([]byte(d.e.mustBanger("image", "list", "--json")), &ims); err != nil {
		t.Fatal(err)
	}
	if len(ims) != 1 || ims[0].Name != d.image {
		t.Fatalf("images after restart: %+v, want %s", ims, d.image)
	}
}

func TestRacingColdStarts(t *testing.T) {
	e := newEnv(t)
	const n = 3
	var wg sync.WaitGroup
	results := make([]result, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = e.banger("vm", "list", "--json")
		}()
	}
	wg.Wait()
	for i, r := range results {
		if r.code != 0 || strings.TrimSpace(r.stdout) != "[]" {
			t.Errorf("racer %d: exit %d, stdout %q, stderr %q", i, r.code, r.stdout, r.stderr)
		}
	}
	// Losers exit at once; give them a moment to be reaped by their CLI.
	waitUntil(t, "exactly one bangerd", 5*time.Second, func() bool { return len(e.daemons()) == 1 })
	e.mustBanger("daemon", "stop")
	if d := e.daemons(); len(d) != 0 {
		t.Fatalf("bangerd still running after stop: %v", d)
	}
}
