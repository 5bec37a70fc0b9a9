package sessions

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/banger/banger/internal/api"
	"github.com/banger/banger/internal/errdefs"
	"github.com/banger/banger/internal/guest"
	"github.com/banger/banger/internal/model"
	"github.com/banger/banger/internal/session"
	"github.com/banger/banger/internal/store"
)

// sessionHostGuest is a guest.Client that runs commands on the host with sh -c:
// the session scripts are bash with a parameterised state root, so running
// them here against a temp dir exercises the real scripts.
type sessionHostGuest struct{}

func (sessionHostGuest) Run(ctx context.Context, cmd string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	c := exec.Command("sh", "-c", cmd)
	c.Stdin, c.Stdout, c.Stderr = stdin, stdout, stderr
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := c.Start(); err != nil {
		return -1, err
	}
	done := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			_ = syscall.Kill(-c.Process.Pid, syscall.SIGKILL)
		case <-done:
		}
	}()
	c.WaitDelay = time.Second
	err := c.Wait()
	close(done)
	var ee *exec.ExitError
	if errors.As(err, &ee) && ctx.Err() == nil {
		return ee.ExitCode(), nil
	}
	if ctx.Err() != nil {
		return -1, ctx.Err()
	}
	if err != nil {
		return -1, err
	}
	return 0, nil
}
func (sessionHostGuest) Close() error { return nil }

// sessionCannedGuest answers every command with fixed output and error.
type sessionCannedGuest struct {
	out  string
	code int
	err  error
}

func (g sessionCannedGuest) Run(ctx context.Context, cmd string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	if stdout != nil {
		io.WriteString(stdout, g.out)
	}
	return g.code, g.err
}
func (sessionCannedGuest) Close() error { return nil }

// fakeVMs answers from the store, with liveness from a flag, as the
// daemon's VM lookup does from the VMM process.
type fakeVMs struct {
	st    *store.Store
	alive *atomic.Bool
}

func (f fakeVMs) Resolve(ctx context.Context, ref string) (model.VM, error) {
	vm, err := f.st.GetVM(ctx, ref)
	return vm, store.Describe("vm", ref, err)
}
func (f fakeVMs) Alive(vm model.VM) bool { return vm.State == model.VMRunning && f.alive.Load() }
func (f fakeVMs) Lock(ctx context.Context, ref string) (model.VM, func(), error) {
	vm, err := f.Resolve(ctx, ref)
	return vm, func() {}, err
}
func (f fakeVMs) Running(ctx context.Context, ref string) (model.VM, error) {
	vm, err := f.Resolve(ctx, ref)
	if err == nil && !f.Alive(vm) {
		err = errdefs.Errorf(errdefs.CodeConflict, "vm %s is not running (state %s)", vm.Name, vm.State)
	}
	return vm, err
}

type sessionEnv struct {
	s     *Service
	st    *store.Store
	vm    model.VM
	root  string
	dials atomic.Int32
	alive atomic.Bool
	cli   guest.Client
}

