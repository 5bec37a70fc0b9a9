package envd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sort"
	"sync"
	"syscall"
	"time"

	"connectrpc.com/connect"

	pb "github.com/banger/banger/internal/envd/spec/process"
)

// drainAfterExit bounds how long output is still read after the process
// exited: a child it left behind may hold the pipes open for ever.
const drainAfterExit = 2 * time.Second

// subscriberBuffer is how many events a slow stream may lag behind before
// the process's output waits for it.
const subscriberBuffer = 64

// processes is the process service: the running processes by pid.
type processes struct {
	s     *Server
	mu    sync.Mutex
	byPID map[uint32]*proc
}

func newProcesses(s *Server) *processes {
	return &processes{s: s, byPID: map[uint32]*proc{}}
}

// proc is one started process and the streams watching it.
type proc struct {
	pid   uint32
	tag   *string
	cfg   *pb.ProcessConfig
	cmd   *exec.Cmd
	stdin io.WriteCloser // nil when stdin is closed or not a pipe
	pty   *os.File       // the master side, nil without a PTY

	mu   sync.Mutex
	subs map[*subscriber]struct{}
	end  *pb.ProcessEvent // set once, when the process ended
}

type subscriber struct {
	ch   chan *pb.ProcessEvent
	gone chan struct{}
}

// subscribe adds a stream; when the process already ended it gets only the
// end event.
func (p *proc) subscribe() *subscriber {
	sub := &subscriber{ch: make(chan *pb.ProcessEvent, subscriberBuffer), gone: make(chan struct{})}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.end != nil {
		sub.ch <- p.end
		return sub
	}
	p.subs[sub] = struct{}{}
	return sub
}

func (p *proc) unsubscribe(sub *subscriber) {
	close(sub.gone)
	p.mu.Lock()
	delete(p.subs, sub)
	p.mu.Unlock()
}

// publish hands ev to every stream, waiting for slow ones (output is not
// dropped while someone watches) unless they leave.
func (p *proc) publish(ev *pb.ProcessEvent) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := ev.Event.(*pb.ProcessEvent_End); ok {
		p.end = ev
	}
	for sub := range p.subs {
		select {
		case sub.ch <- ev:
		case <-sub.gone:
		}
	}
}

func (p *proc) info() *pb.ProcessInfo {
	return &pb.ProcessInfo{Config: p.cfg, Pid: p.pid, Tag: p.tag}
}

// signal sends sig to the process's group (its own: every process is
// started as a group or session leader), so a shell's children get it too.
func (p *proc) signal(sig syscall.Signal) error {
	err := syscall.Kill(-int(p.pid), sig)
	if errors.Is(err, syscall.ESRCH) {
		err = syscall.Kill(int(p.pid), sig)
	}
	return err
}

func (ps *processes) find(sel *pb.ProcessSelector) (*proc, error) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	switch v := sel.GetSelector().(type) {
	case *pb.ProcessSelector_Pid:
		if p, ok := ps.byPID[v.Pid]; ok {
			return p, nil
		}
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("process with pid %d not found", v.Pid))
	case *pb.ProcessSelector_Tag:
		for _, p := range ps.byPID {
			if p.tag != nil && *p.tag == v.Tag {
				return p, nil
			}
		}
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("process with tag %q not found", v.Tag))
	}
	return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("process selector: want pid or tag"))
}

func (ps *processes) closeAll() {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	for _, p := range ps.byPID {
		_ = p.signal(syscall.SIGKILL)
	}
}

// List answers the running processes, by pid.
func (ps *processes) List(context.Context, *connect.Request[pb.ListRequest]) (*connect.Response[pb.ListResponse], error) {
	ps.mu.Lock()
	out := make([]*pb.ProcessInfo, 0, len(ps.byPID))
	for _, p := range ps.byPID {
		out = append(out, p.info())
	}
	ps.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Pid < out[j].Pid })
	return connect.NewResponse(&pb.ListResponse{Processes: out}), nil
}

