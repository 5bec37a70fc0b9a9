package vms

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/banger/banger/internal/errdefs"
	"github.com/banger/banger/internal/guestctl"
	"github.com/banger/banger/internal/model"
	"github.com/banger/banger/internal/storage"
	"github.com/banger/banger/internal/store"
	"github.com/banger/banger/internal/vmm"
)

// Files of a snapshot's directory (<state>/snapshots/<id>/).
const (
	snapStateName  = "state"     // the driver's state files (vmm.Snapshotter.Save)
	snapWorkName   = "work.ext4" // the work disk as it was
	snapSystemBase = "system"    // + the system disk file's extension (system.qcow2, system.img)
	snapCreateWait = 30 * time.Second
)

// snapshotStrategies are the system disk strategies whose per-VM file a
// snapshot can capture as a file (dm-snapshot's disk is a kernel device
// over two files: not yet).
var snapshotStrategies = map[string]bool{"qcow2": true, "reflink": true}

// SnapshotsDir is where snapshots' directories live.
func (m *Manager) SnapshotsDir() string { return filepath.Join(m.cfg.StateDir, "snapshots") }

// snapshotSystemFile is the captured system disk of a snapshot taken of a
// VM whose system disk file is vmSystem.
func snapshotSystemFile(dir, vmSystem string) string {
	return filepath.Join(dir, snapSystemBase+filepath.Ext(vmSystem))
}

// lockBriefly takes a VM's lock without queueing behind long work: it
// waits at most pauseLockWait, then answers that the VM is busy, naming
// what the caller wanted to do ("pause", "snapshot").
func (m *Manager) lockBriefly(ctx context.Context, ref, what string) (model.VM, func(), error) {
	vm, err := m.Resolve(ctx, ref)
	if err != nil {
		return vm, nil, err
	}
	unlock, ok := m.locks.TryLock(vm.ID)
	for deadline := time.Now().Add(pauseLockWait); !ok && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
		unlock, ok = m.locks.TryLock(vm.ID)
	}
	if !ok {
		return vm, nil, errdefs.Errorf(errdefs.CodeConflict, "vm %s is busy (a start, stop, workspace prepare or export holds it): %s it when that ends", vm.Name, what)
	}
	if vm, err = m.Resolve(ctx, vm.ID); err != nil {
		unlock()
		return vm, nil, err
	}
	return vm, unlock, nil
}

// CreateSnapshot takes a snapshot of a running VM: it pauses the guest
// (vmm.Snapshotter.Save into the snapshot's directory), captures the
// system and work disks as they are at that instant (storage.CaptureFile:
// a clone where the filesystem shares blocks, else a sparse copy),
// resumes the guest and steps its clock. name "" picks
// "<vm>-<yyyymmdd-hhmmss>". On failure the guest runs on and nothing of
// the snapshot is left.
func (m *Manager) CreateSnapshot(ctx context.Context, ref, name string) (model.Snapshot, error) {
	return m.createSnapshot(ctx, ref, name, nil)
}

