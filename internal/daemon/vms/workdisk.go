package vms

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/banger/banger/internal/model"
	"github.com/banger/banger/internal/storage"
	"github.com/banger/banger/internal/vmm"
)

// A VM made from a snapshot (a fork, `vm create --from-snapshot`, a warm
// start) whose snapshot's work disk cannot be cloned gets, in constant
// time, an empty qcow2 overlay over that work disk (work.qcow2; its
// work.ext4 does not exist meanwhile) instead of a copy. The host reads
// only raw work disks (debugfs, while the VM is stopped, never paused;
// a snapshot's capture and hole map), so the overlay becomes work.ext4
// before any of that: before a snapshot's freeze, by the VM's VMM
// (vmm.Overlayer.Mirror); after a stop, a VMM found dead or at the
// daemon's start, and before a paused VM's snapshot, by the daemon
// (storage.Qcow2ToRaw, after its header is checked). A pause keeps it: a
// paused VM's disks are not read. A VM deleted first never copies it at
// all: a fork used and dropped costs no copy of its work disk.
//
// The files are the truth: work.ext4 present means it is the disk (a
// leftover work.qcow2 beside it is the former one, made raw before a
// crash could remove it); work.qcow2 alone means the overlay is.

// workOverlayName is the work disk's overlay in the VM's directory.
const workOverlayName = "work.qcow2"

func workOverlay(vm model.VM) string { return filepath.Join(vm.Dir, workOverlayName) }

// hasWorkOverlay reports whether vm's work disk is its overlay. A leftover
// overlay beside a raw work disk is removed.
func hasWorkOverlay(vm model.VM) bool {
	if _, err := os.Lstat(workOverlay(vm)); err != nil {
		return false
	}
	if _, err := os.Lstat(vm.WorkDisk); err == nil {
		_ = os.Remove(workOverlay(vm))
		return false
	}
	return true
}

// forkWorkDisk makes the work disk of vm, made from the snapshot sn: a
// clone of the snapshot's, else an overlay over it when vm's driver can
// make it raw while it runs (vmm.Overlayer) and opens qcow2 disks, else
// a sparse copy. It reports whether it is an overlay.
func (m *Manager) forkWorkDisk(ctx context.Context, vm model.VM, sn model.Snapshot) (bool, error) {
	src := filepath.Join(sn.Dir, snapWorkName)
	if cloned, err := storage.CaptureByClone(src, vm.WorkDisk); err != nil || cloned {
		return false, err
	}
	drv, err := m.driver(vm.VMM)
	if err != nil {
		return false, err
	}
	if canOverlayWork(drv) {
		fi, err := os.Stat(src)
		if err != nil {
			return false, fmt.Errorf("snapshot %s's work disk: %w", sn.Name, err)
		}
		abs, err := filepath.Abs(src)
		if err != nil {
			return false, err
		}
		return true, storage.WriteQcow2Overlay(workOverlay(vm), abs, vmm.FormatRaw, fi.Size())
	}
	_, err = storage.CaptureFile(ctx, src, vm.WorkDisk)
	return false, err
}

// canOverlayWork reports whether drv can run a VM on a work overlay: it
// opens qcow2 disks and can make the overlay raw while the VM runs.
func canOverlayWork(drv vmm.Driver) bool {
	_, ok := drv.(vmm.Overlayer)
	return ok && slices.Contains(drv.Formats(), vmm.FormatQcow2)
}

// A paused VM's snapshot takes its work disk in constant time too, where
// its system disk is taken in place: the snapshot's work.ext4 is made
// another name of the VM's (capturePaused; nothing writes it while the VM
// is paused), then the VM goes on over an empty overlay over the
// snapshot's name and its own name goes (overlayOwnWork). The two names
// never serve as two disks: where the overlay is not made, or a daemon
// stopped before it was, the snapshot gets a copy of its own instead
// (unshareWork). The snapshot's removal makes the VM's overlay raw first
// (releaseWork).

