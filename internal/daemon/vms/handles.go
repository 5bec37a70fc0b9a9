package vms

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

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
	b, err := json.MarshalIndent(h, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(vmDir, handlesFile+".tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("write handles: %w", err)
	}
	return os.Rename(tmp, filepath.Join(vmDir, handlesFile))
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
