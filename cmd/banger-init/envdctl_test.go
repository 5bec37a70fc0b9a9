package main

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger/banger/internal/guestctl"
)

// TestMain lets the envd op start this test binary as envd: argv
// "<test binary> envd …" runs the real `banger-init envd`.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "envd" {
		os.Exit(runEnvd(os.Args[2:]))
	}
	os.Exit(m.Run())
}

// TestApplyEnvd: the envd op starts envd with the token and environment
// (files only root reads), gives a running envd new ones over SIGHUP
// (the same process takes them), replaces an envd that does not take
// them, and does not mistake another process for envd.
func TestApplyEnvd(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	f := envdFiles{dir: filepath.Join(t.TempDir(), "envd"), exe: exe, listen: "127.0.0.1:0"}
	var started []int
	t.Cleanup(func() {
		for _, pid := range started {
			_ = unix.Kill(pid, unix.SIGKILL)
			_, _ = unix.Wait4(pid, nil, 0, nil)
		}
	})
	apply := func(token string, env ...string) int {
		t.Helper()
		if err := applyEnvd(f, guestctl.Request{Op: guestctl.OpEnvd, EnvdToken: token, EnvdEnv: env}); err != nil {
			t.Fatalf("applyEnvd: %v", err)
		}
		pid, err := strconv.Atoi(readSmallTrim(f.pid()))
		if err != nil {
			t.Fatalf("pid file: %v", err)
		}
		started = append(started, pid)
		if got := readSmallTrim(f.token()); got != token {
			t.Fatalf("token file holds %q, want %q", got, token)
		}
		if got := readSmallTrim(f.env()); got != strings.Join(env, "\n") {
			t.Fatalf("env file holds %q, want %v", got, env)
		}
		for _, p := range []string{f.token() + ".new", f.env() + ".new"} {
			if _, err := os.Stat(p); !os.IsNotExist(err) {
				t.Fatalf("%s left behind (%v)", p, err)
			}
		}
		return pid
	}
	tok := func(c string) string { return strings.Repeat(c, 48) }

	first := apply(tok("a"), "A=1", "B=x=y")
	for _, p := range []string{f.dir, f.token(), f.env()} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm()&0o077 != 0 {
			t.Errorf("%s has mode %v: the sandbox's user must not read it", p, fi.Mode().Perm())
		}
	}
	if runningEnvd(f) != first {
		t.Fatalf("runningEnvd = %d, want the started envd %d", runningEnvd(f), first)
	}
	// envd reads its token after it starts: wait until it serves, the
	// SIGHUP handler being set by then.
	waitEnvdServes(t, first)

	// A running envd takes the new token itself.
	if again := apply(tok("b")); again != first {
		t.Fatalf("rekey started envd %d; want envd %d to take the token", again, first)
	}

	// An envd that does not take it (stopped) is replaced.
	envdRekeyWait, envdExitWait = 300*time.Millisecond, 300*time.Millisecond
	if err := unix.Kill(first, unix.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	third := apply(tok("c"))
	if third == first {
		t.Fatal("an envd that took no token was kept")
	}
	if _, err := unix.Wait4(first, nil, 0, nil); err != nil {
		t.Fatalf("the replaced envd: %v", err)
	}

	// A pid file naming another process (pid reused) starts a new envd
	// and leaves that process alone.
	waitEnvdServes(t, third)
	if err := unix.Kill(third, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_, _ = unix.Wait4(third, nil, 0, nil)
	if err := os.WriteFile(f.pid(), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if runningEnvd(f) != 0 {
		t.Fatal("the test process was taken for envd")
	}
	if fourth := apply(tok("d")); fourth == os.Getpid() {
		t.Fatal("no envd started")
	}
}

// waitEnvdServes waits until envd pid listens (a socket among its
// descriptors), its token read.
func waitEnvdServes(t *testing.T, pid int) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		ents, _ := os.ReadDir(filepath.Join("/proc", strconv.Itoa(pid), "fd"))
		for _, e := range ents {
			if l, _ := os.Readlink(filepath.Join("/proc", strconv.Itoa(pid), "fd", e.Name())); strings.HasPrefix(l, "socket:") {
				return
			}
		}
	}
	t.Fatalf("envd %d never opened a socket", pid)
}

// TestStartLockedEnvd: the boot's envd demands a token of its own that
// is nobody's, fresh at each boot, and the envd op then gives that same
// process the sandbox's token, even when it comes while envd is still
// starting (before it takes SIGHUP, which would end it).
func TestStartLockedEnvd(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	t.Cleanup(func() {
		for _, pid := range pids {
			_ = unix.Kill(pid, unix.SIGKILL)
			_, _ = unix.Wait4(pid, nil, 0, nil)
		}
	})
	seen := map[string]bool{}
	for range 2 {
		f := envdFiles{dir: filepath.Join(t.TempDir(), "envd"), exe: exe, listen: "127.0.0.1:0"}
		if err := startLockedEnvd(f); err != nil {
			t.Fatal(err)
		}
		pid := runningEnvd(f)
		if pid == 0 {
			raw, _ := os.ReadFile(f.log())
			t.Fatalf("no envd runs after the boot's start (pid file %q); its log: %s", readSmallTrim(f.pid()), raw)
		}
		pids = append(pids, pid)
		placeholder := readSmallTrim(f.token())
		if len(placeholder) != 43 || !validEnvdToken(placeholder) || seen[placeholder] {
			t.Fatalf("placeholder token %q: want 43 fresh characters of a token", placeholder)
		}
		seen[placeholder] = true
		token := strings.Repeat("s", 48)
		if err := applyEnvd(f, guestctl.Request{Op: guestctl.OpEnvd, EnvdToken: token, EnvdEnv: []string{"A=1"}}); err != nil {
			t.Fatal(err)
		}
		if got := runningEnvd(f); got != pid {
			t.Fatalf("the envd op started envd %d; want the boot's %d to take the token", got, pid)
		}
		if got := readSmallTrim(f.token()); got != token {
			t.Fatalf("token file holds %q, want the sandbox's", got)
		}
	}
}

// validEnvdToken is what guestctl's envd op accepts as a token.
func validEnvdToken(s string) bool {
	return guestctl.Request{Op: guestctl.OpEnvd, EnvdToken: s}.Validate() == nil
}