// A running VM's snapshot takes its work disk in constant time too, where
// its system disk is taken in place (overlayWork): while the guest is
// frozen an empty overlay over the snapshot's work.ext4 is written as the
// VM's work.qcow2, the VM's work.ext4 is renamed the snapshot's, and the
// VMM switches the disk onto the overlay. The rename comes before the
// switch so the files say the truth at every step for the VM: until the
// switch the VMM writes the renamed file, which the overlay (empty)
// reads through. For the snapshot, a switch cut short by the daemon's
// end is undone at its next start (settleWorkSwitch), and the snapshot,
// then without a work disk, is failed.

// overlayWork takes a frozen VM's raw work disk into the snapshot sn as
// above, where it can: its driver overlays in place (canOverlayWork),
// the VM's system disk was taken in place into sn (its caller's
// overlaid: the VM is recorded reading through sn, which a daemon's next
// start keeps), and sn is no template. false, with everything as it was,
// when it cannot be; the caller copies then. Once the file is renamed
// and not given back it returns true, whatever follows: the VM reads
// through sn's work disk.
func (m *Manager) overlayWork(ctx context.Context, vm model.VM, sn model.Snapshot, drv vmm.Driver, vh vmm.Handle) (bool, error) {
	ov, ok := drv.(vmm.Overlayer)
	if !ok || !canOverlayWork(drv) || vm.CowStrategy != "qcow2" || sn.Template != "" || hasWorkOverlay(vm) {
		return false, nil
	}
	captured := filepath.Join(sn.Dir, snapWorkName)
	abs, err := filepath.Abs(captured)
	if err != nil {
		return false, err
	}
	fi, err := os.Stat(vm.WorkDisk)
	if err != nil {
		return false, fmt.Errorf("work disk: %w", err)
	}
	// Beside work.ext4 it is a leftover (hasWorkOverlay) until the rename.
	err = storage.WriteQcow2Overlay(workOverlay(vm), abs, vmm.FormatRaw, fi.Size())
	if err == nil {
		err = syncDir(vm.Dir)
	}
	if err == nil {
		err = os.Rename(vm.WorkDisk, captured)
	}
	if err != nil {
		_ = os.Remove(workOverlay(vm))
		m.log.Warn("vm work disk copied: it could not be moved into the snapshot", "vm", vm.Name, "snapshot", sn.Name, "err", err)
		return false, nil
	}
	if err := errors.Join(syncDir(sn.Dir), syncDir(vm.Dir)); err != nil {
		m.log.Warn("sync the work disk's move into the snapshot", "vm", vm.Name, "err", err)
	}
	err = ov.Overlay(ctx, vh, workDiskID, workOverlay(vm))
	switch {
	case errors.Is(err, vmm.ErrOverlaid):
		m.log.Warn("vm work disk overlaid, with a warning", "vm", vm.Name, "snapshot", sn.Name, "err", err)
	case err != nil:
		// Not switched: the file gets its name back, then the overlay
		// goes (a leftover from then on).
		if rerr := os.Rename(captured, vm.WorkDisk); rerr != nil {
			return true, fmt.Errorf("work disk not overlaid (%v), and its name not given back: %w", err, rerr)
		}
		_ = os.Remove(workOverlay(vm))
		if serr := errors.Join(syncDir(sn.Dir), syncDir(vm.Dir)); serr != nil {
			m.log.Warn("sync the work disk's move back", "vm", vm.Name, "err", serr)
		}
		m.log.Info("vm work disk copied, not overlaid", "vm", vm.Name, "snapshot", sn.Name, "why", err)
		return false, nil
	}
	// As for the system disk (overlaySystem): a VMM still holding the
	// captured file writable gives the snapshot a copy of its own, made
	// while the guest is frozen.
	return true, m.ownCopyIfHeld(ctx, vm, sn, vh, captured)
}

