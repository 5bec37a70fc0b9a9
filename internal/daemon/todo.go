package daemon

import (
	"context"
	"io"

	"github.com/banger/banger/internal/api"
	"github.com/banger/banger/internal/model"
)

// Service methods not built yet. Each moves to its own file when it is.

func notYet(what string) error {
	return api.Errorf(api.CodeUnavailable, "%s is not available in this build", what)
}

func (d *Daemon) startHost(ctx context.Context) error { return nil }
func (d *Daemon) closeHost() error                    { return nil }

func (d *Daemon) Doctor(ctx context.Context) api.DoctorReport { return api.DoctorReport{} }
func (d *Daemon) BuildImage(ctx context.Context, req api.BuildImageRequest, progress api.ProgressFunc) (model.Image, error) {
	return model.Image{}, notYet("image build")
}
func (d *Daemon) ImportImage(ctx context.Context, req api.ImportImageRequest, progress api.ProgressFunc) (model.Image, error) {
	return model.Image{}, notYet("image import")
}
func (d *Daemon) RemoveImage(ctx context.Context, ref string) error { return notYet("image rm") }
func (d *Daemon) ListKernels(ctx context.Context) ([]api.KernelEntry, error) {
	return []api.KernelEntry{}, nil
}
func (d *Daemon) PullKernel(ctx context.Context, name string, progress api.ProgressFunc) (model.Kernel, error) {
	return model.Kernel{}, notYet("kernel pull")
}
func (d *Daemon) ImportKernel(ctx context.Context, req api.ImportKernelRequest) (model.Kernel, error) {
	return model.Kernel{}, notYet("kernel import")
}
func (d *Daemon) RemoveKernel(ctx context.Context, ref string) error { return notYet("kernel rm") }
func (d *Daemon) CreateVM(ctx context.Context, req api.CreateVMRequest, progress api.ProgressFunc) (model.VM, error) {
	return model.VM{}, notYet("vm create")
}
func (d *Daemon) StartVM(ctx context.Context, ref string, progress api.ProgressFunc) (model.VM, error) {
	return model.VM{}, notYet("vm start")
}
func (d *Daemon) StopVM(ctx context.Context, ref string, req api.StopVMRequest) (model.VM, error) {
	return model.VM{}, notYet("vm stop")
}
func (d *Daemon) RestartVM(ctx context.Context, ref string, progress api.ProgressFunc) (model.VM, error) {
	return model.VM{}, notYet("vm restart")
}
func (d *Daemon) DeleteVM(ctx context.Context, ref string, force bool) error {
	return notYet("vm delete")
}
func (d *Daemon) VMLogs(ctx context.Context, ref string, req api.LogsRequest, w io.Writer) error {
	return notYet("vm logs")
}
func (d *Daemon) ExecVM(ctx context.Context, ref string, req api.ExecRequest, stdout, stderr io.Writer) (int, error) {
	return -1, notYet("vm exec")
}
func (d *Daemon) SSHInfo(ctx context.Context, ref string) (api.SSHInfo, error) {
	return api.SSHInfo{}, notYet("vm ssh")
}
func (d *Daemon) Hosts(ctx context.Context) (string, error) { return "", notYet("vm hosts") }
