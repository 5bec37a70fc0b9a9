package session

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/banger/banger/internal/model"
)

// These tests run the generated scripts with the host's bash, the state
// root redirected to a temp dir: the same scripts the guest runs.

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func needTools(t *testing.T) {
	t.Helper()
	for _, c := range []string{"bash", "setsid", "nohup", "base64", "tail", "mkfifo"} {
		if _, err := exec.LookPath(c); err != nil {
			t.Skipf("%s not found on this host; the script tests need it", c)
		}
	}
}

// run runs script with bash, stdin, and returns stdout, stderr, exit code.
func run(t *testing.T, script string, stdin []byte) (string, string, int) {
	t.Helper()
	cmd := exec.Command("bash", "-c", script)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run: %v", err)
	}
	return out.String(), errb.String(), code
}

func newID(t *testing.T) string { t.Helper(); return model.NewID() }

// start runs the whole start script and registers a cleanup that kills
// what it launched.
func start(t *testing.T, root string, s Spec) StartResult {
	t.Helper()
	out, stderr, code := run(t, StartScript(root, s), []byte(RunnerScript(root, s)))
	if code != 0 {
		t.Fatalf("start script exit %d: %s %s", code, out, stderr)
	}
	t.Cleanup(func() { run(t, SignalScript(root, s.ID, "KILL", 2, true), nil) })
	return ParseStart(out+stderr, s.ID)
}

func state(t *testing.T, root, id string) State {
	t.Helper()
	out, _, _ := run(t, StateScript(root, id), nil)
	return ParseStates(out)[id]
}

func waitFinal(t *testing.T, root, id string) State {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		st := state(t, root, id)
		if st.ExitCode != nil && (st.Status == "exited" || st.Status == "failed") {
			return st
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("session %s did not finish: %+v", id, state(t, root, id))
	return State{}
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestScriptsPassShellcheckSyntax(t *testing.T) {
	needTools(t)
	s := Spec{ID: "abcd", Command: "cat", Args: []string{"-u", "it's"}, Env: map[string]string{"B": "2", "A": "$(x)"}, Cwd: "/root", StdinMode: model.StdinPipe, Require: []string{"cat", "git"}}
	scripts := map[string]string{
		"preflight": PreflightScript(s), "runner": RunnerScript("/r", s), "start": StartScript("/r", s),
		"states": StatesScript("/r"), "state": StateScript("/r", "abcd"), "send": SendScript("/r", "abcd"),
		"logs": LogsScript("/r", "abcd", false, 0, false), "logsf": LogsScript("/r", "abcd", true, 5, true),
		"attach": AttachOutputScript("/r", "abcd", 10, 3), "sizes": LogSizesScript("/r", "abcd"),
		"signal": SignalScript("/r", "abcd", "TERM", 3, true), "remove": RemoveScript("/r", "abcd"),
		"resize": ResizeScript("/r", "abcd", 100, 30), "ttyrunner": RunnerScript("/r", ttySpec(t, s)),
	}
	for name, sc := range scripts {
		if out, err := exec.Command("bash", "-n", "-c", sc).CombinedOutput(); err != nil {
			t.Errorf("%s: bash -n: %v: %s", name, err, out)
		}
		if _, err := exec.LookPath("shellcheck"); err == nil {
			cmd := exec.Command("shellcheck", "-s", "bash", "-S", "error", "-")
			cmd.Stdin = strings.NewReader(sc)
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Errorf("%s: shellcheck: %v: %s", name, err, out)
			}
		}
	}
	// Env is exported in sorted order.
	r := RunnerScript("/r", s)
	if a, b := strings.Index(r, "export A="), strings.Index(r, "export B="); a < 0 || b < a {
		t.Errorf("env not exported in sorted order:\n%s", r)
	}
}

func TestPreflight(t *testing.T) {
	needTools(t)
	dir := t.TempDir()
	cases := []struct {
		name  string
		spec  Spec
		stage string
		msg   string
	}{
		{"ok", Spec{Cwd: dir, Require: []string{"cat", "bash"}}, "", ""},
		{"missing cwd", Spec{Cwd: dir + "/nope", Require: []string{"cat"}}, StagePreflightCwd, "No such file or directory"},
		{"cwd is a file", Spec{Cwd: "/etc/hostname", Require: []string{"cat"}}, StagePreflightCwd, "Not a directory"},
		{"missing command", Spec{Cwd: dir, Require: []string{"cat", "no-such-cmd-xyz"}}, StagePreflightCommand, "no-such-cmd-xyz"},
		{"relative command resolved from cwd", Spec{Cwd: "/bin", Require: []string{"./cat"}}, "", ""},
		{"env PATH used", Spec{Cwd: dir, Env: map[string]string{"PATH": "/nonexistent"}, Require: []string{"cat"}}, StagePreflightCommand, "cat"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out, _, code := run(t, PreflightScript(c.spec), nil)
			if code != 0 {
				t.Fatalf("exit %d", code)
			}
			r := ParseStart(out, "")
			if c.stage == "" {
				if r.Failed != nil || len(r.Stages) != 1 || r.Stages[0].Stage != "preflight" {
					t.Fatalf("want ok, got %+v", r)
				}
				return
			}
			if r.Failed == nil || r.Failed.Stage != c.stage || !strings.Contains(r.Failed.Message, c.msg) {
				t.Fatalf("want %s %q, got %+v", c.stage, c.msg, r)
			}
		})
	}
}

