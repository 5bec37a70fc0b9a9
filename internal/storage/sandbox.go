package storage

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Sandbox is the unprivileged user that parses a guest's filesystem.
type Sandbox struct{ UID, GID uint32 }

// SysProcAttr makes a child process run as the sandbox user, with no
// supplementary groups.
func (sb Sandbox) SysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: sb.UID, Gid: sb.GID, Groups: []uint32{}}}
}

// DefaultSandbox is an id no account uses. It is shared by whoever names
// it; NewJail gives each operation an id of its own instead.
var DefaultSandbox = Sandbox{UID: 0x7fff_fff0, GID: 0x7fff_fff0}

// JailIDs is the range NewJail draws per-operation ids from: above the
// ranges distributions and container tools hand out, below 2^31 (ids past
// it trip signedness bugs), and clear of DefaultSandbox.
var JailIDs = struct{ First, Count uint32 }{0x7f00_0000, 0x0010_0000}

// WaitDelay bounds how long a tool run over guest data may keep its
// output pipes open after it exits or is cancelled: a background child
// holding them must not hang the caller.
const WaitDelay = 2 * time.Second

// A Jail is one operation's sandbox: an id no other process on the host
// has (unless made with JailAs), and a cgroup v2 that every process it
// starts is born into, so that Kill ends all of them at once, forks and
// daemonised leftovers included. Without a usable cgroup v2 a jail with
// its own id kills by id (kill -1 as that id, which the kernel applies
// atomically against forks).
type Jail struct {
	sb     Sandbox
	owned  bool     // sb's id was drawn for this jail alone
	parent string   // where its cgroups are made, "" without cgroup v2
	cgroup string   // the current cgroup's directory
	cgfd   *os.File // the cgroup's directory, for CLONE_INTO_CGROUP
	mu     sync.Mutex
	closed bool
}

var jailIDs = struct {
	sync.Mutex
	used map[uint32]bool
}{used: map[uint32]bool{}}

// NewJail makes a jail with an id of its own. Close it.
func NewJail() (*Jail, error) {
	jailIDs.Lock()
	var id uint32
	for {
		var b [4]byte
		if _, err := rand.Read(b[:]); err != nil {
			jailIDs.Unlock()
			return nil, err
		}
		id = JailIDs.First + binary.LittleEndian.Uint32(b[:])%JailIDs.Count
		if !jailIDs.used[id] {
			jailIDs.used[id] = true
			break
		}
	}
	jailIDs.Unlock()
	j, err := newJail(Sandbox{UID: id, GID: id}, true)
	if err != nil {
		releaseID(id)
	}
	return j, err
}

// JailAs makes a jail running as sb, an id others may share: Kill then
// reaches only what this jail started, and only through cgroup v2 (without
// it, nothing).
func JailAs(sb Sandbox) (*Jail, error) { return newJail(sb, false) }

func releaseID(id uint32) {
	jailIDs.Lock()
	delete(jailIDs.used, id)
	jailIDs.Unlock()
}

func newJail(sb Sandbox, owned bool) (*Jail, error) {
	j := &Jail{sb: sb, owned: owned}
	if parent, err := ownCgroup2(); err == nil {
		j.parent = parent
		if err := j.newCgroup(); err != nil {
			// A read-only cgroupfs (a container): kill by id, or (a
			// shared id) not at all.
			j.parent = ""
		}
	}
	return j, nil
}

// newCgroup makes a fresh cgroup for the jail's next processes. A cgroup
// is not reused after cgroup.kill: some kernels kill every process later
// cloned into it.
func (j *Jail) newCgroup() error {
	var b [8]byte
	rand.Read(b[:])
	dir := filepath.Join(j.parent, fmt.Sprintf("banger-jail-%d-%x", j.sb.UID, b))
	if err := os.Mkdir(dir, 0o755); err != nil {
		return err
	}
	f, err := os.Open(dir)
	if err != nil {
		os.Remove(dir)
		return err
	}
	// Best effort: the pids controller is not always delegated here.
	os.WriteFile(filepath.Join(dir, "pids.max"), []byte("512"), 0)
	j.cgroup, j.cgfd = dir, f
	return nil
}

// ownCgroup2 returns the directory of this process's cgroup in the cgroup
// v2 hierarchy (a pure v2 host, or the unified mount of a hybrid one).
func ownCgroup2() (string, error) {
	mi, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	defer mi.Close()
	mount := ""
	sc := bufio.NewScanner(mi)
	for sc.Scan() {
		// id parent maj:min root mountpoint opts [optional...] - fstype src superopts
		f := strings.Fields(sc.Text())
		for i, x := range f {
			if x == "-" && i+1 < len(f) && f[i+1] == "cgroup2" && len(f) > 4 && f[3] == "/" {
				mount = f[4]
			}
		}
	}
	if mount == "" {
		return "", errors.New("no cgroup v2 hierarchy is mounted")
	}
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "0::"); ok {
			dir := filepath.Join(mount, filepath.Clean("/"+rest))
			if _, err := os.Stat(filepath.Join(dir, "cgroup.procs")); err != nil {
				return "", err
			}
			return dir, nil
		}
	}
	return "", errors.New("this process is in no cgroup v2")
}

// Sandbox returns the jail's id.
func (j *Jail) Sandbox() Sandbox { return j.sb }

// Cgroup returns the jail's current cgroup directory, "" when it kills by
// id.
func (j *Jail) Cgroup() string {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.cgroup
}

