// Package sessions is the daemon side of guest sessions: it runs package
// session's scripts over a VM's pooled SSH client, keeps the session records
// in the store in step with the guest's state files (read from the work
// disk when the VM is stopped), and serialises the work on one session.
//
// It owns the session records and the attach table. It must not touch VM
// lifecycle (it asks VMs whether a VM runs), the VMM, or host networking.
package sessions

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path"
	"sync"
	"time"

	"github.com/banger/banger/internal/api"
	"github.com/banger/banger/internal/daemon/vms"
	"github.com/banger/banger/internal/errdefs"
	"github.com/banger/banger/internal/guest"
	"github.com/banger/banger/internal/keyed"
	"github.com/banger/banger/internal/model"
	"github.com/banger/banger/internal/session"
	"github.com/banger/banger/internal/shell"
	"github.com/banger/banger/internal/storage"
	"github.com/banger/banger/internal/store"
	"github.com/banger/banger/internal/tail"
)

// Deps are what a Service is made of.
type Deps struct {
	Store *store.Store
	Log   *slog.Logger
	VMs   vms.Lookup
	// Dial returns a (pooled) SSH client to a running VM's guest.
	Dial func(ctx context.Context, vm model.VM) (guest.Client, error)
	Now  func() time.Time
}

// Service runs guest sessions.
type Service struct {
	Deps
	locks keyed.Mutex

	// StateRoot is where session state lives in the guest. Tests point it
	// at a temp dir and run the scripts on the host.
	StateRoot string
	// ReadFiles reads a session's state files from a stopped VM's work
	// disk without booting it; a nil map means the directory is missing.
	ReadFiles func(ctx context.Context, disk, id string) (map[string][]byte, error)

	// attached records which sessions have an attached client, and since
	// when: attach is exclusive.
	attachMu sync.Mutex
	attached map[string]time.Time
}

// New makes a Service.
func New(deps Deps) *Service {
	return &Service{
		Deps:      deps,
		StateRoot: session.DefaultStateRoot,
		ReadFiles: ReadWorkDiskFiles,
		attached:  map[string]time.Time{},
	}
}