// environment is the environment of a command: a login-like base, the
// server's default variables, then the request's.
func (ps *processes) environment(a account, req map[string]string) []string {
	env := map[string]string{
		"HOME":    a.home,
		"USER":    a.name,
		"LOGNAME": a.name,
		"SHELL":   "/bin/bash",
		"PATH":    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"LANG":    "C.UTF-8",
	}
	for k, v := range ps.s.defaultEnv() {
		env[k] = v
	}
	for k, v := range req {
		env[k] = v
	}
	out := make([]string, 0, len(env))
	for k, v := range env {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return out
}

// Start starts a process and streams its events until it ends or the
// client leaves; the process outlives the stream.
func (ps *processes) Start(ctx context.Context, req *connect.Request[pb.StartRequest], stream *connect.ServerStream[pb.StartResponse]) error {
	a, err := ps.s.userFor(req.Header())
	if err != nil {
		return err
	}
	m := req.Msg
	if m.GetProcess().GetCmd() == "" {
		return connect.NewError(connect.CodeInvalidArgument, errors.New("process.cmd is empty"))
	}
	if m.Tag != nil {
		if _, err := ps.find(&pb.ProcessSelector{Selector: &pb.ProcessSelector_Tag{Tag: *m.Tag}}); err == nil {
			return connect.NewError(connect.CodeAlreadyExists, fmt.Errorf("a process with tag %q is running", *m.Tag))
		}
	}
	p, sub, err := ps.start(a, m)
	if err != nil {
		return err
	}
	defer p.unsubscribe(sub)
	send := func(ev *pb.ProcessEvent) error { return stream.Send(&pb.StartResponse{Event: ev}) }
	if err := send(&pb.ProcessEvent{Event: &pb.ProcessEvent_Start{Start: &pb.ProcessEvent_StartEvent{Pid: p.pid}}}); err != nil {
		return nil // the client left; the process keeps running
	}
	return ps.s.relay(ctx, sub, send, ps.s.keepaliveEvery(req.Header()))
}

// Connect re-attaches to a running process by pid or tag: a start event
// with its pid, then its events from now on.
func (ps *processes) Connect(ctx context.Context, req *connect.Request[pb.ConnectRequest], stream *connect.ServerStream[pb.ConnectResponse]) error {
	p, err := ps.find(req.Msg.GetProcess())
	if err != nil {
		return err
	}
	sub := p.subscribe()
	defer p.unsubscribe(sub)
	send := func(ev *pb.ProcessEvent) error { return stream.Send(&pb.ConnectResponse{Event: ev}) }
	if err := send(&pb.ProcessEvent{Event: &pb.ProcessEvent_Start{Start: &pb.ProcessEvent_StartEvent{Pid: p.pid}}}); err != nil {
		return nil
	}
	return ps.s.relay(ctx, sub, send, ps.s.keepaliveEvery(req.Header()))
}

// relay sends a subscriber's events until the end event or the client
// leaves, with a keepalive after every quiet interval.
func (s *Server) relay(ctx context.Context, sub *subscriber, send func(*pb.ProcessEvent) error, every time.Duration) error {
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev := <-sub.ch:
			if err := send(ev); err != nil {
				return nil
			}
			if _, ok := ev.Event.(*pb.ProcessEvent_End); ok {
				return nil
			}
			tick.Reset(every)
		case <-tick.C:
			if err := send(&pb.ProcessEvent{Event: &pb.ProcessEvent_Keepalive{Keepalive: &pb.ProcessEvent_KeepAlive{}}}); err != nil {
				return nil
			}
		}
	}
}

// start runs the process, registers it and subscribes the caller before
// any output is read, so the first stream sees all of it.
func (ps *processes) start(a account, m *pb.StartRequest) (*proc, *subscriber, error) {
	cfg := m.GetProcess()
	cwd := a.home
	if cfg.Cwd != nil && *cfg.Cwd != "" {
		cwd = resolve(*cfg.Cwd, a)
	}
	if fi, err := os.Stat(cwd); err != nil || !fi.IsDir() {
		return nil, nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("cwd %s is not a directory", cwd))
	}
	env := ps.environment(a, cfg.GetEnvs())
	path, err := lookPath(cfg.GetCmd(), env)
	if err != nil {
		return nil, nil, connect.NewError(connect.CodeInvalidArgument, err)
	}
	cmd := &exec.Cmd{Path: path, Args: append([]string{cfg.GetCmd()}, cfg.GetArgs()...), Env: env, Dir: cwd}
	attr := &syscall.SysProcAttr{}
	if os.Geteuid() == 0 {
		if a.uid != 0 {
			attr.Credential = &syscall.Credential{Uid: a.uid, Gid: a.gid, Groups: a.groups}
		}
	} else if uint32(os.Geteuid()) != a.uid {
		return nil, nil, connect.NewError(connect.CodePermissionDenied, fmt.Errorf("envd does not run as root and cannot run commands as %s", a.name))
	}
	cmd.SysProcAttr = attr

	p := &proc{cfg: cfg, tag: m.Tag, cmd: cmd, subs: map[*subscriber]struct{}{}}
	var readers []*os.File
	var closeAfterStart []*os.File
	if m.Pty != nil {
		master, slave, err := openPTY(m.Pty.GetSize().GetCols(), m.Pty.GetSize().GetRows())
		if err != nil {
			return nil, nil, connect.NewError(connect.CodeInternal, fmt.Errorf("open pty: %w", err))
		}
		cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
		attr.Setsid, attr.Setctty, attr.Ctty = true, true, 0
		cmd.Env = append(cmd.Env, "TERM=xterm-256color")
		p.pty = master
		readers = []*os.File{master}
		closeAfterStart = []*os.File{slave}
	} else {
		attr.Setpgid = true
		outR, outW, err := os.Pipe()
		if err != nil {
			return nil, nil, connect.NewError(connect.CodeInternal, err)
		}
		errR, errW, err := os.Pipe()
		if err != nil {
			outR.Close()
			outW.Close()
			return nil, nil, connect.NewError(connect.CodeInternal, err)
		}
		cmd.Stdout, cmd.Stderr = outW, errW
		readers = []*os.File{outR, errR}
		closeAfterStart = []*os.File{outW, errW}
		if m.Stdin == nil || *m.Stdin {
			inR, inW, err := os.Pipe()
			if err != nil {
				for _, f := range append(readers, closeAfterStart...) {
					f.Close()
				}
				return nil, nil, connect.NewError(connect.CodeInternal, err)
			}
			cmd.Stdin = inR
			p.stdin = inW
			closeAfterStart = append(closeAfterStart, inR)
		}
	}
	err = cmd.Start()
	for _, f := range closeAfterStart {
		f.Close()
	}
	if err != nil {
		for _, f := range readers {
			f.Close()
		}
		if p.stdin != nil {
			p.stdin.Close()
		}
		return nil, nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("start %s: %w", cfg.GetCmd(), err))
	}
	p.pid = uint32(cmd.Process.Pid)
	sub := p.subscribe()
	ps.mu.Lock()
	ps.byPID[p.pid] = p
	ps.mu.Unlock()
	go ps.run(p, readers)
	return p, sub, nil
}

