// Package workspaces is the daemon side of workspaces: it runs package
// workspace's scripts in a running VM over one SSH session, sends the tar
// stream over the data channel the guest announces (package transfer) or
// the session's stdin, and exports changes back, from a running VM or,
// sandboxed, from a stopped VM's work disk.
//
// It owns nothing durable. It must not touch VM lifecycle (it asks VMs),
// session records beyond reading them (a workspace in use by a live
// session is refused), the VMM, or host networking.
package workspaces

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"regexp"
	"strings"

	"github.com/banger/banger/internal/api"
	"github.com/banger/banger/internal/daemon/vms"
	"github.com/banger/banger/internal/errdefs"
	"github.com/banger/banger/internal/guest"
	"github.com/banger/banger/internal/guestinit"
	"github.com/banger/banger/internal/model"
	"github.com/banger/banger/internal/shell"
	"github.com/banger/banger/internal/storage"
	"github.com/banger/banger/internal/store"
	"github.com/banger/banger/internal/tail"
	"github.com/banger/banger/internal/transfer"
	"github.com/banger/banger/internal/workspace"
)

// Deps are what a Service is made of.
type Deps struct {
	Store *store.Store
	Log   *slog.Logger
	VMs   vms.Lookup
	// Dial returns a (pooled) SSH client to a running VM's guest.
	Dial func(ctx context.Context, vm model.VM) (guest.Client, error)
	// DialData connects to a port the guest listens on (the data channel).
	DialData func(ctx context.Context, vm model.VM, port int) (net.Conn, error)
	// Transport is the configured workspace_transport: TransportSSH keeps
	// every stream on the SSH session.
	Transport func() string
}

// Service prepares and exports workspaces.
type Service struct {
	Deps
}

// New makes a Service.
func New(deps Deps) *Service {
	return &Service{Deps: deps}
}

// The CLI makes the tar stream (it can read the user's
// repository, the daemon may not be able to); the daemon runs
// workspace.PrepareScript in one SSH session and sends the stream over the
// data channel the guest announces (internal/transfer: plain TCP on the
// VM's tap link, several times faster than SSH under emulation), or into
// the session's stdin when the guest cannot receive. It runs
// workspace.ExportScript to stream changes back. The scripts do the work in
// the guest; this file resolves, serialises and maps failures to API errors.

