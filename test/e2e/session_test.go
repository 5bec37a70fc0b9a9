package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/banger/banger/internal/model"
)

// session shows one session of a VM.
func (h *Harness) session(vm, name string) model.Session {
	h.t.Helper()
	var s model.Session
	h.JSON(&s, "session", "show", vm, name)
	return s
}

// waitSession polls a session until ok says so.
func (h *Harness) waitSession(vm, name string, ok func(model.Session) bool) model.Session {
	h.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		s := h.session(vm, name)
		if ok(s) {
			return s
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("session %s: condition never met; last %+v", name, s)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// waitLogs polls `session logs` until it holds want.
func (h *Harness) waitLogs(vm, name, want string) string {
	h.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		out := h.MustRun("session", "logs", vm, name)
		if strings.Contains(out, want) {
			return out
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("session %s logs never held %q; they hold %q", name, want, out)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// syncBuf is a buffer one goroutine writes while another reads.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuf) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// attachRoundTrip attaches from a fresh CLI process, writes input until it
// comes back on the attach's stdout (the output tail starts a moment after
// the attach), then detaches by closing stdin.
func (h *Harness) attachRoundTrip(vm, name, input string) {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := h.Command(ctx, "session", "attach", vm, name)
	in, err := cmd.StdinPipe()
	if err != nil {
		h.t.Fatal(err)
	}
	out, errOut := &syncBuf{}, &syncBuf{}
	cmd.Stdout, cmd.Stderr = out, errOut
	if err := cmd.Start(); err != nil {
		h.t.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for !strings.Contains(out.String(), input) {
		if time.Now().After(deadline) {
			h.t.Fatalf("attach never echoed %q; stdout %q stderr %q", input, out.String(), errOut.String())
		}
		io.WriteString(in, input+"\n")
		time.Sleep(time.Second)
	}
	in.Close()
	if err := cmd.Wait(); err != nil {
		h.t.Fatalf("attach did not detach cleanly: %v; stderr %q", err, errOut.String())
	}
}

// TestSessions drives guest sessions through the CLI against one real VM.
func TestSessions(t *testing.T) {
	h := NewHarness(t)
	const vm = "sess"
	h.StartVM(vm)

	// cat in pipe mode: three JSON lines sent, read back from the logs.
	h.MustRun("session", "start", vm, "--name", "cat", "--", "cat")
	lines := []string{`{"n":1}`, `{"n":2,"s":"it's \"quoted\""}`, `{"n":3}`}
	for _, l := range lines {
		out := h.MustRun("session", "send", vm, "cat", l+"\n")
		if !strings.Contains(out, fmt.Sprint(len(l)+1)) {
			t.Errorf("send of %d bytes said %q", len(l)+1, out)
		}
	}
	h.waitLogs(vm, "cat", strings.Join(lines, "\n")+"\n")
	if out, _, code := h.RunInput([]byte{}, "session", "send", vm, "cat", "-"); code != 0 || !strings.Contains(out, "0") {
		t.Errorf("empty send: exit %d %q", code, out)
	}

	// A JSON-lines RPC loop answers a request.
	rpc := "import sys, json\nfor line in sys.stdin:\n    req = json.loads(line)\n    print(json.dumps({\"id\": req[\"id\"], \"result\": req[\"x\"] * 2}), flush=True)\n"
	h.MustRun("session", "start", vm, "--name", "rpc", "--require", "python3", "--", "python3", "-c", rpc)
	if _, errOut, code := h.RunInput([]byte(`{"id": 7, "x": 21}`+"\n"), "session", "send", vm, "rpc", "-"); code != 0 {
		t.Fatalf("rpc send: %s", errOut)
	}
	h.waitLogs(vm, "rpc", `{"id": 7, "result": 42}`)

	// A line reader sees each `session send DATA` as a line of its own (the
	// CLI adds the newline); --raw sends exactly, so two raw halves make
	// one line.
	lineLen := "import sys\nfor l in sys.stdin:\n    print('line', len(l.rstrip('\\n')), flush=True)\n"
	h.MustRun("session", "start", vm, "--name", "lines", "--require", "python3", "--", "python3", "-u", "-c", lineLen)
	h.MustRun("session", "send", vm, "lines", "hello")
	h.MustRun("session", "send", vm, "lines", `{"n":2}`)
	h.MustRun("session", "send", "--raw", vm, "lines", "ab")
	h.MustRun("session", "send", "-n", vm, "lines", "cd\n")
	got := h.waitLogs(vm, "lines", "line 4\n")
	t.Logf("lines logs: %q", got)
	if got != "line 5\nline 7\nline 4\n" {
		t.Errorf("two sends then two raw halves: logs %q, want %q", got, "line 5\nline 7\nline 4\n")
	}

	// Attach, detach, re-attach from another CLI process, kill -9 the
	// daemon, re-attach again.
	h.attachRoundTrip(vm, "cat", "first-attach")
	h.attachRoundTrip(vm, "cat", "second-attach")
	pid := h.DaemonPID()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 100 && syscall.Kill(pid, 0) == nil; i++ {
		time.Sleep(50 * time.Millisecond)
	}
	h.attachRoundTrip(vm, "cat", "after-daemon-crash")
	if s := h.session(vm, "cat"); s.Status != model.SessionRunning {
		t.Fatalf("cat after the crash: %+v", s)
	}

	// Stop: the exit code is recorded, and the status says it was stopped
	// on request rather than failed.
	h.MustRun("session", "stop", vm, "cat")
	s := h.waitSession(vm, "cat", func(s model.Session) bool { return s.ExitCode != nil })
	t.Logf("cat stopped: status %s exit %d", s.Status, *s.ExitCode)
	if s.Status != model.SessionStopped || *s.ExitCode != 143 {
		t.Errorf("cat after session stop: status %s exit %d, want stopped 143", s.Status, *s.ExitCode)
	}

	// A missing cwd fails at preflight_cwd with the guest's message.
	_, errOut, code := h.Run("session", "start", vm, "--name", "nocwd", "--cwd", "/nonexistent", "--", "cat")
	if code == 0 || !strings.Contains(errOut, "preflight_cwd") || !strings.Contains(errOut, "No such file or directory") {
		t.Errorf("missing cwd: exit %d %q", code, errOut)
	}
	if s := h.session(vm, "nocwd"); s.Status != model.SessionFailed || s.LaunchStage != "preflight_cwd" {
		t.Errorf("nocwd record: %+v", s)
	}
	_, errOut, code = h.Run("session", "start", vm, "--name", "nocmd", "--", "no-such-command")
	if code == 0 || !strings.Contains(errOut, "preflight_command") {
		t.Errorf("missing command: exit %d %q", code, errOut)
	}

	// A command exiting 3 ends failed with exit code 3.
	h.MustRun("session", "start", vm, "--name", "three", "--stdin", "closed", "--", "sh", "-c", "echo bye >&2; exit 3")
	s = h.waitSession(vm, "three", func(s model.Session) bool { return s.Status == model.SessionFailed })
	if s.ExitCode == nil || *s.ExitCode != 3 {
		t.Errorf("three: %+v", s)
	}
	if out := h.MustRun("session", "logs", vm, "three", "--stderr"); out != "bye\n" {
		t.Errorf("three stderr = %q", out)
	}

	// Sessions of a VM stopped under them are failed with the reason; a
	// finished one keeps its exit code (read from the work disk).
	h.MustRun("session", "start", vm, "--name", "sleeper", "--", "sleep", "100000")
	h.MustRun("vm", "stop", vm)
	s = h.session(vm, "sleeper")
	if s.Status != model.SessionFailed || s.Error != "vm is not running" {
		t.Errorf("sleeper after vm stop: %+v", s)
	}
	if s := h.session(vm, "three"); s.ExitCode == nil || *s.ExitCode != 3 {
		t.Errorf("three after vm stop: %+v", s)
	}
	if _, errOut, code := h.Run("session", "send", vm, "sleeper", "x"); code == 0 || !strings.Contains(errOut, "has finished") {
		t.Errorf("send to a session of a stopped vm: exit %d %q", code, errOut)
	}
	h.MustRun("vm", "delete", vm)
	h.AssertNoLeaks()
}

// TestSessionBench measures session start latency and send latency against
// a bare `ssh true` to the same guest. Run with BANGER_BENCH=1.
func TestSessionBench(t *testing.T) {
	if os.Getenv("BANGER_BENCH") != "1" {
		t.Skip("set BANGER_BENCH=1 (with BANGER_E2E=1) to measure session latency")
	}
	h := NewHarness(t)
	const vm = "bench"
	h.StartVM(vm)
	t0 := time.Now()
	h.MustRun("session", "start", vm, "--name", "cat", "--", "cat")
	startLatency := time.Since(t0)

	measure := func(n int, args ...string) []time.Duration {
		var ds []time.Duration
		for i := 0; i < n; i++ {
			t0 := time.Now()
			h.MustRun(args...)
			ds = append(ds, time.Since(t0))
		}
		sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
		return ds
	}
	sends := measure(100, "session", "send", vm, "cat", `{"ping":1}`+"\n")
	sshs := measure(20, "vm", "ssh", vm, "--", "true")
	p := func(ds []time.Duration, q float64) time.Duration { return ds[int(q*float64(len(ds)-1))] }
	t.Logf("session start: %v", startLatency)
	t.Logf("send p50 %v p95 %v (100 sends)", p(sends, 0.5), p(sends, 0.95))
	t.Logf("ssh true p50 %v; send p50 / ssh true p50 = %.2f", p(sshs, 0.5), float64(p(sends, 0.5))/float64(p(sshs, 0.5)))
	h.MustRun("vm", "delete", "--force", vm)
}
