package daemon

// The api.Service facade: each method hands the request to the service that
// owns it. Nothing here decides anything. Requests that use a VM's guest
// (exec, session I/O, files, workspaces) mark it active for as long as
// they run (d.active), for its idle timeout.

import (
	"context"
	"io"
	"net"
	"sync"
	"time"

	"github.com/banger/banger/internal/api"
	"github.com/banger/banger/internal/daemon/doctor"
	"github.com/banger/banger/internal/daemon/e2b"
	"github.com/banger/banger/internal/errdefs"
	"github.com/banger/banger/internal/model"
	"github.com/banger/banger/internal/progress"
)

// ---- sessions ----

func (d *Daemon) ListSessions(ctx context.Context, vmRef string) ([]model.Session, error) {
	return d.sessions.List(ctx, vmRef)
}

func (d *Daemon) GetSession(ctx context.Context, vmRef, ref string) (model.Session, error) {
	return d.sessions.Get(ctx, vmRef, ref)
}

func (d *Daemon) StartSession(ctx context.Context, vmRef string, req api.StartSessionRequest) (model.Session, error) {
	defer d.active(ctx, vmRef)()
	return d.sessions.Start(ctx, vmRef, req)
}

func (d *Daemon) SessionLogs(ctx context.Context, vmRef, ref string, req api.SessionLogsRequest, w io.Writer) error {
	defer d.active(ctx, vmRef)()
	return d.sessions.Logs(ctx, vmRef, ref, req, w)
}

func (d *Daemon) SendSession(ctx context.Context, vmRef, ref string, data io.Reader) (int64, error) {
	defer d.active(ctx, vmRef)()
	return d.sessions.Send(ctx, vmRef, ref, data)
}

func (d *Daemon) AttachSession(ctx context.Context, vmRef, ref string, req api.AttachRequest, aio api.AttachIO) error {
	defer d.active(ctx, vmRef)()
	return d.sessions.Attach(ctx, vmRef, ref, req, aio)
}

func (d *Daemon) StopSession(ctx context.Context, vmRef, ref string, req api.StopSessionRequest) (model.Session, error) {
	defer d.active(ctx, vmRef)()
	return d.sessions.Stop(ctx, vmRef, ref, req)
}

func (d *Daemon) KillSession(ctx context.Context, vmRef, ref string, signal string) (model.Session, error) {
	defer d.active(ctx, vmRef)()
	return d.sessions.Kill(ctx, vmRef, ref, signal)
}

func (d *Daemon) RemoveSession(ctx context.Context, vmRef, ref string) error {
	return d.sessions.Remove(ctx, vmRef, ref)
}

// ---- workspaces ----

func (d *Daemon) PrepareWorkspace(ctx context.Context, ref string, req api.WorkspaceRequest, tar io.Reader) (api.WorkspaceInfo, error) {
	defer d.active(ctx, ref)()
	return d.workspaces.Prepare(ctx, ref, req, tar)
}

func (d *Daemon) ExportWorkspace(ctx context.Context, ref string, req api.ExportRequest, w io.Writer) error {
	defer d.active(ctx, ref)()
	return d.workspaces.Export(ctx, ref, req, w)
}

// ---- images and kernels ----

func (d *Daemon) ListImages(ctx context.Context) ([]model.Image, error) {
	return d.artifacts.ListImages(ctx)
}

func (d *Daemon) GetImage(ctx context.Context, ref string) (model.Image, error) {
	return d.artifacts.GetImage(ctx, ref)
}

func (d *Daemon) BuildImage(ctx context.Context, req api.BuildImageRequest, report progress.Func) (model.Image, error) {
	return d.artifacts.BuildImage(ctx, req, report)
}

func (d *Daemon) ImportImage(ctx context.Context, req api.ImportImageRequest, report progress.Func) (model.Image, error) {
	return d.artifacts.ImportImage(ctx, req, report)
}