func newSessionEnv(t *testing.T) *sessionEnv {
	t.Helper()
	st, err := store.Open(filepath.Join(t.TempDir(), "banger.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	e := &sessionEnv{st: st, root: t.TempDir(), cli: sessionHostGuest{}}
	e.s = New(Deps{
		Store: st, Log: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
		VMs: fakeVMs{st: st, alive: &e.alive},
		Dial: func(ctx context.Context, vm model.VM) (guest.Client, error) {
			e.dials.Add(1)
			return e.cli, nil
		},
		Now: time.Now,
	})
	e.s.StateRoot = e.root
	now := time.Now().UTC()
	e.vm = model.VM{ID: model.NewID(), Name: "box", State: model.VMRunning, DesiredState: model.VMRunning,
		GuestIP: "172.16.0.9", CID: 9, VMM: "fake", CreatedAt: now, UpdatedAt: now}
	if err := st.CreateVM(context.Background(), e.vm); err != nil {
		t.Fatal(err)
	}
	e.alive.Store(true)
	return e
}

// put records a session directly in the store.
func (e *sessionEnv) put(t *testing.T, mut func(*model.Session)) model.Session {
	t.Helper()
	now := time.Now().UTC()
	s := model.Session{ID: model.NewID(), VMID: e.vm.ID, Command: "cat", Args: []string{}, Cwd: "/root",
		StdinMode: model.StdinPipe, Status: model.SessionRunning, CreatedAt: now, UpdatedAt: now}
	s.Name = session.DefaultName("cat", s.ID)
	if mut != nil {
		mut(&s)
	}
	if err := e.st.CreateSession(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	return s
}

func needHostTools(t *testing.T) {
	t.Helper()
	for _, c := range []string{"bash", "setsid", "nohup", "base64", "tail", "mkfifo"} {
		if _, err := exec.LookPath(c); err != nil {
			t.Skipf("%s not found: the session scripts need it", c)
		}
	}
}

func (e *sessionEnv) start(t *testing.T, req api.StartSessionRequest) model.Session {
	t.Helper()
	ctx := context.Background()
	s, err := e.s.Start(ctx, e.vm.Name, req)
	if err != nil {
		t.Fatalf("StartSession: %v", err)
	}
	t.Cleanup(func() { e.s.Kill(context.Background(), e.vm.ID, s.ID, "KILL") })
	return s
}

func waitLog(t *testing.T, e *sessionEnv, s model.Session, want string) string {
	t.Helper()
	var got string
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		var b bytes.Buffer
		if err := e.s.Logs(context.Background(), e.vm.Name, s.Name, api.SessionLogsRequest{}, &b); err != nil {
			t.Fatalf("SessionLogs: %v", err)
		}
		got = b.String()
		if strings.Contains(got, want) {
			return got
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("log never held %.60q; has %d bytes", want, len(got))
	return ""
}

func TestSessionStartSendLogsStop(t *testing.T) {
	needHostTools(t)
	e := newSessionEnv(t)
	ctx := context.Background()
	s := e.start(t, api.StartSessionRequest{Command: "cat", Cwd: e.root})
	if s.Status != model.SessionRunning || s.GuestPID == 0 || !s.Attachable || s.StartedAt == nil {
		t.Fatalf("started = %+v", s)
	}
	for _, line := range []string{`{"n":1}` + "\n", `{"n":2}` + "\n", `{"n":3}` + "\n"} {
		n, err := e.s.Send(ctx, e.vm.Name, s.Name, strings.NewReader(line))
		if err != nil || n != int64(len(line)) {
			t.Fatalf("send: %d %v", n, err)
		}
	}
	waitLog(t, e, s, "{\"n\":1}\n{\"n\":2}\n{\"n\":3}\n")

	// Concurrent 1 MiB sends of distinct bytes arrive whole, each unbroken.
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func(c byte) {
			defer wg.Done()
			n, err := e.s.Send(ctx, e.vm.ID, s.ID[:8], bytes.NewReader(bytes.Repeat([]byte{c}, 1<<20)))
			if err != nil || n != 1<<20 {
				t.Errorf("send %c: %d %v", c, n, err)
			}
		}('a' + byte(i))
	}
	wg.Wait()
	got := waitLog(t, e, s, "")
	deadline := time.Now().Add(10 * time.Second)
	for len(got) < 24+4<<20 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
		got = waitLog(t, e, s, "")
	}
	body := got[24:]
	if len(body) != 4<<20 {
		t.Fatalf("log holds %d bytes of sends, want %d", len(body), 4<<20)
	}
	for i := 0; i < 4; i++ {
		blk := body[i<<20 : (i+1)<<20]
		if strings.Count(blk, blk[:1]) != 1<<20 {
			t.Fatalf("send %d interleaved with another", i)
		}
	}

	var tail bytes.Buffer
	if err := e.s.Logs(ctx, e.vm.Name, s.Name, api.SessionLogsRequest{Tail: 1, Stderr: true}, &tail); err != nil || tail.Len() != 0 {
		t.Fatalf("stderr tail: %q %v", tail.String(), err)
	}

	stopped, err := e.s.Stop(ctx, e.vm.Name, s.Name, api.StopSessionRequest{TimeoutSeconds: 5})
	if err != nil {
		t.Fatalf("stop: %v", err)
	}
	// cat dies of the TERM (143): stopped on request, not failed.
	if stopped.Status != model.SessionStopped || stopped.ExitCode == nil || *stopped.ExitCode != 143 || stopped.Attachable || stopped.EndedAt == nil {
		t.Fatalf("stopped = %+v", stopped)
	}
	if again, err := e.s.Get(ctx, e.vm.Name, s.Name); err != nil || again.Status != model.SessionStopped {
		t.Fatalf("get after stop: %+v %v", again, err)
	}
	_, err = e.s.Send(ctx, e.vm.Name, s.Name, strings.NewReader("late"))
	if errdefs.CodeOf(err) != errdefs.CodeConflict || !strings.Contains(err.Error(), "has finished") {
		t.Fatalf("send after stop: %v", err)
	}
	if err := e.s.Remove(ctx, e.vm.Name, s.Name); err != nil {
		t.Fatalf("remove: %v", err)
	}
	if _, err := os.Stat(filepath.Join(e.root, s.ID)); !os.IsNotExist(err) {
		t.Fatalf("state dir left after remove: %v", err)
	}
	if _, err := e.s.Get(ctx, e.vm.Name, s.Name); !errdefs.IsNotFound(err) {
		t.Fatalf("get after remove: %v", err)
	}
}

func TestSessionExitCodeAndDefaults(t *testing.T) {
	needHostTools(t)
	e := newSessionEnv(t)
	ctx := context.Background()
	s := e.start(t, api.StartSessionRequest{Command: "bash", Args: []string{"-c", "pwd; echo \"$GREETING\"; exit 3"}, Env: map[string]string{"GREETING": "it's me"}, Cwd: e.root, Stdin: "closed"})
	if !strings.HasPrefix(s.Name, "bash-") || s.StdinMode != model.StdinClosed {
		t.Fatalf("defaults: %+v", s)
	}
	var got model.Session
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		var err error
		if got, err = e.s.Get(ctx, e.vm.Name, s.Name); err != nil {
			t.Fatal(err)
		}
		if got.Status == model.SessionFailed {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if got.Status != model.SessionFailed || got.ExitCode == nil || *got.ExitCode != 3 {
		t.Fatalf("session = %+v", got)
	}
	waitLog(t, e, s, e.root+"\nit's me\n")
	if _, err := e.s.Send(ctx, e.vm.Name, s.Name, strings.NewReader("x")); errdefs.CodeOf(err) != errdefs.CodeInvalid || !strings.Contains(err.Error(), "stdin closed") {
		t.Fatalf("send to closed-stdin session: %v", err)
	}
}

func TestSendEmptyAndRefusalsDialNothing(t *testing.T) {
	e := newSessionEnv(t)
	ctx := context.Background()
	running := e.put(t, nil)
	closed := e.put(t, func(s *model.Session) { s.StdinMode = model.StdinClosed; s.Name = "closed" })
	done := e.put(t, func(s *model.Session) {
		s.Name, s.Status = "done", model.SessionExited
		c := 0
		s.ExitCode = &c
	})

	if n, err := e.s.Send(ctx, e.vm.Name, running.Name, strings.NewReader("")); err != nil || n != 0 {
		t.Fatalf("empty send: %d %v", n, err)
	}
	if _, err := e.s.Send(ctx, e.vm.Name, closed.Name, strings.NewReader("x")); errdefs.CodeOf(err) != errdefs.CodeInvalid || !strings.Contains(err.Error(), "stdin closed") {
		t.Fatalf("closed: %v", err)
	}
	if _, err := e.s.Send(ctx, e.vm.Name, done.Name, strings.NewReader("x")); errdefs.CodeOf(err) != errdefs.CodeConflict || !strings.Contains(err.Error(), "has finished (status exited, exit code 0)") {
		t.Fatalf("finished: %v", err)
	}
	if _, err := e.s.Send(ctx, e.vm.Name, "nope", strings.NewReader("x")); !errdefs.IsNotFound(err) || !strings.Contains(err.Error(), `session "nope" not found`) {
		t.Fatalf("unknown: %v", err)
	}
	e.alive.Store(false)
	if _, err := e.s.Send(ctx, e.vm.Name, running.Name, strings.NewReader("x")); errdefs.CodeOf(err) != errdefs.CodeConflict || !strings.Contains(err.Error(), "vm box is not running") {
		t.Fatalf("vm stopped: %v", err)
	}
	if n := e.dials.Load(); n != 0 {
		t.Fatalf("%d dials for sends that needed none", n)
	}
}

func TestStartPreflightFailures(t *testing.T) {
	needHostTools(t)
	e := newSessionEnv(t)
	ctx := context.Background()
	cases := []struct {
		name  string
		req   api.StartSessionRequest
		stage string
		msg   string
		code  string
	}{
		{"cwd", api.StartSessionRequest{Name: "a", Command: "cat", Cwd: "/nonexistent-dir"}, session.StagePreflightCwd, "No such file or directory", errdefs.CodeInvalid},
		{"command", api.StartSessionRequest{Name: "b", Command: "no-such-command-x", Cwd: e.root}, session.StagePreflightCommand, "no-such-command-x", errdefs.CodeInvalid},
		{"require", api.StartSessionRequest{Name: "c", Command: "cat", Cwd: e.root, Require: []string{"cat", "no-such-tool"}}, session.StagePreflightCommand, "no-such-tool", errdefs.CodeInvalid},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := e.s.Start(ctx, e.vm.Name, c.req)
			if errdefs.CodeOf(err) != c.code || !strings.Contains(err.Error(), c.stage) || !strings.Contains(err.Error(), c.msg) {
				t.Fatalf("err = %v", err)
			}
			rec, err := e.st.GetSession(ctx, e.vm.ID, c.req.Name)
			if err != nil {
				t.Fatal(err)
			}
			if rec.Status != model.SessionFailed || rec.LaunchStage != c.stage || !strings.Contains(rec.LaunchError, c.msg) || rec.EndedAt == nil {
				t.Fatalf("record = %+v", rec)
			}
		})
	}
	// Upload: the state root cannot be made.
	e.s.StateRoot = "/proc/banger-cannot-exist"
	_, err := e.s.Start(ctx, e.vm.Name, api.StartSessionRequest{Name: "d", Command: "cat", Cwd: e.root})
	if err == nil || !strings.Contains(err.Error(), "at upload") {
		t.Fatalf("upload: %v", err)
	}
	e.s.StateRoot = e.root

	// Launch and wait_ready, from guests that answer so.
	mark := func(stage, res, msg string) string {
		return "@@banger-stage " + stage + " " + res + " " + b64s(msg) + "\n"
	}
	e.cli = sessionCannedGuest{out: mark("preflight", "ok", "") + mark("upload", "ok", ""), err: errors.New("connection lost")}
	_, err = e.s.Start(ctx, e.vm.Name, api.StartSessionRequest{Name: "e", Command: "cat", Cwd: e.root})
	if err == nil || !strings.Contains(err.Error(), "at launch") || !strings.Contains(err.Error(), "connection lost") {
		t.Fatalf("launch: %v", err)
	}
	e.cli = sessionCannedGuest{out: mark("preflight", "ok", "") + mark("upload", "ok", "") + mark("launch", "ok", "") + mark("wait_ready", "fail", "the runner did not report running")}
	_, err = e.s.Start(ctx, e.vm.Name, api.StartSessionRequest{Name: "f", Command: "cat", Cwd: e.root})
	if errdefs.CodeOf(err) != errdefs.CodeTimeout || !strings.Contains(err.Error(), "at wait_ready") {
		t.Fatalf("wait_ready: %v", err)
	}
	rec, _ := e.st.GetSession(ctx, e.vm.ID, "f")
	if rec.LaunchStage != session.StageWaitReady || rec.Status != model.SessionFailed {
		t.Fatalf("wait_ready record = %+v", rec)
	}
	// Validation refuses before anything is recorded or dialed.
	before := e.dials.Load()
	for _, req := range []api.StartSessionRequest{
		{Command: "cat", Stdin: "tty"}, {Command: "cat", Cwd: "rel"}, {Command: "cat", Env: map[string]string{"9x": ""}}, {Name: "Bad", Command: "cat"},
	} {
		if _, err := e.s.Start(ctx, e.vm.Name, req); errdefs.CodeOf(err) != errdefs.CodeInvalid {
			t.Errorf("%+v: %v", req, err)
		}
	}
	if e.dials.Load() != before {
		t.Fatalf("invalid requests dialed the guest")
	}
}

func b64s(s string) string {
	var b bytes.Buffer
	c := exec.Command("base64", "-w0")
	c.Stdin, c.Stdout = strings.NewReader(s), &b
	_ = c.Run()
	return b.String()
}

func writeState(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	for k, v := range files {
		if err := os.WriteFile(filepath.Join(dir, k), []byte(v), 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

func TestReconcileTransitions(t *testing.T) {
	needHostTools(t)
	e := newSessionEnv(t)
	ctx := context.Background()
	exited := e.put(t, func(s *model.Session) { s.Name = "exits" })
	writeState(t, filepath.Join(e.root, exited.ID), map[string]string{"status": "failed\n", "exit_code": "3\n", "pid": "999999\n"})
	e.put(t, func(s *model.Session) { s.Name = "missing" })
	garbage := e.put(t, func(s *model.Session) {
		s.Name, s.GuestPID, s.StartedAt, s.Attachable, s.Reattachable = "garbage", os.Getpid(), &s.CreatedAt, true, true
	})
	// Garbage files and a pid that is ours and alive: still running.
	writeState(t, filepath.Join(e.root, garbage.ID), map[string]string{"status": "bananas", "exit_code": "x", "pid": strconv.Itoa(os.Getpid()), "monitor_pid": "zz"})
	finished := e.put(t, func(s *model.Session) {
		s.Name, s.Status = "old", model.SessionExited
		c := 0
		s.ExitCode = &c
	})

	list, err := e.s.List(ctx, e.vm.Name)
	if err != nil {
		t.Fatal(err)
	}
	by := map[string]model.Session{}
	for _, s := range list {
		by[s.Name] = s
	}
	if s := by["exits"]; s.Status != model.SessionFailed || s.ExitCode == nil || *s.ExitCode != 3 {
		t.Errorf("exits = %+v", s)
	}
	if s := by["missing"]; s.Status != model.SessionFailed || s.Error != session.ReasonStateMissing {
		t.Errorf("missing = %+v", s)
	}
	if s := by["garbage"]; s.Status != model.SessionRunning {
		t.Errorf("garbage = %+v", s)
	}
	// Persisted when changed, untouched otherwise.
	stored, _ := e.st.GetSession(ctx, e.vm.ID, exited.ID)
	if stored.Status != model.SessionFailed {
		t.Errorf("change not persisted: %+v", stored)
	}
	for _, s := range []model.Session{garbage, finished} {
		again, _ := e.st.GetSession(ctx, e.vm.ID, s.ID)
		if !again.UpdatedAt.Equal(s.UpdatedAt) {
			t.Errorf("%s rewritten though nothing changed", s.Name)
		}
	}
	if _, err := e.s.List(ctx, e.vm.Name); err != nil {
		t.Fatal(err)
	}
	if d := e.dials.Load(); d != 2 {
		t.Errorf("%d dials for two listings, want one round trip each", d)
	}

	// The VM stops: in-flight sessions fail with the reason, without a dial.
	e.alive.Store(false)
	before := e.dials.Load()
	got, err := e.s.Get(ctx, e.vm.Name, "garbage")
	if err != nil || got.Status != model.SessionFailed || got.Error != session.ReasonVMNotRunning {
		t.Fatalf("after vm stop: %+v %v", got, err)
	}
	if e.dials.Load() != before {
		t.Fatalf("a stopped VM was dialed")
	}
}

func TestReconcileStoppedVMReadsWorkDisk(t *testing.T) {
	for _, c := range []string{"mkfs.ext4", "debugfs"} {
		if _, err := exec.LookPath(c); err != nil {
			t.Skipf("%s not found (e2fsprogs): needed to read a work disk", c)
		}
	}
	e := newSessionEnv(t)
	ctx := context.Background()
	done := e.put(t, func(s *model.Session) { s.Name = "done" })
	lost := e.put(t, func(s *model.Session) { s.Name = "lost" })
	tree := t.TempDir()
	writeState(t, filepath.Join(tree, session.WorkDiskStateRoot, done.ID), map[string]string{"status": "exited\n", "exit_code": "0\n", "pid": "77\n"})
	writeState(t, filepath.Join(tree, session.WorkDiskStateRoot, lost.ID), map[string]string{"status": "running\n", "pid": "78\n"})
	disk := filepath.Join(t.TempDir(), "work.ext4")
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-d", tree, disk, "16M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v %s", err, out)
	}
	vm := e.vm
	vm.WorkDisk, vm.State = disk, model.VMStopped
	if err := e.st.UpdateVM(ctx, vm); err != nil {
		t.Fatal(err)
	}
	e.alive.Store(false)
	list, err := e.s.List(ctx, vm.Name)
	if err != nil {
		t.Fatal(err)
	}
	by := map[string]model.Session{}
	for _, s := range list {
		by[s.Name] = s
	}
	if s := by["done"]; s.Status != model.SessionExited || s.ExitCode == nil || *s.ExitCode != 0 || s.GuestPID != 77 {
		t.Errorf("done = %+v", s)
	}
	if s := by["lost"]; s.Status != model.SessionFailed || s.Error != session.ReasonVMNotRunning {
		t.Errorf("lost = %+v", s)
	}
	if e.dials.Load() != 0 {
		t.Errorf("a stopped VM was dialed")
	}
}

// lockedBuffer is a bytes.Buffer safe for a writer and a reader.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}
func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func TestAttachExclusiveDetachReattach(t *testing.T) {
	needHostTools(t)
	e := newSessionEnv(t)
	ctx := context.Background()
	s := e.start(t, api.StartSessionRequest{Name: "echo", Command: "cat", Cwd: e.root})

	attach := func() (*io.PipeWriter, *lockedBuffer, chan error) {
		pr, pw := io.Pipe()
		out := &lockedBuffer{}
		done := make(chan error, 1)
		go func() {
			done <- e.s.Attach(ctx, e.vm.Name, s.Name, api.AttachRequest{}, api.AttachIO{Stdin: pr, Stdout: out, Stderr: io.Discard})
		}()
		return pw, out, done
	}
	waitOut := func(out *lockedBuffer, want string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !strings.Contains(out.String(), want) {
			if time.Now().After(deadline) {
				t.Fatalf("attach output %q lacks %q", out.String(), want)
			}
			// Input written before the tail starts is not echoed back:
			// keep writing until it is.
			time.Sleep(100 * time.Millisecond)
		}
	}
	in1, out1, done1 := attach()
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, ok := e.s.Attached(s.ID)
		if ok || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	err := e.s.Attach(ctx, e.vm.Name, s.Name, api.AttachRequest{}, api.AttachIO{Stdin: strings.NewReader(""), Stdout: io.Discard})
	if errdefs.CodeOf(err) != errdefs.CodeConflict || !strings.Contains(err.Error(), "session echo is attached (since ") {
		t.Fatalf("second attach: %v", err)
	}
	time.Sleep(700 * time.Millisecond) // let the output tail start
	io.WriteString(in1, "hello\n")
	waitOut(out1, "hello\n")
	in1.Close() // detach
	select {
	case err := <-done1:
		if err != nil {
			t.Fatalf("detach: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("attach did not return on detach")
	}
	if got, _ := e.s.Get(ctx, e.vm.Name, s.Name); got.Status != model.SessionRunning {
		t.Fatalf("detach stopped the session: %+v", got)
	}

	// Re-attach, then the session ends under it: attach returns.
	in2, out2, done2 := attach()
	defer in2.Close()
	time.Sleep(700 * time.Millisecond)
	io.WriteString(in2, "again\n")
	waitOut(out2, "again\n")
	if _, err := e.s.Kill(ctx, e.vm.Name, s.Name, "KILL"); err != nil {
		t.Fatalf("kill: %v", err)
	}
	select {
	case <-done2:
	case <-time.After(10 * time.Second):
		t.Fatal("attach did not return when the session ended")
	}
	got, _ := e.s.Get(ctx, e.vm.Name, s.Name)
	if got.Status != model.SessionFailed || got.ExitCode == nil || *got.ExitCode != 137 {
		t.Fatalf("after kill: %+v", got)
	}
}

// A paused VM's sessions are frozen with it: neither dialed nor read from
// its work disk nor taken for ended, and live operations and logs say to
// resume it.
func TestPausedVMSessionsFrozen(t *testing.T) {
	e := newSessionEnv(t)
	ctx := context.Background()
	s := e.put(t, func(s *model.Session) { s.Name = "agent" })
	vm := e.vm
	vm.State, vm.DesiredState, vm.WorkDisk = model.VMPaused, model.VMPaused, filepath.Join(t.TempDir(), "no-such-disk")
	if err := e.st.UpdateVM(ctx, vm); err != nil {
		t.Fatal(err)
	}
	e.alive.Store(false)
	list, err := e.s.List(ctx, vm.Name)
	if err != nil || len(list) != 1 || list[0].Status != model.SessionRunning {
		t.Fatalf("list of a paused vm: %+v, %v", list, err)
	}
	if got, err := e.s.Get(ctx, vm.Name, "agent"); err != nil || got.Status != model.SessionRunning {
		t.Fatalf("show of a paused vm's session: %+v, %v", got, err)
	}
	if _, err := e.s.Send(ctx, vm.Name, s.Name, strings.NewReader("x\n")); errdefs.CodeOf(err) != errdefs.CodeConflict || !strings.Contains(err.Error(), "is paused: resume it") {
		t.Fatalf("send to a paused vm: %v", err)
	}
	var buf bytes.Buffer
	if err := e.s.Logs(ctx, vm.Name, s.Name, api.SessionLogsRequest{}, &buf); errdefs.CodeOf(err) != errdefs.CodeConflict || !strings.Contains(err.Error(), "banger vm resume box") {
		t.Fatalf("logs of a paused vm: %v", err)
	}
	if e.dials.Load() != 0 {
		t.Errorf("a paused VM was dialed")
	}
	if got, _ := e.st.GetSession(ctx, vm.ID, s.ID); got.Status != model.SessionRunning {
		t.Fatalf("record changed while paused: %+v", got)
	}
}