// createSnapshot is CreateSnapshot; with tmpl set the snapshot is the
// warm-start template made from those inputs.
func (m *Manager) createSnapshot(ctx context.Context, ref, name string, tmpl *templateInputs) (model.Snapshot, error) {
	vm, unlock, err := m.lockBriefly(ctx, ref, "snapshot")
	if err != nil {
		return model.Snapshot{}, err
	}
	defer unlock()
	paused := vm.State == model.VMPaused
	if !paused && !m.Alive(vm) {
		return model.Snapshot{}, errdefs.Errorf(errdefs.CodeConflict, "vm %s is neither running nor paused (state %s): only a running or paused vm can be snapshotted; start it first", vm.Name, vm.State)
	}
	if !snapshotStrategies[vm.CowStrategy] {
		return model.Snapshot{}, errdefs.Errorf(errdefs.CodeUnavailable, "vm %s has a %s system disk, which snapshots cannot capture yet (qcow2 and reflink can)", vm.Name, vm.CowStrategy)
	}
	drv, err := m.driver(vm.VMM)
	if err != nil {
		return model.Snapshot{}, err
	}
	snap, err := snapshotter(drv)
	if err != nil {
		return model.Snapshot{}, err
	}
	if !paused {
		// A VM still copying up its previous snapshot finishes that
		// first, so its snapshots stay independent of each other (else
		// this one reads through that one, as a fork's does).
		// Bounded: should its VMM end meanwhile, the daemon's copy would
		// wait for the VM's lock, held here.
		actx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		err := m.awaitSeparated(actx, vm.ID)
		cancel()
		if err != nil {
			m.log.Info("vm snapshot taken over a snapshot its disk still reads through", "vm", vm.Name, "why", err)
		}
		// A work disk still an overlay over the snapshot the VM was made
		// from is made raw first (workdisk.go): the capture reads and
		// maps work.ext4.
		h, _ := m.handles.get(vm.ID)
		if err := m.rawWorkRunning(ctx, vm, drv, vmm.Handle{PID: h.PID, APISocket: h.APISocket}); err != nil {
			return model.Snapshot{}, fmt.Errorf("snapshot vm %s: %w", vm.Name, err)
		}
	}
	now := m.now().UTC()
	if name == "" {
		name = vm.Name + "-" + now.Format("20060102-150405")
	}
	if err := model.ValidateName("snapshot", name); err != nil {
		return model.Snapshot{}, errdefs.Errorf(errdefs.CodeInvalid, "%v", err)
	}
	sn := model.Snapshot{
		ID: model.NewID(), Name: name, VMID: vm.ID, VMName: vm.Name,
		ImageID: vm.ImageID, KernelID: vm.KernelID, CPUs: vm.CPUs, MemoryMiB: vm.MemoryMiB, DiskBytes: vm.DiskBytes,
		VMM: vm.VMM, CowStrategy: vm.CowStrategy, GuestIP: vm.GuestIP, GuestMAC: vm.GuestMAC,
		State: model.SnapshotCreating, CreatedAt: now, Net: vm.Net,
	}
	if tmpl != nil {
		sn.Template, sn.TemplateInputs = tmpl.Key(), tmpl.JSON()
	}
	if sn.BaseID, err = m.store.SnapshotOf(ctx, vm.ID); err != nil {
		return model.Snapshot{}, err
	}
	sn.Dir = filepath.Join(m.SnapshotsDir(), sn.ID)
	if err := m.store.CreateSnapshot(ctx, sn); err != nil {
		return model.Snapshot{}, store.Describe("snapshot", name, err)
	}
	// From here the work goes on even if the client goes away: the guest
	// must not be left paused.
	ctx = context.WithoutCancel(ctx)
	drop := func(err error) (model.Snapshot, error) {
		if rd, ok, rerr := m.readerOf(ctx, vm.ID); rerr != nil || (ok && rd.ID == sn.ID) {
			// Its VM's disk reads through it (overlaySystem): kept as it
			// is, for the daemon's next start to record it ready.
			m.log.Error("vm snapshot failed after its vm's disk was switched onto it; kept", "vm", vm.Name, "snapshot", name, "err", err)
			return model.Snapshot{}, fmt.Errorf("snapshot vm %s: %w", vm.Name, err)
		}
		_ = os.RemoveAll(sn.Dir)
		_ = m.store.DeleteSnapshot(ctx, sn.ID)
		m.log.Error("vm snapshot failed", "vm", vm.Name, "snapshot", name, "err", err)
		return model.Snapshot{}, fmt.Errorf("snapshot vm %s: %w", vm.Name, err)
	}
	stateDir := filepath.Join(sn.Dir, snapStateName)
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return drop(err)
	}
	start := time.Now()
	if paused {
		// Its memory is on disk already (the pause saved it) and nothing
		// writes its files while its lock is held: they are captured as
		// they are, and the VM stays paused.
		cloned, overlaid, err := m.capturePaused(ctx, vm, sn, drv)
		if err != nil {
			return drop(err)
		}
		return m.finishSnapshot(ctx, vm, sn, drop, "paused", true, "seconds", time.Since(start).Seconds(),
			"overlaid_system", overlaid, "cloned_system", cloned[0], "cloned_work", cloned[1])
	}
	h, _ := m.handles.get(vm.ID)
	vh := vmm.Handle{PID: h.PID, APISocket: h.APISocket}
	// Recorded pausing while the guest is frozen: a daemon that dies now
	// finds a VMM still running and resumes it (reconcilePaused).
	vm.State = model.VMPausing
	if err := m.save(ctx, &vm); err != nil {
		return drop(err)
	}
	sctx, cancel := context.WithTimeout(ctx, snapCreateWait)
	defer cancel()
	err = snap.Save(sctx, vh, stateDir)
	frozen := time.Since(start)
	var cloned [2]bool
	var overlaid bool
	var backup *workBackup
	// The system disk first: a clone where the filesystem shares blocks
	// (constant time, and nothing to copy later), else taken in place
	// (overlaySystem: once it is, the VM reads through the snapshot,
	// which must then be kept whatever follows), else copied. First,
	// since the VMM's work disk copy below would slow the switch down
	// (QEMU drains every disk's I/O for it).
	sysSnap := snapshotSystemFile(sn.Dir, vm.SystemDisk)
	if err == nil {
		cloned[0], err = storage.CaptureByClone(vm.SystemDisk, sysSnap)
	}
	if err == nil && !cloned[0] {
		overlaid, err = m.overlaySystem(sctx, vm, sn, drv, vh)
	}
	if err == nil && !cloned[0] && !overlaid {
		_, err = storage.CaptureFile(sctx, vm.SystemDisk, sysSnap)
	}
	// The work disk: a clone, else taken in place where the system disk
	// was (overlayWork), else copied by the VMM once the guest runs on,
	// else copied now.
	var capErr error
	var workOverlaid bool
	workSnap := filepath.Join(sn.Dir, snapWorkName)
	if err == nil {
		cloned[1], capErr = storage.CaptureByClone(vm.WorkDisk, workSnap)
	}
	if err == nil && capErr == nil && !cloned[1] && overlaid {
		workOverlaid, capErr = m.overlayWork(sctx, vm, sn, drv, vh)
	}
	if err == nil && capErr == nil && !cloned[1] && !workOverlaid {
		backup, capErr = m.startWorkBackup(sctx, vm, sn, drv, vh, workSnap)
	}
	if err == nil && capErr == nil && !cloned[1] && !workOverlaid && backup == nil {
		_, capErr = storage.CaptureFile(sctx, vm.WorkDisk, workSnap)
	}
	captured := time.Since(start)
	// The guest runs on whatever happened (Save resumes it itself when it
	// fails; a second resume is harmless).
	if rerr := snap.Resume(ctx, vh); rerr != nil {
		err = errors.Join(err, fmt.Errorf("resume the guest: %w", rerr))
	}
	vm.State = model.VMRunning
	if serr := m.save(ctx, &vm); serr != nil {
		err = errors.Join(err, serr)
	}
	if (err != nil || capErr != nil) && !overlaid {
		if backup != nil {
			backup.cancel()
		}
		return drop(errors.Join(err, capErr))
	}
	// The guest's clock stood still while it was frozen.
	if err := m.stepClock(ctx, vm, drv); err != nil {
		m.log.Warn("guest clock not set after a snapshot", "vm", vm.Name, "err", err)
	}
	if backup != nil && capErr == nil {
		start := time.Now()
		if capErr = backup.wait(ctx, sn.Dir); capErr == nil {
			m.log.Info("vm work disk copied while the guest ran", "vm", vm.Name, "snapshot", sn.Name, "seconds", time.Since(start).Seconds())
		} else if !overlaid {
			return drop(capErr)
		}
	}
	if capErr != nil {
		// Overlaid, so kept, failed: it holds the file the VM reads
		// through until that is copied up.
		m.separateLater(vm.ID)
		return model.Snapshot{}, fmt.Errorf("snapshot vm %s: %w", vm.Name, m.failSnapshot(ctx, sn, errors.Join(err, capErr)))
	}
	sn, ferr := m.finishSnapshot(ctx, vm, sn, drop, "frozen_s", captured.Seconds(), "save_s", frozen.Seconds(),
		"overlaid_system", overlaid, "cloned_system", cloned[0], "cloned_work", cloned[1], "overlaid_work", workOverlaid, "work_copied_after", backup != nil)
	if ferr == nil && overlaid {
		m.separateLater(vm.ID)
	}
	if ferr == nil && err != nil {
		ferr = fmt.Errorf("snapshot %s of vm %s taken, but: %w", sn.Name, vm.Name, err)
	}
	return sn, ferr
}

