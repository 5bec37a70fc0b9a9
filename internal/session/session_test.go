package session

import (
	"strings"
	"testing"
	"time"

	"github.com/banger/banger/internal/model"
)

func TestStateDir(t *testing.T) {
	if got := StateDir(DefaultStateRoot, "abc"); got != "/root/.local/state/banger/sessions/abc" {
		t.Fatalf("StateDir = %q", got)
	}
}

func TestDefaultName(t *testing.T) {
	id := "0123456789abcdef0123456789abcdef"
	cases := []struct{ cmd, want string }{
		{"cat", "cat-01234567"},
		{"/usr/bin/python3", "python3-01234567"},
		{"./My_Agent.sh", "my-agent-sh-01234567"},
		{"---", "session-01234567"},
		{"/", "session-01234567"},
		{"ÉCHO", "cho-01234567"},
		{strings.Repeat("a", 80), strings.Repeat("a", 54) + "-01234567"},
		{strings.Repeat("a", 53) + "--b", strings.Repeat("a", 53) + "-01234567"},
	}
	for _, c := range cases {
		got := DefaultName(c.cmd, id)
		if got != c.want {
			t.Errorf("DefaultName(%q) = %q, want %q", c.cmd, got, c.want)
		}
		if err := model.ValidateName("session", got); err != nil {
			t.Errorf("DefaultName(%q) = %q breaks the name rule: %v", c.cmd, got, err)
		}
	}
}

func TestNormalizeRequire(t *testing.T) {
	cases := []struct {
		cmd  string
		req  []string
		want []string
	}{
		{"cat", nil, []string{"cat"}},
		{"cat", []string{"git", "cat", "", "git", "jq"}, []string{"cat", "git", "jq"}},
		{"python3", []string{"b", "a"}, []string{"python3", "b", "a"}},
	}
	for _, c := range cases {
		got := NormalizeRequire(c.cmd, c.req)
		if strings.Join(got, ",") != strings.Join(c.want, ",") {
			t.Errorf("NormalizeRequire(%q, %q) = %q, want %q", c.cmd, c.req, got, c.want)
		}
	}
}

func TestNormalize(t *testing.T) {
	id := "0123456789abcdef0123456789abcdef"
	cases := []struct {
		name, cmd, cwd, stdin string
		env                   map[string]string
		wantErr               string
		wantName, wantCwd     string
		wantStdin             string
	}{
		{cmd: "cat", wantName: "cat-01234567", wantCwd: "/root", wantStdin: "pipe"},
		{name: "agent", cmd: "cat", cwd: "/root/repo", stdin: "closed", wantName: "agent", wantCwd: "/root/repo", wantStdin: "closed"},
		{cmd: "", wantErr: "command is empty"},
		{name: "Bad_Name", cmd: "cat", wantErr: "invalid session name"},
		{cmd: "cat", stdin: "tty", wantErr: `invalid stdin mode "tty"`},
		{cmd: "cat", cwd: "repo", wantErr: "use an absolute guest path"},
		{cmd: "cat", env: map[string]string{"1X": "v"}, wantErr: `invalid environment variable name "1X"`},
		{cmd: "cat", env: map[string]string{"A-B": "v"}, wantErr: "invalid environment variable name"},
		{cmd: "cat", env: map[string]string{"_ok9": "v\x00"}, wantErr: "NUL"},
		{cmd: "cat", env: map[string]string{"_ok9": "any 'value' $x"}, wantName: "cat-01234567", wantCwd: "/root", wantStdin: "pipe"},
	}
	for _, c := range cases {
		spec, name, err := Normalize(id, c.name, c.cmd, nil, c.env, c.cwd, c.stdin, nil)
		if c.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Errorf("Normalize(%+v) err = %v, want %q", c, err, c.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("Normalize(%+v): %v", c, err)
			continue
		}
		if name != c.wantName || spec.Cwd != c.wantCwd || spec.StdinMode != c.wantStdin || spec.Require[0] != c.cmd {
			t.Errorf("Normalize(%+v) = %+v name %q", c, spec, name)
		}
	}
}