// run reads the process's output until it ends, then publishes the end
// event and forgets the process.
func (ps *processes) run(p *proc, readers []*os.File) {
	var wg sync.WaitGroup
	for i, f := range readers {
		wg.Add(1)
		go func(i int, f *os.File) {
			defer wg.Done()
			buf := make([]byte, 32<<10)
			for {
				n, err := f.Read(buf)
				if n > 0 {
					data := append([]byte(nil), buf[:n]...)
					ev := &pb.ProcessEvent_DataEvent{}
					switch {
					case p.pty != nil:
						ev.Output = &pb.ProcessEvent_DataEvent_Pty{Pty: data}
					case i == 0:
						ev.Output = &pb.ProcessEvent_DataEvent_Stdout{Stdout: data}
					default:
						ev.Output = &pb.ProcessEvent_DataEvent_Stderr{Stderr: data}
					}
					p.publish(&pb.ProcessEvent{Event: &pb.ProcessEvent_Data{Data: ev}})
				}
				if err != nil {
					return
				}
			}
		}(i, f)
	}
	waitErr := p.cmd.Wait()
	drained := make(chan struct{})
	go func() { wg.Wait(); close(drained) }()
	select {
	case <-drained:
	case <-time.After(drainAfterExit):
	}
	for _, f := range readers {
		f.Close()
	}
	<-drained
	p.mu.Lock()
	if p.stdin != nil {
		p.stdin.Close()
		p.stdin = nil
	}
	p.mu.Unlock()
	ps.mu.Lock()
	delete(ps.byPID, p.pid)
	ps.mu.Unlock()
	p.publish(&pb.ProcessEvent{Event: &pb.ProcessEvent_End{End: endEvent(p.cmd.ProcessState, waitErr)}})
}

// endEvent describes how a process ended.
func endEvent(st *os.ProcessState, waitErr error) *pb.ProcessEvent_EndEvent {
	end := &pb.ProcessEvent_EndEvent{ExitCode: -1}
	if st != nil {
		end.ExitCode = int32(st.ExitCode())
		end.Exited = st.Exited()
		end.Status = st.String()
	}
	var exitErr *exec.ExitError
	if waitErr != nil && !errors.As(waitErr, &exitErr) {
		msg := waitErr.Error()
		end.Error = &msg
	}
	return end
}

// lookPath finds cmd in the PATH of env (not envd's own).
func lookPath(cmd string, env []string) (string, error) {
	for _, c := range cmd {
		if c == '/' {
			return cmd, nil
		}
	}
	path := ""
	for _, kv := range env {
		if len(kv) > 5 && kv[:5] == "PATH=" {
			path = kv[5:]
		}
	}
	for _, dir := range splitList(path) {
		full := dir + "/" + cmd
		if fi, err := os.Stat(full); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return full, nil
		}
	}
	return "", fmt.Errorf("%s: command not found in PATH", cmd)
}

func splitList(path string) []string {
	var out []string
	start := 0
	for i := 0; i <= len(path); i++ {
		if i == len(path) || path[i] == ':' {
			if i > start {
				out = append(out, path[start:i])
			}
			start = i + 1
		}
	}
	return out
}