// settleWorkSwitch undoes, at the daemon's start, the switch of a frozen
// VM's work disk (overlayWork) that its VMM, found running (vh), never
// made: the VMM writes the file moved into the snapshot the VM reads
// through, so that file gets the VM's name back and the overlay goes.
// The snapshot, without a work disk then, is failed (reconcileSnapshots).
// Called before the guest resumes.
func (m *Manager) settleWorkSwitch(ctx context.Context, vm model.VM, vh vmm.Handle) {
	if !hasWorkOverlay(vm) || holdsFile(vh.PID, workOverlay(vm)) {
		return
	}
	sn, ok, err := m.readerOf(ctx, vm.ID)
	if err != nil || !ok || sn.State != model.SnapshotCreating || !readsWork(vm, sn) {
		return
	}
	captured := filepath.Join(sn.Dir, snapWorkName)
	if !holdsWritable(vh.PID, captured) {
		return
	}
	if err := os.Rename(captured, vm.WorkDisk); err != nil {
		m.log.Error("reconcile: a vm's work disk not given its name back from a snapshot cut short", "vm", vm.Name, "err", err)
		return
	}
	_ = os.Remove(workOverlay(vm))
	_ = errors.Join(syncDir(sn.Dir), syncDir(vm.Dir))
	m.log.Warn("reconcile: a snapshot's switch of the vm's work disk was cut short; undone", "vm", vm.Name, "snapshot", sn.Name)
}

// overlayOwnWork puts a paused VM, whose work.ext4 the snapshot sn's is
// another name of, on an empty overlay over sn's name, then drops the
// VM's name. Written beside work.ext4 first: until that goes, it is the
// disk and the overlay a leftover.
func (m *Manager) overlayOwnWork(vm model.VM, sn model.Snapshot) error {
	src, err := filepath.Abs(filepath.Join(sn.Dir, snapWorkName))
	if err != nil {
		return err
	}
	fi, err := os.Stat(src)
	if err != nil {
		return fmt.Errorf("snapshot %s's work disk: %w", sn.Name, err)
	}
	if err := storage.WriteQcow2Overlay(workOverlay(vm), src, vmm.FormatRaw, fi.Size()); err != nil {
		return err
	}
	if err := syncDir(vm.Dir); err != nil {
		_ = os.Remove(workOverlay(vm))
		return err
	}
	if err := os.Remove(vm.WorkDisk); err != nil {
		_ = os.Remove(workOverlay(vm))
		return fmt.Errorf("work disk: %w", err)
	}
	// The overlay is the disk now, whatever the sync says.
	if err := syncDir(vm.Dir); err != nil {
		m.log.Warn("sync vm directory", "vm", vm.Name, "err", err)
	}
	return nil
}

// unshareWork gives the snapshot sn a work disk of its own where its
// work.ext4 is still another name of its VM's: a copy, renamed over the
// name.
func (m *Manager) unshareWork(ctx context.Context, sn model.Snapshot) error {
	if sn.VMID == "" {
		return nil
	}
	vm, err := m.store.GetVM(ctx, sn.VMID)
	if err != nil {
		return nil // gone, and its name with its directory
	}
	own := filepath.Join(sn.Dir, snapWorkName)
	a, err1 := os.Stat(vm.WorkDisk)
	b, err2 := os.Stat(own)
	if err1 != nil || err2 != nil || !os.SameFile(a, b) {
		return nil
	}
	_, err = storage.CaptureFile(ctx, vm.WorkDisk, own)
	return err
}

