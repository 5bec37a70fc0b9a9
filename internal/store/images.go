package store

import (
	"context"
	"database/sql"
	"fmt"

	"github.com/banger/banger/internal/model"
)

const imageCols = "id, name, path, size_bytes, checksum, source, init, recipe, recipe_key, host_key, created_at"

func scanImage(r *sql.Rows) (model.Image, error) {
	var im model.Image
	var created string
	if err := r.Scan(&im.ID, &im.Name, &im.Path, &im.SizeBytes, &im.Checksum, &im.Source, &im.Init,
		&im.Recipe, &im.RecipeKey, &im.HostKey, &created); err != nil {
		return im, err
	}
	var err error
	im.CreatedAt, err = parseTime(created)
	return im, err
}

// CreateImage records a new image. It returns ErrConflict when the id or
// name is taken.
func (s *Store) CreateImage(ctx context.Context, im model.Image) error {
	_, err := s.db.ExecContext(ctx, "INSERT INTO images ("+imageCols+") VALUES ("+placeholders(11)+")",
		im.ID, im.Name, im.Path, im.SizeBytes, im.Checksum, im.Source, im.Init,
		im.Recipe, im.RecipeKey, im.HostKey, fmtTime(im.CreatedAt))
	if err != nil {
		return fmt.Errorf("create image %q: %w", im.Name, constraint("image", err))
	}
	return nil
}

// GetImage finds an image by id, name or unique id prefix (ErrNotFound,
// ErrAmbiguous).
func (s *Store) GetImage(ctx context.Context, ref string) (model.Image, error) {
	return resolve(ctx, s.db, "image", "images", imageCols, ref, "", nil, scanImage)
}

// ListImages returns all images ordered by name.
func (s *Store) ListImages(ctx context.Context) ([]model.Image, error) {
	return list(ctx, s.db, "SELECT "+imageCols+" FROM images ORDER BY name", nil, scanImage)
}

// DeleteImage removes the image record with this exact id (ErrNotFound).
// It does not check for VMs using it: callers check VMsUsingImage first.
func (s *Store) DeleteImage(ctx context.Context, id string) error {
	return s.execOne(ctx, "image", id, "DELETE FROM images WHERE id = ?", id)
}

const kernelCols = "id, name, version, vmlinux_path, bzimage_path, initrd_path, cmdline, source, checksums, created_at"

func scanKernel(r *sql.Rows) (model.Kernel, error) {
	var k model.Kernel
	var created string
	if err := r.Scan(&k.ID, &k.Name, &k.Version, &k.VmlinuxPath, &k.BzImagePath, &k.InitrdPath,
		&k.Cmdline, &k.Source, &k.Checksums, &created); err != nil {
		return k, err
	}
	var err error
	k.CreatedAt, err = parseTime(created)
	return k, err
}

// CreateKernel records a new kernel. It returns ErrConflict when the id or
// name is taken.
func (s *Store) CreateKernel(ctx context.Context, k model.Kernel) error {
	_, err := s.db.ExecContext(ctx, "INSERT INTO kernels ("+kernelCols+") VALUES ("+placeholders(10)+")",
		k.ID, k.Name, k.Version, k.VmlinuxPath, k.BzImagePath, k.InitrdPath, k.Cmdline, k.Source,
		k.Checksums, fmtTime(k.CreatedAt))
	if err != nil {
		return fmt.Errorf("create kernel %q: %w", k.Name, constraint("kernel", err))
	}
	return nil
}

// GetKernel finds a kernel by id, name or unique id prefix (ErrNotFound,
// ErrAmbiguous).
func (s *Store) GetKernel(ctx context.Context, ref string) (model.Kernel, error) {
	return resolve(ctx, s.db, "kernel", "kernels", kernelCols, ref, "", nil, scanKernel)
}

// ListKernels returns all kernels ordered by name.
func (s *Store) ListKernels(ctx context.Context) ([]model.Kernel, error) {
	return list(ctx, s.db, "SELECT "+kernelCols+" FROM kernels ORDER BY name", nil, scanKernel)
}

// DeleteKernel removes the kernel record with this exact id (ErrNotFound).
// Callers check VMsUsingKernel first.
func (s *Store) DeleteKernel(ctx context.Context, id string) error {
	return s.execOne(ctx, "kernel", id, "DELETE FROM kernels WHERE id = ?", id)
}
