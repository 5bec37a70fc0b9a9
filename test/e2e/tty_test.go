package e2e

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/banger/banger/internal/model"
	"github.com/banger/banger/internal/shell"
)

// tmuxTerm is a real terminal: a detached tmux session on a server of the
// test's own (its socket in a temp dir), running one command line.
type tmuxTerm struct {
	t      *testing.T
	socket string
}

// newTmux starts cmdline (a shell line) in a cols x rows terminal. The
// pane stays after the line ends, so its last words can be read.
func newTmux(t *testing.T, cols, rows int, cmdline string) *tmuxTerm {
	t.Helper()
	if _, err := exec.LookPath("tmux"); err != nil {
		t.Skip("tmux is not installed")
	}
	tm := &tmuxTerm{t: t, socket: filepath.Join(t.TempDir(), "tmux.sock")}
	tm.run("-f", "/dev/null", "new-session", "-d", "-s", "e2e", "-x", fmt.Sprint(cols), "-y", fmt.Sprint(rows),
		cmdline+`; echo "[exit $?]"; sleep 600`)
	t.Cleanup(func() { exec.Command("tmux", "-S", tm.socket, "kill-server").Run() })
	return tm
}

func (tm *tmuxTerm) run(args ...string) string {
	tm.t.Helper()
	out, err := exec.Command("tmux", append([]string{"-S", tm.socket}, args...)...).CombinedOutput()
	if err != nil {
		tm.t.Fatalf("tmux %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// screen is what the pane shows, history included, wrapped lines joined.
func (tm *tmuxTerm) screen() string {
	return tm.run("capture-pane", "-p", "-J", "-S", "-", "-t", "e2e")
}

// waitFor waits until the screen holds want and returns it.
func (tm *tmuxTerm) waitFor(want string) string {
	tm.t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for {
		s := tm.screen()
		if strings.Contains(s, want) {
			return s
		}
		if time.Now().After(deadline) {
			tm.t.Fatalf("the terminal never showed %q; it shows:\n%s", want, s)
		}
		time.Sleep(300 * time.Millisecond)
	}
}

func (tm *tmuxTerm) keys(keys ...string) {
	tm.run(append([]string{"send-keys", "-t", "e2e"}, keys...)...)
}

func (tm *tmuxTerm) resize(cols, rows int) {
	tm.run("resize-window", "-t", "e2e", "-x", fmt.Sprint(cols), "-y", fmt.Sprint(rows))
}

// bangerLine is the shell line that runs the banger CLI with the
// harness's settings.
func (h *Harness) bangerLine(args ...string) string {
	words := []string{"env"}
	for _, kv := range h.env {
		if strings.HasPrefix(kv, "BANGER_") {
			words = append(words, kv)
		}
	}
	words = append(words, "TERM=xterm-256color", filepath.Join(binDir, "banger"))
	return shell.Command(append(words, args...))
}

// termProbe is a guest program that says whether its stdin and stdout are
// terminals and their size, again on every SIGWINCH, echoes each line it
// reads, and exits 42 on "quit".
const termProbe = `import os, signal, sys
def size(*_):
    c, r = os.get_terminal_size(0)
    print("size %dx%d" % (c, r), flush=True)
print("isatty %s %s" % (os.isatty(0), os.isatty(1)), flush=True)
signal.signal(signal.SIGWINCH, size)
size()
for line in sys.stdin:
    if line.strip() == "quit":
        sys.exit(42)
    print("echo:" + line.strip(), flush=True)
`

// TestTerminals drives vm exec -t and a --tty session's raw attach from a
// real terminal (tmux): the guest program sees terminals of the pane's
// size, follows a resize, gets typed input, and its exit code comes back;
// the attachment detaches with Ctrl-P Ctrl-Q, leaving the session running.
func TestTerminals(t *testing.T) {
	h := NewHarness(t)
	const vm = "tty"
	h.StartVM(vm)

	// vm exec -t: a terminal of the pane's size, resized with it.
	tm := newTmux(t, 100, 30, h.bangerLine("vm", "exec", "-t", vm, "--", "python3", "-c", termProbe))
	tm.waitFor("isatty True True")
	tm.waitFor("size 100x30")
	tm.resize(120, 40)
	tm.waitFor("size 120x40")
	tm.keys("hello tty", "Enter")
	tm.waitFor("echo:hello tty")
	tm.keys("quit", "Enter")
	s := tm.waitFor("[exit ")
	if !strings.Contains(s, "[exit 42]") {
		t.Fatalf("vm exec -t did not pass the exit code 42 on:\n%s", s)
	}
	// Ctrl-C reaches the guest program (raw mode), not banger.
	tm2 := newTmux(t, 80, 24, h.bangerLine("vm", "exec", "-t", vm, "--", "sh", "-c", `trap 'echo got-INT; exit 3' INT; echo ready; while :; do sleep 1; done`))
	tm2.waitFor("ready")
	tm2.keys("C-c")
	s = tm2.waitFor("[exit ")
	if !strings.Contains(s, "got-INT") || !strings.Contains(s, "[exit 3]") {
		t.Fatalf("Ctrl-C did not reach the guest command:\n%s", s)
	}

	// Without a terminal on stdin, -t falls back to a plain stdin stream.
	out, errOut, code := h.RunInput([]byte("piped\n"), "vm", "exec", "-t", vm, "--", "sh", "-c", `[ -t 0 ] && echo tty || echo notty; cat`)
	if code != 0 || out != "notty\npiped\n" || !strings.Contains(errOut, "not a terminal") {
		t.Fatalf("-t from a pipe: exit %d stdout %q stderr %q", code, out, errOut)
	}
	// -tt forces a guest terminal even so.
	out, _, code = h.RunInput([]byte{}, "vm", "exec", "-tt", vm, "--", "sh", "-c", `[ -t 0 ] && echo tty; exit 5`)
	if code != 5 || !strings.Contains(out, "tty\r\n") {
		t.Fatalf("-tt: exit %d stdout %q", code, out)
	}

	// A --tty session, attached in raw mode from a 120x40 terminal.
	h.MustRun("session", "start", vm, "--tty", "--name", "probe", "--", "python3", "-c", termProbe)
	h.waitLogs(vm, "probe", "size 80x24")
	if s := h.session(vm, "probe"); s.AttachBackend != model.AttachPTY {
		t.Fatalf("a --tty session's attach backend is %q", s.AttachBackend)
	}
	at := newTmux(t, 120, 40, h.bangerLine("session", "attach", vm, "probe"))
	at.waitFor("Ctrl-P Ctrl-Q detaches")
	h.waitLogs(vm, "probe", "size 120x40") // the attachment sent the pane's size
	at.waitFor("size 120x40")              // and shows what the session writes
	at.keys("typed line", "Enter")
	at.waitFor("echo:typed line")
	at.keys("C-p", "C-q")
	s = at.waitFor("[exit ")
	if !strings.Contains(s, "keeps running") || !strings.Contains(s, "[exit 0]") {
		t.Fatalf("detach did not end the attachment cleanly:\n%s", s)
	}
	if st := h.session(vm, "probe"); st.Status != model.SessionRunning {
		t.Fatalf("session after detach: %s", st.Status)
	}
	// What was typed went through the terminal: echoed, then answered.
	h.waitLogs(vm, "probe", "typed line\r\necho:typed line\r\n")

	// Re-attached, the session ends with its code.
	at2 := newTmux(t, 120, 40, h.bangerLine("session", "attach", vm, "probe"))
	at2.waitFor("detaches")
	at2.keys("quit", "Enter")
	s = at2.waitFor("[exit ")
	if !strings.Contains(s, "session exited with code 42") || !strings.Contains(s, "[exit 42]") {
		t.Fatalf("session end through the attachment:\n%s", s)
	}
	h.waitSession(vm, "probe", func(s model.Session) bool { return s.Status.Finished() })

	// start --tty --attach from a terminal: the session gets the
	// terminal's size and its output is shown from the first byte.
	st := newTmux(t, 110, 35, h.bangerLine("session", "start", vm, "--tty", "--attach", "--name", "probe2", "--", "python3", "-c", termProbe))
	st.waitFor("isatty True True")
	st.waitFor("size 110x35")
	st.keys("C-p", "C-q")
	if s := st.waitFor("[exit "); !strings.Contains(s, "[exit 0]") {
		t.Fatalf("start --attach did not detach cleanly:\n%s", s)
	}
	// Its logs stay readable; a stop ends it as for any session.
	if logs := h.MustRun("session", "logs", vm, "probe2"); !strings.Contains(logs, "isatty True True\r\nsize 110x35\r\n") {
		t.Fatalf("logs of a --tty session: %q", logs)
	}
	h.MustRun("session", "stop", vm, "probe2")
	if s := h.session(vm, "probe2"); s.Status != model.SessionStopped {
		t.Fatalf("a stopped --tty session is %s (exit %v)", s.Status, s.ExitCode)
	}
}