// ReadWorkDiskFiles reads a session's state files from a stopped VM's work
// disk (see storage.ReadFile); a nil map means the directory is missing.
func ReadWorkDiskFiles(ctx context.Context, disk, id string) (map[string][]byte, error) {
	dir := path.Join(session.WorkDiskStateRoot, id)
	names, err := storage.ListDir(ctx, disk, dir)
	if errors.Is(err, storage.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	files := map[string][]byte{}
	for _, n := range names {
		switch n {
		case session.FileStatus, session.FilePID, session.FileMonitorPID, session.FileKeepalive, session.FileExitCode, session.FileError:
			b, err := storage.ReadFile(ctx, disk, path.Join(dir, n))
			if err != nil {
				return nil, err
			}
			files[n] = b
		}
	}
	return files, nil
}

// Attached reports whether a client is attached to a session, and since
// when.
func (sv *Service) Attached(id string) (time.Time, bool) {
	sv.attachMu.Lock()
	defer sv.attachMu.Unlock()
	t, ok := sv.attached[id]
	return t, ok
}

// lockVM serialises the record writes of one VM's sessions (reconcile,
// start, stop), not the guest work around them.
func (sv *Service) lockVM(vmID string) func() { return sv.locks.Lock("sessions:" + vmID) }

// resolveSession finds a VM and one of its sessions by id, id prefix or name.
func (sv *Service) resolveSession(ctx context.Context, vmRef, ref string) (model.VM, model.Session, error) {
	vm, err := sv.VMs.Resolve(ctx, vmRef)
	if err != nil {
		return vm, model.Session{}, err
	}
	if ref == "" {
		return vm, model.Session{}, errdefs.Errorf(errdefs.CodeInvalid, "session name or id is empty")
	}
	s, err := sv.Store.GetSession(ctx, vm.ID, ref)
	if err != nil {
		return vm, s, store.Describe("session", ref, err)
	}
	return vm, s, nil
}

func sessionFinished(s model.Session) bool { return s.Status.Finished() }

// guestRun runs a bash script in a VM and returns its exit code and output.
// An in-memory buffer given for stdout or stderr holds at most
// guest.MaxAnswer bytes of the guest's answer: past that the command is
// stopped and the run fails. Other writers are streams to a client (logs,
// attach), paced by its reading.
func (sv *Service) guestRun(ctx context.Context, vm model.VM, script string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	c, err := sv.Dial(ctx, vm)
	if err != nil {
		return -1, errdefs.Errorf(errdefs.CodeUnavailable, "cannot reach vm %s over SSH: %v", vm.Name, err)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var answers []*guest.Answer
	bound := func(w io.Writer) io.Writer {
		b, ok := w.(*bytes.Buffer)
		if !ok {
			return w
		}
		a := &guest.Answer{W: b, Max: guest.MaxAnswer, Over: cancel}
		answers = append(answers, a)
		return a
	}
	code, err := c.Run(ctx, shell.BashCommand(script, nil), stdin, bound(stdout), bound(stderr))
	for _, a := range answers {
		if a.Overflowed() {
			return -1, errdefs.Errorf(errdefs.CodeUnavailable, "vm %s answered a command with more than %d bytes: the command was stopped", vm.Name, guest.MaxAnswer)
		}
	}
	if err != nil {
		return code, errdefs.Errorf(errdefs.CodeUnavailable, "command in vm %s failed: %v", vm.Name, err)
	}
	return code, nil
}

// observe reads the state of the given sessions: from the guest in one round
// trip when the VM runs, else from its work disk. The bool says whether the
// VM runs.
func (sv *Service) observe(ctx context.Context, vm model.VM, recs []model.Session) (map[string]session.State, bool, error) {
	states := map[string]session.State{}
	if !sv.VMs.Alive(vm) {
		for _, r := range recs {
			if vm.WorkDisk == "" {
				continue
			}
			files, err := sv.ReadFiles(ctx, vm.WorkDisk, r.ID)
			if err != nil {
				sv.Log.Warn("read session state from work disk", "vm", vm.Name, "session", r.ID, "err", err)
				continue
			}
			states[r.ID] = session.StateFromFiles(files)
		}
		return states, false, nil
	}
	var out, errb bytes.Buffer
	script := session.StatesScript(sv.StateRoot)
	if len(recs) == 1 {
		script = session.StateScript(sv.StateRoot, recs[0].ID)
	}
	code, err := sv.guestRun(ctx, vm, script, nil, &out, &errb)
	if err != nil {
		return nil, true, err
	}
	if code != 0 {
		return nil, true, fmt.Errorf("reading session states in vm %s: exit %d: %s", vm.Name, code, errb.String())
	}
	states = session.ParseStates(out.String())
	for _, r := range recs {
		// The script lists every session directory: one not listed is gone.
		if _, ok := states[r.ID]; !ok {
			states[r.ID] = session.State{Known: true, Missing: true}
		}
	}
	return states, true, nil
}

// reconcileSessions folds the guest's state into the unfinished records
// among recs, persisting only those that changed, and returns all of recs
// updated. An unreachable guest leaves the records as they are.
func (sv *Service) reconcileSessions(ctx context.Context, vm model.VM, recs []model.Session) []model.Session {
	var open []model.Session
	for _, r := range recs {
		if !sessionFinished(r) {
			open = append(open, r)
		}
	}
	if len(open) == 0 || frozen(vm) {
		return recs
	}
	unlock := sv.lockVM(vm.ID)
	defer unlock()
	states, running, err := sv.observe(ctx, vm, open)
	if err != nil {
		sv.Log.Warn("reconcile sessions", "vm", vm.Name, "err", err)
		return recs
	}
	out := make([]model.Session, len(recs))
	for i, r := range recs {
		out[i] = r
		if sessionFinished(r) {
			continue
		}
		// Re-read under the lock: a stop may have written since the list.
		fresh, err := sv.Store.GetSession(ctx, vm.ID, r.ID)
		if err != nil {
			continue
		}
		nr, changed := session.Apply(fresh, states[r.ID], running, sv.Now())
		if changed {
			if err := sv.Store.UpdateSession(ctx, nr); err != nil {
				sv.Log.Warn("save session", "session", r.ID, "err", err)
				continue
			}
		}
		out[i] = nr
	}
	return out
}

// frozen says whether vm's guest is paused (or being paused or resumed):
// its sessions are as they were and go on at resume, so they are neither
// read from its work disk (stale while the guest's writes sit in its
// memory) nor taken for ended.
func frozen(vm model.VM) bool {
	switch vm.State {
	case model.VMPaused, model.VMPausing, model.VMResuming:
		return true
	}
	return false
}

// List lists a VM's sessions, reconciled with the guest.
func (sv *Service) List(ctx context.Context, vmRef string) ([]model.Session, error) {
	vm, err := sv.VMs.Resolve(ctx, vmRef)
	if err != nil {
		return nil, err
	}
	recs, err := sv.Store.ListSessions(ctx, vm.ID)
	if err != nil {
		return nil, err
	}
	recs = sv.reconcileSessions(ctx, vm, recs)
	if recs == nil {
		recs = []model.Session{}
	}
	return recs, nil
}

// Get shows one session, reconciled with the guest.
func (sv *Service) Get(ctx context.Context, vmRef, ref string) (model.Session, error) {
	vm, s, err := sv.resolveSession(ctx, vmRef, ref)
	if err != nil {
		return s, err
	}
	return sv.reconcileSessions(ctx, vm, []model.Session{s})[0], nil
}

// stageOrder is the launch stages in order, to name the one a broken
// connection interrupted.
var stageOrder = []string{"preflight", session.StageUpload, session.StageLaunch, session.StageWaitReady}

// Start validates the request, records the session as starting and
// launches it in one guest round trip (preflight, upload, launch, wait).
// A failed stage leaves the record failed with the stage, message and raw
// guest output, and returns an error naming the stage.
func (sv *Service) Start(ctx context.Context, vmRef string, req api.StartSessionRequest) (model.Session, error) {
	vm, err := sv.VMs.Running(ctx, vmRef)
	if err != nil {
		return model.Session{}, err
	}
	id := model.NewID()
	spec, name, err := session.Normalize(id, req.Name, req.Command, req.Args, req.Env, req.Cwd, req.Stdin, req.Require)
	if err != nil {
		return model.Session{}, errdefs.Invalid(err)
	}
	if req.TTY {
		var cols, rows int
		if req.Size != nil {
			cols, rows = req.Size.Cols, req.Size.Rows
		}
		if err := spec.SetTTY(cols, rows); err != nil {
			return model.Session{}, errdefs.Invalid(err)
		}
	} else if req.Size != nil {
		return model.Session{}, errdefs.Errorf(errdefs.CodeInvalid, "a terminal size was given without --tty")
	}
	now := sv.Now()
	rec := model.Session{
		ID: id, VMID: vm.ID, Name: name,
		Command: spec.Command, Args: spec.Args, Env: spec.Env, Cwd: spec.Cwd,
		StdinMode: spec.StdinMode, Require: spec.Require,
		Status:     model.SessionStarting,
		AttachMode: "exclusive",
		StateDir:   session.StateDir(sv.StateRoot, id),
		CreatedAt:  now, UpdatedAt: now,
	}
	if rec.Args == nil {
		rec.Args = []string{}
	}
	if spec.StdinMode == model.StdinPipe {
		rec.AttachBackend = model.AttachFIFO
	}
	if spec.TTY {
		rec.AttachBackend = model.AttachPTY
	}
	unlock := sv.lockVM(vm.ID)
	err = sv.Store.CreateSession(ctx, rec)
	unlock()
	if err != nil {
		if errdefs.CodeOf(store.Describe("session", name, err)) == errdefs.CodeConflict {
			return model.Session{}, errdefs.Errorf(errdefs.CodeConflict, "vm %s already has a session named %s: choose another --name or remove it", vm.Name, name)
		}
		return model.Session{}, store.Describe("session", name, err)
	}

	var out bytes.Buffer
	code, runErr := sv.guestRun(ctx, vm, session.StartScript(sv.StateRoot, spec),
		bytes.NewReader([]byte(session.RunnerScript(sv.StateRoot, spec))), &out, &out)
	res := session.ParseStart(out.String(), id)
	if runErr == nil && code != 0 && res.Failed == nil {
		runErr = fmt.Errorf("start script exited %d", code)
	}
	stage, msg := "", ""
	switch {
	case res.Failed != nil:
		stage, msg = res.Failed.Stage, res.Failed.Message
	case runErr != nil || len(res.Stages) < len(stageOrder):
		// Interrupted: the failed stage is the first one not reported ok.
		stage = stageOrder[len(res.Stages)%len(stageOrder)]
		if len(res.Stages) >= len(stageOrder) {
			stage = session.StageWaitReady
		}
		msg = "the guest did not finish this stage"
		if runErr != nil {
			msg = runErr.Error()
		}
	}
	if stage != "" {
		sv.cleanupLaunch(vm, id, stage)
		return sv.failLaunch(ctx, vm, rec, stage, msg, res.Log)
	}

	unlock = sv.lockVM(vm.ID)
	defer unlock()
	fresh, err := sv.Store.GetSession(ctx, vm.ID, id)
	if err != nil {
		return rec, store.Describe("session", id, err)
	}
	nr, changed := session.Apply(fresh, res.State, true, sv.Now())
	if nr.StartedAt == nil {
		t := sv.Now()
		nr.StartedAt = &t
		changed = true
	}
	if changed {
		if err := sv.Store.UpdateSession(ctx, nr); err != nil {
			return nr, err
		}
	}
	return nr, nil
}

// failLaunch records a launch failure and returns the error for the user.
// Preflight failures are the request's fault (invalid); others are not.
func (sv *Service) failLaunch(ctx context.Context, vm model.VM, rec model.Session, stage, msg, log string) (model.Session, error) {
	unlock := sv.lockVM(vm.ID)
	defer unlock()
	if fresh, err := sv.Store.GetSession(ctx, vm.ID, rec.ID); err == nil {
		rec = fresh
	}
	now := sv.Now()
	rec.Status = model.SessionFailed
	rec.LaunchStage, rec.LaunchError, rec.LaunchLog = stage, msg, log
	rec.Error = session.StepError(stage, msg, "")
	rec.Attachable, rec.Reattachable = false, false
	rec.EndedAt = &now
	// Record the failure even when the caller has gone away.
	if err := sv.Store.UpdateSession(context.WithoutCancel(ctx), rec); err != nil {
		sv.Log.Warn("record session launch failure", "session", rec.ID, "err", err)
	}
	code := errdefs.CodeInternal
	switch stage {
	case session.StagePreflightCwd, session.StagePreflightCommand:
		code = errdefs.CodeInvalid
	case session.StageWaitReady:
		code = errdefs.CodeTimeout
	}
	return rec, errdefs.Errorf(code, "%s", session.StepError(stage, msg, log))
}

// cleanupLaunch removes what a launch that failed after the preflight left
// in the guest: a runner that is up but never reported ready is killed; a
// state directory holding no running session is removed.
func (sv *Service) cleanupLaunch(vm model.VM, id, stage string) {
	if stage == session.StagePreflightCwd || stage == session.StagePreflightCommand || stage == "preflight" {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if stage == session.StageWaitReady {
		_, _ = sv.guestRun(ctx, vm, session.SignalScript(sv.StateRoot, id, "KILL", 2, true), nil, io.Discard, io.Discard)
		return
	}
	_, _ = sv.guestRun(ctx, vm, session.RemoveScript(sv.StateRoot, id), nil, io.Discard, io.Discard)
}

// liveSession resolves a session that must be running in a running VM, with
// errors that say which of those is not so.
func (sv *Service) liveSession(ctx context.Context, vmRef, ref string) (model.VM, model.Session, error) {
	vm, s, err := sv.resolveSession(ctx, vmRef, ref)
	if err != nil {
		return vm, s, err
	}
	if sessionFinished(s) {
		return vm, s, finishedErr(s)
	}
	if vm.State == model.VMPaused {
		return vm, s, errdefs.Errorf(errdefs.CodeConflict, "vm %s is paused: resume it with `banger vm resume %s`", vm.Name, vm.Name)
	}
	if !sv.VMs.Alive(vm) {
		return vm, s, errdefs.Errorf(errdefs.CodeConflict, "vm %s is not running (state %s), so session %s is not either", vm.Name, vm.State, s.Name)
	}
	return vm, s, nil
}

func finishedErr(s model.Session) error {
	code := ""
	if s.ExitCode != nil {
		code = fmt.Sprintf(", exit code %d", *s.ExitCode)
	}
	reason := ""
	if s.Error != "" {
		reason = ": " + s.Error
	}
	return errdefs.Errorf(errdefs.CodeConflict, "session %s has finished (status %s%s)%s", s.Name, s.Status, code, reason)
}

// afterGuestRefusal reconciles a session the guest said is not running and
// returns the error to give.
func (sv *Service) afterGuestRefusal(ctx context.Context, vm model.VM, s model.Session) error {
	ns := sv.reconcileSessions(ctx, vm, []model.Session{s})[0]
	if sessionFinished(ns) {
		return finishedErr(ns)
	}
	return errdefs.Errorf(errdefs.CodeConflict, "session %s is not running in vm %s (status %s)", s.Name, vm.Name, ns.Status)
}

// Logs writes a session's stdout (or stderr) log: the last Tail lines
// (all when 0), and with Follow what comes next until the session or ctx
// ends. For a stopped VM the log is read from its work disk.
func (sv *Service) Logs(ctx context.Context, vmRef, ref string, req api.SessionLogsRequest, w io.Writer) error {
	vm, s, err := sv.resolveSession(ctx, vmRef, ref)
	if err != nil {
		return err
	}
	if req.Tail < 0 {
		return errdefs.Errorf(errdefs.CodeInvalid, "invalid --tail %d: use 0 (everything) or a positive line count", req.Tail)
	}
	file := session.FileStdout
	if req.Stderr {
		file = session.FileStderr
	}
	if frozen(vm) {
		return errdefs.Errorf(errdefs.CodeConflict, "vm %s is %s: its sessions' logs are in its memory until `banger vm resume %s`", vm.Name, vm.State, vm.Name)
	}
	if !sv.VMs.Alive(vm) {
		b, err := storage.ReadFile(ctx, vm.WorkDisk, path.Join(session.WorkDiskStateRoot, s.ID, file))
		if errors.Is(err, storage.ErrNotFound) {
			return errdefs.Errorf(errdefs.CodeNotFound, "session %s has no %s on the work disk of vm %s", s.Name, file, vm.Name)
		}
		if err != nil {
			return fmt.Errorf("read %s of session %s from the work disk of vm %s: %w", file, s.Name, vm.Name, err)
		}
		_, err = w.Write(tail.Lines(b, req.Tail))
		return err
	}
	var errb bytes.Buffer
	code, err := sv.guestRun(ctx, vm, session.LogsScript(sv.StateRoot, s.ID, req.Stderr, req.Tail, req.Follow), nil, w, &errb)
	if err != nil {
		if ctx.Err() != nil && req.Follow {
			return nil // the client stopped following
		}
		return err
	}
	switch code {
	case 0:
		return nil
	case session.ExitNoLog:
		return errdefs.Errorf(errdefs.CodeNotFound, "session %s has no %s in vm %s", s.Name, file, vm.Name)
	}
	if ctx.Err() != nil && req.Follow {
		return nil
	}
	return fmt.Errorf("session logs in vm %s: exit %d: %s", vm.Name, code, errb.String())
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// Send writes data to a running pipe-mode session's stdin fifo and
// returns the byte count. Empty data writes nothing and opens no
// connection. Sends to one session are serialised so they never
// interleave.
func (sv *Service) Send(ctx context.Context, vmRef, ref string, data io.Reader) (int64, error) {
	vm, s, err := sv.resolveSession(ctx, vmRef, ref)
	if err != nil {
		return 0, err
	}
	if s.StdinMode != model.StdinPipe {
		return 0, errdefs.Errorf(errdefs.CodeInvalid, "session %s has its stdin closed (started with --stdin %s): it takes no input; start it with --stdin pipe to send to it", s.Name, s.StdinMode)
	}
	if _, _, err := sv.liveSession(ctx, vmRef, ref); err != nil {
		return 0, err
	}
	if data == nil {
		return 0, nil
	}
	br := bufio.NewReaderSize(data, 64<<10)
	if _, err := br.Peek(1); err == io.EOF {
		return 0, nil
	} else if err != nil {
		return 0, errdefs.Errorf(errdefs.CodeInvalid, "reading the data to send: %v", err)
	}
	unlock := sv.locks.Lock("session-send:" + s.ID)
	defer unlock()
	cr := &countingReader{r: br}
	var errb bytes.Buffer
	code, err := sv.guestRun(ctx, vm, session.SendScript(sv.StateRoot, s.ID), cr, nil, &errb)
	if err != nil {
		return 0, err
	}
	switch code {
	case 0:
		return cr.n, nil
	case session.ExitNoStdin:
		return 0, errdefs.Errorf(errdefs.CodeConflict, "session %s has no stdin fifo in the guest: its stdin is closed", s.Name)
	case session.ExitNotRunning:
		return 0, sv.afterGuestRefusal(ctx, vm, s)
	}
	return 0, fmt.Errorf("send to session %s: exit %d: %s", s.Name, code, errb.String())
}

// Attach bridges aio to a running session, exclusively: stdin goes
// to the session's fifo (pipe mode; in closed mode it is only watched for
// the detach), the session's stdout and stderr come back from the
// offset req.From names, and for a --tty session each size from
// aio.Resize resizes its terminal. It returns when aio.Stdin ends (detach;
// the session keeps running), when the session ends, or when ctx ends.
func (sv *Service) Attach(ctx context.Context, vmRef, ref string, req api.AttachRequest, aio api.AttachIO) error {
	fromStart := false
	switch req.From {
	case "", api.AttachFromEnd:
	case api.AttachFromStart:
		fromStart = true
	default:
		return errdefs.Errorf(errdefs.CodeInvalid, "invalid attach offset %q: use %q or %q", req.From, api.AttachFromEnd, api.AttachFromStart)
	}
	vm, s, err := sv.liveSession(ctx, vmRef, ref)
	if err != nil {
		return err
	}
	sv.attachMu.Lock()
	if since, ok := sv.attached[s.ID]; ok {
		sv.attachMu.Unlock()
		return errdefs.Errorf(errdefs.CodeConflict, "session %s is attached (since %s): detach the other client first", s.Name, since.UTC().Format(time.RFC3339))
	}
	sv.attached[s.ID] = sv.Now()
	sv.attachMu.Unlock()
	defer func() {
		sv.attachMu.Lock()
		delete(sv.attached, s.ID)
		sv.attachMu.Unlock()
	}()

	// Where the attachment begins: taken before any input or resize can
	// make the session write, and handed to the tail that starts later.
	var outOff, errOff int64
	if !fromStart {
		if outOff, errOff, err = sv.logSizes(ctx, vm, s); err != nil {
			return err
		}
	}
	actx, cancel := context.WithCancel(ctx)
	defer cancel()
	type result struct {
		code int
		err  error
	}
	outDone := make(chan result, 1)
	inDone := make(chan result, 1)
	stdout, stderr := aio.Stdout, aio.Stderr
	if stdout == nil {
		stdout = io.Discard
	}
	if stderr == nil {
		stderr = io.Discard
	}
	go func() {
		code, err := sv.guestRun(actx, vm, session.AttachOutputScript(sv.StateRoot, s.ID, outOff, errOff), nil, stdout, stderr)
		outDone <- result{code, err}
	}()
	go func() {
		if aio.Stdin == nil {
			<-actx.Done()
			inDone <- result{}
			return
		}
		if s.StdinMode != model.StdinPipe {
			_, err := io.Copy(io.Discard, aio.Stdin)
			inDone <- result{0, err}
			return
		}
		var errb bytes.Buffer
		code, err := sv.guestRun(actx, vm, session.SendScript(sv.StateRoot, s.ID), aio.Stdin, nil, &errb)
		inDone <- result{code, err}
	}()
	if s.AttachBackend == model.AttachPTY && aio.Resize != nil {
		go sv.followResizes(actx, vm, s, aio.Resize)
	}
	select {
	case r := <-inDone:
		// Detached (or the fifo writer failed): stop streaming output.
		cancel()
		<-outDone
		if r.code == session.ExitNotRunning {
			return sv.afterGuestRefusal(context.WithoutCancel(ctx), vm, s)
		}
		if r.err != nil && ctx.Err() == nil {
			return r.err
		}
		return nil
	case r := <-outDone:
		// The session ended (or output failed): the stdin side is cancelled;
		// a reader blocked on aio.Stdin is the caller's to close.
		cancel()
		sv.reconcileSessions(context.WithoutCancel(ctx), vm, []model.Session{s})
		if r.code == session.ExitNotRunning {
			return sv.afterGuestRefusal(context.WithoutCancel(ctx), vm, s)
		}
		if r.err != nil && ctx.Err() == nil {
			return r.err
		}
		return nil
	}
}

// logSizes returns the sizes of a running session's logs.
func (sv *Service) logSizes(ctx context.Context, vm model.VM, s model.Session) (int64, int64, error) {
	var out, errb bytes.Buffer
	code, err := sv.guestRun(ctx, vm, session.LogSizesScript(sv.StateRoot, s.ID), nil, &out, &errb)
	if err != nil {
		return 0, 0, err
	}
	switch code {
	case 0:
	case session.ExitNotRunning:
		return 0, 0, sv.afterGuestRefusal(context.WithoutCancel(ctx), vm, s)
	default:
		return 0, 0, fmt.Errorf("log sizes of session %s in vm %s: exit %d: %s", s.Name, vm.Name, code, errb.String())
	}
	o, e, err := session.ParseLogSizes(out.String())
	if err != nil {
		return 0, 0, fmt.Errorf("session %s in vm %s: %w", s.Name, vm.Name, err)
	}
	return o, e, nil
}

// followResizes resizes a --tty session's terminal to each size from
// sizes until ctx ends, one guest round trip at a time: sizes that come
// meanwhile are folded into the newest by the sender.
func (sv *Service) followResizes(ctx context.Context, vm model.VM, s model.Session, sizes <-chan api.WindowSize) {
	for {
		select {
		case <-ctx.Done():
			return
		case ws := <-sizes:
			if !ws.Valid() {
				continue
			}
			var errb bytes.Buffer
			code, err := sv.guestRun(ctx, vm, session.ResizeScript(sv.StateRoot, s.ID, ws.Cols, ws.Rows), nil, nil, &errb)
			if err == nil && code != 0 {
				err = fmt.Errorf("exit %d: %s", code, bytes.TrimSpace(errb.Bytes()))
			}
			if err != nil && ctx.Err() == nil {
				sv.Log.Warn("resize session terminal", "vm", vm.Name, "session", s.Name, "err", err)
			}
		}
	}
}

// defaultStopTimeout is how long a stop waits before KILL.
const defaultStopTimeout = 10

// Stop sends the signal (TERM by default) to the session's command,
// its monitor and stdin keep-alive, waits up to the timeout and then kills
// it; the final state comes from the guest. Stopping a finished session
// returns it as it is.
func (sv *Service) Stop(ctx context.Context, vmRef, ref string, req api.StopSessionRequest) (model.Session, error) {
	sig, err := session.ParseSignal(req.Signal, "TERM")
	if err != nil {
		return model.Session{}, errdefs.Invalid(err)
	}
	if req.TimeoutSeconds < 0 {
		return model.Session{}, errdefs.Errorf(errdefs.CodeInvalid, "invalid timeout %d: use 0 (default %ds) or a positive number of seconds", req.TimeoutSeconds, defaultStopTimeout)
	}
	timeout := req.TimeoutSeconds
	if timeout == 0 {
		timeout = defaultStopTimeout
	}
	return sv.signalSession(ctx, vmRef, ref, sig, timeout, true)
}

// Kill sends a signal (KILL by default) to the session's command and
// returns its state a moment later.
func (sv *Service) Kill(ctx context.Context, vmRef, ref string, signal string) (model.Session, error) {
	sig, err := session.ParseSignal(signal, "KILL")
	if err != nil {
		return model.Session{}, errdefs.Invalid(err)
	}
	return sv.signalSession(ctx, vmRef, ref, sig, 5, false)
}

func (sv *Service) signalSession(ctx context.Context, vmRef, ref, sig string, waitSeconds int, stop bool) (model.Session, error) {
	vm, s, err := sv.resolveSession(ctx, vmRef, ref)
	if err != nil {
		return s, err
	}
	s = sv.reconcileSessions(ctx, vm, []model.Session{s})[0]
	if sessionFinished(s) {
		return s, nil
	}
	if !sv.VMs.Alive(vm) {
		return s, errdefs.Errorf(errdefs.CodeConflict, "vm %s is not running (state %s), so session %s is not either", vm.Name, vm.State, s.Name)
	}
	opLock := sv.locks.Lock("session-op:" + s.ID)
	defer opLock()
	if stop {
		unlock := sv.lockVM(vm.ID)
		if fresh, err := sv.Store.GetSession(ctx, vm.ID, s.ID); err == nil && !sessionFinished(fresh) {
			fresh.Status = model.SessionStopping
			if err := sv.Store.UpdateSession(ctx, fresh); err == nil {
				s = fresh
			}
		}
		unlock()
	}
	var out, errb bytes.Buffer
	rctx, cancel := context.WithTimeout(ctx, time.Duration(waitSeconds+30)*time.Second)
	defer cancel()
	code, err := sv.guestRun(rctx, vm, session.SignalScript(sv.StateRoot, s.ID, sig, waitSeconds, stop), nil, &out, &errb)
	if err != nil {
		return s, err
	}
	if code != 0 {
		return s, fmt.Errorf("signal session %s: exit %d: %s", s.Name, code, errb.String())
	}
	st := session.ParseStates(out.String())[s.ID]
	unlock := sv.lockVM(vm.ID)
	defer unlock()
	fresh, err := sv.Store.GetSession(ctx, vm.ID, s.ID)
	if err != nil {
		return s, store.Describe("session", s.ID, err)
	}
	nr, changed := session.Apply(fresh, st, true, sv.Now())
	if changed {
		if err := sv.Store.UpdateSession(ctx, nr); err != nil {
			return nr, err
		}
	}
	return nr, nil
}

// Remove deletes a finished session's record and, when the VM runs,
// its state directory in the guest. (A stopped VM keeps the directory on its
// work disk; the daemon never writes a disk it does not run.)
func (sv *Service) Remove(ctx context.Context, vmRef, ref string) error {
	vm, s, err := sv.resolveSession(ctx, vmRef, ref)
	if err != nil {
		return err
	}
	s = sv.reconcileSessions(ctx, vm, []model.Session{s})[0]
	if !sessionFinished(s) {
		return errdefs.Errorf(errdefs.CodeConflict, "session %s is %s: stop it first (banger session stop %s %s)", s.Name, s.Status, vm.Name, s.Name)
	}
	opLock := sv.locks.Lock("session-op:" + s.ID)
	defer opLock()
	if sv.VMs.Alive(vm) {
		var errb bytes.Buffer
		code, err := sv.guestRun(ctx, vm, session.RemoveScript(sv.StateRoot, s.ID), nil, nil, &errb)
		if err != nil {
			return err
		}
		if code == session.ExitStillRunning {
			return errdefs.Errorf(errdefs.CodeConflict, "session %s still has a live process in vm %s: stop it first", s.Name, vm.Name)
		}
		if code != 0 {
			return fmt.Errorf("remove session %s state in vm %s: exit %d: %s", s.Name, vm.Name, code, errb.String())
		}
	}
	return store.Describe("session", s.Name, sv.Store.DeleteSession(ctx, s.ID))
}