// finishSnapshot makes a captured snapshot durable and ready; drop undoes
// it on failure. logArgs describe the capture.
func (m *Manager) finishSnapshot(ctx context.Context, vm model.VM, sn model.Snapshot, drop func(error) (model.Snapshot, error), logArgs ...any) (model.Snapshot, error) {
	if err := syncDir(sn.Dir); err != nil {
		return drop(err)
	}
	sn.SizeBytes = treeBytes(sn.Dir)
	sn.State = model.SnapshotReady
	if err := m.store.UpdateSnapshot(ctx, sn); err != nil {
		return drop(err)
	}
	m.log.Info("vm snapshot taken", append([]any{"vm", vm.Name, "snapshot", sn.Name, "bytes", sn.SizeBytes}, logArgs...)...)
	if all, err := m.store.ListSnapshots(ctx); err == nil {
		m.flattenIfDeep(sn, all)
	}
	sn.UsedBy = []string{}
	return sn, nil
}

// capturePaused captures a paused VM into the snapshot sn's directory:
// the files of the state its pause saved (regular files only: the VMM
// wrote them, anything else is refused; linked, not copied), its work
// disk (a clone, else linked, else a sparse copy), then its system disk:
// a clone, else taken in place (takePausedInPlace: the VM then reads
// through sn, which a daemon's next start keeps as it is), else a copy;
// last, a linked work disk becomes sn's alone: the VM is put over it
// (overlayOwnWork) where its system disk was taken in place, else sn
// gets a copy.
func (m *Manager) capturePaused(ctx context.Context, vm model.VM, sn model.Snapshot, drv vmm.Driver) (cloned [2]bool, overlaid bool, err error) {
	if err := m.rawWorkOffline(ctx, vm); err != nil {
		return cloned, false, err
	}
	src := StateDir(vm.Dir)
	ents, err := os.ReadDir(src)
	if err != nil {
		return cloned, false, fmt.Errorf("saved state of the paused vm: %w", err)
	}
	if len(ents) == 0 {
		return cloned, false, fmt.Errorf("saved state of the paused vm: %s is empty", src)
	}
	for _, e := range ents {
		if !e.Type().IsRegular() {
			return cloned, false, fmt.Errorf("saved state of the paused vm: %s is not a regular file", filepath.Join(src, e.Name()))
		}
		// Linked: a saved state is never written in place (a pause
		// writes a new one), so the snapshot and the VM share it.
		if _, err := storage.ShareFile(ctx, filepath.Join(src, e.Name()), filepath.Join(sn.Dir, snapStateName, e.Name())); err != nil {
			return cloned, false, err
		}
	}
	// The work disk: a clone, else the same file under the snapshot's
	// name where the system disk can be taken in place (the VM is put
	// over it below), else a copy.
	workSnap := filepath.Join(sn.Dir, snapWorkName)
	if cloned[1], err = storage.CaptureByClone(vm.WorkDisk, workSnap); err != nil {
		return cloned, false, err
	}
	linked := false
	if !cloned[1] && canOverlayWork(drv) && vm.CowStrategy == "qcow2" && sn.Template == "" {
		linked = os.Link(vm.WorkDisk, workSnap) == nil
	}
	if !cloned[1] && !linked {
		if _, err = storage.CaptureFile(ctx, vm.WorkDisk, workSnap); err != nil {
			return cloned, false, err
		}
	}
	sysSnap := snapshotSystemFile(sn.Dir, vm.SystemDisk)
	if cloned[0], err = storage.CaptureByClone(vm.SystemDisk, sysSnap); err == nil && !cloned[0] {
		overlaid, err = m.takePausedInPlace(ctx, vm, sn, drv)
		if err == nil && !overlaid {
			_, err = storage.CaptureFile(ctx, vm.SystemDisk, sysSnap)
		}
	}
	if err != nil || !linked {
		return cloned, overlaid, err
	}
	// The VM over the snapshot's work disk only where it reads through
	// the snapshot already: a daemon's next start keeps such a snapshot
	// whole, and any other is removed with the name the VM would need.
	if overlaid {
		if err = m.overlayOwnWork(vm, sn); err == nil {
			return cloned, overlaid, nil
		}
		m.log.Warn("vm work disk copied into its snapshot: overlaying it failed", "vm", vm.Name, "snapshot", sn.Name, "err", err)
	}
	if _, err = storage.CaptureFile(ctx, vm.WorkDisk, workSnap); err != nil && overlaid {
		// Kept, as its VM reads through it, but without the VM's work
		// disk under its name: the VM may write it once resumed.
		err = m.failSnapshot(ctx, sn, fmt.Errorf("copy the work disk: %w", err))
	}
	return cloned, overlaid, err
}

