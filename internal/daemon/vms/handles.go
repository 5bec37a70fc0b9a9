package vms

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/banger/banger/internal/hostnet"
	"github.com/banger/banger/internal/model"
)

// handlesFile is the scratch file in a VM directory that mirrors the
// in-memory handles, so a restarted daemon can find and tear down what a
// dead one left behind.
const handlesFile = "handles.json"

// handleCache holds what is momentarily true of running VMs: VMM PID, tap,
// loops, dm names. Never stored in SQLite.
type handleCache struct {
	mu sync.Mutex
	m  map[string]model.VMHandles
}

func newHandleCache() *handleCache {
	return &handleCache{m: map[string]model.VMHandles{}}
}

// get returns the cached handles of a VM.
func (c *handleCache) get(vmID string) (model.VMHandles, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	h, ok := c.m[vmID]
	return h, ok
}

// set caches h and mirrors it to the VM directory's scratch file (written
// atomically: a crash never leaves a torn file).
func (c *handleCache) set(vmID, vmDir string, h model.VMHandles) error {
	c.mu.Lock()
	c.m[vmID] = h
	c.mu.Unlock()
	if err := writeScratch(vmDir, handlesFile, h); err != nil {
		return fmt.Errorf("write handles: %w", err)
	}
	return nil
}

// writeScratch writes v as JSON to the VM directory's scratch file name,
// atomically (through name.tmp): a crash never leaves a torn file.
func writeScratch(vmDir, name string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(vmDir, name+".tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(vmDir, name))
}

// forget drops a VM's handles from memory and removes its scratch file.
func (c *handleCache) forget(vmID, vmDir string) {
	c.mu.Lock()
	delete(c.m, vmID)
	c.mu.Unlock()
	_ = os.Remove(filepath.Join(vmDir, handlesFile))
	_ = os.Remove(filepath.Join(vmDir, handlesFile+".tmp"))
}

// readHandlesFile reads a VM directory's scratch file. A missing file gives
// empty handles and no error; a corrupt one gives an error the caller logs
// before falling back on what it can derive (tap name, api socket).
func readHandlesFile(vmDir string) (model.VMHandles, error) {
	var h model.VMHandles
	b, err := os.ReadFile(filepath.Join(vmDir, handlesFile))
	if errors.Is(err, os.ErrNotExist) {
		return h, nil
	}
	if err != nil {
		return h, err
	}
	if err := json.Unmarshal(b, &h); err != nil {
		return model.VMHandles{}, fmt.Errorf("corrupt %s in %s: %w", handlesFile, vmDir, err)
	}
	return h, nil
}

// parkedFile is a paused VM's scratch file of what its allowed host
// names had opened (hostnet.ParkedNames), so that a daemon restart while
// it is paused does not lose it. It exists only while the VM is paused.
const parkedFile = "names-parked.json"

// writeParked keeps p in vmDir's scratch file, or removes the file when
// p is nil.
func writeParked(vmDir string, p *hostnet.ParkedNames) error {
	if vmDir == "" { // never the daemon's working directory
		return nil
	}
	path := filepath.Join(vmDir, parkedFile)
	if p == nil {
		_ = os.Remove(path + ".tmp") // a crash mid-write
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		return nil
	}
	if err := writeScratch(vmDir, parkedFile, p); err != nil {
		return fmt.Errorf("write parked names: %w", err)
	}
	return nil
}

// readParked reads what writeParked kept: nil when there is none.
func readParked(vmDir string) (*hostnet.ParkedNames, error) {
	b, err := os.ReadFile(filepath.Join(vmDir, parkedFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var p hostnet.ParkedNames
	if err := json.Unmarshal(b, &p); err != nil {
		return nil, fmt.Errorf("corrupt %s in %s: %w", parkedFile, vmDir, err)
	}
	return &p, nil
}