func TestStartSendLogsStop(t *testing.T) {
	needTools(t)
	root := t.TempDir()
	s := Spec{ID: newID(t), Command: "cat", Cwd: root, StdinMode: model.StdinPipe, Require: []string{"cat"}}
	r := start(t, root, s)
	if r.Failed != nil || r.State.Status != "running" || !r.State.PIDAlive || r.State.PID == 0 || r.State.MonitorPID == 0 || r.State.KeepalivePID == 0 {
		t.Fatalf("start = %+v", r)
	}
	dir := StateDir(root, s.ID)
	if fi, err := os.Stat(filepath.Join(dir, FileStdin)); err != nil || fi.Mode()&os.ModeNamedPipe == 0 || fi.Mode().Perm() != 0o600 {
		t.Fatalf("stdin fifo: %v %v", fi, err)
	}
	// Three sends arrive in order; the keep-alive keeps cat from seeing EOF.
	for i := 0; i < 3; i++ {
		line := fmt.Sprintf("{\"n\":%d}\n", i)
		if _, errs, code := run(t, SendScript(root, s.ID), []byte(line)); code != 0 {
			t.Fatalf("send %d: exit %d %s", i, code, errs)
		}
	}
	// 1 MiB arrives intact.
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<16)
	if _, errs, code := run(t, SendScript(root, s.ID), big); code != 0 {
		t.Fatalf("big send: exit %d %s", code, errs)
	}
	want := "{\"n\":0}\n{\"n\":1}\n{\"n\":2}\n" + string(big)
	deadline := time.Now().Add(5 * time.Second)
	for readFile(t, filepath.Join(dir, FileStdout)) != want && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if got := readFile(t, filepath.Join(dir, FileStdout)); got != want {
		t.Fatalf("stdout.log has %d bytes, want %d", len(got), len(want))
	}
	out, _, code := run(t, LogsScript(root, s.ID, false, 2, false), nil)
	if code != 0 || !strings.HasPrefix(out, "{\"n\":2}\n0123") {
		t.Fatalf("logs tail 2: exit %d %.40q", code, out)
	}
	// Stop: TERM ends the keep-alive and cat; cat exits 0 or by TERM.
	out, _, _ = run(t, SignalScript(root, s.ID, "TERM", 5, true), nil)
	st := ParseStates(out)[s.ID]
	if st.ExitCode == nil || (st.Status != "exited" && st.Status != "failed") {
		t.Fatalf("after stop: %+v", st)
	}
	if st.PIDAlive || st.MonitorAlive {
		t.Fatalf("processes alive after stop: %+v", st)
	}
	if pidAlive(st.KeepalivePID) {
		t.Fatalf("keep-alive %d survived", st.KeepalivePID)
	}
	// Sending to a finished session is refused with its own code.
	if _, _, code := run(t, SendScript(root, s.ID), []byte("x")); code != ExitNotRunning {
		t.Fatalf("send after stop: exit %d, want %d", code, ExitNotRunning)
	}
	// Remove deletes the state dir.
	if _, errs, code := run(t, RemoveScript(root, s.ID), nil); code != 0 {
		t.Fatalf("remove: %d %s", code, errs)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("state dir left: %v", err)
	}
}

func pidAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	// A zombie is dead for our purposes.
	f := strings.Fields(string(b))
	return len(f) > 2 && f[2] != "Z"
}

func TestExitCodesAndClosedStdin(t *testing.T) {
	needTools(t)
	root := t.TempDir()
	s := Spec{ID: newID(t), Command: "bash", Args: []string{"-c", "echo out; echo err >&2; exit 3"}, Cwd: root, StdinMode: model.StdinClosed, Require: []string{"bash"}}
	r := start(t, root, s)
	if r.Failed != nil {
		t.Fatalf("start: %+v", r)
	}
	st := waitFinal(t, root, s.ID)
	if st.Status != "failed" || *st.ExitCode != 3 {
		t.Fatalf("state = %+v", st)
	}
	dir := StateDir(root, s.ID)
	if readFile(t, filepath.Join(dir, FileStdout)) != "out\n" || readFile(t, filepath.Join(dir, FileStderr)) != "err\n" {
		t.Fatalf("logs wrong")
	}
	if _, err := os.Stat(filepath.Join(dir, FileStdin)); !os.IsNotExist(err) {
		t.Fatalf("closed mode made a fifo")
	}
	out, _, _ := run(t, LogsScript(root, s.ID, true, 0, true), nil)
	if out != "err\n" {
		t.Fatalf("logs --stderr --follow of a finished session = %q", out)
	}

	s2 := Spec{ID: newID(t), Command: "true", Cwd: root, StdinMode: model.StdinPipe, Require: []string{"true"}}
	start(t, root, s2)
	if st := waitFinal(t, root, s2.ID); st.Status != "exited" || *st.ExitCode != 0 {
		t.Fatalf("true = %+v", st)
	}
	// Both appear in the all-sessions read.
	out, _, _ = run(t, StatesScript(root), nil)
	all := ParseStates(out)
	if len(all) != 2 || all[s.ID].Status != "failed" || all[s2.ID].Status != "exited" {
		t.Fatalf("states = %+v", all)
	}
}

func TestStopEscalatesToKill(t *testing.T) {
	needTools(t)
	root := t.TempDir()
	s := Spec{ID: newID(t), Command: "bash", Args: []string{"-c", "trap '' TERM; echo ready; while :; do sleep 0.1; done"}, Cwd: root, StdinMode: model.StdinClosed, Require: []string{"bash"}}
	if r := start(t, root, s); r.Failed != nil {
		t.Fatalf("start: %+v", r)
	}
	t0 := time.Now()
	out, _, _ := run(t, SignalScript(root, s.ID, "TERM", 1, true), nil)
	st := ParseStates(out)[s.ID]
	if st.Status != "failed" || st.ExitCode == nil || *st.ExitCode != 137 {
		t.Fatalf("after escalation: %+v", st)
	}
	if d := time.Since(t0); d < time.Second {
		t.Fatalf("did not wait for the timeout: %v", d)
	}
}

func TestFollowEndsWithSession(t *testing.T) {
	needTools(t)
	root := t.TempDir()
	s := Spec{ID: newID(t), Command: "bash", Args: []string{"-c", "for i in 1 2 3; do echo $i; sleep 0.2; done"}, Cwd: root, StdinMode: model.StdinClosed, Require: []string{"bash"}}
	start(t, root, s)
	done := make(chan string, 1)
	go func() {
		out, _, _ := run(t, LogsScript(root, s.ID, false, 0, true), nil)
		done <- out
	}()
	select {
	case out := <-done:
		if out != "1\n2\n3\n" {
			t.Fatalf("follow = %q", out)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("follow did not end with the session")
	}
}

// checkHostile runs a session whose name, cwd, env and args carry v and
// checks that the command (printf) sees v exactly.
func checkHostile(t *testing.T, v string) {
	t.Helper()
	if strings.ContainsRune(v, 0) {
		return
	}
	root := t.TempDir()
	cwdName := strings.ReplaceAll(v, "/", "_")
	if cwdName == "" || cwdName == "." || cwdName == ".." || len(cwdName) > 200 {
		cwdName = "d"
	}
	cwd := filepath.Join(root, "cwd", cwdName)
	if err := os.MkdirAll(cwd, 0o755); err != nil {
		t.Skipf("cannot make a dir named %q here: %v", cwdName, err)
	}
	s := Spec{
		ID:      "0123456789abcdef0123456789abcdef",
		Command: "bash",
		// printf prints the arg and the env value; pwd prints the cwd.
		Args:      []string{"-c", `printf '%s|%s|' "$1" "$HOSTILE"; pwd`, "_", v},
		Env:       map[string]string{"HOSTILE": v, "Z": v},
		Cwd:       cwd,
		StdinMode: model.StdinClosed,
	}
	runner := RunnerScript(root, s)
	if out, err := exec.Command("bash", "-n", "-c", runner).CombinedOutput(); err != nil {
		t.Fatalf("runner for %q fails bash -n: %v %s", v, err, out)
	}
	dir := StateDir(root, s.ID)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, FileRunner), []byte(runner), 0o700); err != nil {
		t.Fatal(err)
	}
	// Run the runner in the foreground: it returns when the command ends.
	if out, err := exec.Command("bash", filepath.Join(dir, FileRunner)).CombinedOutput(); err != nil {
		t.Fatalf("runner for %q: %v %s", v, err, out)
	}
	want := v + "|" + v + "|" + cwd + "\n"
	if got := readFile(t, filepath.Join(dir, FileStdout)); got != want {
		t.Fatalf("value %q came back as %q, want %q (stderr %q)", v, got, want, readFile(t, filepath.Join(dir, FileStderr)))
	}
	if st := strings.TrimSpace(readFile(t, filepath.Join(dir, FileStatus))); st != "exited" {
		t.Fatalf("status %q", st)
	}
}