// stepClock sets a running guest's wall clock to the host's: over the
// control channel when the driver has one (no process started in the
// guest), else as after a resume (over SSH).
func (m *Manager) stepClock(ctx context.Context, vm model.VM, drv vmm.Driver) error {
	if _, ok := drv.(vmm.Controller); ok {
		err := m.clockOverControl(ctx, vm, drv, 5*time.Second)
		if err == nil {
			return nil
		}
		m.log.Debug("clock over the control channel failed; using SSH", "vm", vm.Name, "err", err)
	}
	return m.setGuestClock(ctx, vm)
}

// clockOverControl sets a running guest's wall clock over the control
// channel within timeout. The time a request carries is the host's when
// sent, so the guest ends up behind by the time the request took to
// cross; the answer, stamped with the guest's clock, bounds that (its
// round trip), and a set that lagged more than clockSlack is sent again,
// at most clockTries times: a guest just restored has nothing of its
// side translated yet (TCG), so its first requests are the slow ones. A
// hello goes first for the same reason.
func (m *Manager) clockOverControl(ctx context.Context, vm model.VM, drv vmm.Driver, timeout time.Duration) error {
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cl, err := dialControl(cctx, vm, drv)
	if err != nil {
		return err
	}
	defer cl.Close()
	if _, err := cl.Call(cctx, guestctl.Request{Op: guestctl.OpHello}); err != nil {
		return err
	}
	for try := 1; ; try++ {
		rep, err := cl.Call(cctx, guestctl.Request{Op: guestctl.OpClock, UnixNano: time.Now().UnixNano()})
		if err != nil {
			return err
		}
		lag := time.Since(time.Unix(0, rep.UnixNano))
		if lag <= clockSlack || try == clockTries {
			m.log.Debug("guest clock set over the control channel", "vm", vm.Name, "tries", try, "lag_s", lag.Seconds())
			return nil
		}
	}
}

