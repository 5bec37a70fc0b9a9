// Package artifacts registers the images and kernels VMs boot from:
// building images (package image) and pulling kernels (package kernel)
// into the state directory, importing the user's, listing and removing
// them (refused while a VM uses one), and finding the default image and
// kernel for a new VM, made on first use.
//
// It owns the image and kernel records and their files. It must not touch
// VMs beyond asking the store which use an artifact, nor warm-start
// templates beyond asking (DropTemplates) that an artifact's go with it.
package artifacts

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/banger/banger/internal/api"
	"github.com/banger/banger/internal/config"
	"github.com/banger/banger/internal/errdefs"
	"github.com/banger/banger/internal/image"
	"github.com/banger/banger/internal/kernel"
	"github.com/banger/banger/internal/model"
	"github.com/banger/banger/internal/progress"
	"github.com/banger/banger/internal/store"
)

// Deps are what a Service is made of.
type Deps struct {
	Config config.Config
	Store  *store.Store
	Log    *slog.Logger
	Now    func() time.Time
	// DropTemplates removes the warm-start templates made from the image
	// or kernel with this id, which is being removed (nil: none kept).
	DropTemplates func(ctx context.Context, artifactID string) error
}

// Service registers images and kernels.
type Service struct {
	Deps

	// buildMu serialises image builds and kernel pulls: they are heavy, and
	// two first-run `vm create`s must not build the default image twice.
	buildMu sync.Mutex

	initSumOnce sync.Once
	initSum     string
}

// InitSum is the checksum ("sha256:<hex>") of the banger-init binary
// this daemon installs in the images it builds, "" when there is none;
// read once per daemon.
func (sv *Service) InitSum() string {
	sv.initSumOnce.Do(func() {
		p, err := sv.initBinary()
		if err != nil {
			return
		}
		f, err := os.Open(p)
		if err != nil {
			return
		}
		defer f.Close()
		h := sha256.New()
		if _, err := io.Copy(h, f); err == nil {
			sv.initSum = "sha256:" + hex.EncodeToString(h.Sum(nil))
		}
	})
	return sv.initSum
}

// dropTemplates removes the templates of an artifact being removed.
func (sv *Service) dropTemplates(ctx context.Context, id string) error {
	if sv.DropTemplates == nil {
		return nil
	}
	return sv.DropTemplates(ctx, id)
}

// New makes a Service.
func New(deps Deps) *Service { return &Service{Deps: deps} }

// ListImages lists every image.
func (sv *Service) ListImages(ctx context.Context) ([]model.Image, error) {
	ims, err := sv.Store.ListImages(ctx)
	if ims == nil {
		ims = []model.Image{}
	}
	return ims, err
}

// GetImage shows one image.
func (sv *Service) GetImage(ctx context.Context, ref string) (model.Image, error) {
	im, err := sv.Store.GetImage(ctx, ref)
	return im, store.Describe("image", ref, err)
}

// GetKernel shows one pulled or imported kernel.
func (sv *Service) GetKernel(ctx context.Context, ref string) (model.Kernel, error) {
	k, err := sv.Store.GetKernel(ctx, ref)
	return k, store.Describe("kernel", ref, err)
}

// initBinary is the guest init put into built images: next to bangerd, or
// in the configured bin dir.
func (sv *Service) initBinary() (string, error) {
	dir := sv.Config.BinDir
	if dir == "" {
		exe, err := os.Executable()
		if err != nil {
			return "", err
		}
		dir = filepath.Dir(exe)
	}
	p := filepath.Join(dir, "banger-init")
	if _, err := os.Stat(p); err != nil {
		return "", errdefs.Errorf(errdefs.CodeUnavailable, "guest init binary %s not found: install banger-init next to bangerd (make build) or set bin_dir", p)
	}
	return p, nil
}

