package files

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"
	"unicode/utf8"

	"github.com/banger/banger/internal/api"
	"github.com/banger/banger/internal/errdefs"
	"github.com/banger/banger/internal/guestinit"
	"github.com/banger/banger/internal/model"
	"github.com/banger/banger/internal/storage"
)

// A stopped VM's files are read from its work disk, the one mounted at
// guestinit.WorkMount (/root) in the guest, through storage's reader
// (debugfs in a jail, never a mount). Paths elsewhere live on the system
// disk and are refused with why; a symlink on the way to a path is refused
// too, never followed: the guest's links mean something in the guest's
// root, which the work disk is not. The VM's lock is held for the read,
// so the VM cannot start under it. A paused VM is refused: its disk lacks
// what the guest has not written back yet.

// readVM resolves ref for a read. A running VM comes back with a nil
// unlock, to be read over SSH; a stopped one comes back locked, with the
// work disk path of p (absolute, clean) to read offline.
func (sv *Service) readVM(ctx context.Context, ref, p string) (vm model.VM, gp, diskPath string, unlock func(), err error) {
	if gp, err = GuestPath(p); err != nil {
		return vm, "", "", nil, err
	}
	if vm, err = sv.VMs.Resolve(ctx, ref); err != nil {
		return vm, "", "", nil, err
	}
	if sv.VMs.Alive(vm) {
		return vm, gp, "", nil, nil
	}
	if vm, unlock, err = sv.VMs.Lock(ctx, vm.ID); err != nil {
		return vm, "", "", nil, err
	}
	if sv.VMs.Alive(vm) { // started meanwhile
		unlock()
		return vm, gp, "", nil, nil
	}
	switch vm.State {
	case model.VMPaused, model.VMPausing, model.VMResuming:
		// Its work disk lacks what the guest has not written back yet.
		unlock()
		return vm, "", "", nil, errdefs.Errorf(errdefs.CodeConflict, "vm %s is %s: its files are read once it runs again (`banger vm resume %s`)", vm.Name, vm.State, vm.Name)
	}
	diskPath, err = WorkDiskPath(gp)
	if err == nil && vm.WorkDisk == "" {
		err = errdefs.Errorf(errdefs.CodeNotFound, "vm %s has no work disk to read from", vm.Name)
	}
	if err != nil {
		unlock()
		return vm, "", "", nil, errdefs.Errorf(errdefs.CodeConflict, "vm %s is stopped and %v: start it with `banger vm start %s`", vm.Name, err, vm.Name)
	}
	return vm, gp, diskPath, unlock, nil
}

// WorkDiskPath maps a clean absolute guest path to its path in the work
// disk's filesystem: paths under guestinit.WorkMount, and under
// guestinit.UserHome, which the guest bind-mounts from the work disk.
func WorkDiskPath(gp string) (string, error) {
	if gp == guestinit.WorkMount {
		return "/", nil
	}
	if gp == guestinit.UserHome {
		return "/" + guestinit.WorkUserHome, nil
	}
	if rest, ok := strings.CutPrefix(gp, guestinit.UserHome+"/"); ok {
		return "/" + guestinit.WorkUserHome + "/" + rest, nil
	}
	if rest, ok := strings.CutPrefix(gp, guestinit.WorkMount+"/"); ok {
		return "/" + rest, nil
	}
	return "", fmt.Errorf("%s is on its system disk: only paths under %s and %s (its work disk) are read while it is stopped", gp, guestinit.WorkMount, guestinit.UserHome)
}

// diskError maps the disk reader's errors to error kinds.
func diskError(vm model.VM, what string, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, storage.ErrNotFound):
		return errdefs.Errorf(errdefs.CodeNotFound, "%s in vm %s (stopped, read from its work disk): no such file or directory", what, vm.Name)
	case errors.Is(err, storage.ErrThroughSymlink):
		return errdefs.Errorf(errdefs.CodeInvalid, "%s in vm %s: %v; a stopped VM's disk is read without following symlinks: name the target, or start the VM", what, vm.Name, err)
	case errors.Is(err, storage.ErrTooLarge):
		return errdefs.Errorf(errdefs.CodeConflict, "%s in vm %s (stopped): %v (bounded by max_copy_out and max_copy_out_entries)", what, vm.Name, err)
	case strings.Contains(err.Error(), "not a directory"), strings.Contains(err.Error(), "not a regular file"):
		return errdefs.Errorf(errdefs.CodeInvalid, "%s in vm %s (stopped): %v", what, vm.Name, err)
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return err
	}
	return errdefs.Errorf(errdefs.CodeInternal, "%s in vm %s (stopped, read from its work disk): %v", what, vm.Name, err)
}

// diskInfo is the API's view of a disk entry at guest path gp.
func diskInfo(e storage.DiskEntry, gp string) api.FileInfo {
	info := api.FileInfo{Path: gp, Name: path.Base(gp), Size: e.Size, Mode: e.Mode, MTime: e.MTime}
	switch e.Type {
	case storage.DiskRegular:
		info.Type = api.FileTypeFile
	case storage.DiskDirectory:
		info.Type = api.FileTypeDir
	case storage.DiskSymlink:
		info.Type, info.Target = api.FileTypeSymlink, e.Target
	default:
		info.Type = api.FileTypeOther
	}
	if !utf8.ValidString(info.Path) {
		info.RawPath = []byte(info.Path)
	}
	return info
}

func (sv *Service) statOffline(ctx context.Context, vm model.VM, gp, dp string) (api.FileInfo, error) {
	e, err := storage.StatDisk(ctx, vm.WorkDisk, dp)
	if err != nil {
		return api.FileInfo{}, diskError(vm, "stat "+gp, err)
	}
	return diskInfo(e, gp), nil
}

func (sv *Service) listOffline(ctx context.Context, vm model.VM, gp, dp string, depth int) ([]api.FileInfo, error) {
	ents, err := storage.ListDisk(ctx, vm.WorkDisk, dp, depth, MaxEntries)
	if err != nil {
		return nil, diskError(vm, "list "+gp, err)
	}
	infos := make([]api.FileInfo, 0, len(ents))
	for _, e := range ents {
		infos = append(infos, diskInfo(e, path.Join(gp, e.Path)))
	}
	return infos, nil
}

func (sv *Service) readOffline(ctx context.Context, vm model.VM, gp, dp string, req api.FileReadRequest, w io.Writer) error {
	bw := newByteBudget(w, sv.Budget, "read "+gp+" in vm "+vm.Name, nil)
	err := storage.StreamDiskFile(ctx, vm.WorkDisk, dp, req.Offset, req.Length, bw)
	if berr := bw.Err(); berr != nil {
		return budgetError(berr, err)
	}
	return diskError(vm, "read "+gp, err)
}

func (sv *Service) archiveOffline(ctx context.Context, vm model.VM, gp, dp string, w io.Writer) error {
	b := sv.Budget.orDefault()
	lim := storage.CopyLimits{MaxBytes: b.MaxBytes, MaxEntries: b.MaxEntries}
	return diskError(vm, "archive "+gp, storage.ArchiveDisk(ctx, vm.WorkDisk, dp, sv.TempDir, lim, w))
}
