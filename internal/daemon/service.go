package daemon

// The api.Service facade: each method hands the request to the service that
// owns it. Nothing here decides anything.

import (
	"context"
	"io"

	"github.com/banger/banger/internal/api"
	"github.com/banger/banger/internal/daemon/doctor"
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
	return d.sessions.Start(ctx, vmRef, req)
}

func (d *Daemon) SessionLogs(ctx context.Context, vmRef, ref string, req api.SessionLogsRequest, w io.Writer) error {
	return d.sessions.Logs(ctx, vmRef, ref, req, w)
}

func (d *Daemon) SendSession(ctx context.Context, vmRef, ref string, data io.Reader) (int64, error) {
	return d.sessions.Send(ctx, vmRef, ref, data)
}

func (d *Daemon) AttachSession(ctx context.Context, vmRef, ref string, aio api.AttachIO) error {
	return d.sessions.Attach(ctx, vmRef, ref, aio)
}

func (d *Daemon) StopSession(ctx context.Context, vmRef, ref string, req api.StopSessionRequest) (model.Session, error) {
	return d.sessions.Stop(ctx, vmRef, ref, req)
}

func (d *Daemon) KillSession(ctx context.Context, vmRef, ref string, signal string) (model.Session, error) {
	return d.sessions.Kill(ctx, vmRef, ref, signal)
}

func (d *Daemon) RemoveSession(ctx context.Context, vmRef, ref string) error {
	return d.sessions.Remove(ctx, vmRef, ref)
}

// ---- workspaces ----

func (d *Daemon) PrepareWorkspace(ctx context.Context, ref string, req api.WorkspaceRequest, tar io.Reader) (api.WorkspaceInfo, error) {
	return d.workspaces.Prepare(ctx, ref, req, tar)
}

func (d *Daemon) ExportWorkspace(ctx context.Context, ref string, req api.ExportRequest, w io.Writer) error {
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
	return d.guests.Exec(ctx, ref, req, stdout, stderr)
}

func (d *Daemon) VMLogs(ctx context.Context, ref string, req api.LogsRequest, w io.Writer) error {
	return d.guests.Logs(ctx, ref, req, w)
}

func (d *Daemon) SSHInfo(ctx context.Context, ref string) (api.SSHInfo, error) {
	return d.guests.SSHInfo(ctx, ref)
}

func (d *Daemon) Hosts(ctx context.Context) (string, error) { return d.guests.Hosts(ctx) }

// ---- VMs ----

func (d *Daemon) ListVMs(ctx context.Context) ([]model.VM, error) { return d.vms.List(ctx) }

// GetVM is the record with its published ports (`vm show`).
func (d *Daemon) GetVM(ctx context.Context, ref string) (model.VM, error) {
	vm, err := d.vms.Get(ctx, ref)
	if err == nil {
		vm.Ports, err = d.ports.ListOf(ctx, vm.ID)
	}
	return vm, err
}

func (d *Daemon) CreateVM(ctx context.Context, req api.CreateVMRequest, report progress.Func) (model.VM, error) {
	return d.vms.Create(ctx, req, report)
}

func (d *Daemon) StartVM(ctx context.Context, ref string, report progress.Func) (model.VM, error) {
	return d.vms.Start(ctx, ref, report)
}

func (d *Daemon) StopVM(ctx context.Context, ref string, req api.StopVMRequest) (model.VM, error) {
	return d.vms.Stop(ctx, ref, req)
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

// ---- host ----

func (d *Daemon) Doctor(ctx context.Context) api.DoctorReport {
	return doctor.Report(ctx, d.doctorHost())
}

var _ api.Service = (*Daemon)(nil)

// ---- e2b ----

func (d *Daemon) E2BServe(ctx context.Context, req api.E2BServeRequest) (api.E2BStatus, error) {
	domain := req.Domain
	if domain == "" {
		domain = d.cfg.E2BDomain
	}
	st, err := d.e2b.ServeAndRecord(ctx, req.Listen, domain)
	return api.E2BStatus(st), err
}

func (d *Daemon) E2BStop(ctx context.Context) error {
	return d.e2b.Stop(ctx)
}

func (d *Daemon) E2BStatus(ctx context.Context) (api.E2BStatus, error) {
	return api.E2BStatus(d.e2b.Status()), nil
}

func (d *Daemon) CreateE2BKey(ctx context.Context, req api.E2BKeyRequest) (api.E2BKeyCreated, error) {
	key, rec, err := d.e2b.CreateKey(ctx, req.Name)
	return api.E2BKeyCreated{Key: key, Record: rec}, err
}

func (d *Daemon) ListE2BKeys(ctx context.Context) ([]model.E2BKey, error) {
	return d.e2b.ListKeys(ctx)
}

func (d *Daemon) RevokeE2BKey(ctx context.Context, ref string) error {
	_, err := d.e2b.RevokeKey(ctx, ref)
	return err
}