// BuildImage builds an image from distribution packages and registers it.
func (sv *Service) BuildImage(ctx context.Context, req api.BuildImageRequest, report progress.Func) (model.Image, error) {
	report = progress.OrNop(report)
	name := req.Name
	if name == "" {
		name = sv.Config.DefaultImage
	}
	if err := model.ValidateName("image", name); err != nil {
		return model.Image{}, errdefs.Invalid(err)
	}
	if req.Distro != "" && req.Distro != "debian" {
		return model.Image{}, errdefs.Errorf(errdefs.CodeInvalid, "unsupported distro %q: only debian is supported", req.Distro)
	}
	var size int64
	if req.Size != "" {
		s, err := model.ParseSize(req.Size)
		if err != nil {
			return model.Image{}, errdefs.Errorf(errdefs.CodeInvalid, "size: %v", err)
		}
		size = s
	}
	switch req.Init {
	case "", "fast", "systemd":
	default:
		return model.Image{}, errdefs.Errorf(errdefs.CodeInvalid, "invalid init %q: use fast or systemd", req.Init)
	}
	initBin, err := sv.initBinary()
	if err != nil {
		return model.Image{}, err
	}
	opts := image.BuildOptions{
		Name: name, Suite: req.Suite, Packages: req.Packages, SizeBytes: size, Init: req.Init,
		InitBinary: initBin, CacheDir: sv.Config.CacheDir, NoCache: req.NoCache,
	}
	for _, s := range req.Scripts {
		opts.Scripts = append(opts.Scripts, image.Script{Name: s.Name, Content: s.Content})
	}
	for _, c := range req.Copies {
		opts.Copies = append(opts.Copies, image.Copy{Src: c.Src, Dst: c.Dst})
	}
	sv.buildMu.Lock()
	defer sv.buildMu.Unlock()
	if _, err := sv.Store.GetImage(ctx, name); err == nil {
		return model.Image{}, errdefs.Errorf(errdefs.CodeConflict, "image %q already exists: remove it first (banger image rm %s) or pick another --name", name, name)
	}
	id := model.NewID()
	dest := filepath.Join(sv.Config.ImagesDir(), id+".ext4")
	res, err := image.Build(ctx, opts, dest, report)
	if err != nil {
		_ = os.Remove(dest)
		return model.Image{}, err
	}
	im := model.Image{
		ID: id, Name: name, Path: res.Path, SizeBytes: res.SizeBytes, Checksum: res.Checksum,
		Source: "build", Init: res.Init, Recipe: res.RecipeJSON, RecipeKey: res.RecipeKey,
		HostKey: res.HostKey, CreatedAt: sv.Now().UTC(),
	}
	if err := sv.Store.CreateImage(ctx, im); err != nil {
		_ = os.Remove(res.Path)
		return model.Image{}, store.Describe("image", name, err)
	}
	return im, nil
}