func TestParseSignal(t *testing.T) {
	cases := []struct{ in, want, err string }{
		{"", "TERM", ""},
		{"kill", "KILL", ""},
		{"SIGINT", "INT", ""},
		{"9", "9", ""},
		{"TERM; rm -rf /", "", "invalid signal"},
		{"123", "", "invalid signal"},
	}
	for _, c := range cases {
		got, err := ParseSignal(c.in, "TERM")
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("ParseSignal(%q) err = %v", c.in, err)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("ParseSignal(%q) = %q, %v; want %q", c.in, got, err, c.want)
		}
	}
}

func TestStepError(t *testing.T) {
	got := StepError("preflight_cwd", "cd: /x: No such file or directory", "  raw\n")
	want := "session launch failed at preflight_cwd: cd: /x: No such file or directory\n--- guest output ---\nraw"
	if got != want {
		t.Fatalf("StepError = %q", got)
	}
	if got := StepError("upload", "disk full", ""); got != "session launch failed at upload: disk full" {
		t.Fatalf("StepError without log = %q", got)
	}
}

func TestParseStates(t *testing.T) {
	b := func(s string) string { return b64(s) }
	out := strings.Join([]string{
		"noise before",
		"@@banger-state aaaa found -",
		"@@banger-state aaaa status " + b("running\n"),
		"@@banger-state aaaa pid " + b("42\n"),
		"@@banger-state aaaa monitor_pid " + b("41"),
		"@@banger-state aaaa pid_alive -",
		"@@banger-state bbbb found -",
		"@@banger-state bbbb status " + b("exited"),
		"@@banger-state bbbb exit_code " + b("0"),
		"@@banger-state cccc found -",
		"@@banger-state cccc status " + b("banana"),
		"@@banger-state cccc pid " + b("-3"),
		"@@banger-state cccc exit_code " + b("x1"),
		"@@banger-state cccc error !!!notbase64",
		"@@banger-state cccc",
		"@@banger-state dddd missing -",
		"@@banger-state eeee error " + b("multi\nline"),
		"@@banger-state ffff status =exited",
		"@@banger-state ffff exit_code =7",
		"@@banger-state ffff pid =banana",
	}, "\n")
	st := ParseStates(out)
	if a := st["aaaa"]; !a.Known || a.Missing || a.Status != "running" || a.PID != 42 || a.MonitorPID != 41 || !a.PIDAlive || a.MonitorAlive || a.ExitCode != nil {
		t.Errorf("aaaa = %+v", a)
	}
	if bb := st["bbbb"]; bb.Status != "exited" || bb.ExitCode == nil || *bb.ExitCode != 0 {
		t.Errorf("bbbb = %+v", bb)
	}
	if c := st["cccc"]; !c.Known || c.Status != "" || c.PID != 0 || c.ExitCode != nil || c.Error != "" {
		t.Errorf("garbage cccc = %+v", c)
	}
	if d := st["dddd"]; !d.Missing {
		t.Errorf("dddd = %+v", d)
	}
	if e := st["eeee"]; e.Error != "multi\nline" {
		t.Errorf("eeee = %+v", e)
	}
	if f := st["ffff"]; f.Status != "exited" || f.ExitCode == nil || *f.ExitCode != 7 || f.PID != 0 {
		t.Errorf("plain words ffff = %+v", f)
	}
	if _, ok := st["zzzz"]; ok {
		t.Errorf("unknown id present")
	}
}

func TestStateFromFiles(t *testing.T) {
	if st := StateFromFiles(nil); !st.Missing || !st.Known {
		t.Errorf("nil files = %+v", st)
	}
	st := StateFromFiles(map[string][]byte{"status": []byte("failed\n"), "exit_code": []byte("3\n"), "pid": []byte("garbage"), "error": []byte("boom")})
	if st.Status != "failed" || st.ExitCode == nil || *st.ExitCode != 3 || st.PID != 0 || st.Error != "boom" || st.PIDAlive {
		t.Errorf("files = %+v", st)
	}
}

