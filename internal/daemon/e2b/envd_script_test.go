package e2b

import (
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