// readsWork reports whether vm's work disk is an overlay whose header
// names sn's work disk as its backing file; a header that cannot be read
// counts, so a doubt keeps sn. It only reads.
func readsWork(vm model.VM, sn model.Snapshot) bool {
	if _, err := os.Lstat(workOverlay(vm)); err != nil {
		return false
	}
	if _, err := os.Lstat(vm.WorkDisk); err == nil {
		return false // a leftover beside the disk
	}
	backing, err := storage.Qcow2Backing(workOverlay(vm))
	if err != nil {
		return true
	}
	own, err := filepath.Abs(filepath.Join(sn.Dir, snapWorkName))
	return err != nil || filepath.Clean(backing) == own
}

// releaseWork makes the work disk of the VM sn was taken of raw where its
// overlay reads through sn's (overlayOwnWork), so that sn can go: by its
// VMM while it runs, else by the daemon. It takes the VM's lock only
// then.
func (m *Manager) releaseWork(ctx context.Context, sn model.Snapshot) error {
	if sn.VMID == "" {
		return nil
	}
	vm, err := m.store.GetVM(ctx, sn.VMID)
	if err != nil || !readsWork(vm, sn) {
		return nil // gone, or not reading it
	}
	unlock := m.locks.Lock(vm.ID)
	defer unlock()
	if vm, err = m.store.GetVM(ctx, vm.ID); err != nil || !readsWork(vm, sn) {
		return nil
	}
	if !m.Alive(vm) {
		return m.rawWorkOffline(ctx, vm)
	}
	drv, err := m.driver(vm.VMM)
	if err != nil {
		return err
	}
	h, _ := m.handles.get(vm.ID)
	return m.rawWorkRunning(ctx, vm, drv, vmm.Handle{PID: h.PID, APISocket: h.APISocket})
}

// workDisk is vm's work disk as a VMM opens it: work.ext4, or the overlay
// with its header checked (checkWorkChain), since QEMU opens what it
// names before it drops its privileges.
func (m *Manager) workDisk(ctx context.Context, vm model.VM) (vmm.Disk, error) {
	if !hasWorkOverlay(vm) {
		return vmm.Disk{ID: workDiskID, Path: vm.WorkDisk, Format: vmm.FormatRaw}, nil
	}
	if err := m.checkWorkChain(ctx, vm); err != nil {
		return vmm.Disk{}, err
	}
	return vmm.Disk{ID: workDiskID, Path: workOverlay(vm), Format: vmm.FormatQcow2}, nil
}

// workDiskID is the work disk's id in the VMM (Manager.spec).
const workDiskID = "work"

// checkWorkChain checks vm's work overlay names, as its only backing file,
// the raw work disk of a snapshot of its lineage (the one it was made
// from, that one's base, …) or of one taken of it, at most its size:
// written by a VMM a guest may have taken over.
func (m *Manager) checkWorkChain(ctx context.Context, vm model.VM) error {
	origin, err := m.store.SnapshotOf(ctx, vm.ID)
	if err != nil {
		return err
	}
	all, err := m.store.ListSnapshots(ctx)
	if err != nil {
		return err
	}
	allowed := map[string]string{}
	allow := func(sn model.Snapshot) error {
		abs, err := filepath.Abs(filepath.Join(sn.Dir, snapWorkName))
		allowed[abs] = vmm.FormatRaw
		return err
	}
	chain, _ := baseChain(origin, all)
	for _, sn := range chain {
		if sn.State == model.SnapshotReady {
			if err := allow(sn); err != nil {
				return err
			}
		}
	}
	// Its own snapshots too, whatever their state (a paused VM's snapshot
	// leaves it over the snapshot's work disk, overlayOwnWork, before it
	// is recorded ready): they hold nothing but its own disk.
	for _, sn := range all {
		if sn.VMID == vm.ID && sn.Template == "" {
			if err := allow(sn); err != nil {
				return err
			}
		}
	}
	if err := storage.CheckQcow2Chain(workOverlay(vm), allowed, (vm.DiskBytes+511)&^511); err != nil {
		return fmt.Errorf("work disk: %w", err)
	}
	return nil
}

