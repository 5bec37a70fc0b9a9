package vms

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/banger/banger/internal/errdefs"
	"github.com/banger/banger/internal/model"
	"github.com/banger/banger/internal/proc"
	"github.com/banger/banger/internal/storage"
	"github.com/banger/banger/internal/store"
	"github.com/banger/banger/internal/vmm"
)

// A snapshot of a running VM with a qcow2 system disk, under a VMM that
// can (vmm.Overlayer), takes the VM's system disk file itself rather than
// a copy: while the guest is frozen the file becomes the snapshot's
// (linked into its directory) and the VM goes on in an empty overlay over
// it, in constant time. The VM then reads through its own snapshot (its
// snapshot_users row names it: a *reader*), until the snapshot's data is
// copied up into its overlay in the background while it runs (Stream),
// after which it reads through what the snapshot read through, as before.
// So snapshots of one VM stay independent of each other and of it, as
// copies were, but the copy is no longer made while the guest is frozen.
//
// The switch's steps, each leaving something reconcile can settle:
//
//	link system.qcow2 → <snapshot>/system.qcow2; write system.qcow2.next
//	record the VM a reader of the snapshot   (the decision)
//	Overlay (the VMM writes .next from now on); rename .next → system.qcow2

// rootDisk is the system disk's id in the VMM (Manager.spec).
const rootDisk = "root"

// nextSuffix names the overlay a switch puts in place, beside the VM's
// system disk, until it is renamed over it.
const nextSuffix = ".next"

// overlaySystem captures a frozen VM's qcow2 system disk into the snapshot
// sn by the switch above, if its driver can. It returns false, with
// everything as it was, when the switch cannot be made; the caller copies
// the disk then. An error means the snapshot must be dropped and the disk
// is as it was. Once the VMM switched it returns true whatever follows.
func (m *Manager) overlaySystem(ctx context.Context, vm model.VM, sn model.Snapshot, drv vmm.Driver, vh vmm.Handle) (bool, error) {
	ov, ok := drv.(vmm.Overlayer)
	if !ok || vm.CowStrategy != "qcow2" || sn.Template != "" {
		return false, nil
	}
	next, undo, err := m.prepareInPlace(ctx, vm, sn)
	if err != nil {
		return false, err
	}
	captured := snapshotSystemFile(sn.Dir, vm.SystemDisk)
	err = ov.Overlay(ctx, vh, rootDisk, next)
	switch {
	case errors.Is(err, vmm.ErrOverlaid):
		m.log.Warn("vm system disk overlaid, with a warning", "vm", vm.Name, "snapshot", sn.Name, "err", err)
	case errors.Is(err, vmm.ErrNoOverlay):
		m.log.Info("vm system disk copied, not overlaid", "vm", vm.Name, "snapshot", sn.Name, "why", err)
		if uerr := undo(); uerr != nil {
			return false, uerr
		}
		return false, nil
	case err != nil:
		// Not switched (Overlay undoes what it added): copied instead.
		if uerr := undo(); uerr != nil {
			return false, errors.Join(err, uerr)
		}
		m.log.Warn("vm system disk copied: overlaying it failed", "vm", vm.Name, "snapshot", sn.Name, "err", err)
		return false, nil
	}
	if err := os.Rename(next, vm.SystemDisk); err != nil {
		// The VMM writes next: a daemon start renames it (settleSwitch).
		m.log.Error("vm system disk overlaid but not renamed", "vm", vm.Name, "err", err)
	} else if err := syncDir(vm.Dir); err != nil {
		m.log.Warn("sync vm directory", "vm", vm.Name, "err", err)
	}
	// The host's view, not the VMM's word: a VMM that still holds the
	// captured file writable (one taken over before the snapshot can have
	// kept a descriptor) could change it under the VMs made from it. The
	// snapshot then gets a copy of its own, made while the guest is still
	// frozen; the VM reads on through the file it had.
	return true, m.ownCopyIfHeld(ctx, vm, sn, vh, captured)
}

