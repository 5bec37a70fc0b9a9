package envd

import (
	"context"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	pb "github.com/banger/banger/internal/envd/spec/process"
)

func ptr[T any](v T) *T { return &v }

func shCmd(script string) *pb.ProcessConfig {
	return &pb.ProcessConfig{Cmd: "/bin/sh", Args: []string{"-c", script}}
}

// collect reads a stream's events until the end event.
func collect(t *testing.T, recv func() bool, msg func() *pb.ProcessEvent, err func() error) (pid uint32, out string, end *pb.ProcessEvent_EndEvent) {
	t.Helper()
	for recv() {
		switch e := msg().Event.(type) {
		case *pb.ProcessEvent_Start:
			pid = e.Start.Pid
		case *pb.ProcessEvent_Data:
			out += string(e.Data.GetStdout()) + string(e.Data.GetStderr()) + string(e.Data.GetPty())
		case *pb.ProcessEvent_End:
			end = e.End
		}
	}
	if e := err(); e != nil {
		t.Fatalf("stream: %v", e)
	}
	return pid, out, end
}

func TestStartEnvCwdAndUser(t *testing.T) {
	ts := testServer(t, func(c *Config) { c.Env = map[string]string{"A": "default", "B": "default"} })
	pc, _ := clients(ts)
	dir := t.TempDir()
	cfg := shCmd(`printf '%s %s %s' "$A" "$B" "$(pwd)"`)
	cfg.Envs = map[string]string{"B": "request"}
	cfg.Cwd = &dir
	st, err := pc.Start(context.Background(), connect.NewRequest(&pb.StartRequest{Process: cfg}))
	if err != nil {
		t.Fatal(err)
	}
	_, out, end := collect(t, st.Receive, func() *pb.ProcessEvent { return st.Msg().Event }, st.Err)
	if want := "default request " + dir; out != want || end.GetExitCode() != 0 || !end.GetExited() {
		t.Fatalf("output %q end %v, want %q exit 0", out, end, want)
	}

	// A missing cwd or command is the caller's error.
	bad := shCmd("true")
	bad.Cwd = ptr(dir + "/missing")
	st, _ = pc.Start(context.Background(), connect.NewRequest(&pb.StartRequest{Process: bad}))
	for st.Receive() {
	}
	if connect.CodeOf(st.Err()) != connect.CodeInvalidArgument {
		t.Errorf("missing cwd: %v, want invalid_argument", st.Err())
	}
	st, _ = pc.Start(context.Background(), connect.NewRequest(&pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "no-such-command-xyz"}}))
	for st.Receive() {
	}
	if connect.CodeOf(st.Err()) != connect.CodeInvalidArgument || !strings.Contains(st.Err().Error(), "no-such-command-xyz") {
		t.Errorf("missing command: %v", st.Err())
	}
}

func TestStdinInputAndClose(t *testing.T) {
	ts := testServer(t)
	pc, _ := clients(ts)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := pc.Start(ctx, connect.NewRequest(&pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "cat"}, Stdin: ptr(true)}))
	if err != nil {
		t.Fatal(err)
	}
	if !st.Receive() {
		t.Fatal(st.Err())
	}
	pid := st.Msg().Event.GetStart().GetPid()
	sel := &pb.ProcessSelector{Selector: &pb.ProcessSelector_Pid{Pid: pid}}
	if _, err := pc.SendInput(ctx, connect.NewRequest(&pb.SendInputRequest{Process: sel, Input: &pb.ProcessInput{Input: &pb.ProcessInput_Stdin{Stdin: []byte("line one\n")}}})); err != nil {
		t.Fatal(err)
	}
	if !st.Receive() || string(st.Msg().Event.GetData().GetStdout()) != "line one\n" {
		t.Fatalf("echo: %v %v", st.Msg(), st.Err())
	}
	if _, err := pc.CloseStdin(ctx, connect.NewRequest(&pb.CloseStdinRequest{Process: sel})); err != nil {
		t.Fatal(err)
	}
	_, _, end := collect(t, st.Receive, func() *pb.ProcessEvent { return st.Msg().Event }, st.Err)
	if end == nil || end.ExitCode != 0 {
		t.Fatalf("cat after EOF: end %v", end)
	}
	// Without stdin (the SDK's default for run) the process reads EOF.
	st, _ = pc.Start(ctx, connect.NewRequest(&pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "cat"}, Stdin: ptr(false)}))
	_, _, end = collect(t, st.Receive, func() *pb.ProcessEvent { return st.Msg().Event }, st.Err)
	if end == nil || end.ExitCode != 0 {
		t.Fatalf("cat without stdin: end %v", end)
	}
}