func TestHostileValues(t *testing.T) {
	needTools(t)
	for _, v := range []string{"", "'", "''", `"`, "$(touch /tmp/pwned)", "`id`", "a\nb", "\\", "-n", "--", "*", "~", "$HOME", "${x:-y}", "!!", "\t", "é", "\x01\x7f", "a'b\"c$d`e\\f"} {
		checkHostile(t, v)
	}
}

func FuzzRunnerHostile(f *testing.F) {
	for _, s := range []string{"", "'", "$(id)", "a\nb", "`x`", "\\'\""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		if _, err := exec.LookPath("setsid"); err != nil {
			t.Skip("setsid missing")
		}
		checkHostile(t, v)
	})
}

func ttySpec(t *testing.T, s Spec) Spec {
	t.Helper()
	if err := s.SetTTY(0, 0); err != nil {
		t.Fatal(err)
	}
	return s
}

// attachOut runs the attach output script in the background; its stdout
// collects in the returned buffer until stop is called.
func attachOut(t *testing.T, root, id string, outOff, errOff int64) (out *syncBuffer, stop func()) {
	t.Helper()
	cmd := exec.Command("bash", "-c", AttachOutputScript(root, id, outOff, errOff))
	out = &syncBuffer{}
	cmd.Stdout = out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	stop = func() {
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			t.Error("attach output did not end with the session")
		}
	}
	return out, stop
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// The handover between where an attachment begins (the log sizes taken
// first) and its live tail (started later): from the start, everything
// arrives once; from the sizes, what the session wrote before is left
// out, and what it wrote after them — also before the tail started — and
// after the tail started arrives once, in order.
func TestAttachOutputOffsets(t *testing.T) {
	needTools(t)
	root := t.TempDir()
	s := Spec{ID: newID(t), Command: "cat", Cwd: root, StdinMode: model.StdinPipe, Require: []string{"cat"}}
	start(t, root, s)
	send := func(line string) {
		t.Helper()
		if _, errs, code := run(t, SendScript(root, s.ID), []byte(line)); code != 0 {
			t.Fatalf("send: exit %d %s", code, errs)
		}
	}
	logged := func(want string) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for !strings.HasSuffix(readFile(t, filepath.Join(StateDir(root, s.ID), FileStdout)), want) {
			if time.Now().After(deadline) {
				t.Fatalf("stdout.log never ended with %q", want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	send("before\n")
	logged("before\n")

	// Where the attachment begins.
	sizes, errs, code := run(t, LogSizesScript(root, s.ID), nil)
	if code != 0 {
		t.Fatalf("sizes: exit %d %s", code, errs)
	}
	outOff, errOff, err := ParseLogSizes(sizes)
	if err != nil || outOff != int64(len("before\n")) || errOff != 0 {
		t.Fatalf("sizes %q = %d %d %v", sizes, outOff, errOff, err)
	}
	// Written between the attach request and the start of the tail.
	send("between\n")
	logged("between\n")
	fromStart, stopStart := attachOut(t, root, s.ID, 0, 0)
	fromOff, stopOff := attachOut(t, root, s.ID, outOff, errOff)
	// Written while the tail runs.
	sent := "between\n"
	deadline := time.Now().Add(10 * time.Second)
	for n := 0; n < 3 || !strings.HasSuffix(fromOff.String(), fmt.Sprintf("line-%d\n", n-1)); n++ {
		if time.Now().After(deadline) {
			t.Fatalf("attach output stalled at %q", fromOff.String())
		}
		line := fmt.Sprintf("line-%d\n", n)
		send(line)
		sent += line
		time.Sleep(50 * time.Millisecond)
	}
	run(t, SignalScript(root, s.ID, "TERM", 5, true), nil)
	stopStart()
	stopOff()
	if got, want := fromStart.String(), "before\n"+sent; got != want {
		t.Errorf("from the start: %q, want %q", got, want)
	}
	if got := fromOff.String(); got != sent {
		t.Errorf("from where the attachment began: %q, want %q", got, sent)
	}
	// The answer is checked.
	for _, bad := range []string{"", "12", "1 2 3", "-1 0", "x 0", "99999999999999999999 0"} {
		if _, _, err := ParseLogSizes(bad); err == nil {
			t.Errorf("ParseLogSizes(%q) accepted", bad)
		}
	}
}

// A session that ends between where an attachment begins and the start
// of its tail (the input that ended it came through the attachment)
// still gives the output it wrote past the offsets, and the tail ends:
// the attachment then ends with the session's exit, not a refusal.
func TestAttachOutputAfterTheEnd(t *testing.T) {
	needTools(t)
	root := t.TempDir()
	s := Spec{ID: newID(t), Command: "cat", Cwd: root, StdinMode: model.StdinPipe, Require: []string{"cat"}}
	start(t, root, s)
	logged := func(want string) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); readFile(t, filepath.Join(StateDir(root, s.ID), FileStdout)) != want; {
			if time.Now().After(deadline) {
				t.Fatalf("stdout.log never became %q", want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	if _, errs, code := run(t, SendScript(root, s.ID), []byte("before\n")); code != 0 {
		t.Fatalf("send: exit %d %s", code, errs)
	}
	logged("before\n")
	sizes, errs, code := run(t, LogSizesScript(root, s.ID), nil)
	if code != 0 {
		t.Fatalf("sizes: exit %d %s", code, errs)
	}
	outOff, errOff, err := ParseLogSizes(sizes)
	if err != nil {
		t.Fatal(err)
	}
	if _, errs, code := run(t, SendScript(root, s.ID), []byte("last\n")); code != 0 {
		t.Fatalf("send: exit %d %s", code, errs)
	}
	logged("before\nlast\n")
	run(t, SignalScript(root, s.ID, "TERM", 5, true), nil)
	if _, _, code := run(t, SendScript(root, s.ID), []byte("x")); code != ExitNotRunning {
		t.Fatalf("the session still runs (send: exit %d)", code)
	}
	out, errs, code := run(t, AttachOutputScript(root, s.ID, outOff, errOff), nil)
	if code != 0 || out != "last\n" {
		t.Fatalf("attach output after the end: exit %d, %q (stderr %q), want 0 and %q", code, out, errs, "last\n")
	}
}

// A --tty session runs on a terminal of the size asked, takes input
// through it (echoed, as a terminal does), follows a resize, and keeps its
// command's exit code.
func TestTTYSession(t *testing.T) {
	needTools(t)
	if _, err := exec.LookPath(TTYHelper); err != nil {
		t.Skipf("%s not found on this host", TTYHelper)
	}
	root := t.TempDir()
	s := Spec{ID: newID(t), Command: "bash", Cwd: root, StdinMode: model.StdinPipe, Env: map[string]string{"SHELL": "/bin/false-shell"},
		Args: []string{"-c", `[ -t 0 ] && [ -t 1 ] && echo "tty yes shell=$SHELL"; stty size; read -r l; echo "got:$l"; stty size; exit 7`}}
	s.Require = NormalizeRequire(s.Command, nil)
	if err := s.SetTTY(90, 33); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(strings.Join(s.Require, " "), TTYHelper) {
		t.Fatalf("require %v lacks %s", s.Require, TTYHelper)
	}
	r := start(t, root, s)
	if r.Failed != nil {
		t.Fatalf("start: %+v", r)
	}
	log := filepath.Join(StateDir(root, s.ID), FileStdout)
	waitLog := func(want string) string {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			got := readFile(t, log)
			if strings.Contains(got, want) {
				return got
			}
			if time.Now().After(deadline) {
				t.Fatalf("stdout.log never held %q: %q", want, got)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitLog("tty yes shell=/bin/false-shell\r\n33 90\r\n")
	if _, errs, code := run(t, ResizeScript(root, s.ID, 120, 40), nil); code != 0 {
		t.Fatalf("resize: exit %d %s", code, errs)
	}
	if _, errs, code := run(t, SendScript(root, s.ID), []byte("hello\n")); code != 0 {
		t.Fatalf("send: exit %d %s", code, errs)
	}
	// The terminal echoes the input line, then the command answers.
	waitLog("hello\r\ngot:hello\r\n40 120\r\n")
	st := waitFinal(t, root, s.ID)
	if st.ExitCode == nil || *st.ExitCode != 7 || st.Status != "failed" {
		t.Fatalf("final state %+v, want exit 7", st)
	}
	if _, _, code := run(t, ResizeScript(root, s.ID, 100, 30), nil); code != ExitNotRunning {
		t.Fatalf("resize of a finished session: exit %d, want %d", code, ExitNotRunning)
	}

	// A session without a terminal refuses a resize.
	p := Spec{ID: newID(t), Command: "cat", Cwd: root, StdinMode: model.StdinPipe, Require: []string{"cat"}}
	start(t, root, p)
	if _, _, code := run(t, ResizeScript(root, p.ID, 100, 30), nil); code != ExitNoTTY {
		t.Fatalf("resize of a pipe session: exit %d, want %d", code, ExitNoTTY)
	}
	// Closed stdin and bad sizes are refused.
	c := Spec{ID: newID(t), Command: "top", StdinMode: model.StdinClosed}
	if err := c.SetTTY(0, 0); err == nil {
		t.Error("a --tty session with closed stdin was accepted")
	}
	c.StdinMode = model.StdinPipe
	if err := c.SetTTY(0, 24); err == nil {
		t.Error("a terminal 0 columns wide was accepted")
	}
}

// TestStateScriptReadsWhatFilesSay: whatever the state files hold (plain
// words the script sends as they are, anything else in base64), the
// guest's record parses to what the same files read from a work disk
// give (StateFromFiles), alive flags aside.
func TestStateScriptReadsWhatFilesSay(t *testing.T) {
	needTools(t)
	long := strings.Repeat("7", 64)
	cases := []map[string]string{
		{FileStatus: "running\n", FilePID: "123\n", FileMonitorPID: "45"},
		{FileStatus: "exited\n", FileExitCode: "0\n", FilePID: "9\n"},
		{FileStatus: "failed\n", FileExitCode: "3\n", FileError: "the runner stopped: boom\nmore\n"},
		{FileStatus: "Running\n", FilePID: long, FileMonitorPID: "12 ", FileExitCode: ""},
		{FileStatus: "\n", FilePID: "-5\n", FileKeepalive: "77\n\n", FileError: "é"},
		{FileStatus: "exited\r\n", FileExitCode: "256\n", FileError: "x$(touch /tmp/pwned)"},
	}
	for i, files := range cases {
		root := t.TempDir()
		id := newID(t)
		dir := StateDir(root, id)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		raw := map[string][]byte{}
		for k, v := range files {
			raw[k] = []byte(v)
			if err := os.WriteFile(filepath.Join(dir, k), []byte(v), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		out, stderr, code := run(t, StateScript(root, id), nil)
		if code != 0 || stderr != "" {
			t.Fatalf("case %d: exit %d, stderr %q", i, code, stderr)
		}
		got := ParseStates(out)[id]
		got.PIDAlive, got.MonitorAlive = false, false
		if want := StateFromFiles(raw); !reflect.DeepEqual(got, want) {
			t.Errorf("case %d: script says %+v, files say %+v\n%s", i, got, want, out)
		}
	}
	out, _, _ := run(t, StateScript(t.TempDir(), "x"), nil)
	if !strings.Contains(out, "x missing -") {
		t.Fatalf("missing directory: %q", out)
	}
}