func (d *Daemon) RemoveImage(ctx context.Context, ref string) error {
	return d.artifacts.RemoveImage(ctx, ref)
}

func (d *Daemon) ListKernels(ctx context.Context) ([]api.KernelEntry, error) {
	return d.artifacts.ListKernels(ctx)
}

func (d *Daemon) GetKernel(ctx context.Context, ref string) (model.Kernel, error) {
	return d.artifacts.GetKernel(ctx, ref)
}

func (d *Daemon) PullKernel(ctx context.Context, name string, report progress.Func) (model.Kernel, error) {
	return d.artifacts.PullKernel(ctx, name, report)
}

func (d *Daemon) ImportKernel(ctx context.Context, req api.ImportKernelRequest) (model.Kernel, error) {
	return d.artifacts.ImportKernel(ctx, req)
}

func (d *Daemon) RemoveKernel(ctx context.Context, ref string) error {
	return d.artifacts.RemoveKernel(ctx, ref)
}

// ---- guest access ----

func (d *Daemon) ExecVM(ctx context.Context, ref string, req api.ExecRequest, stdout, stderr io.Writer) (int, error) {
	defer d.active(ctx, ref)()
	return d.guests.Exec(ctx, ref, req, stdout, stderr)
}

func (d *Daemon) ExecVMAttached(ctx context.Context, ref string, req api.ExecRequest, aio api.AttachIO) (int, error) {
	defer d.active(ctx, ref)()
	return d.guests.ExecAttached(ctx, ref, req, aio)
}

func (d *Daemon) VMLogs(ctx context.Context, ref string, req api.LogsRequest, w io.Writer) error {
	defer d.active(ctx, ref)()
	return d.guests.Logs(ctx, ref, req, w)
}

func (d *Daemon) SSHInfo(ctx context.Context, ref string) (api.SSHInfo, error) {
	defer d.active(ctx, ref)()
	return d.guests.SSHInfo(ctx, ref)
}

func (d *Daemon) Hosts(ctx context.Context) (string, error) { return d.guests.Hosts(ctx) }

// ---- VMs ----

func (d *Daemon) ListVMs(ctx context.Context) ([]model.VM, error) { return d.vms.List(ctx) }

// GetVM is the record with its published ports, image and kernel names
// and idle deadline (`vm show`).
func (d *Daemon) GetVM(ctx context.Context, ref string) (model.VM, error) {
	vm, err := d.vms.Get(ctx, ref)
	if err != nil {
		return vm, err
	}
	d.nameArtifacts(ctx, &vm)
	vm.IdleDeadline = d.vms.IdleDeadlineOf(vm)
	vm.Ports, err = d.ports.ListOf(ctx, vm.ID)
	return vm, err
}

// CreateVM takes the host ports of req.Publish before anything is made
// (a port in use fails the create with nothing left), makes the VM, then
// records its forwards; if that fails the VM is deleted again. A VM made
// whose boot failed keeps its forwards, like its record.
func (d *Daemon) CreateVM(ctx context.Context, req api.CreateVMRequest, report progress.Func) (model.VM, error) {
	res, err := d.ports.Reserve(ctx, req.Publish)
	if err != nil {
		return model.VM{}, err
	}
	vm, err := d.vms.Create(ctx, req, report)
	if err != nil {
		if vm.ID != "" && len(req.Publish) > 0 {
			// Made but not booted (its record says why): the forwards
			// are kept as intent for its next start.
			_, _ = d.ports.Bind(context.WithoutCancel(ctx), res, vm.ID)
		}
		d.ports.Release(res)
		return vm, err
	}
	d.nameArtifacts(ctx, &vm)
	if len(req.Publish) == 0 {
		return vm, nil
	}
	if vm.Ports, err = d.ports.Bind(ctx, res, vm.ID); err != nil {
		if derr := d.vms.Delete(context.Background(), vm.ID, true); derr != nil {
			d.log.Error("create: delete vm after its ports failed", "vm", vm.Name, "err", derr)
		}
		return model.VM{}, err
	}
	return vm, nil
}

