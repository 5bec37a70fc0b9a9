package vms

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/banger/banger/internal/model"
	"github.com/banger/banger/internal/storage"
	"github.com/banger/banger/internal/store"
)

// Flattening (config chain_depth). A snapshot of a VM made from a
// snapshot captures an overlay over that snapshot's system disk, so each
// generation of forks adds a qcow2 file to the chain a VMM reads through
// (slower reads, and storage.CheckQcow2Chain refuses more than 32 files).
// A snapshot whose chain is deeper than chain_depth is flattened in the
// background: its system disk is rewritten to read through the image
// alone (storage.FlattenQcow2) and its base becomes none. Its content is
// the same, so the VMs made from it before, whose overlays name its
// file, read what they read; its former bases are no longer needed by
// it and can be removed.

// flattener is the momentary truth of the daemon's background disk work:
// the snapshots being flattened, and the VMs whose system disk is being
// copied up from a snapshot of themselves (separating, overlay.go: each
// channel closed when that ends). ctx lives as long as the daemon
// (StartFlatten); nil before: none of it is done.
type flattener struct {
	mu         sync.Mutex
	ctx        context.Context
	busy       map[string]bool
	separating map[string]chan struct{}
	failed     map[string]error // a VM's last copy up that failed
	wg         sync.WaitGroup
}

// StartFlatten starts flattening, at daemon start after Reconcile: the
// scratch files of a daemon that stopped while flattening are removed,
// every ready snapshot deeper than chain_depth (one that daemon had not
// flattened yet) is flattened in the background, and so is every such
// snapshot taken from now on, until ctx ends. Running VMs that read
// through a snapshot of themselves have it copied up (overlay.go).
func (m *Manager) StartFlatten(ctx context.Context) {
	all, err := m.store.ListSnapshots(ctx)
	if err != nil {
		m.log.Warn("flatten: list snapshots", "err", err)
		return
	}
	for _, sn := range all {
		scratch := snapshotSystemFile(sn.Dir, storage.Qcow2File) + ".flat"
		_ = os.Remove(scratch)
		_ = os.Remove(scratch + ".tmp")
	}
	m.flat.mu.Lock()
	m.flat.ctx = ctx
	m.flat.mu.Unlock()
	for _, sn := range all {
		m.flattenIfDeep(sn, all)
		// A VM that reads through a snapshot of itself goes on copying
		// it up (overlay.go); a failed snapshot nothing reads through
		// any more goes.
		if sn.VMID != "" {
			m.separateIfReader(ctx, sn.VMID)
		}
		if sn.State == model.SnapshotFailed {
			if rd, ok, err := m.readerOf(ctx, sn.VMID); err == nil && (!ok || rd.ID != sn.ID) {
				m.removeFailed(ctx, sn.ID)
			}
		}
	}
}

// StopFlatten waits for the flattening and copying up under way, which
// end with StartFlatten's context (a flatten's scratch file removed; a
// copy is left to its VMM).
func (m *Manager) StopFlatten() { m.flat.wg.Wait() }

// chainDepth is how many qcow2 files the system disk of the snapshot sn
// reads through, itself included, from the records in all; ok is false
// when a base on the way is unknown or missing (baseChain). Pure.
func chainDepth(sn model.Snapshot, all []model.Snapshot) (depth int, ok bool) {
	chain, stop := baseChain(sn.BaseID, all)
	return 1 + len(chain), stop == ""
}

// flattenIfDeep flattens sn in the background when its system disk is a
// qcow2 chain deeper than chain_depth; nothing when flattening has not
// started, or sn is being flattened already. all are the snapshots.
func (m *Manager) flattenIfDeep(sn model.Snapshot, all []model.Snapshot) {
	if sn.CowStrategy != "qcow2" || sn.State != model.SnapshotReady {
		return
	}
	depth, ok := chainDepth(sn, all)
	if !ok || depth <= m.cfg.ChainDepth {
		return
	}
	f := &m.flat
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.ctx == nil || f.ctx.Err() != nil || f.busy[sn.ID] {
		return
	}
	if f.busy == nil {
		f.busy = map[string]bool{}
	}
	f.busy[sn.ID] = true
	f.wg.Add(1)
	go func(ctx context.Context) {
		defer f.wg.Done()
		defer func() {
			f.mu.Lock()
			delete(f.busy, sn.ID)
			f.mu.Unlock()
		}()
		start := time.Now()
		if err := m.flatten(ctx, sn.ID); err != nil {
			m.log.Warn("snapshot not flattened", "snapshot", sn.Name, "depth", depth, "err", err)
			return
		}
		m.log.Info("snapshot flattened", "snapshot", sn.Name, "depth", depth, "seconds", time.Since(start).Seconds())
	}(f.ctx)
}

// flatten rewrites the system disk of the snapshot with this id to read
// through its image alone and records it without a base. It holds the
// snapshot's lock (its removal waits), checks the chain's headers first
// (qemu-img opens every file they name), and leaves the snapshot as it
// was on failure.
func (m *Manager) flatten(ctx context.Context, id string) error {
	unlock := m.locks.Lock("snapshot:" + id)
	defer unlock()
	sn, err := m.store.GetSnapshot(ctx, id)
	if err != nil {
		return store.Describe("snapshot", id, err)
	}
	if sn.BaseID == "" {
		return nil
	}
	// The VM it was taken of may read through it in place (overlay.go):
	// its VMM reads the file as it is, through the base, and its copy up
	// names that base; flattened under it, the VM would be told the wrong
	// backing. It can be flattened once the copy is done.
	if rd, ok, err := m.readerOf(ctx, sn.VMID); err != nil || (ok && rd.ID == sn.ID) {
		return errors.Join(err, errors.New("the vm it was taken of still reads through it"))
	}
	im, err := m.store.GetImage(ctx, sn.ImageID)
	if err != nil {
		return store.Describe("image", sn.ImageID, err)
	}
	img, err := filepath.Abs(im.Path)
	if err != nil {
		return err
	}
	top := snapshotSystemFile(sn.Dir, storage.Qcow2File)
	if err := m.checkSystemChain(ctx, top, im, sn.BaseID); err != nil {
		return err
	}
	if err := storage.FlattenQcow2(ctx, top, filepath.Clean(img), top); err != nil {
		return err
	}
	if err := syncDir(sn.Dir); err != nil {
		return err
	}
	// The file reads through the image alone from here; a daemon that
	// stops before the record says so flattens it again (cheaply) at
	// its next start.
	if err := m.store.SetSnapshotBase(ctx, sn.ID, ""); err != nil {
		return fmt.Errorf("record the flattened snapshot: %w", err)
	}
	return nil
}
