package storage

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// File names of the durable per-VM system disk files, one per strategy.
const (
	Qcow2File = "system.qcow2" // qcow2 overlay over the image
	CloneFile = "system.img"   // reflink clone of the image
	CowFile   = "system.cow"   // dm-snapshot exception store
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
// The zero value looks qemu-img up on PATH.
type Qcow2 struct {
	QemuImg string // qemu-img binary; "" means look it up on PATH
}

// Name returns "qcow2".
func (Qcow2) Name() string { return "qcow2" }

// Format returns "qcow2".
func (Qcow2) Format() string { return "qcow2" }

func (q Qcow2) bin() (string, error) {
	if q.QemuImg != "" {
		return q.QemuImg, nil
	}
	p, err := exec.LookPath("qemu-img")
	if err != nil {
		return "", fmt.Errorf("qcow2 storage needs qemu-img: not found on PATH (install qemu-utils)")
	}
	return p, nil
}

// Available reports whether qemu-img is found; qcow2 works on any
// filesystem.
func (q Qcow2) Available(dir string) (bool, string) {
	if _, err := q.bin(); err != nil {
		return false, err.Error()
	}
	return true, ""
}

// Qcow2CreateArgs returns the qemu-img argv that makes overlay over the raw
// image; the backing path is made absolute because qemu resolves a relative
// one against the overlay's directory.
func Qcow2CreateArgs(qemuImg, image, overlay string) ([]string, error) {
	abs, err := filepath.Abs(image)
	if err != nil {
		return nil, err
	}
	return []string{qemuImg, "create", "-q", "-f", "qcow2", "-F", "raw", "-b", abs, overlay}, nil
}

// Create writes VMDIR/system.qcow2 over image. The overlay takes the
// image's size; its cost does not depend on that size. A previous overlay
// is replaced.
func (q Qcow2) Create(ctx context.Context, image, vmDir string) error {
	bin, err := q.bin()
	if err != nil {
		return err
	}
	if _, err := os.Stat(image); err != nil {
		return fmt.Errorf("qcow2 overlay: image: %w", err)
	}
	path := filepath.Join(vmDir, Qcow2File)
	tmp := path + ".tmp"
	argv, err := Qcow2CreateArgs(bin, image, tmp)
	if err != nil {
		return err
	}
	if _, err := runArgv(ctx, argv); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("qcow2 overlay: %w", err)
	}
	return replaceFile(tmp, path)
}

// Attach makes nothing and returns the overlay.
func (Qcow2) Attach(ctx context.Context, image, vmDir string) (SystemDisk, error) {
	path := filepath.Join(vmDir, Qcow2File)
	if _, err := os.Stat(path); err != nil {
		return SystemDisk{}, fmt.Errorf("qcow2 system disk: %w (was the VM created?)", err)
	}
	return SystemDisk{Path: path, Format: "qcow2"}, nil
}

// Detach has nothing to undo.
func (Qcow2) Detach(ctx context.Context, d SystemDisk) error { return nil }

// Remove deletes the overlay.
func (Qcow2) Remove(ctx context.Context, vmDir string) error {
	p := filepath.Join(vmDir, Qcow2File)
	return removeFiles(p, p+".tmp")
}