// rawWorkRunning makes a running VM's work overlay raw by its VMM (Mirror
// into work.ext4.next, renamed work.ext4 once the VMM switched onto it).
// The caller holds the VM's lock. A work.ext4.next found is the one a
// Mirror cut short left (the driver empties it unless it is the disk).
func (m *Manager) rawWorkRunning(ctx context.Context, vm model.VM, drv vmm.Driver, vh vmm.Handle) error {
	if !hasWorkOverlay(vm) {
		return nil
	}
	ov, ok := drv.(vmm.Overlayer)
	if !ok {
		return fmt.Errorf("vmm %s cannot make the work disk raw while it runs", vm.VMM)
	}
	next := vm.WorkDisk + nextSuffix
	if _, err := os.Lstat(next); err != nil {
		f, err := os.OpenFile(next, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return err
		}
		err = f.Truncate(vm.DiskBytes)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			_ = os.Remove(next)
			return err
		}
	}
	start := time.Now()
	if err := ov.Mirror(ctx, vh, workDiskID, next); err != nil {
		_ = os.Remove(next)
		return fmt.Errorf("work disk: %w", err)
	}
	if err := m.settleRaw(vm, next); err != nil {
		return err
	}
	m.log.Info("vm work disk made raw by its vmm", "vm", vm.Name, "seconds", time.Since(start).Seconds())
	return nil
}

// rawWorkOffline makes the work overlay of a VM no VMM runs raw
// (qemu-img convert). The caller holds the VM's lock.
func (m *Manager) rawWorkOffline(ctx context.Context, vm model.VM) error {
	if !hasWorkOverlay(vm) {
		return nil
	}
	if err := m.checkWorkChain(ctx, vm); err != nil {
		return err
	}
	start := time.Now()
	next := vm.WorkDisk + nextSuffix
	_ = os.Remove(next) // a Mirror's, cut short with its VMM
	if err := storage.Qcow2ToRaw(ctx, workOverlay(vm), next); err != nil {
		return fmt.Errorf("work disk: %w", err)
	}
	if err := m.settleRaw(vm, next); err != nil {
		return err
	}
	m.log.Info("vm work disk made raw", "vm", vm.Name, "seconds", time.Since(start).Seconds())
	return nil
}

// settleRaw makes next, the raw copy of vm's work overlay, its work disk:
// renamed work.ext4 (from then on the disk), then the overlay removed.
func (m *Manager) settleRaw(vm model.VM, next string) error {
	if err := os.Rename(next, vm.WorkDisk); err != nil {
		return fmt.Errorf("work disk: %w", err)
	}
	err := errors.Join(syncDir(vm.Dir), os.Remove(workOverlay(vm)))
	if err != nil {
		m.log.Warn("vm work disk made raw; its overlay stays until the next look", "vm", vm.Name, "err", err)
	}
	return nil
}

// rawWorkAfterStop makes the work disk of a VM whose VMM is gone raw,
// logging a failure: the VM runs again from its overlay, and what reads
// its disk while it is stopped says the disk is missing.
func (m *Manager) rawWorkAfterStop(ctx context.Context, vm model.VM) {
	if err := m.rawWorkOffline(ctx, vm); err != nil {
		m.log.Warn("vm work disk left an overlay", "vm", vm.Name, "err", err)
	}
}

// settleMirror finishes, at the daemon's start, a Mirror of a running
// VM's work disk the daemon before it left (work.ext4.next beside the
// overlay): the VMM switched onto it already, or is made to.
func (m *Manager) settleMirror(ctx context.Context, vm model.VM, drv vmm.Driver, vh vmm.Handle) {
	if _, err := os.Lstat(vm.WorkDisk + nextSuffix); err != nil || !hasWorkOverlay(vm) {
		return
	}
	if err := m.rawWorkRunning(ctx, vm, drv, vh); err != nil {
		m.log.Warn("reconcile: a vm's work disk left an overlay", "vm", vm.Name, "err", err)
	}
}
