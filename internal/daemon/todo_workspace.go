package daemon

import (
	"context"
	"io"

	"github.com/banger/banger/internal/api"
)

// Workspace methods, until they are built.

func (d *Daemon) PrepareWorkspace(ctx context.Context, ref string, req api.WorkspaceRequest, tar io.Reader) (api.WorkspaceInfo, error) {
	return api.WorkspaceInfo{}, notYet("workspaces")
}
func (d *Daemon) ExportWorkspace(ctx context.Context, ref string, req api.ExportRequest, w io.Writer) error {
	return notYet("workspaces")
}