func (d *Daemon) StartVM(ctx context.Context, ref string, report progress.Func) (model.VM, error) {
	return d.vms.Start(ctx, ref, report)
}

func (d *Daemon) StopVM(ctx context.Context, ref string, req api.StopVMRequest) (model.VM, error) {
	return d.vms.Stop(ctx, ref, req)
}

func (d *Daemon) CreateSnapshot(ctx context.Context, vmRef string, req api.CreateSnapshotRequest) (model.Snapshot, error) {
	return d.vms.CreateSnapshot(ctx, vmRef, req.Name)
}

func (d *Daemon) ListSnapshots(ctx context.Context) ([]model.Snapshot, error) {
	return d.vms.ListSnapshots(ctx)
}

func (d *Daemon) GetSnapshot(ctx context.Context, ref string) (model.Snapshot, error) {
	return d.vms.GetSnapshot(ctx, ref)
}

func (d *Daemon) RemoveSnapshot(ctx context.Context, ref string) error {
	return d.vms.RemoveSnapshot(ctx, ref)
}

func (d *Daemon) WarmImage(ctx context.Context, req api.WarmRequest, report progress.Func) (model.Snapshot, error) {
	return d.vms.WarmImage(ctx, req, report)
}

func (d *Daemon) ListTemplates(ctx context.Context) ([]model.Snapshot, error) {
	return d.vms.ListTemplates(ctx)
}

func (d *Daemon) RemoveTemplate(ctx context.Context, ref string) error {
	return d.vms.RemoveTemplate(ctx, ref)
}

func (d *Daemon) Fork(ctx context.Context, req api.ForkRequest, report progress.Func) ([]model.VM, error) {
	return d.vms.Fork(ctx, req, report)
}

func (d *Daemon) PauseVM(ctx context.Context, ref string) (model.VM, error) {
	return d.vms.Pause(ctx, ref)
}

func (d *Daemon) ResumeVM(ctx context.Context, ref string, report progress.Func) (model.VM, error) {
	return d.vms.Resume(ctx, ref, report)
}

func (d *Daemon) RestartVM(ctx context.Context, ref string, report progress.Func) (model.VM, error) {
	return d.vms.Restart(ctx, ref, report)
}

func (d *Daemon) DeleteVM(ctx context.Context, ref string, force bool) error {
	return d.vms.Delete(ctx, ref, force)
}

func (d *Daemon) SetVMNet(ctx context.Context, ref string, req api.VMNetRequest) (model.VM, error) {
	return d.vms.SetNet(ctx, ref, req)
}

// ---- deadlines ----

func (d *Daemon) SetVMTTL(ctx context.Context, ref string, req api.VMTTLRequest) (model.VM, error) {
	return d.vms.SetTTL(ctx, ref, req)
}

func (d *Daemon) AddPort(ctx context.Context, ref string, req api.AddPortRequest) (model.Forward, error) {
	return d.ports.Add(ctx, ref, req)
}

func (d *Daemon) RemovePort(ctx context.Context, ref, port string) error {
	return d.ports.Remove(ctx, ref, port)
}

func (d *Daemon) ListPorts(ctx context.Context, ref string) ([]model.Forward, error) {
	return d.ports.List(ctx, ref)
}