// clockSlack and clockTries bound clockOverControl's repeats.
const (
	clockSlack = 20 * time.Millisecond
	clockTries = 3
)

// ListSnapshots returns every snapshot with the VMs made from it.
func (m *Manager) ListSnapshots(ctx context.Context) ([]model.Snapshot, error) {
	all, err := m.store.ListSnapshots(ctx)
	if err != nil {
		return nil, err
	}
	out := []model.Snapshot{}
	for _, sn := range all {
		if sn.Template != "" {
			continue // the daemon's own: ListTemplates
		}
		if sn.UsedBy, err = m.store.SnapshotUsers(ctx, sn.ID); err != nil {
			return nil, err
		}
		out = append(out, sn)
	}
	return out, nil
}

// GetSnapshot finds a snapshot by name, id or id prefix, with the VMs
// made from it.
func (m *Manager) GetSnapshot(ctx context.Context, ref string) (model.Snapshot, error) {
	if ref == "" {
		return model.Snapshot{}, errdefs.Errorf(errdefs.CodeInvalid, "snapshot name or id is empty")
	}
	sn, err := m.store.GetSnapshot(ctx, ref)
	if err == nil && sn.Template != "" {
		return model.Snapshot{}, errdefs.Errorf(errdefs.CodeNotFound, "%s is a warm-start template, not a snapshot: banger image warm --list shows it", sn.Name)
	}
	if err != nil {
		return sn, store.Describe("snapshot", ref, err)
	}
	if sn.UsedBy, err = m.store.SnapshotUsers(ctx, sn.ID); err != nil {
		return sn, err
	}
	switch sn.BaseID {
	case "":
	case model.SnapshotBaseUnknown:
		sn.Base = "unknown"
	default:
		// Its id when its record is gone: the show still answers.
		sn.Base = sn.BaseID
		if b, err := m.store.GetSnapshot(ctx, sn.BaseID); err == nil {
			sn.Base = b.Name
		}
	}
	return sn, nil
}