// ImportImage registers an existing ext4 file after checking it carries
// what banger needs.
func (sv *Service) ImportImage(ctx context.Context, req api.ImportImageRequest, report progress.Func) (model.Image, error) {
	report = progress.OrNop(report)
	if req.Path == "" || !filepath.IsAbs(req.Path) {
		return model.Image{}, errdefs.Errorf(errdefs.CodeInvalid, "image file %q must be an absolute path", req.Path)
	}
	name := req.Name
	if name == "" {
		name = strings.ToLower(strings.TrimSuffix(filepath.Base(req.Path), filepath.Ext(req.Path)))
	}
	if err := model.ValidateName("image", name); err != nil {
		return model.Image{}, errdefs.Invalid(err)
	}
	if _, err := sv.Store.GetImage(ctx, name); err == nil {
		return model.Image{}, errdefs.Errorf(errdefs.CodeConflict, "image %q already exists", name)
	}
	report(progress.Event{Phase: "inspect", Message: "checking " + req.Path})
	rep, err := image.Inspect(req.Path)
	if err != nil {
		return model.Image{}, errdefs.Errorf(errdefs.CodeInvalid, "cannot import %s: %v", req.Path, err)
	}
	if !rep.Ext4 {
		return model.Image{}, errdefs.Errorf(errdefs.CodeInvalid, "cannot import %s: not an ext4 filesystem", req.Path)
	}
	if len(rep.Missing) > 0 {
		return model.Image{}, errdefs.Errorf(errdefs.CodeInvalid, "cannot import %s: the image lacks what banger needs: %s", req.Path, strings.Join(rep.Missing, "; "))
	}
	id := model.NewID()
	dest := filepath.Join(sv.Config.ImagesDir(), id+".ext4")
	report(progress.Event{Phase: "copy", Message: "copying into the state directory"})
	sum, size, err := copyFileSum(ctx, req.Path, dest)
	if err != nil {
		_ = os.Remove(dest)
		return model.Image{}, err
	}
	im := model.Image{
		ID: id, Name: name, Path: dest, SizeBytes: size, Checksum: sum, Source: "import",
		Recipe: mustJSON(map[string]string{"imported_from": req.Path}), HostKey: rep.HostKey,
		CreatedAt: sv.Now().UTC(),
	}
	if err := sv.Store.CreateImage(ctx, im); err != nil {
		_ = os.Remove(dest)
		return model.Image{}, store.Describe("image", name, err)
	}
	return im, nil
}

// RemoveImage deletes an image unless a VM or a snapshot uses it; its
// warm-start templates go with it.
func (sv *Service) RemoveImage(ctx context.Context, ref string) error {
	im, err := sv.GetImage(ctx, ref)
	if err != nil {
		return err
	}
	users, err := sv.Store.VMsUsingImage(ctx, im.ID)
	if err != nil {
		return err
	}
	if len(users) > 0 {
		return errdefs.Errorf(errdefs.CodeConflict, "image %s is used by vm %s: delete the vm first", im.Name, vmNames(users))
	}
	if snaps, err := sv.Store.SnapshotsUsingArtifact(ctx, im.ID); err != nil {
		return err
	} else if len(snaps) > 0 {
		return errdefs.Errorf(errdefs.CodeConflict, "image %s is used by snapshot %s: remove the snapshot first", im.Name, strings.Join(snaps, ", "))
	}
	if err := sv.dropTemplates(ctx, im.ID); err != nil {
		return err
	}
	if err := sv.Store.DeleteImage(ctx, im.ID); err != nil {
		return store.Describe("image", ref, err)
	}
	if err := os.Remove(im.Path); err != nil && !os.IsNotExist(err) {
		sv.Log.Warn("remove image file", "path", im.Path, "err", err)
	}
	return nil
}

func vmNames(vms []model.VM) string {
	var names []string
	for _, v := range vms {
		names = append(names, v.Name)
	}
	return strings.Join(names, ", ")
}

// ImageForVM resolves the image of a new VM; the default image is built on
// first use.
func (sv *Service) ImageForVM(ctx context.Context, ref string, report progress.Func) (model.Image, error) {
	if ref == "" {
		ref = sv.Config.DefaultImage
	}
	im, err := sv.Store.GetImage(ctx, ref)
	if err == nil {
		return im, nil
	}
	if !errors.Is(err, store.ErrNotFound) || ref != sv.Config.DefaultImage {
		return im, store.Describe("image", ref, err)
	}
	report(progress.Event{Phase: "image", Message: fmt.Sprintf("no image %q yet: building the default image (first run; cached afterwards)", ref)})
	im, err = sv.BuildImage(ctx, api.BuildImageRequest{Name: ref}, report)
	if errdefs.CodeOf(err) == errdefs.CodeConflict {
		// Another request built it meanwhile.
		im, err = sv.Store.GetImage(ctx, ref)
		return im, store.Describe("image", ref, err)
	}
	return im, err
}