// DialVM connects to a port of a running guest like a published port's
// connection does (plain TCP to the guest's address first, else its
// loopback over SSH); the VM counts as active until the connection is
// closed.
func (d *Daemon) DialVM(ctx context.Context, ref string, port int) (net.Conn, error) {
	if port < 1 || port > 65535 {
		return nil, errdefs.Errorf(errdefs.CodeInvalid, "invalid port %d: give a TCP port from 1 to 65535", port)
	}
	vm, err := d.vms.Running(ctx, ref)
	if err != nil {
		return nil, err
	}
	done := d.vms.Active(vm.ID)
	dctx, cancel := context.WithTimeout(ctx, dialVMTimeout)
	defer cancel()
	c, err := d.dialGuestTCP(dctx, vm, port)
	if err != nil {
		done()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, errdefs.Errorf(errdefs.CodeConflict, "connect to port %d of vm %s (does anything listen on it?): %v", port, vm.Name, err)
	}
	return &activeConn{Conn: c, done: sync.OnceFunc(done)}, nil
}

// dialVMTimeout bounds reaching a guest port for DialVM.
const dialVMTimeout = 10 * time.Second

// activeConn ends the VM's activity when it is closed.
type activeConn struct {
	net.Conn
	done func()
}

func (a *activeConn) Close() error {
	a.done()
	return a.Conn.Close()
}

// CloseWrite half-closes the guest connection (a plain TCP one or an SSH
// channel), or closes it when it cannot.
func (a *activeConn) CloseWrite() error {
	if cw, ok := a.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return a.Close()
}

// ---- host ----

func (d *Daemon) Doctor(ctx context.Context) api.DoctorReport {
	return doctor.Report(ctx, d.doctorHost())
}

// nameArtifacts fills in the names of vm's image and kernel.
func (d *Daemon) nameArtifacts(ctx context.Context, vm *model.VM) {
	if im, err := d.artifacts.GetImage(ctx, vm.ImageID); err == nil {
		vm.ImageName = im.Name
	}
	if k, err := d.artifacts.GetKernel(ctx, vm.KernelID); err == nil {
		vm.KernelName = k.Name
	}
}

// active marks the VM ref names in use until the returned func is
// called; an unknown ref marks nothing (the service answers the error).
func (d *Daemon) active(ctx context.Context, ref string) (done func()) {
	vm, err := d.vms.Resolve(ctx, ref)
	if err != nil {
		return func() {}
	}
	return d.vms.Active(vm.ID)
}

var _ api.Service = (*Daemon)(nil)

// ---- e2b ----

func (d *Daemon) E2BServe(ctx context.Context, req api.E2BServeRequest) (api.E2BStatus, error) {
	domain := req.Domain
	if domain == "" {
		domain = d.cfg.E2BDomain
	}
	dnsAddr := req.DNS
	if dnsAddr == "" {
		dnsAddr = d.cfg.E2BDNS
	}
	st, err := d.e2b.ServeAndRecord(ctx, e2b.Listener{Addr: req.Listen, Domain: domain, TLS: req.TLS || d.cfg.E2BTLS, DNS: dnsAddr})
	return api.E2BStatus(st), err
}

func (d *Daemon) E2BCA(ctx context.Context) (api.E2BCA, error) {
	ca, err := d.e2b.CA()
	if err != nil {
		return api.E2BCA{}, err
	}
	return api.E2BCA{Path: ca.Path, PEM: string(ca.PEM)}, nil
}

func (d *Daemon) E2BStop(ctx context.Context) error {
	return d.e2b.Stop(ctx)
}

func (d *Daemon) E2BStatus(ctx context.Context) (api.E2BStatus, error) {
	return api.E2BStatus(d.e2b.Status()), nil
}

func (d *Daemon) CreateE2BKey(ctx context.Context, req api.E2BKeyRequest) (api.E2BKeyCreated, error) {
	key, rec, err := d.e2b.CreateKey(ctx, req.Name, req.MaxSandboxes)
	return api.E2BKeyCreated{Key: key, Record: rec}, err
}

func (d *Daemon) ListE2BKeys(ctx context.Context) ([]model.E2BKey, error) {
	return d.e2b.ListKeys(ctx)
}

func (d *Daemon) RevokeE2BKey(ctx context.Context, ref string) error {
	_, err := d.e2b.RevokeKey(ctx, ref)
	return err
}