// RemoveSnapshot deletes a snapshot's record and directory. It is refused
// while a VM made from it exists (its disks are backed by the
// snapshot's). A snapshot still being created is refused too.
func (m *Manager) RemoveSnapshot(ctx context.Context, ref string) error {
	sn, err := m.GetSnapshot(ctx, ref)
	if err != nil {
		return err
	}
	return m.removeSnapshot(ctx, sn, "snapshot")
}

// removeSnapshot is RemoveSnapshot of a snapshot or template (kind).
func (m *Manager) removeSnapshot(ctx context.Context, sn model.Snapshot, kind string) error {
	// The VM it was taken of may read through it still (overlay.go):
	// copied up first.
	if sn.VMID != "" {
		if rd, ok, err := m.readerOf(ctx, sn.VMID); err != nil {
			return err
		} else if ok && rd.ID == sn.ID {
			if err := m.awaitSeparated(ctx, sn.VMID); err != nil {
				return errdefs.Errorf(errdefs.CodeConflict, "%s %s is read through by vm %s, of which it was taken, and could not be copied into it: %v", kind, sn.Name, sn.VMName, err)
			}
		}
	}
	// Its VM may run over its work disk (overlayOwnWork): made raw first,
	// unless other VMs use it, which refuses the removal below anyway.
	if users, err := m.store.SnapshotUsers(ctx, sn.ID); err != nil {
		return err
	} else if len(users) > 0 {
		return errdefs.Errorf(errdefs.CodeConflict, "%s %s is used by vm %s: delete those vms first", kind, sn.Name, joinNames(users))
	}
	if err := m.releaseWork(ctx, sn); err != nil {
		return errdefs.Errorf(errdefs.CodeConflict, "%s %s's work disk is read through by vm %s, of which it was taken, and could not be copied into it: %v", kind, sn.Name, sn.VMName, err)
	}
	unlock := m.locks.Lock("snapshot:" + sn.ID)
	defer unlock()
	sn, err := m.store.GetSnapshot(ctx, sn.ID)
	if err != nil {
		return store.Describe(kind, sn.ID, err)
	}
	if vm, err := m.store.GetVM(ctx, sn.VMID); err == nil && readsWork(vm, sn) {
		return errdefs.Errorf(errdefs.CodeConflict, "%s %s's work disk is read through by vm %s again: remove it when that ends", kind, sn.Name, sn.VMName)
	}
	if sn.UsedBy, err = m.store.SnapshotUsers(ctx, sn.ID); err != nil {
		return err
	}
	if len(sn.UsedBy) > 0 {
		return errdefs.Errorf(errdefs.CodeConflict, "%s %s is used by vm %s: delete those vms first", kind, sn.Name, joinNames(sn.UsedBy))
	}
	if sn.State == model.SnapshotCreating {
		return errdefs.Errorf(errdefs.CodeConflict, "%s %s is still being created: remove it when that ends", kind, sn.Name)
	}
	if deps, err := m.dependents(ctx, sn); err != nil {
		return err
	} else if len(deps) > 0 {
		return errdefs.Errorf(errdefs.CodeConflict, "%s %s is the base of snapshot %s (taken of a vm made from it): remove those first", kind, sn.Name, strings.Join(deps, ", "))
	}
	if err := m.store.DeleteSnapshot(ctx, sn.ID); err != nil {
		return store.Describe(kind, sn.Name, err)
	}
	if err := os.RemoveAll(sn.Dir); err != nil {
		m.log.Warn("remove snapshot directory", "snapshot", sn.Name, "dir", sn.Dir, "err", err)
	}
	return nil
}

