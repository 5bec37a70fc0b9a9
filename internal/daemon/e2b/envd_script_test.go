package e2b

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/banger/banger/internal/guestinit"
)

// TestEnvdScript runs envdScript with bash in a temporary root (its
// paths moved there, envd a stand-in that sleeps): the token and the
// environment land in 0600 files, envd runs detached with the pid
// recorded, and a second run replaces it.
func TestEnvdScript(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("no bash")
	}
	root := t.TempDir()
	passwd := filepath.Join(root, "passwd")
	if err := os.WriteFile(passwd, []byte("root:x:0:0::/root:/bin/bash\nuser:x:1000:1000::/home/user:/bin/bash\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	initPath := filepath.Join(root, "banger-init")
	if err := os.WriteFile(initPath, []byte("#!/bin/sh\nexec sleep 60\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(root, "run")
	script := strings.NewReplacer(envdDir, dir, "/etc/passwd", passwd, guestinit.InitPath, initPath).Replace(envdScript())
	if !strings.Contains(script, "useradd -m -u 1000") {
		t.Fatal("the script lost its useradd fallback")
	}
	run := func(input string) int {
		cmd := exec.Command(bash, "-c", script)
		cmd.Stdin = strings.NewReader(input)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("script: %v\n%s", err, out)
		}
		b, err := os.ReadFile(filepath.Join(dir, "pid"))
		pid, perr := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || perr != nil {
			t.Fatalf("pid file %q: %v %v", b, err, perr)
		}
		t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
		return pid
	}
	first := run(envdInput("tok1", map[string]string{"B": "2", "A": "x y"}))
	for name, want := range map[string]string{"token": "tok1\n", "env": "A=x y\nB=2\n"} {
		p := filepath.Join(dir, name)
		b, err := os.ReadFile(p)
		fi, _ := os.Stat(p)
		if err != nil || string(b) != want || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s = %q (%v), %v; want %q, 0600", name, b, fi.Mode(), err, want)
		}
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("dir: %v %v", fi, err)
	}
	if syscall.Kill(first, 0) != nil {
		t.Fatal("envd is not running")
	}
	second := run(envdInput("tok2", nil))
	if b, _ := os.ReadFile(filepath.Join(dir, "token")); string(b) != "tok2\n" || second == first {
		t.Fatalf("second run: token %q, pid %d after %d", b, second, first)
	}
	// The first envd was told to go (its zombie is reaped by init).
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if b, err := os.ReadFile("/proc/" + strconv.Itoa(first) + "/stat"); err != nil || strings.Contains(string(b), ") Z ") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the first envd still runs after the second start")
		}
	}
}

// TestEnvdRekeyScript runs envdRekeyScript with bash in a temporary
// directory: with an envd stand-in that takes SIGHUP as envd does (moves
// the .new files over its own, the token last) it succeeds with the new
// token and environment in place; with no envd, or one that a SIGHUP
// ends (an envd from before rekeying), it exits envdRekeyGone.
func TestEnvdRekeyScript(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("no bash")
	}
	envBin, err := exec.LookPath("env")
	if err != nil {
		t.Skip("no env")
	}
	dir := filepath.Join(t.TempDir(), "run")
	script := strings.ReplaceAll(envdRekeyScript(), envdDir, dir)
	run := func() (int, string) {
		cmd := exec.Command(bash, "-c", script)
		cmd.Stdin = strings.NewReader(envdInput("tok2", map[string]string{"A": "1"}))
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode(), string(out)
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0, string(out)
	}
	if code, out := run(); code != envdRekeyGone {
		t.Fatalf("without envd: exit %d %s", code, out)
	}
	// start runs an envd stand-in and records its pid; a body that sets a
	// trap touches "ready" once it has, and start waits for that (a
	// fixed sleep was too short for bash's start on a loaded host).
	start := func(body string) {
		t.Helper()
		ready := filepath.Join(dir, "ready")
		os.Remove(ready)
		// With SIGHUP at its default: a test run under nohup ignores it,
		// and a shell started with a signal ignored can neither trap it
		// nor die of it (envd, in Go, takes it back with signal.Notify).
		cmd := exec.Command(envBin, "--default-signal=HUP", bash, "-c", body)
		cmd.Dir = dir
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		go func() { _ = cmd.Wait() }()
		if err := os.WriteFile(filepath.Join(dir, "pid"), []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(body, "ready") {
			return
		}
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			if _, err := os.Stat(ready); err == nil {
				return
			}
			if time.Now().After(deadline) {
				t.Fatal("the envd stand-in did not set its trap within 30s")
			}
		}
	}
	// An envd that SIGHUP ends.
	start(`exec sleep 60`)
	if code, out := run(); code != envdRekeyGone {
		t.Fatalf("with an envd that cannot rekey: exit %d %s", code, out)
	}
	start(`trap 'mv env.new env; mv token.new token' HUP; : > ready; while :; do sleep 0.02; done`)
	if code, out := run(); code != 0 {
		t.Fatalf("rekey: exit %d %s", code, out)
	}
	for name, want := range map[string]string{"token": "tok2\n", "env": "A=1\n"} {
		if b, err := os.ReadFile(filepath.Join(dir, name)); err != nil || string(b) != want {
			t.Errorf("%s = %q, %v; want %q", name, b, err, want)
		}
	}
}
