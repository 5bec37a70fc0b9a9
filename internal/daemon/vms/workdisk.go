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
	if _, ok := drv.(vmm.Overlayer); ok && slices.Contains(drv.Formats(), vmm.FormatQcow2) {
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
// from, that one's base, …), at most its size: written by a VMM a guest
// may have taken over.
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
	chain, _ := baseChain(origin, all)
	for _, sn := range chain {
		if sn.State == model.SnapshotReady {
			allowed[filepath.Clean(filepath.Join(sn.Dir, snapWorkName))] = vmm.FormatRaw
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