// dependents names the other snapshots whose captured system disk is a
// qcow2 overlay over sn's: a snapshot of a VM made from sn captures that
// VM's overlay, which reads through to sn's system disk (a fork of it
// reads through both), so sn must outlive them. They are those recorded
// with sn as their base, and those whose file's header names sn's
// (storage.Qcow2Backing, bounded; for snapshots taken before bases were
// recorded); a file that is there but cannot be read counts as
// depending, so a doubt keeps sn.
func (m *Manager) dependents(ctx context.Context, sn model.Snapshot) ([]string, error) {
	if sn.CowStrategy != "qcow2" {
		return nil, nil
	}
	base := filepath.Clean(snapshotSystemFile(sn.Dir, storage.Qcow2File))
	all, err := m.store.ListSnapshots(ctx)
	if err != nil {
		return nil, err
	}
	var deps []string
	for _, o := range all {
		if o.ID != sn.ID && o.BaseID == sn.ID {
			deps = append(deps, o.Name)
			continue
		}
		if o.ID == sn.ID || o.CowStrategy != "qcow2" || o.State == model.SnapshotCreating {
			continue
		}
		b, err := storage.Qcow2Backing(snapshotSystemFile(o.Dir, storage.Qcow2File))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			m.log.Warn("read a snapshot's system disk header; counting it as a dependent", "snapshot", o.Name, "of", sn.Name, "err", err)
		}
		if err != nil || filepath.Clean(b) == base {
			deps = append(deps, o.Name)
		}
	}
	return deps, nil
}

// checkSystemChain checks a qcow2 system disk, and every qcow2 file it
// reads through, before a VMM opens them (storage.CheckQcow2Chain): the
// headers were written by VMMs a guest may have taken over, and QEMU
// opens backing files before it drops its privileges. A backing file
// may only be the VM's image (raw) or the system disk (qcow2) of a
// snapshot of top's lineage: base, the snapshot top was made from ("" for
// none), base's own base, and so on. Any other snapshot's disk holds
// another VM's data. A lineage that reaches a snapshot whose base was
// never recorded (SnapshotBaseUnknown) allows every snapshot's disk from
// there, as banger did before it recorded bases.
func (m *Manager) checkSystemChain(ctx context.Context, top string, im model.Image, base string) error {
	img, err := filepath.Abs(im.Path)
	if err != nil {
		return err
	}
	// Every overlay banger makes over the image has the image's size,
	// rounded up to a sector as qemu-img does (storage.Qcow2.Create).
	fi, err := os.Stat(img)
	if err != nil {
		return fmt.Errorf("image %s: %w", im.Name, err)
	}
	all, err := m.store.ListSnapshots(ctx)
	if err != nil {
		return err
	}
	return storage.CheckQcow2Chain(top, lineageDisks(filepath.Clean(img), base, all), (fi.Size()+511)&^511)
}

// lineageDisks returns the files a system disk made from the snapshot
// base may read through, each with its format (storage.CheckQcow2Chain's
// allowed): the image img and the ready qcow2 system disks of base and
// its bases, among all.
func lineageDisks(img, base string, all []model.Snapshot) map[string]string {
	allowed := map[string]string{img: vmm.FormatRaw}
	add := func(sn model.Snapshot) {
		// A failed snapshot keeps the system disk its VM reads through
		// (overlay.go) until the VM is copied up from it.
		if sn.CowStrategy == "qcow2" && (sn.State == model.SnapshotReady || sn.State == model.SnapshotFailed) {
			allowed[filepath.Clean(snapshotSystemFile(sn.Dir, storage.Qcow2File))] = vmm.FormatQcow2
		}
	}
	chain, stop := baseChain(base, all)
	for _, sn := range chain {
		add(sn)
	}
	if stop == model.SnapshotBaseUnknown {
		for _, sn := range all {
			add(sn)
		}
	}
	return allowed
}

