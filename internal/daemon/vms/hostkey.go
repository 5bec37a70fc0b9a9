package vms

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/banger/banger/internal/guest"
	"github.com/banger/banger/internal/guestinit"
	"github.com/banger/banger/internal/model"
	"github.com/banger/banger/internal/storage"
)

// createWorkDisk makes vm's work disk holding the VM's own SSH host key at
// guestinit.WorkHostKey, where banger-init installs it from at boot. The
// key reaches the disk through mkfs.ext4 -d, so no guest disk is mounted
// and the private half is never on a command line; the seed directory it
// passes through is removed as soon as the disk is made.
func createWorkDisk(ctx context.Context, vm model.VM, key guest.HostKey) error {
	seed, err := writeWorkSeed(vm.Dir, key)
	if err != nil {
		return fmt.Errorf("work disk seed: %w", err)
	}
	defer os.RemoveAll(seed)
	return storage.CreateWorkDiskWith(ctx, vm.WorkDisk, vm.DiskBytes, seed)
}

// writeWorkSeed writes the tree a new work disk starts with into a fresh
// directory under dir and returns it: the host key at
// guestinit.WorkHostKey (0600, in a 0700 directory) and its public half
// (0644). The seed itself is 0700, so the key is readable by the daemon's
// user only for the moment it lies there; mkfs.ext4 -d keeps these modes
// and owners on the disk.
func writeWorkSeed(dir string, key guest.HostKey) (seed string, err error) {
	if len(key.Private) == 0 || key.Public == "" {
		return "", fmt.Errorf("no host key to write")
	}
	seed, err = os.MkdirTemp(dir, ".work-seed-")
	if err != nil {
		return "", err
	}
	defer func() {
		if err != nil {
			os.RemoveAll(seed)
			seed = ""
		}
	}()
	keyPath := filepath.Join(seed, filepath.FromSlash(guestinit.WorkHostKey))
	keyDir := filepath.Dir(keyPath)
	if err := os.MkdirAll(keyDir, 0o700); err != nil {
		return "", err
	}
	// The umask may have narrowed what MkdirAll made; state the modes.
	if err := os.Chmod(keyDir, 0o700); err != nil {
		return "", err
	}
	if err := writeNew(keyPath, key.Private, 0o600); err != nil {
		return "", err
	}
	if err := writeNew(keyPath+".pub", []byte(key.Public+"\n"), 0o644); err != nil {
		return "", err
	}
	return seed, nil
}

// writeNew writes a file that must not exist yet, with exactly mode.
func writeNew(path string, data []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(mode)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