// Prepare unpacks the tar stream body (workspace.WriteTar's) at
// the guest path of a running VM, replacing what was there once the new
// tree is complete. It refuses a path that a live session uses as its
// working directory unless req.Force.
func (sv *Service) Prepare(ctx context.Context, ref string, req api.WorkspaceRequest, body io.Reader) (api.WorkspaceInfo, error) {
	guestPath, err := workspaceGuestPath(req.GuestPath)
	if err != nil {
		return api.WorkspaceInfo{}, err
	}
	if err := workspace.ValidateMode(req.Mode); err != nil {
		return api.WorkspaceInfo{}, errdefs.Invalid(err)
	}
	vm, unlock, err := sv.lockRunningWorkspaceVM(ctx, ref)
	if err != nil {
		return api.WorkspaceInfo{}, err
	}
	defer unlock()
	if !req.Force {
		if err := sv.workspaceInUse(ctx, vm, guestPath); err != nil {
			return api.WorkspaceInfo{}, err
		}
	}
	cli, err := sv.Dial(ctx, vm)
	if err != nil {
		return api.WorkspaceInfo{}, err
	}
	suffix := make([]byte, 6)
	if _, err := rand.Read(suffix); err != nil {
		return api.WorkspaceInfo{}, err
	}
	script := workspace.PrepareScript(guestPath, workspace.TempPath(guestPath, hex.EncodeToString(suffix)), req.ReadOnly, req.Mode, "")
	token, err := transfer.NewToken()
	if err != nil {
		return api.WorkspaceInfo{}, err
	}

	// Count the stream's files as it passes to the guest, so the answer
	// says what arrived without a second pass in the guest.
	pr, pw := io.Pipe()
	type counted struct {
		files, bytes int64
		err          error
	}
	countc := make(chan counted, 1)
	go func() {
		files, n, err := workspace.CountTar(pr)
		if err != nil {
			_, _ = io.Copy(io.Discard, pr) // keep the tee flowing
		}
		countc <- counted{files, n, err}
	}()
	src := &recordingReader{r: io.TeeReader(body, pw)}

	// The script runs on the SSH session (the control channel) and says on
	// stderr where it takes the stream: a data-channel port, or stdin.
	var stdout bytes.Buffer
	stderr := transfer.NewAnnounceWriter(16 << 10)
	stdinR, stdinW := io.Pipe()
	runCtx, cancelRun := context.WithCancel(ctx)
	defer cancelRun()
	// The answer is one line; a guest can make it endless.
	answer := &guest.Answer{W: &stdout, Max: guest.MaxAnswer, Over: cancelRun}
	sendCtx, cancelSend := context.WithCancel(ctx)
	defer cancelSend()
	type ran struct {
		code int
		err  error
	}
	runc := make(chan ran, 1)
	go func() {
		env := map[string]string{transfer.TokenEnv: token}
		if sv.Transport() == TransportSSH {
			env = nil // without a token the script reads SSH stdin
		}
		code, err := cli.Run(runCtx, shell.BashCommand(script, env), stdinR, answer, stderr)
		// Whatever still sends has nobody to send to.
		stdinR.CloseWithError(errors.New("the guest command ended"))
		cancelSend()
		runc <- ran{code, err}
	}()
	var res ran
	var sendErr, dialErr error
	transport := ""
	select {
	case line := <-stderr.Announced():
		port, viaStdin, _ := transfer.ParseAnnounce(line)
		if viaStdin {
			transport = TransportSSH
			_, sendErr = io.Copy(stdinW, src)
			stdinW.CloseWithError(sendErr)
		} else {
			transport = TransportTCP
			stdinW.Close()
			conn, err := sv.DialData(sendCtx, vm, port)
			if err != nil {
				dialErr = fmt.Errorf("connect to the guest's data channel (port %d): %w", port, err)
				sendErr = dialErr
				cancelRun() // the guest waits for a sender that will not come
			} else {
				_, sendErr = transfer.Send(sendCtx, conn, token, src)
			}
		}
		res = <-runc
	case res = <-runc:
		stdinW.Close()
	}
	// The script reads the stream to its end, so on success all of it went
	// through the tee; on failure the counter is cut short.
	if res.err != nil || res.code != 0 || sendErr != nil {
		pw.CloseWithError(errors.New("prepare stopped"))
	} else {
		pw.Close()
	}
	c := <-countc
	if src.err != nil && !errors.Is(src.err, io.EOF) {
		// The client's stream broke (e.g. a file changed while it was read):
		// that, not the guest's view of a short stream, is the cause.
		return api.WorkspaceInfo{}, errdefs.Invalid(fmt.Errorf("the workspace stream from the client broke: %w", src.err))
	}
	if dialErr != nil {
		return api.WorkspaceInfo{}, errdefs.Errorf(errdefs.CodeUnavailable, "prepare workspace %s in vm %s: %v", guestPath, vm.Name, dialErr)
	}
	if answer.Overflowed() {
		return api.WorkspaceInfo{}, errdefs.Errorf(errdefs.CodeUnavailable, "prepare workspace %s in vm %s: the guest answered with more than %d bytes: the command was stopped", guestPath, vm.Name, guest.MaxAnswer)
	}
	if res.err != nil {
		return api.WorkspaceInfo{}, fmt.Errorf("prepare workspace %s in vm %s: %w", guestPath, vm.Name, res.err)
	}
	if res.code != 0 {
		return api.WorkspaceInfo{}, errdefs.Errorf(errdefs.CodeInternal, "prepare workspace %s in vm %s failed (exit %d): %s", guestPath, vm.Name, res.code, guestMessage(stderr.String()))
	}
	if sendErr != nil {
		return api.WorkspaceInfo{}, fmt.Errorf("prepare workspace %s in vm %s: %w", guestPath, vm.Name, sendErr)
	}
	if c.err != nil {
		return api.WorkspaceInfo{}, errdefs.Invalid(c.err)
	}
	if w := strings.TrimSpace(stderr.String()); w != "" {
		sv.Log.Warn("workspace prepare", "vm", vm.Name, "path", guestPath, "stderr", w)
	}
	return api.WorkspaceInfo{
		GuestPath: guestPath,
		Files:     c.files,
		Bytes:     c.bytes,
		Head:      workspace.ParsePrepareOutput(stdout.String()),
		Transport: transport,
	}, nil
}