// ownCopyIfHeld gives the snapshot sn's captured disk file a copy of its
// own, renamed over it, when vm's VMM (vh) still holds the file writable
// after switching off it; the caller keeps the guest frozen meanwhile.
func (m *Manager) ownCopyIfHeld(ctx context.Context, vm model.VM, sn model.Snapshot, vh vmm.Handle, captured string) error {
	if !holdsWritable(vh.PID, captured) {
		return nil
	}
	m.log.Warn("the vmm holds a captured disk writable; the snapshot gets a copy", "vm", vm.Name, "snapshot", sn.Name, "file", filepath.Base(captured))
	tmp := captured + ".copy"
	if _, err := storage.CaptureFile(ctx, captured, tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, captured); err != nil {
		_ = os.Remove(tmp)
		return err
	}
	return nil
}

// prepareInPlace does the switch's first two steps for the VM's system
// disk and the snapshot sn: the file linked into the snapshot, an empty
// overlay over it written beside the disk (returned: next), both synced,
// and the VM recorded reading through sn. undo takes all of it back.
func (m *Manager) prepareInPlace(ctx context.Context, vm model.VM, sn model.Snapshot) (next string, undo func() error, err error) {
	im, err := m.store.GetImage(ctx, vm.ImageID)
	if err != nil {
		return "", nil, store.Describe("image", vm.ImageID, err)
	}
	fi, err := os.Stat(im.Path)
	if err != nil {
		return "", nil, fmt.Errorf("image %s: %w", im.Name, err)
	}
	captured := snapshotSystemFile(sn.Dir, vm.SystemDisk)
	next = vm.SystemDisk + nextSuffix
	removeFiles := func() {
		_ = os.Remove(next)
		_ = os.Remove(captured)
	}
	if err := os.Link(vm.SystemDisk, captured); err != nil {
		return "", nil, fmt.Errorf("system disk: %w", err)
	}
	// Every overlay over the image has its size (storage.Qcow2.Create).
	if err := storage.WriteQcow2Overlay(next, captured, vmm.FormatQcow2, (fi.Size()+511)&^511); err != nil {
		removeFiles()
		return "", nil, err
	}
	if err := errors.Join(syncDir(sn.Dir), syncDir(vm.Dir)); err != nil {
		removeFiles()
		return "", nil, err
	}
	if err := m.store.SetSnapshotReader(ctx, sn.ID, vm.ID); err != nil {
		removeFiles()
		return "", nil, err
	}
	return next, func() error {
		if err := m.store.MoveSnapshotUser(ctx, vm.ID, sn.ID, sn.BaseID); err != nil {
			return err
		}
		removeFiles()
		return nil
	}, nil
}

// takePausedInPlace captures a paused VM's qcow2 system disk into the
// snapshot sn as overlaySystem does a frozen one's, with no VMM to switch
// (the resume opens the overlay): constant time. false, with everything
// as it was, when it cannot be (another strategy or VMM, a template); the
// caller copies the disk then. Its driver must be able to copy up
// (vmm.Overlayer) once the VM runs again. The caller captures the rest
// first: once the VM is recorded reading through sn, a daemon's next
// start keeps sn as it finds it (reconcileSnapshots, settleSwitch).
func (m *Manager) takePausedInPlace(ctx context.Context, vm model.VM, sn model.Snapshot, drv vmm.Driver) (bool, error) {
	if _, ok := drv.(vmm.Overlayer); !ok || vm.CowStrategy != "qcow2" || sn.Template != "" {
		return false, nil
	}
	next, undo, err := m.prepareInPlace(ctx, vm, sn)
	if err != nil {
		return false, err
	}
	if err := os.Rename(next, vm.SystemDisk); err != nil {
		return false, errors.Join(err, undo())
	}
	if err := syncDir(vm.Dir); err != nil {
		m.log.Warn("sync vm directory", "vm", vm.Name, "err", err)
	}
	return true, nil
}

// readerOf returns the snapshot the VM's system disk reads through that
// was taken of the VM itself (an overlaid snapshot not yet copied up), ok
// false when there is none.
func (m *Manager) readerOf(ctx context.Context, vmID string) (model.Snapshot, bool, error) {
	id, err := m.store.SnapshotOf(ctx, vmID)
	if err != nil || id == "" {
		return model.Snapshot{}, false, err
	}
	sn, err := m.store.GetSnapshot(ctx, id)
	if err != nil {
		return model.Snapshot{}, false, store.Describe("snapshot", id, err)
	}
	// Templates are never overlaid (overlaySystem).
	return sn, sn.VMID == vmID && sn.Template == "", nil
}