// KernelForVM resolves the kernel of a new VM; a catalog kernel is pulled on
// first use.
func (sv *Service) KernelForVM(ctx context.Context, ref string, report progress.Func) (model.Kernel, error) {
	if ref == "" {
		ref = sv.Config.DefaultKernel
	}
	k, err := sv.Store.GetKernel(ctx, ref)
	if err == nil {
		return k, nil
	}
	if _, ok := kernel.Lookup(ref); !ok || !errors.Is(err, store.ErrNotFound) {
		return k, store.Describe("kernel", ref, err)
	}
	report(progress.Event{Phase: "kernel", Message: fmt.Sprintf("no kernel %q yet: pulling it from the catalog (first run; cached afterwards)", ref)})
	k, err = sv.PullKernel(ctx, ref, report)
	if errdefs.CodeOf(err) == errdefs.CodeConflict {
		k, err = sv.Store.GetKernel(ctx, ref)
		return k, store.Describe("kernel", ref, err)
	}
	return k, err
}

// ListKernels lists catalog entries and pulled or imported kernels.
func (sv *Service) ListKernels(ctx context.Context) ([]api.KernelEntry, error) {
	cat, err := kernel.Catalog()
	if err != nil {
		return nil, err
	}
	ks, err := sv.Store.ListKernels(ctx)
	if err != nil {
		return nil, err
	}
	byName := map[string]*model.Kernel{}
	for i := range ks {
		byName[ks[i].Name] = &ks[i]
	}
	out := []api.KernelEntry{}
	for _, e := range cat {
		out = append(out, api.KernelEntry{Name: e.Name, Catalog: true, Description: e.Description, Kernel: byName[e.Name]})
		delete(byName, e.Name)
	}
	for i := range ks {
		if byName[ks[i].Name] != nil {
			out = append(out, api.KernelEntry{Name: ks[i].Name, Kernel: &ks[i]})
		}
	}
	return out, nil
}

// PullKernel fetches a catalog kernel and registers it under the entry's
// name.
func (sv *Service) PullKernel(ctx context.Context, name string, report progress.Func) (model.Kernel, error) {
	report = progress.OrNop(report)
	e, ok := kernel.Lookup(name)
	if !ok {
		return model.Kernel{}, errdefs.Errorf(errdefs.CodeNotFound, "kernel %q is not in the catalog: see `banger kernel list`", name)
	}
	sv.buildMu.Lock()
	defer sv.buildMu.Unlock()
	if _, err := sv.Store.GetKernel(ctx, name); err == nil {
		return model.Kernel{}, errdefs.Errorf(errdefs.CodeConflict, "kernel %q is already pulled: remove it first to pull again", name)
	}
	id := model.NewID()
	dir := filepath.Join(sv.Config.KernelsDir(), id)
	art, err := kernel.Pull(ctx, e, dir, sv.Config.CacheDir, report)
	if err != nil {
		_ = os.RemoveAll(dir)
		return model.Kernel{}, err
	}
	k := model.Kernel{
		ID: id, Name: name, Version: art.Version, VmlinuxPath: art.Vmlinux, BzImagePath: art.BzImage,
		InitrdPath: art.Initrd, Cmdline: art.Cmdline, Source: art.Source, Checksums: mustJSON(art.Checksums),
		CreatedAt: sv.Now().UTC(),
	}
	if err := sv.Store.CreateKernel(ctx, k); err != nil {
		_ = os.RemoveAll(dir)
		return model.Kernel{}, store.Describe("kernel", name, err)
	}
	return k, nil
}