func intp(n int) *int { return &n }

func TestApply(t *testing.T) {
	now := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	created := now.Add(-time.Minute)
	base := model.Session{ID: "s1", Status: model.SessionRunning, StdinMode: model.StdinPipe, Attachable: true, Reattachable: true, GuestPID: 42, CreatedAt: created, UpdatedAt: created, StartedAt: &created}
	starting := base
	starting.Status, starting.Attachable, starting.Reattachable, starting.GuestPID, starting.StartedAt = model.SessionStarting, false, false, 0, nil
	stopping := base
	stopping.Status = model.SessionStopping
	done := base
	done.Status, done.ExitCode, done.Attachable, done.EndedAt = model.SessionExited, intp(0), false, &created
	stoppedDone := done
	stoppedDone.Status, stoppedDone.ExitCode = model.SessionStopped, intp(143)

	cases := []struct {
		name       string
		rec        model.Session
		st         State
		vmRunning  bool
		wantStatus model.SessionStatus
		wantChange bool
		wantErr    string
		wantCode   *int
		wantAttach bool
	}{
		{"running and alive stays", base, State{Known: true, Status: "running", PID: 42, PIDAlive: true, MonitorAlive: true}, true, model.SessionRunning, false, "", nil, true},
		{"starting becomes running", starting, State{Known: true, Status: "running", PID: 42, PIDAlive: true, MonitorAlive: true}, true, model.SessionRunning, true, "", nil, true},
		{"stopping stays stopping while alive", stopping, State{Known: true, Status: "running", PID: 42, PIDAlive: true}, true, model.SessionStopping, false, "", nil, true},
		{"stopped by TERM on request", stopping, State{Known: true, Status: "failed", PID: 42, ExitCode: intp(143)}, true, model.SessionStopped, true, "", intp(143), false},
		{"stopped on request, exit 0", stopping, State{Known: true, Status: "exited", PID: 42, ExitCode: intp(0)}, true, model.SessionStopped, true, "", intp(0), false},
		{"stopped by the KILL after the timeout", stopping, State{Known: true, Status: "failed", PID: 42, ExitCode: intp(137), Error: "killed: the session did not end"}, true, model.SessionStopped, true, "killed: the session did not end", intp(137), false},
		{"stopping, gone unrecorded, is failed", stopping, State{Known: true, Status: "running", PID: 42}, true, model.SessionFailed, true, ReasonNoExitCode, nil, false},
		{"killed by TERM without a stop is failed", base, State{Known: true, Status: "failed", PID: 42, ExitCode: intp(143)}, true, model.SessionFailed, true, "", intp(143), false},
		{"exit 0 is exited", base, State{Known: true, Status: "exited", PID: 42, ExitCode: intp(0)}, true, model.SessionExited, true, "", intp(0), false},
		{"exit 3 is failed", base, State{Known: true, Status: "failed", PID: 42, ExitCode: intp(3)}, true, model.SessionFailed, true, "", intp(3), false},
		{"exit code wins over a stale status", base, State{Known: true, Status: "running", PID: 42, ExitCode: intp(0)}, true, model.SessionExited, true, "", intp(0), false},
		{"runner failure", starting, State{Known: true, Status: "failed", Error: "mkfifo: denied"}, true, model.SessionFailed, true, "mkfifo: denied", nil, false},
		{"vm not running", base, State{}, false, model.SessionFailed, true, ReasonVMNotRunning, nil, false},
		{"vm stopped after exit keeps the code", base, State{Known: true, Status: "exited", ExitCode: intp(0)}, false, model.SessionExited, true, "", intp(0), false},
		{"vm stopped, killed by the shutdown", base, State{Known: true, Status: "failed", PID: 42, ExitCode: intp(143)}, false, model.SessionFailed, true, ReasonVMNotRunning, intp(143), false},
		{"vm stopped, runner failed unrecorded", base, State{Known: true, Status: "failed", PID: 42}, false, model.SessionFailed, true, ReasonVMNotRunning, nil, false},
		{"vm stopped, disk says running", base, State{Known: true, Status: "running", PID: 42}, false, model.SessionFailed, true, ReasonVMNotRunning, nil, false},
		{"missing dir", base, State{Known: true, Missing: true}, true, model.SessionFailed, true, ReasonStateMissing, nil, false},
		{"missing dir while starting", starting, State{Known: true, Missing: true}, true, model.SessionStarting, false, "", nil, false},
		{"dead without exit code", base, State{Known: true, Status: "running", PID: 42}, true, model.SessionFailed, true, ReasonNoExitCode, nil, false},
		{"dead command, live monitor: wait", base, State{Known: true, Status: "running", PID: 42, MonitorAlive: true}, true, model.SessionRunning, false, "", nil, true},
		{"nothing observed keeps", base, State{}, true, model.SessionRunning, false, "", nil, true},
		{"finished never changes", done, State{}, false, model.SessionExited, false, "", intp(0), false},
		{"stopped never changes", stoppedDone, State{Known: true, Missing: true}, true, model.SessionStopped, false, "", intp(143), false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, changed := Apply(c.rec, c.st, c.vmRunning, now)
			if got.Status != c.wantStatus || changed != c.wantChange {
				t.Fatalf("status %s changed %v, want %s %v", got.Status, changed, c.wantStatus, c.wantChange)
			}
			if c.wantErr != "" && got.Error != c.wantErr {
				t.Errorf("error %q, want %q", got.Error, c.wantErr)
			}
			if (got.ExitCode == nil) != (c.wantCode == nil) || (got.ExitCode != nil && *got.ExitCode != *c.wantCode) {
				t.Errorf("exit code %v, want %v", got.ExitCode, c.wantCode)
			}
			if got.Attachable != c.wantAttach {
				t.Errorf("attachable %v, want %v", got.Attachable, c.wantAttach)
			}
			if changed && !got.UpdatedAt.Equal(now) {
				t.Errorf("changed but UpdatedAt %v", got.UpdatedAt)
			}
			if !changed && !got.UpdatedAt.Equal(c.rec.UpdatedAt) {
				t.Errorf("unchanged but UpdatedAt moved")
			}
			if got.Status.Finished() && got.EndedAt == nil {
				t.Errorf("finished without EndedAt")
			}
		})
	}
	// An old "starting" record without a state dir is failed.
	old := starting
	old.CreatedAt = now.Add(-LaunchGrace - time.Second)
	if got, _ := Apply(old, State{Known: true, Missing: true}, true, now); got.Status != model.SessionFailed {
		t.Errorf("stale starting = %s", got.Status)
	}
}

func TestParseStart(t *testing.T) {
	out := "bash: line 3: cd: /nope: No such file or directory\n" +
		"@@banger-stage preflight_cwd fail " + b64("bash: line 3: cd: /nope: No such file or directory") + "\n"
	r := ParseStart(out, "x")
	if r.Failed == nil || r.Failed.Stage != StagePreflightCwd || !strings.Contains(r.Failed.Message, "No such file") {
		t.Fatalf("ParseStart = %+v", r)
	}
	if !strings.Contains(r.Log, "cd: /nope") {
		t.Fatalf("log = %q", r.Log)
	}
	ok := "@@banger-stage preflight ok " + b64("") + "\n@@banger-stage upload ok \n@@banger-state x found -\n@@banger-state x status " + b64("running") + "\n@@banger-stage wait_ready ok\n@@banger-stage bogus maybe\n"
	r = ParseStart(ok, "x")
	if r.Failed != nil || len(r.Stages) != 3 || r.State.Status != "running" {
		t.Fatalf("ParseStart ok = %+v", r)
	}
}
