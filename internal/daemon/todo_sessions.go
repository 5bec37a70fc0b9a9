package daemon

import (
	"context"
	"io"

	"github.com/banger/banger/internal/api"
	"github.com/banger/banger/internal/model"
)

// Guest session methods, until they are built.

func (d *Daemon) ListSessions(ctx context.Context, vmRef string) ([]model.Session, error) {
	return nil, notYet("sessions")
}
func (d *Daemon) GetSession(ctx context.Context, vmRef, ref string) (model.Session, error) {
	return model.Session{}, notYet("sessions")
}
func (d *Daemon) StartSession(ctx context.Context, vmRef string, req api.StartSessionRequest) (model.Session, error) {
	return model.Session{}, notYet("sessions")
}
func (d *Daemon) SessionLogs(ctx context.Context, vmRef, ref string, req api.SessionLogsRequest, w io.Writer) error {
	return notYet("sessions")
}
func (d *Daemon) SendSession(ctx context.Context, vmRef, ref string, data io.Reader) (int64, error) {
	return 0, notYet("sessions")
}
func (d *Daemon) AttachSession(ctx context.Context, vmRef, ref string, aio api.AttachIO) error {
	return notYet("sessions")
}
func (d *Daemon) StopSession(ctx context.Context, vmRef, ref string, req api.StopSessionRequest) (model.Session, error) {
	return model.Session{}, notYet("sessions")
}
func (d *Daemon) KillSession(ctx context.Context, vmRef, ref string, signal string) (model.Session, error) {
	return model.Session{}, notYet("sessions")
}
func (d *Daemon) RemoveSession(ctx context.Context, vmRef, ref string) error {
	return notYet("sessions")
}
