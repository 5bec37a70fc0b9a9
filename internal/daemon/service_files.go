package daemon

import (
	"context"
	"io"

	"github.com/banger/banger/internal/api"
)

// ---- guest files ----
//
// Each is activity of the VM for its idle timeout.

func (d *Daemon) ReadFile(ctx context.Context, ref string, req api.FileReadRequest, w io.Writer) error {
	defer d.active(ctx, ref)()
	return d.files.ReadFile(ctx, ref, req, w)
}

func (d *Daemon) WriteFile(ctx context.Context, ref string, req api.FileWriteRequest, body io.Reader) (api.FileInfo, error) {
	defer d.active(ctx, ref)()
	return d.files.WriteFile(ctx, ref, req, body)
}

func (d *Daemon) StatFile(ctx context.Context, ref, path string) (api.FileInfo, error) {
	defer d.active(ctx, ref)()
	return d.files.StatFile(ctx, ref, path)
}

func (d *Daemon) ListFiles(ctx context.Context, ref, path string, depth int) ([]api.FileInfo, error) {
	defer d.active(ctx, ref)()
	return d.files.ListFiles(ctx, ref, path, depth)
}

func (d *Daemon) MakeDir(ctx context.Context, ref, path string) (api.FileInfo, error) {
	defer d.active(ctx, ref)()
	return d.files.MakeDir(ctx, ref, path)
}

func (d *Daemon) MoveFile(ctx context.Context, ref, from, to string) (api.FileInfo, error) {
	defer d.active(ctx, ref)()
	return d.files.MoveFile(ctx, ref, from, to)
}

func (d *Daemon) RemoveFile(ctx context.Context, ref, path string, recursive bool) error {
	defer d.active(ctx, ref)()
	return d.files.RemoveFile(ctx, ref, path, recursive)
}

func (d *Daemon) ReadArchive(ctx context.Context, ref, path string, w io.Writer) error {
	defer d.active(ctx, ref)()
	return d.files.ReadArchive(ctx, ref, path, w)
}

func (d *Daemon) WriteArchive(ctx context.Context, ref, path string, tar io.Reader) (api.FileInfo, error) {
	defer d.active(ctx, ref)()
	return d.files.WriteArchive(ctx, ref, path, tar)
}