// Command returns a command running name as the jail's id, in its cgroup,
// with no supplementary groups, in its own session, in "/", with a
// minimal environment; cancelling ctx kills the whole jail, and its pipes
// are closed WaitDelay after it ends.
func (j *Jail) Command(ctx context.Context, name string, args ...string) (*exec.Cmd, error) {
	bin, err := exec.LookPath(name)
	if err != nil {
		return nil, fmt.Errorf("%s not found: %w", name, err)
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.closed {
		return nil, errors.New("sandbox: the jail is closed")
	}
	attr := j.sb.SysProcAttr()
	attr.Setsid = true
	if j.parent != "" {
		if j.cgfd == nil {
			return nil, errors.New("sandbox: the jail lost its cgroup")
		}
		attr.UseCgroupFD, attr.CgroupFD = true, int(j.cgfd.Fd())
	}
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.SysProcAttr = attr
	cmd.Dir = "/"
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C"}
	cmd.Cancel = func() error { return j.Kill() }
	cmd.WaitDelay = WaitDelay
	return cmd, nil
}

// Kill ends every process the jail started, and returns once they are
// gone. The jail stays usable.
func (j *Jail) Kill() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.kill()
}

func (j *Jail) kill() error {
	if j.parent == "" {
		if !j.owned {
			return nil
		}
		return killByID(j.sb)
	}
	if j.cgfd == nil {
		return nil // never started anything since the last kill
	}
	if err := os.WriteFile(filepath.Join(j.cgroup, "cgroup.kill"), []byte("1"), 0); err != nil {
		// Kernels before 5.14: freeze so nothing forks, kill each, thaw.
		freeze := filepath.Join(j.cgroup, "cgroup.freeze")
		os.WriteFile(freeze, []byte("1"), 0)
		if b, err := os.ReadFile(filepath.Join(j.cgroup, "cgroup.procs")); err == nil {
			for _, f := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(f); err == nil {
					syscall.Kill(pid, syscall.SIGKILL)
				}
			}
		}
		os.WriteFile(freeze, []byte("0"), 0)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, err := os.ReadFile(filepath.Join(j.cgroup, "cgroup.events"))
		if err != nil {
			return fmt.Errorf("sandbox: %w", err)
		}
		if strings.Contains(string(b), "populated 0") {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("sandbox: processes in %s outlived a kill", j.cgroup)
		}
		time.Sleep(5 * time.Millisecond)
	}
	j.cgfd.Close()
	os.Remove(j.cgroup)
	j.cgroup, j.cgfd = "", nil
	if j.closed {
		return nil
	}
	if err := j.newCgroup(); err != nil {
		return fmt.Errorf("sandbox: %w", err)
	}
	return nil
}

// killByID kills every process running as sb's id: kill(-1) sent by a
// process of that id reaches exactly the processes of that id, and the
// kernel does it under the task list lock, so none can fork past it.
func killByID(sb Sandbox) error {
	bin, err := exec.LookPath("kill")
	if err != nil {
		return fmt.Errorf("sandbox: kill not found: %w", err)
	}
	for i := 0; i < 3; i++ {
		cmd := exec.Command(bin, "-KILL", "-1")
		cmd.SysProcAttr = sb.SysProcAttr()
		cmd.Dir = "/"
		cmd.WaitDelay = WaitDelay
		cmd.Run() // fails when nothing was left to kill
	}
	return nil
}

// Close kills what is left in the jail and removes its cgroup.
func (j *Jail) Close() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.closed {
		return nil
	}
	j.closed = true
	err := j.kill()
	if j.cgfd == nil && j.cgroup == "" && err == nil && j.owned {
		releaseID(j.sb.UID)
	}
	return err
}

// capWriter keeps the first max bytes written to it and counts the rest;
// over is called once when the count first passes max.
type capWriter struct {
	buf  bytes.Buffer
	max  int64
	n    int64
	over func()
}

func (w *capWriter) Write(p []byte) (int, error) {
	if room := w.max - int64(w.buf.Len()); room > 0 {
		w.buf.Write(p[:min(int64(len(p)), room)])
	}
	before := w.n
	w.n += int64(len(p))
	if before <= w.max && w.n > w.max && w.over != nil {
		w.over()
	}
	return len(p), nil
}

// Overflowed reports whether more than max bytes were written.
func (w *capWriter) Overflowed() bool { return w.n > w.max }

// Output limits of a tool run in a jail: stderr is kept only to explain a
// failure.
const stderrCap = 64 << 10

// run runs name in the jail and returns its stdout (at most maxOut bytes:
// past that the jail is killed and the answer is errTooMuch) and the head
// of its stderr.
func (j *Jail) run(ctx context.Context, stdin io.Reader, maxOut int64, name string, args ...string) (string, string, error) {
	cmd, err := j.Command(ctx, name, args...)
	if err != nil {
		if strings.Contains(err.Error(), "not found") {
			return "", "", fmt.Errorf("%w (apt-get install e2fsprogs)", err)
		}
		return "", "", err
	}
	cmd.Env = append(cmd.Env, "DEBUGFS_PAGER=__none__", "PAGER=__none__")
	out := &capWriter{max: maxOut}
	out.over = func() { j.Kill() }
	errb := &capWriter{max: stderrCap}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, out, errb
	err = cmd.Run()
	if errors.Is(err, exec.ErrWaitDelay) && cmd.ProcessState.Success() {
		// It exited well; what it left behind kept the pipes open and
		// dies with the jail.
		err = nil
	}
	if out.Overflowed() {
		return "", "", fmt.Errorf("%s: %w (over %d bytes)", name, errTooMuch, maxOut)
	}
	if err != nil {
		return out.buf.String(), errb.buf.String(), fmt.Errorf("%s: %w: %s", name, err, strings.TrimSpace(errb.buf.String()))
	}
	return out.buf.String(), errb.buf.String(), nil
}

// errTooMuch: a tool wrote more than its caller would hold.
var errTooMuch = errors.New("output too large")