// ImportKernel registers a user's kernel (and initrd), copied into the
// state directory.
func (sv *Service) ImportKernel(ctx context.Context, req api.ImportKernelRequest) (model.Kernel, error) {
	if err := model.ValidateName("kernel", req.Name); err != nil {
		return model.Kernel{}, errdefs.Invalid(err)
	}
	if _, err := sv.Store.GetKernel(ctx, req.Name); err == nil {
		return model.Kernel{}, errdefs.Errorf(errdefs.CodeConflict, "kernel %q already exists", req.Name)
	}
	if req.Vmlinux == "" {
		return model.Kernel{}, errdefs.Errorf(errdefs.CodeInvalid, "--vmlinux is required: an uncompressed ELF kernel")
	}
	if err := checkELF(req.Vmlinux); err != nil {
		return model.Kernel{}, errdefs.Invalid(err)
	}
	id := model.NewID()
	dir := filepath.Join(sv.Config.KernelsDir(), id)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return model.Kernel{}, err
	}
	sums := map[string]string{}
	k := model.Kernel{ID: id, Name: req.Name, Version: "unknown", Cmdline: req.Cmdline, Source: "import", CreatedAt: sv.Now().UTC()}
	if k.Cmdline == "" {
		k.Cmdline = "console=ttyS0 reboot=k panic=1"
	}
	for _, f := range []struct {
		src, name string
		dst       *string
	}{{req.Vmlinux, "vmlinux", &k.VmlinuxPath}, {req.BzImage, "bzImage", &k.BzImagePath}, {req.Initrd, "initrd", &k.InitrdPath}} {
		if f.src == "" {
			continue
		}
		dst := filepath.Join(dir, f.name)
		sum, _, err := copyFileSum(ctx, f.src, dst)
		if err != nil {
			_ = os.RemoveAll(dir)
			return model.Kernel{}, errdefs.Errorf(errdefs.CodeInvalid, "%s: %v", f.name, err)
		}
		*f.dst = dst
		sums[f.name] = sum
	}
	k.Checksums = mustJSON(sums)
	if err := sv.Store.CreateKernel(ctx, k); err != nil {
		_ = os.RemoveAll(dir)
		return model.Kernel{}, store.Describe("kernel", req.Name, err)
	}
	return k, nil
}

// RemoveKernel deletes a kernel unless a VM or a snapshot uses it; its
// warm-start templates go with it.
func (sv *Service) RemoveKernel(ctx context.Context, ref string) error {
	k, err := sv.GetKernel(ctx, ref)
	if err != nil {
		return err
	}
	users, err := sv.Store.VMsUsingKernel(ctx, k.ID)
	if err != nil {
		return err
	}
	if len(users) > 0 {
		return errdefs.Errorf(errdefs.CodeConflict, "kernel %s is used by vm %s: delete the vm first", k.Name, vmNames(users))
	}
	if snaps, err := sv.Store.SnapshotsUsingArtifact(ctx, k.ID); err != nil {
		return err
	} else if len(snaps) > 0 {
		return errdefs.Errorf(errdefs.CodeConflict, "kernel %s is used by snapshot %s: remove the snapshot first", k.Name, strings.Join(snaps, ", "))
	}
	if err := sv.dropTemplates(ctx, k.ID); err != nil {
		return err
	}
	if err := sv.Store.DeleteKernel(ctx, k.ID); err != nil {
		return store.Describe("kernel", ref, err)
	}
	_ = os.RemoveAll(filepath.Join(sv.Config.KernelsDir(), k.ID))
	return nil
}

func checkELF(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return fmt.Errorf("vmlinux: %w", err)
	}
	defer f.Close()
	var magic [4]byte
	if _, err := io.ReadFull(f, magic[:]); err != nil || string(magic[:]) != "\x7fELF" {
		return fmt.Errorf("vmlinux %s is not an uncompressed ELF kernel (Firecracker needs vmlinux, not bzImage)", p)
	}
	return nil
}

// copyFileSum copies src to dst (0600) and returns its sha256 and size.
func copyFileSum(ctx context.Context, src, dst string) (string, int64, error) {
	in, err := os.Open(src)
	if err != nil {
		return "", 0, err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return "", 0, err
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(out, h), ctxReader{ctx, in})
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(dst)
		return "", 0, err
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), n, nil
}

type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		return "{}"
	}
	return string(b)
}
