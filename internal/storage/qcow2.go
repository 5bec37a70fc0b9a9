package storage

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/banger/banger/internal/vmm"
)

// File names of the durable per-VM system disk files, one per strategy.
const (
	Qcow2File = "system." + vmm.FormatQcow2 // qcow2 overlay over the image
	CloneFile = "system.img"                // reflink clone of the image
	CowFile   = "system.cow"                // dm-snapshot exception store
	// BaseFile is dm-snapshot's hard link to the image: the VM's base loop
	// is attached over it, so that the loop names the VM that owns it.
	BaseFile = "system.base"
)

// SystemFile returns the durable system disk file a strategy keeps in
// vmDir, for the VM record, or "" for an unknown strategy.
func SystemFile(strategy, vmDir string) string {
	switch strategy {
	case "qcow2":
		return filepath.Join(vmDir, Qcow2File)
	case "reflink":
		return filepath.Join(vmDir, CloneFile)
	case "dm-snapshot":
		return filepath.Join(vmDir, CowFile)
	}
	return ""
}

// Qcow2 makes a qcow2 overlay whose backing file is the image: QEMU only.
// It writes the overlay itself (see Qcow2Overlay) and needs no tool.
type Qcow2 struct{}

// Name returns "qcow2".
func (Qcow2) Name() string { return "qcow2" }

// Format returns "qcow2".
func (Qcow2) Format() string { return vmm.FormatQcow2 }

// Available always reports true: the overlay is written in Go on any
// filesystem; whether QEMU is there is the VMM's question.
func (Qcow2) Available(dir string) (bool, string) { return true, "" }

// Create writes VMDIR/Qcow2File over image, with the image's size
// rounded up to 512 bytes as qemu-img does. It writes about 192 KiB
// whatever that size and never reads the image. A previous overlay is
// replaced.
func (Qcow2) Create(ctx context.Context, image, vmDir string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	abs, err := filepath.Abs(image)
	if err != nil {
		return fmt.Errorf("qcow2 overlay: image: %w", err)
	}
	fi, err := os.Stat(abs)
	if err != nil {
		return fmt.Errorf("qcow2 overlay: image: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("qcow2 overlay: image %s is a %s; want a regular raw image file", abs, fi.Mode().Type())
	}
	size := (fi.Size() + 511) &^ 511
	path := filepath.Join(vmDir, Qcow2File)
	tmp := path + ".tmp"
	if err := writeQcow2Overlay(tmp, abs, size); err != nil {
		return err
	}
	return replaceFile(tmp, path)
}

// Attach makes nothing and returns the overlay.
func (Qcow2) Attach(ctx context.Context, image, vmDir string) (SystemDisk, error) {
	path := filepath.Join(vmDir, Qcow2File)
	if _, err := os.Stat(path); err != nil {
		return SystemDisk{}, fmt.Errorf("qcow2 system disk: %w (was the VM created?)", err)
	}
	return SystemDisk{Path: path, Format: vmm.FormatQcow2}, nil
}

// Detach has nothing to undo.
func (Qcow2) Detach(ctx context.Context, d SystemDisk) error { return nil }

// Remove deletes the overlay.
func (Qcow2) Remove(ctx context.Context, vmDir string) error {
	p := filepath.Join(vmDir, Qcow2File)
	return removeFiles(p, p+".tmp")
}
