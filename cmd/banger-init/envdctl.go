package main

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger/banger/internal/envd"
	"github.com/banger/banger/internal/guestctl"
	"github.com/banger/banger/internal/guestinit"
)

// How long the envd op waits for a running envd to take a new token (it
// moves token.new over token) and for one it gave up on to exit;
// variables for tests.
var (
	envdRekeyWait = 5 * time.Second
	envdExitWait  = 2 * time.Second
)

// envdMu keeps the boot's start of envd (startLockedEnvd) and the
// control channel's envd op from overlapping.
var envdMu sync.Mutex

// startLockedEnvd starts envd at boot, before it is wanted, when the
// kernel command line asks (banger.envd=1: the VM is an E2B sandbox in
// the making): it then starts while the guest sets itself up, and the
// daemon's envd op, once the guest is ready, only gives it the sandbox's
// token (rekeyEnvd). Until then it demands a token of 256 random bits
// that only its own warm-up uses (--warm: envd.WarmUp, which has its
// code translated before the first request under emulation); the
// daemon only ever uses the token it made.
func startLockedEnvd(f envdFiles) error {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return fmt.Errorf("envd placeholder token: %w", err)
	}
	return startEnvd(f, guestctl.Request{Op: guestctl.OpEnvd, EnvdToken: base64.RawURLEncoding.EncodeToString(b[:])}, "--warm")
}

// envdFiles are the files of envd's run directory (envd.RunDir), the
// program envd is (guestinit.InitPath) and the address it listens on;
// tests use others.
type envdFiles struct{ dir, exe, listen string }

// guestEnvd is envd in a guest: on the guest's address, where the host
// reaches it over the VM's link.
var guestEnvd = envdFiles{dir: envd.RunDir, exe: guestinit.InitPath, listen: "0.0.0.0:" + strconv.Itoa(envd.Port)}

func (f envdFiles) token() string { return filepath.Join(f.dir, "token") }
func (f envdFiles) env() string   { return filepath.Join(f.dir, "env") }
func (f envdFiles) pid() string   { return filepath.Join(f.dir, "pid") }
func (f envdFiles) log() string   { return filepath.Join(f.dir, "log") }

// envdArgs is the command line envd is started with, the files of f.
func envdArgs(f envdFiles) []string {
	return []string{f.exe, "envd", "--listen", f.listen, "--token-file", f.token(), "--env-file", f.env()}
}

// applyEnvd is the envd op, without a shell or another program: an envd
// that runs (its pid file names a live `banger-init envd` of this run
// directory) is given the token and environment as its SIGHUP reload
// expects (NAME.new files it moves over its own), else, or when it does
// not take them within envdRekeyWait, it is stopped and a fresh envd is
// started in its own session with them. The files are root's, 0600, in
// a 0700 directory: the sandbox's user must not read the token. The
// host waits for envd's port itself.
func applyEnvd(f envdFiles, req guestctl.Request) error {
	return startEnvd(f, req)
}