// Transports a prepare reports: the data channel, or the SSH session when
// the configuration asks for it (workspace_transport "ssh") or the guest's
// banger-init cannot receive (an image made before it could).
const (
	TransportTCP = "tcp"
	TransportSSH = "ssh"
)

// recordingReader keeps the error its reader returned.
type recordingReader struct {
	r   io.Reader
	err error
}

func (r *recordingReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if err != nil && r.err == nil {
		r.err = err
	}
	return n, err
}

var hexCommit = regexp.MustCompile(`^[0-9a-f]{4,64}$`)

// Export writes the guest repository's changes since its base to
// w: a git bundle (its one ref is HEAD) or format-patch output. Uncommitted
// guest changes are first committed in the guest as one commit. Nothing is
// written to w unless the export succeeds.
func (sv *Service) Export(ctx context.Context, ref string, req api.ExportRequest, w io.Writer) error {
	guestPath, err := workspaceGuestPath(req.GuestPath)
	if err != nil {
		return err
	}
	if err := workspace.ValidateFormat(req.Format); err != nil {
		return errdefs.Invalid(err)
	}
	format := req.Format
	if format == "" {
		format = workspace.FormatBundle
	}
	env := map[string]string{}
	if req.Base != "" {
		if !hexCommit.MatchString(req.Base) {
			return errdefs.Errorf(errdefs.CodeInvalid, "base %q is not a commit id: give 4 to 64 lowercase hex digits", req.Base)
		}
		env["BANGER_BASE"] = req.Base
	}
	vm, unlock, err := sv.VMs.Lock(ctx, ref)
	if err != nil {
		return err
	}
	defer unlock()
	message := req.Message
	if message == "" {
		message = "banger: uncommitted changes from " + vm.Name
	}
	stderr := &tail.Buffer{Max: 16 << 10}
	var code int
	if sv.VMs.Alive(vm) {
		cli, err := sv.Dial(ctx, vm)
		if err != nil {
			return err
		}
		code, err = cli.Run(ctx, shell.BashCommand(workspace.ExportScript(guestPath, format, message), env), nil, w, stderr)
		if err != nil {
			return fmt.Errorf("export workspace %s from vm %s: %w", guestPath, vm.Name, err)
		}
	} else {
		switch vm.State {
		case model.VMStarting, model.VMStopping, model.VMPausing, model.VMResuming:
			return errdefs.Errorf(errdefs.CodeConflict, "vm %s is %s: export when it has settled", vm.Name, vm.State)
		case model.VMPaused:
			// Its work disk lacks what the guest has not written back yet.
			return errdefs.Errorf(errdefs.CodeConflict, "vm %s is paused: resume it with `banger vm resume %s` to export", vm.Name, vm.Name)
		}
		code, err = sv.exportOffline(ctx, vm, guestPath, format, message, env, w, stderr)
		if err != nil {
			return err
		}
	}
	msg := guestMessage(string(stderr.Bytes()))
	switch code {
	case 0:
		return nil
	case workspace.ExitNothingToExport:
		return errdefs.Errorf(errdefs.CodeConflict, "vm %s, %s: %s", vm.Name, guestPath, msg)
	case workspace.ExitNoWorkspace:
		return errdefs.Errorf(errdefs.CodeNotFound, "vm %s: %s", vm.Name, msg)
	case workspace.ExitNotRepo, workspace.ExitBadBase:
		return errdefs.Errorf(errdefs.CodeConflict, "vm %s: %s", vm.Name, msg)
	}
	return errdefs.Errorf(errdefs.CodeInternal, "export workspace %s from vm %s failed (exit %d): %s", guestPath, vm.Name, code, msg)
}