// TestBackgroundSurvivesDisconnect: a process outlives the stream that
// started it, is listed with its tag, re-attached by tag, and killed.
func TestBackgroundSurvivesDisconnect(t *testing.T) {
	ts := testServer(t)
	pc, _ := clients(ts)
	ctx := context.Background()
	sctx, leave := context.WithCancel(ctx)
	st, err := pc.Start(sctx, connect.NewRequest(&pb.StartRequest{
		Process: shCmd("while :; do echo tick; sleep 0.2; done"), Tag: ptr("ticker")}))
	if err != nil {
		t.Fatal(err)
	}
	if !st.Receive() {
		t.Fatal(st.Err())
	}
	pid := st.Msg().Event.GetStart().GetPid()
	leave()
	st.Close()

	// A second process with the same tag is refused while it runs.
	dup, _ := pc.Start(ctx, connect.NewRequest(&pb.StartRequest{Process: shCmd("true"), Tag: ptr("ticker")}))
	for dup.Receive() {
	}
	if connect.CodeOf(dup.Err()) != connect.CodeAlreadyExists {
		t.Errorf("duplicate tag: %v", dup.Err())
	}

	time.Sleep(500 * time.Millisecond)
	list, err := pc.List(ctx, connect.NewRequest(&pb.ListRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Msg.Processes) != 1 || list.Msg.Processes[0].Pid != pid || list.Msg.Processes[0].GetTag() != "ticker" ||
		list.Msg.Processes[0].GetConfig().GetCmd() != "/bin/sh" {
		t.Fatalf("List = %v", list.Msg.Processes)
	}
	cs, err := pc.Connect(ctx, connect.NewRequest(&pb.ConnectRequest{Process: &pb.ProcessSelector{Selector: &pb.ProcessSelector_Tag{Tag: "ticker"}}}))
	if err != nil {
		t.Fatal(err)
	}
	if !cs.Receive() || cs.Msg().Event.GetStart().GetPid() != pid {
		t.Fatalf("Connect start: %v %v", cs.Msg(), cs.Err())
	}
	if !cs.Receive() || !strings.Contains(string(cs.Msg().Event.GetData().GetStdout()), "tick") {
		t.Fatalf("Connect data: %v %v", cs.Msg(), cs.Err())
	}
	if _, err := pc.SendSignal(ctx, connect.NewRequest(&pb.SendSignalRequest{
		Process: &pb.ProcessSelector{Selector: &pb.ProcessSelector_Pid{Pid: pid}}, Signal: pb.Signal_SIGNAL_SIGKILL})); err != nil {
		t.Fatal(err)
	}
	_, _, end := collect(t, cs.Receive, func() *pb.ProcessEvent { return cs.Msg().Event }, cs.Err)
	if end == nil || end.Exited || end.Status != "signal: killed" || end.ExitCode != -1 {
		t.Fatalf("end after SIGKILL = %v", end)
	}
	list, _ = pc.List(ctx, connect.NewRequest(&pb.ListRequest{}))
	if len(list.Msg.Processes) != 0 {
		t.Fatalf("List after kill = %v", list.Msg.Processes)
	}
	if _, err := pc.SendSignal(ctx, connect.NewRequest(&pb.SendSignalRequest{
		Process: &pb.ProcessSelector{Selector: &pb.ProcessSelector_Pid{Pid: pid}}, Signal: pb.Signal_SIGNAL_SIGTERM})); connect.CodeOf(err) != connect.CodeNotFound {
		t.Fatalf("signal to an ended process: %v, want not_found", err)
	}
}

func TestKeepalive(t *testing.T) {
	ts := testServer(t, func(c *Config) { c.Keepalive = 100 * time.Millisecond })
	pc, _ := clients(ts)
	st, err := pc.Start(context.Background(), connect.NewRequest(&pb.StartRequest{Process: shCmd("sleep 0.5")}))
	if err != nil {
		t.Fatal(err)
	}
	keepalives := 0
	for st.Receive() {
		if st.Msg().Event.GetKeepalive() != nil {
			keepalives++
		}
	}
	if st.Err() != nil || keepalives < 2 {
		t.Fatalf("%d keepalives in a quiet 0.5 s stream (err %v), want >= 2", keepalives, st.Err())
	}
}

func TestPTY(t *testing.T) {
	ts := testServer(t)
	pc, _ := clients(ts)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := pc.Start(ctx, connect.NewRequest(&pb.StartRequest{
		Process: shCmd("stty size; read line; echo got:$line"),
		Pty:     &pb.PTY{Size: &pb.PTY_Size{Cols: 100, Rows: 30}}}))
	if err != nil {
		t.Fatal(err)
	}
	if !st.Receive() {
		t.Fatal(st.Err())
	}
	sel := &pb.ProcessSelector{Selector: &pb.ProcessSelector_Pid{Pid: st.Msg().Event.GetStart().GetPid()}}
	if _, err := pc.Update(ctx, connect.NewRequest(&pb.UpdateRequest{Process: sel, Pty: &pb.PTY{Size: &pb.PTY_Size{Cols: 120, Rows: 40}}})); err != nil {
		t.Fatal(err)
	}
	if _, err := pc.CloseStdin(ctx, connect.NewRequest(&pb.CloseStdinRequest{Process: sel})); connect.CodeOf(err) != connect.CodeFailedPrecondition {
		t.Errorf("CloseStdin on a pty: %v, want failed_precondition", err)
	}
	if _, err := pc.SendInput(ctx, connect.NewRequest(&pb.SendInputRequest{Process: sel, Input: &pb.ProcessInput{Input: &pb.ProcessInput_Pty{Pty: []byte("hello\n")}}})); err != nil {
		t.Fatal(err)
	}
	_, out, end := collect(t, st.Receive, func() *pb.ProcessEvent { return st.Msg().Event }, st.Err)
	if !strings.Contains(out, "got:hello") || end.GetExitCode() != 0 {
		t.Fatalf("pty output %q end %v", out, end)
	}
	if !strings.Contains(out, "30 100") && !strings.Contains(out, "40 120") {
		t.Errorf("pty output %q shows no size set", out)
	}
}