// startEnvd is applyEnvd; an envd it starts gets the extra arguments.
func startEnvd(f envdFiles, req guestctl.Request, extra ...string) error {
	envdMu.Lock()
	defer envdMu.Unlock()
	if err := os.MkdirAll(f.dir, 0o700); err != nil {
		return fmt.Errorf("envd directory: %w", err)
	}
	if err := os.Chmod(f.dir, 0o700); err != nil {
		return fmt.Errorf("envd directory: %w", err)
	}
	env := ""
	if len(req.EnvdEnv) > 0 {
		env = strings.Join(req.EnvdEnv, "\n") + "\n"
	}
	if pid := runningEnvd(f); pid > 0 {
		if err := rekeyEnvd(f, pid, req.EnvdToken, env); err == nil {
			return nil
		}
		stopEnvd(pid)
	}
	os.Remove(f.token() + ".new")
	os.Remove(f.env() + ".new")
	if err := replaceFile(f.token(), req.EnvdToken+"\n", 0o600); err != nil {
		return fmt.Errorf("envd token: %w", err)
	}
	if err := replaceFile(f.env(), env, 0o600); err != nil {
		return fmt.Errorf("envd environment: %w", err)
	}
	logf, err := os.OpenFile(f.log(), os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("envd log: %w", err)
	}
	defer logf.Close()
	args := append(envdArgs(f), extra...)
	cmd := &exec.Cmd{Path: args[0], Args: args, Stdout: logf, Stderr: logf,
		SysProcAttr: &syscall.SysProcAttr{Setsid: true}}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start envd: %w", err)
	}
	pid := cmd.Process.Pid
	// PID 1's reaper collects it when it ends.
	_ = cmd.Process.Release()
	if err := replaceFile(f.pid(), strconv.Itoa(pid)+"\n", 0o600); err != nil {
		return err
	}
	// The start returns once the exec is past its point of no return;
	// the kernel sets up the new command line just after. Until then
	// runningEnvd would not know envd, and a next op would start another.
	for deadline := time.Now().Add(time.Second); runningEnvd(f) != pid && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	return nil
}

// runningEnvd is the pid of the envd f's pid file names when that
// process runs `envd` of f.exe over f's token file (whatever address it
// listens on: one restored from an older snapshot listens on the
// guest's loopback), else 0.
func runningEnvd(f envdFiles) int {
	pid, err := strconv.Atoi(readSmallTrim(f.pid()))
	if err != nil || pid <= 1 {
		return 0
	}
	raw, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
	if err != nil {
		return 0
	}
	args := strings.Split(strings.TrimSuffix(string(raw), "\x00"), "\x00")
	if len(args) < 2 || args[0] != f.exe || args[1] != "envd" {
		return 0
	}
	for i := 2; i+1 < len(args); i++ {
		if args[i] == "--token-file" && args[i+1] == f.token() {
			return pid
		}
	}
	return 0
}

// rekeyEnvd gives the running envd pid a new token and environment and
// waits until it moved them over its files, the sign they are in force.
// It signals only an envd that listens: until envd has taken SIGHUP
// (before it listens) the signal would end it, and one started at boot
// may still be starting.
func rekeyEnvd(f envdFiles, pid int, token, env string) error {
	deadline := time.Now().Add(envdRekeyWait)
	for !hasSocket(pid) {
		if unix.Kill(pid, 0) != nil {
			return fmt.Errorf("envd %d ended while starting", pid)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("envd %d did not listen within %s", pid, envdRekeyWait)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := replaceFile(f.env()+".new", env, 0o600); err != nil {
		return err
	}
	// The token goes last: envd's reload starts from it.
	if err := replaceFile(f.token()+".new", token+"\n", 0o600); err != nil {
		return err
	}
	if err := unix.Kill(pid, unix.SIGHUP); err != nil {
		return err
	}
	for ; time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if _, err := os.Stat(f.token() + ".new"); errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if unix.Kill(pid, 0) != nil {
			return fmt.Errorf("envd %d ended instead of taking its new token", pid)
		}
	}
	return fmt.Errorf("envd %d did not take its new token within %s", pid, envdRekeyWait)
}

// hasSocket reports whether process pid holds a socket: envd opens
// none before it listens.
func hasSocket(pid int) bool {
	dir := filepath.Join("/proc", strconv.Itoa(pid), "fd")
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if l, _ := os.Readlink(filepath.Join(dir, e.Name())); strings.HasPrefix(l, "socket:") {
			return true
		}
	}
	return false
}

// stopEnvd ends envd pid: SIGTERM, then SIGKILL after envdExitWait.
func stopEnvd(pid int) {
	_ = unix.Kill(pid, unix.SIGTERM)
	for deadline := time.Now().Add(envdExitWait); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if unix.Kill(pid, 0) != nil {
			return
		}
	}
	_ = unix.Kill(pid, unix.SIGKILL)
}