// SendInput writes to the process's stdin or PTY.
func (ps *processes) SendInput(_ context.Context, req *connect.Request[pb.SendInputRequest]) (*connect.Response[pb.SendInputResponse], error) {
	p, err := ps.find(req.Msg.GetProcess())
	if err != nil {
		return nil, err
	}
	if err := p.write(req.Msg.GetInput()); err != nil {
		return nil, err
	}
	return connect.NewResponse(&pb.SendInputResponse{}), nil
}

func (p *proc) write(in *pb.ProcessInput) error {
	switch v := in.GetInput().(type) {
	case *pb.ProcessInput_Stdin:
		p.mu.Lock()
		w := p.stdin
		p.mu.Unlock()
		if w == nil {
			if p.pty != nil {
				_, err := p.pty.Write(v.Stdin)
				return err
			}
			return connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("process %d has no open stdin", p.pid))
		}
		if _, err := w.Write(v.Stdin); err != nil {
			return connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("write stdin of %d: %w", p.pid, err))
		}
	case *pb.ProcessInput_Pty:
		if p.pty == nil {
			return connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("process %d has no pty", p.pid))
		}
		if _, err := p.pty.Write(v.Pty); err != nil {
			return connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("write pty of %d: %w", p.pid, err))
		}
	default:
		return connect.NewError(connect.CodeInvalidArgument, errors.New("input: want stdin or pty"))
	}
	return nil
}

// StreamInput writes a client stream of input to one process.
func (ps *processes) StreamInput(_ context.Context, stream *connect.ClientStream[pb.StreamInputRequest]) (*connect.Response[pb.StreamInputResponse], error) {
	var p *proc
	for stream.Receive() {
		switch v := stream.Msg().GetEvent().(type) {
		case *pb.StreamInputRequest_Start:
			found, err := ps.find(v.Start.GetProcess())
			if err != nil {
				return nil, err
			}
			p = found
		case *pb.StreamInputRequest_Data:
			if p == nil {
				return nil, connect.NewError(connect.CodeFailedPrecondition, errors.New("input before the start event"))
			}
			if err := p.write(v.Data.GetInput()); err != nil {
				return nil, err
			}
		}
	}
	if err := stream.Err(); err != nil {
		return nil, err
	}
	return connect.NewResponse(&pb.StreamInputResponse{}), nil
}

// SendSignal sends SIGTERM or SIGKILL to the process's group.
func (ps *processes) SendSignal(_ context.Context, req *connect.Request[pb.SendSignalRequest]) (*connect.Response[pb.SendSignalResponse], error) {
	p, err := ps.find(req.Msg.GetProcess())
	if err != nil {
		return nil, err
	}
	var sig syscall.Signal
	switch req.Msg.GetSignal() {
	case pb.Signal_SIGNAL_SIGKILL:
		sig = syscall.SIGKILL
	case pb.Signal_SIGNAL_SIGTERM:
		sig = syscall.SIGTERM
	default:
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("signal %v: want SIGNAL_SIGTERM or SIGNAL_SIGKILL", req.Msg.GetSignal()))
	}
	if err := p.signal(sig); err != nil {
		return nil, connect.NewError(connect.CodeInternal, fmt.Errorf("signal %d: %w", p.pid, err))
	}
	return connect.NewResponse(&pb.SendSignalResponse{}), nil
}

// CloseStdin closes the process's stdin (EOF); PTY processes take Ctrl-D
// as input instead.
func (ps *processes) CloseStdin(_ context.Context, req *connect.Request[pb.CloseStdinRequest]) (*connect.Response[pb.CloseStdinResponse], error) {
	p, err := ps.find(req.Msg.GetProcess())
	if err != nil {
		return nil, err
	}
	if p.pty != nil {
		return nil, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("process %d has a pty: send Ctrl-D instead", p.pid))
	}
	p.mu.Lock()
	w := p.stdin
	p.stdin = nil
	p.mu.Unlock()
	if w != nil {
		w.Close()
	}
	return connect.NewResponse(&pb.CloseStdinResponse{}), nil
}

// Update resizes a process's PTY.
func (ps *processes) Update(_ context.Context, req *connect.Request[pb.UpdateRequest]) (*connect.Response[pb.UpdateResponse], error) {
	p, err := ps.find(req.Msg.GetProcess())
	if err != nil {
		return nil, err
	}
	if req.Msg.Pty != nil {
		if p.pty == nil {
			return nil, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("process %d has no pty", p.pid))
		}
		size := req.Msg.Pty.GetSize()
		if err := setWinsize(p.pty, size.GetCols(), size.GetRows()); err != nil {
			return nil, connect.NewError(connect.CodeInternal, err)
		}
	}
	return connect.NewResponse(&pb.UpdateResponse{}), nil
}
