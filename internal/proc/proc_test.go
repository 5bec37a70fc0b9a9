package proc

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestParseCmdline(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string
	}{
		{"", nil},
		{"\x00", nil},
		{"sleep\x0030\x00", []string{"sleep", "30"}},
		{"a\x00\x00b\x00", []string{"a", "", "b"}},
		{"noterm", []string{"noterm"}},
	} {
		if got := ParseCmdline([]byte(tc.in)); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("ParseCmdline(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestHasArg(t *testing.T) {
	argv := []string{"fc", "--api-sock", "/a.sock", "--id=vm1", "bare"}
	for _, tc := range []struct {
		flag, value string
		want        bool
	}{
		{"--api-sock", "/a.sock", true},
		{"--api-sock", "/a.soc", false},
		{"--api-sock", "/a.sock.x", false},
		{"--id", "vm1", true},
		{"--id", "vm", false},
		{"", "bare", true},
		{"", "fc", false}, // argv[0] is not an argument
		{"--other", "/a.sock", false},
		{"bare", "", false},
	} {
		if got := HasArg(argv, tc.flag, tc.value); got != tc.want {
			t.Errorf("HasArg(%q, %q) = %v, want %v", tc.flag, tc.value, got, tc.want)
		}
	}
	if HasArg([]string{"x", "--api-sock"}, "--api-sock", "") {
		t.Error("flag without a following value matched")
	}
}

func TestParseStatState(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		err      bool
	}{
		{"123 (sleep) S 1 2 3", "S", false},
		{"123 (a) b) (c) Z 1", "Z", false},
		{"123 (x", "", true},
		{"123 (x)", "", true},
	} {
		got, err := ParseStatState([]byte(tc.in))
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("ParseStatState(%q) = %q, %v; want %q, err=%v", tc.in, got, err, tc.want, tc.err)
		}
	}
}

// uniqueSleep starts a detached sleep whose duration argument is unique to
// this test run, so Find cannot see another test's process.
func uniqueSleep(t *testing.T) (*Child, Matcher) {
	t.Helper()
	dur := fmt.Sprintf("600.%d", time.Now().UnixNano()%1000000000)
	c, err := StartDetached("sleep", []string{dur}, filepath.Join(t.TempDir(), "log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(c.PID, syscall.SIGKILL); <-c.Done() })
	return c, ArgMatcher("", dur)
}

func TestStartFindAliveTerminate(t *testing.T) {
	c, m := uniqueSleep(t)
	pids, err := Find(m)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(pids, []int{c.PID}) {
		t.Fatalf("Find = %v, want [%d]", pids, c.PID)
	}
	if !Alive(c.PID, m) {
		t.Fatal("Alive = false for a running sleep")
	}
	if Alive(c.PID, ArgMatcher("", "not-this-one")) {
		t.Fatal("Alive = true for a matcher the process does not satisfy")
	}
	// The child leads its own session, so it survives our terminal.
	if sid, err := unixGetsid(c.PID); err != nil || sid != c.PID {
		t.Fatalf("child session = %d, %v; want its own (%d)", sid, err, c.PID)
	}
	if err := Terminate(context.Background(), c.PID, m, 2*time.Second); err != nil {
		t.Fatal(err)
	}
	if Alive(c.PID, m) {
		t.Fatal("still alive after Terminate")
	}
	select {
	case <-c.Done():
	case <-time.After(2 * time.Second):
		t.Fatal("child not reaped after Terminate")
	}
	if pids, _ := Find(m); len(pids) != 0 {
		t.Fatalf("Find after Terminate = %v", pids)
	}
	// Terminating a gone process is not an error.
	if err := Terminate(context.Background(), c.PID, m, time.Second); err != nil {
		t.Fatalf("Terminate of a gone process: %v", err)
	}
}

func TestTerminateEscalatesToSIGKILL(t *testing.T) {
	dir := t.TempDir()
	marker := fmt.Sprintf("banger-proc-trap-%d", time.Now().UnixNano())
	// A shell that ignores SIGTERM; the marker stays in its argv ($0).
	c, err := StartDetached("/bin/sh", []string{"-c", "trap '' TERM; echo ready; while :; do sleep 0.1; done", marker}, filepath.Join(dir, "log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(c.PID, syscall.SIGKILL) })
	m := ArgMatcher("", marker)
	waitLog(t, filepath.Join(dir, "log"), "ready")
	start := time.Now()
	if err := Terminate(context.Background(), c.PID, m, 300*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 300*time.Millisecond {
		t.Fatalf("Terminate returned after %v: SIGTERM should have been ignored", d)
	}
	if err := c.Err(); err == nil || !strings.Contains(err.Error(), "killed") {
		t.Fatalf("exit = %v, want killed by SIGKILL", err)
	}
	if Alive(c.PID, m) {
		t.Fatal("alive after SIGKILL")
	}
}

func TestAliveRejectsRecycledPID(t *testing.T) {
	// Our own PID is alive, but not with an argument we never had.
	if !Alive(os.Getpid(), nil) {
		t.Fatal("own pid not alive")
	}
	if Alive(os.Getpid(), ArgMatcher("--api-sock", "/nonexistent.sock")) {
		t.Fatal("own pid matched an argument it does not carry")
	}
	if Alive(0, nil) || Alive(-1, nil) {
		t.Fatal("non-positive pid alive")
	}
}

func TestStartDetachedLogsAndReaps(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "log")
	c, err := StartDetached("/bin/sh", []string{"-c", "echo out; echo err >&2; read x || echo stdin-closed; exit 3"}, log)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("child did not exit")
	}
	if err := c.Err(); err == nil || !strings.Contains(err.Error(), "exit status 3") {
		t.Fatalf("Err = %v, want exit status 3", err)
	}
	b, _ := os.ReadFile(log)
	for _, w := range []string{"out", "err", "stdin-closed"} {
		if !strings.Contains(string(b), w) {
			t.Errorf("log %q lacks %q", b, w)
		}
	}
	if st, err := state(c.PID); err == nil && st == "Z" {
		t.Fatal("child left as a zombie")
	}
	if _, err := StartDetached("/nonexistent/bin", nil, log); err == nil {
		t.Fatal("start of a missing binary succeeded")
	}
}

func waitLog(t *testing.T, path, want string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if b, _ := os.ReadFile(path); strings.Contains(string(b), want) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("%s never contained %q", path, want)
}

func unixGetsid(pid int) (int, error) { return unix.Getsid(pid) }

func TestParseStatFlags(t *testing.T) {
	// A real line's shape; the name holds spaces and a parenthesis.
	line := "4242 (qemu (x) y) S 1 4242 4242 0 -1 4194564 120 0 0 0 3 1 0 0 20 0 1 0 100 1000 10"
	got, err := ParseStatFlags([]byte(line))
	if err != nil || got != 4194564 {
		t.Fatalf("ParseStatFlags = %d, %v; want 4194564", got, err)
	}
	if got&PFExiting == 0 {
		t.Fatal("4194564 has PF_EXITING (0x4) set")
	}
	for _, bad := range []string{"", "1 (x", "1 (x) S 1 2", "1 (x) S 1 2 3 4 5 notanumber"} {
		if _, err := ParseStatFlags([]byte(bad)); err == nil {
			t.Errorf("ParseStatFlags(%q) accepted", bad)
		}
	}
}