// underFile is the file the snapshot sn's system disk reads through, as
// its header names it: its base's system disk, or the image.
func (m *Manager) underFile(ctx context.Context, sn model.Snapshot) (string, error) {
	if sn.BaseID != "" {
		base, err := m.store.GetSnapshot(ctx, sn.BaseID)
		if err != nil {
			return "", store.Describe("snapshot", sn.BaseID, err)
		}
		return snapshotSystemFile(base.Dir, storage.Qcow2File), nil
	}
	im, err := m.store.GetImage(ctx, sn.ImageID)
	if err != nil {
		return "", store.Describe("image", sn.ImageID, err)
	}
	return filepath.Abs(im.Path)
}

// errNotRunning: a separation waits for the VM's next start.
var errNotRunning = errors.New("the vm is not running")

// separate copies the snapshot the VM reads through (taken of it) up into
// its system disk's overlay and records it reading through what the
// snapshot reads through: while the VM runs its VMM copies
// (vmm.Overlayer.Stream), while it is stopped or paused the daemon does
// (storage.RebaseQcow2). It holds the snapshot's lock (a flatten of it
// waits: the file the copy names must stay). The VM's header says whether
// a copy is needed still, so a copy that ended unseen is not made again.
func (m *Manager) separate(ctx context.Context, vmID string) error {
	// A snapshot taken while the VM still read through an earlier one
	// reads through that one: each copy moves the VM one down.
	for range storage.MaxQcow2Chain {
		sn, ok, err := m.readerOf(ctx, vmID)
		if err != nil || !ok {
			if errors.Is(err, store.ErrNotFound) || errdefs.IsNotFound(err) {
				return nil // the VM is gone, and its disk with it
			}
			return err
		}
		if err := m.separateFrom(ctx, vmID, sn); err != nil {
			if errors.Is(err, store.ErrNotFound) || errdefs.IsNotFound(err) {
				return nil // the VM went meanwhile
			}
			return err
		}
		m.removeFailed(ctx, sn.ID)
		// A flatten refused while the VM read through it can go now.
		if all, err := m.store.ListSnapshots(ctx); err == nil {
			for _, o := range all {
				if o.ID == sn.ID {
					m.flattenIfDeep(o, all)
				}
			}
		}
	}
	return nil
}