// baseChain returns the snapshot with id base and its bases, nearest
// first, from the records in all, and where the walk stopped: "" when
// it reached a snapshot without a base, else the id it could not follow
// (SnapshotBaseUnknown, a record that is gone, or any past
// MaxQcow2Chain: a cycle of bases, never recorded by banger). Pure.
func baseChain(base string, all []model.Snapshot) (chain []model.Snapshot, stop string) {
	byID := make(map[string]model.Snapshot, len(all))
	for _, sn := range all {
		byID[sn.ID] = sn
	}
	for id := base; id != ""; {
		sn, ok := byID[id]
		if !ok || len(chain) == storage.MaxQcow2Chain {
			return chain, id
		}
		chain = append(chain, sn)
		id = sn.BaseID
	}
	return chain, ""
}

// reconcileSnapshots removes snapshots caught half made by a daemon that
// stopped meanwhile (their VM was resumed by reconcilePaused).
func (m *Manager) reconcileSnapshots(ctx context.Context) {
	all, err := m.store.ListSnapshots(ctx)
	if err != nil {
		m.log.Warn("list snapshots", "err", err)
		return
	}
	for _, sn := range all {
		if sn.State != model.SnapshotCreating {
			continue
		}
		if rd, ok, err := m.readerOf(ctx, sn.VMID); err == nil && ok && rd.ID == sn.ID {
			// Its VM's disk was switched onto it (settleSwitch): it was
			// whole before that, so it is kept, unless its work disk
			// was still being copied.
			if _, err := os.Stat(filepath.Join(sn.Dir, partialMark)); err == nil {
				_ = m.failSnapshot(ctx, sn, errors.New("the daemon stopped while its work disk was being copied"))
				continue
			}
			// A paused VM's work disk linked into it and not yet
			// overlaid (capturePaused) becomes its own.
			if err := m.unshareWork(ctx, sn); err != nil {
				_ = m.failSnapshot(ctx, sn, fmt.Errorf("its work disk, still its vm's, could not be copied: %w", err))
				continue
			}
			// A running VM's whose switch was undone (settleWorkSwitch),
			// or which the daemon's end cut short before it: no work disk.
			if _, err := os.Lstat(filepath.Join(sn.Dir, snapWorkName)); err != nil {
				_ = m.failSnapshot(ctx, sn, errors.New("the daemon stopped before its work disk was captured"))
				continue
			}
			sn.SizeBytes, sn.State = treeBytes(sn.Dir), model.SnapshotReady
			if err := errors.Join(syncDir(sn.Dir), m.store.UpdateSnapshot(ctx, sn)); err != nil {
				m.log.Error("a snapshot its vm reads through could not be recorded ready", "snapshot", sn.Name, "err", err)
			} else {
				m.log.Warn("a snapshot left half made, which its vm reads through, is kept", "snapshot", sn.Name)
			}
			continue
		}
		m.log.Warn("removing a snapshot left half made", "snapshot", sn.Name)
		_ = os.RemoveAll(sn.Dir)
		_ = m.store.DeleteSnapshot(ctx, sn.ID)
	}
}

func joinNames(names []string) string {
	out := ""
	for i, n := range names {
		if i > 0 {
			out += ", "
		}
		out += n
	}
	return out
}

// treeBytes is the space the files under dir take on the host's disk
// (allocated blocks: sparse files count what they hold).
func treeBytes(dir string) int64 {
	var n int64
	_ = filepath.WalkDir(dir, func(_ string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		if fi, err := d.Info(); err == nil {
			n += allocated(fi)
		}
		return nil
	})
	return n
}

// allocated is the space a file takes on disk (its blocks), or its size
// where the system does not say.
func allocated(fi os.FileInfo) int64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Blocks * 512
	}
	return fi.Size()
}