// workspaceGuestPath applies the default and validates.
func workspaceGuestPath(p string) (string, error) {
	if p == "" {
		p = workspace.DefaultGuestPath
	}
	if err := workspace.ValidateGuestPath(p); err != nil {
		return "", errdefs.Invalid(err)
	}
	return p, nil
}

// lockRunningWorkspaceVM takes the VM's lock and checks, under the lock,
// that the VM runs: workspaces live on the work disk and are reached over
// SSH, so a stopped VM is refused with how to start it.
func (sv *Service) lockRunningWorkspaceVM(ctx context.Context, ref string) (model.VM, func(), error) {
	vm, unlock, err := sv.VMs.Lock(ctx, ref)
	if err != nil {
		return vm, func() {}, err
	}
	vm, err = sv.VMs.Running(ctx, vm.ID)
	if err != nil {
		unlock()
		return vm, func() {}, err
	}
	return vm, unlock, nil
}

// workspaceInUse refuses a guest path that a live session runs in.
func (sv *Service) workspaceInUse(ctx context.Context, vm model.VM, guestPath string) error {
	sessions, err := sv.Store.ListSessions(ctx, vm.ID)
	if err != nil {
		return err
	}
	var users []string
	for _, s := range sessions {
		switch s.Status {
		case model.SessionStarting, model.SessionRunning, model.SessionStopping:
		default:
			continue
		}
		if s.Cwd == guestPath || strings.HasPrefix(s.Cwd, guestPath+"/") {
			users = append(users, fmt.Sprintf("%s (cwd %s)", s.Name, s.Cwd))
		}
	}
	if len(users) > 0 {
		return errdefs.Errorf(errdefs.CodeConflict, "workspace %s in vm %s is in use by running session(s) %s: stop them first, or force to replace the files under them", guestPath, vm.Name, strings.Join(users, ", "))
	}
	return nil
}

// guestMessage is the useful part of a script's stderr: its "banger:"
// lines without the prefix, else its last lines.
func guestMessage(stderr string) string {
	var msgs []string
	for _, line := range strings.Split(stderr, "\n") {
		if m, ok := strings.CutPrefix(strings.TrimSpace(line), "banger: "); ok {
			msgs = append(msgs, m)
		}
	}
	if len(msgs) > 0 {
		return strings.Join(msgs, "; ")
	}
	s := strings.TrimSpace(stderr)
	if s == "" {
		return "no message from the guest"
	}
	return s
}

// exportOffline exports from a stopped VM without booting it, through
// workspace.ExportFromDisk: the workspace is copied out of the work disk
// (never mounted, within a byte budget), made safe for host git, and the
// export script runs over the copy in a jail of its own (a fresh uid in a
// cgroup killed after each step). The work disk is only read, so
// uncommitted guest changes are committed in the copy only and stay
// uncommitted in the VM. The caller holds the VM's lock, which keeps the
// VM from starting meanwhile.
func (sv *Service) exportOffline(ctx context.Context, vm model.VM, guestPath, format, message string, env map[string]string, w io.Writer, stderr io.Writer) (int, error) {
	if _, err := os.Stat(vm.WorkDisk); err != nil {
		return 0, errdefs.Errorf(errdefs.CodeNotFound, "vm %s has no work disk to export from: %v", vm.Name, err)
	}
	code, err := workspace.ExportFromDisk(ctx, workspace.DiskExport{
		Disk: vm.WorkDisk, Dir: strings.TrimPrefix(guestPath, guestinit.WorkMount),
		Format: format, Message: message, Env: env,
	}, w, stderr)
	switch {
	case errors.Is(err, storage.ErrNotFound):
		return 0, errdefs.Errorf(errdefs.CodeNotFound, "vm %s: no workspace at %s: prepare one first", vm.Name, guestPath)
	case errors.Is(err, workspace.ErrUnsafeRepo), errors.Is(err, storage.ErrTooLarge):
		return 0, errdefs.Errorf(errdefs.CodeConflict, "vm %s is stopped and %s cannot be exported from its disk: %v", vm.Name, guestPath, err)
	case err != nil:
		return 0, fmt.Errorf("export workspace %s from the disk of vm %s: %w", guestPath, vm.Name, err)
	}
	return code, nil
}