// separateFrom is one step of separate: the copy up from sn.
func (m *Manager) separateFrom(ctx context.Context, vmID string, sn model.Snapshot) error {
	vm, err := m.store.GetVM(ctx, vmID)
	if err != nil {
		return err
	}
	// Not running: copied by the daemon, under the VM's lock (taken
	// before the snapshot's, as everywhere), so it cannot start meanwhile.
	// The wait ends when the VM runs (its VMM copies then): a request that
	// holds the lock of a running VM may wait for this copy (createSnapshot).
	offline := false
	for !m.Alive(vm) {
		if unlockVM, ok := m.locks.TryLock(vmID); ok {
			defer unlockVM()
			offline = true
			if vm, err = m.store.GetVM(ctx, vmID); err != nil {
				return err
			}
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if vm, err = m.store.GetVM(ctx, vmID); err != nil {
			return err
		}
	}
	unlock := m.locks.Lock("snapshot:" + sn.ID)
	defer unlock()
	under, err := m.underFile(ctx, sn)
	if err != nil {
		return err
	}
	if b, err := storage.Qcow2Backing(vm.SystemDisk); err == nil && filepath.Clean(b) == filepath.Clean(under) {
		return m.store.MoveSnapshotUser(ctx, vmID, sn.ID, sn.BaseID)
	}
	start := time.Now()
	h, ok := m.handles.get(vm.ID)
	switch alive := ok && m.Alive(vm); {
	case offline && !alive:
		if err := m.copyUpOffline(ctx, vm, sn, under); err != nil {
			return err
		}
	case !alive:
		// It stopped since: its stop asks again (halt).
		return errNotRunning
	default:
		drv, err := m.driver(vm.VMM)
		if err != nil {
			return err
		}
		ov, ok := drv.(vmm.Overlayer)
		if !ok {
			return fmt.Errorf("vmm %s cannot copy a disk up", vm.VMM)
		}
		if err := ov.Stream(ctx, vmm.Handle{PID: h.PID, APISocket: h.APISocket}, rootDisk, under); err != nil {
			return err
		}
	}
	b, err := storage.Qcow2Backing(vm.SystemDisk)
	if err != nil {
		return err
	}
	if filepath.Clean(b) != filepath.Clean(under) {
		return fmt.Errorf("the vm's system disk reads through %q after the copy, not %q", b, under)
	}
	if err := m.store.MoveSnapshotUser(ctx, vmID, sn.ID, sn.BaseID); err != nil {
		return err
	}
	m.log.Info("vm system disk copied up from its snapshot", "vm", vm.Name, "snapshot", sn.Name, "offline", offline, "seconds", time.Since(start).Seconds())
	return nil
}

// copyUpOffline is separateFrom's copy for a VM that does not run: the
// VM's system disk is rebased onto under by qemu-img, which opens the
// chain as root, so its headers are checked first, as before a start.
func (m *Manager) copyUpOffline(ctx context.Context, vm model.VM, sn model.Snapshot, under string) error {
	im, err := m.store.GetImage(ctx, vm.ImageID)
	if err != nil {
		return store.Describe("image", vm.ImageID, err)
	}
	if err := m.checkSystemChain(ctx, vm.SystemDisk, im, sn.ID); err != nil {
		return fmt.Errorf("system disk: %w", err)
	}
	format := vmm.FormatQcow2
	if sn.BaseID == "" {
		format = vmm.FormatRaw // the image
	}
	return storage.RebaseQcow2(ctx, vm.SystemDisk, under, format, vm.SystemDisk)
}

// separateLater starts separate for the VM in the background unless it
// runs already, and returns a channel closed when that ends (nil when
// background work has not started: StartFlatten).
func (m *Manager) separateLater(vmID string) <-chan struct{} {
	f := &m.flat
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.ctx == nil || f.ctx.Err() != nil {
		return nil
	}
	if ch, ok := f.separating[vmID]; ok {
		return ch
	}
	if f.separating == nil {
		f.separating = map[string]chan struct{}{}
	}
	ch := make(chan struct{})
	f.separating[vmID] = ch
	f.wg.Add(1)
	go func(ctx context.Context) {
		defer f.wg.Done()
		err := m.separate(ctx, vmID)
		defer func() {
			f.mu.Lock()
			delete(f.separating, vmID)
			delete(f.failed, vmID)
			if err != nil {
				if f.failed == nil {
					f.failed = map[string]error{}
				}
				f.failed[vmID] = err
			}
			f.mu.Unlock()
			close(ch)
		}()
		if err != nil {
			lvl := m.log.Warn
			if errors.Is(err, errNotRunning) || ctx.Err() != nil {
				lvl = m.log.Info
			}
			lvl("vm system disk still reads through its snapshot; the copy is tried again at its next start or stop", "vm", vmID, "err", err)
		}
	}(f.ctx)
	return ch
}

// forget drops what the flattener keeps of a deleted VM (its last failed
// copy up's error).
func (f *flattener) forget(vmID string) {
	f.mu.Lock()
	delete(f.failed, vmID)
	f.mu.Unlock()
}

// separateIfReader starts separateLater when the VM reads through a
// snapshot of itself (after a start or a stop, and at the daemon's).
func (m *Manager) separateIfReader(ctx context.Context, vmID string) {
	if _, ok, err := m.readerOf(ctx, vmID); err == nil && ok {
		m.separateLater(vmID)
	}
}

// awaitSeparated waits until the VM no longer reads through a snapshot of
// itself, starting the copy if it is not under way (by the VM's VMM while
// it runs, else by the daemon); it says why not when it cannot (the copy
// failed, ctx ended).
func (m *Manager) awaitSeparated(ctx context.Context, vmID string) error {
	sn, ok, err := m.readerOf(ctx, vmID)
	if err != nil || !ok {
		return err
	}
	ch := m.separateLater(vmID)
	if ch == nil {
		return fmt.Errorf("its system disk reads through snapshot %s and the daemon is not copying it up", sn.Name)
	}
	select {
	case <-ch:
	case <-ctx.Done():
		return ctx.Err()
	}
	if _, ok, err := m.readerOf(ctx, vmID); err != nil || !ok {
		return err
	}
	m.flat.mu.Lock()
	why := m.flat.failed[vmID]
	m.flat.mu.Unlock()
	if why == nil {
		why = errors.New("the copy up ended")
	}
	return fmt.Errorf("its system disk still reads through snapshot %s: %w", sn.Name, why)
}

// settleSwitch finishes or undoes a switch (overlaySystem) that a daemon
// stopped in the middle of, at start-up: a system.qcow2.next beside the
// VM's disk. Recorded a reader of its own snapshot, the switch was
// decided: a live VMM (vh) not writing the overlay yet is switched now
// (its guest was frozen throughout), or ended when that fails (the guest
// then boots from the snapshot's moment, which it has not run past), and
// the overlay takes the disk's name. Not recorded, the overlay goes.
func (m *Manager) settleSwitch(ctx context.Context, vm model.VM, drv vmm.Driver, vh *vmm.Handle) {
	next := vm.SystemDisk + nextSuffix
	if _, err := os.Lstat(next); err != nil {
		return
	}
	sn, reader, err := m.readerOf(ctx, vm.ID)
	if err != nil || !reader || sn.CowStrategy != "qcow2" {
		_ = os.Remove(next)
		m.log.Info("reconcile: an overlay no snapshot was decided for is removed", "vm", vm.Name)
		return
	}
	if vh != nil && !holdsFile(vh.PID, next) {
		ov, ok := drv.(vmm.Overlayer)
		err := errors.New("its vmm cannot overlay")
		if ok {
			err = ov.Overlay(ctx, *vh, rootDisk, next)
		}
		if err != nil && !errors.Is(err, vmm.ErrOverlaid) {
			m.log.Warn("reconcile: a vm caught in a snapshot could not be switched to its overlay; ending its vmm", "vm", vm.Name, "err", err)
			if kerr := drv.Kill(ctx, *vh); kerr != nil {
				m.log.Warn("reconcile: end the vmm", "vm", vm.Name, "err", kerr)
			}
		}
	}
	if err := os.Rename(next, vm.SystemDisk); err != nil {
		m.log.Error("reconcile: overlay not renamed over the vm's system disk", "vm", vm.Name, "err", err)
		return
	}
	_ = syncDir(vm.Dir)
	m.log.Info("reconcile: a snapshot's switch of the vm's system disk finished", "vm", vm.Name, "snapshot", sn.Name)
}

// holdsFile reports whether process pid has the file at path open.
func holdsFile(pid int, path string) bool {
	open, _ := proc.Holds(pid, path)
	return open
}

// holdsWritable reports whether process pid has the file at path open
// for writing.
func holdsWritable(pid int, path string) bool {
	_, w := proc.Holds(pid, path)
	return w
}

// The work disk is raw (the host reads a stopped VM's with debugfs), so
// it cannot be overlaid as the system disk is. Where it cannot be cloned
// it is copied by the VMM while the guest runs on (StartBackup: the VMM
// copies a region's data of the instant before the guest overwrites
// it), the snapshot's creation waiting for that copy instead of the
// guest. The copy writes the disk's holes as zeroes; they are punched
// back from the map of the disk's holes taken at the instant.

// partialMark, in a snapshot's directory, says its work disk is still
// being copied: a daemon that stops meanwhile must not take the snapshot
// for whole.
const partialMark = "work.partial"

// backupWait bounds the wait for a work disk's copy (the VM's lock is
// held meanwhile).
const backupWait = time.Hour

// workBackup is a work disk copy under way.
type workBackup struct {
	ov    vmm.Overlayer
	vh    vmm.Handle
	job   string
	dst   string
	holes []storage.Extent
}

// startWorkBackup starts copying a frozen VM's work disk into dst by its
// VMM; nil, with nothing made, when the VMM cannot (the caller copies).
func (m *Manager) startWorkBackup(ctx context.Context, vm model.VM, sn model.Snapshot, drv vmm.Driver, vh vmm.Handle, dst string) (*workBackup, error) {
	ov, ok := drv.(vmm.Overlayer)
	if !ok || sn.Template != "" {
		return nil, nil
	}
	fi, err := os.Stat(vm.WorkDisk)
	if err != nil {
		return nil, err
	}
	holes, err := storage.Holes(vm.WorkDisk)
	if err != nil {
		return nil, err
	}
	mark := filepath.Join(sn.Dir, partialMark)
	if err := os.WriteFile(mark, nil, 0o600); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(dst, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err == nil {
		err = f.Truncate(fi.Size())
		f.Close()
	}
	if err == nil {
		err = syncDir(sn.Dir)
	}
	if err != nil {
		_ = os.Remove(dst)
		_ = os.Remove(mark)
		return nil, err
	}
	job, err := ov.StartBackup(ctx, vh, "work", dst)
	if err != nil {
		_ = os.Remove(dst)
		_ = os.Remove(mark)
		if errors.Is(err, vmm.ErrNoOverlay) {
			m.log.Info("vm work disk copied in the freeze", "vm", vm.Name, "why", err)
			return nil, nil
		}
		m.log.Warn("vm work disk copied in the freeze: its vmm's copy did not start", "vm", vm.Name, "err", err)
		return nil, nil
	}
	return &workBackup{ov: ov, vh: vh, job: job, dst: dst, holes: holes}, nil
}

// wait waits for the copy, punches the disk's holes of the instant back
// into it and syncs it; then the snapshot is no longer partial.
func (b *workBackup) wait(ctx context.Context, snapDir string) error {
	ctx, cancel := context.WithTimeout(ctx, backupWait)
	defer cancel()
	if err := b.ov.WaitBackup(ctx, b.vh, b.job); err != nil {
		return fmt.Errorf("copy the work disk: %w", err)
	}
	if err := storage.PunchHoles(b.dst, b.holes); err != nil {
		return err
	}
	if err := os.Remove(filepath.Join(snapDir, partialMark)); err != nil {
		return err
	}
	return syncDir(snapDir)
}

// cancel stops the copy and lets go of its file.
func (b *workBackup) cancel() {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_ = b.ov.WaitBackup(ctx, b.vh, b.job)
}

// failSnapshot records sn failed: its capture failed after its VM's
// system disk was taken into it, so it keeps only that file, which the
// VM reads through until its copy up, after which it goes
// (removeFailed).
func (m *Manager) failSnapshot(ctx context.Context, sn model.Snapshot, cause error) error {
	_ = os.RemoveAll(filepath.Join(sn.Dir, snapStateName))
	// Its work disk stays while its VM's overlay reads through it
	// (overlayWork); releaseWork makes that raw before the removal.
	if vm, err := m.store.GetVM(ctx, sn.VMID); err != nil || !readsWork(vm, sn) {
		_ = os.Remove(filepath.Join(sn.Dir, snapWorkName))
	}
	_ = os.Remove(filepath.Join(sn.Dir, partialMark))
	sn.State, sn.SizeBytes = model.SnapshotFailed, treeBytes(sn.Dir)
	if err := m.store.UpdateSnapshot(ctx, sn); err != nil {
		return errors.Join(cause, err)
	}
	m.log.Error("vm snapshot failed; kept as failed until its vm no longer reads through it", "snapshot", sn.Name, "err", cause)
	return fmt.Errorf("%w (the snapshot is kept, failed, until its vm's disk is copied up from it, then removed)", cause)
}

// removeFailed removes a failed snapshot once nothing reads through it.
func (m *Manager) removeFailed(ctx context.Context, id string) {
	sn, err := m.store.GetSnapshot(ctx, id)
	if err != nil || sn.State != model.SnapshotFailed {
		return
	}
	if err := m.removeSnapshot(ctx, sn, "snapshot"); err != nil {
		m.log.Warn("remove a failed snapshot", "snapshot", sn.Name, "err", err)
	}
}

// dropBackups cancels, in a VMM found running at the daemon's start, the
// disk copies a daemon before this one started there and never waited
// for (a snapshot's work disk: that snapshot is settled without them,
// reconcileSnapshots), so the VMM lets go of their files.
func (m *Manager) dropBackups(ctx context.Context, vm model.VM, drv vmm.Driver, vh vmm.Handle) {
	ov, ok := drv.(vmm.Overlayer)
	if !ok {
		return
	}
	n, err := ov.DropBackups(ctx, vh)
	if err != nil {
		m.log.Warn("reconcile: cancel the disk copies a stopped daemon left in the vmm", "vm", vm.Name, "err", err)
	} else if n > 0 {
		m.log.Info("reconcile: cancelled the disk copies a stopped daemon left in the vmm", "vm", vm.Name, "copies", n)
	}
}
