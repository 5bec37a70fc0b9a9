// Package storage owns the disks of a VM on the host: the copy-on-write
// system disk made over a shared read-only image, and the persistent work
// disk mounted at /root in the guest. It owns the loop devices and
// device-mapper targets it makes, and nothing else: it never mounts a guest
// filesystem (it reads a stopped VM's work disk with debugfs, as an
// unprivileged sandbox user) and knows nothing of VMMs beyond the disk
// format they accept.
//
// A copy-on-write system disk lets many VMs share one image that is never
// written through. Strategies differ in what they need of the host and what
// they hand the VMM:
//
//   - qcow2: a qcow2 overlay whose backing file is the image; QEMU only.
//   - reflink: a FICLONE clone of the image on a filesystem that supports it
//     (XFS with reflink, btrfs); any VMM.
//   - dm-snapshot: a device-mapper snapshot target over a read-only loop of
//     the image and a loop of a sparse per-VM cow file; any VMM, needs
//     device-mapper.
//
// Every strategy costs the same for a 1 GiB and a 20 GiB image.
package storage

import "context"

// SystemDisk is what a strategy made for one VM.
type SystemDisk struct {
	// Path is what the VMM opens: a file (qcow2 overlay, clone) or a block
	// device (/dev/mapper/…).
	Path   string
	Format string // vmm.FormatRaw or vmm.FormatQcow2
	// Loops and DMNames are the kernel objects made by Attach; the daemon
	// records them as transient VM handles so that a restarted daemon can
	// tear them down.
	Loops   []string
	DMNames []string
	// VMDir is the VM directory the disk belongs to. dm-snapshot's Detach
	// finds the VM's loops and target by it, and detaches no loop that is
	// not the VM's, whatever Loops says (loop numbers are reused).
	VMDir string
}

// Strategy makes copy-on-write system disks.
//
// The per-VM state of a strategy lives in two parts: durable files made by
// Create in the VM directory (kept across stop/start) and kernel objects made
// by Attach (loops, dm targets) that exist only while the VM runs.
type Strategy interface {
	// Name is the strategy's name as stored in VM records: "qcow2",
	// "reflink" or "dm-snapshot".
	Name() string

	// Available reports whether the strategy works on this host for files
	// under dir (e.g. reflink needs FICLONE there), with the reason when not.
	Available(dir string) (ok bool, reason string)

	// Format is the disk format the strategy hands out (vmm.FormatRaw or
	// vmm.FormatQcow2), matched against a driver's vmm.Driver.Formats.
	Format() string

	// Create makes the durable per-VM files for a system disk over image in
	// vmDir, at a cost independent of the image size. It is called once at
	// VM creation; calling it again for the same vmDir replaces what a
	// previous, interrupted call left.
	Create(ctx context.Context, image, vmDir string) error

	// Attach makes the disk usable by a VMM before a boot and returns it.
	// For file strategies it makes nothing and returns the file. Attach for
	// a VM whose objects exist already (a crashed daemon) must succeed and
	// reuse or replace them.
	Attach(ctx context.Context, image, vmDir string) (SystemDisk, error)

	// Detach removes the kernel objects Attach made (named in d, as recorded
	// in the VM's handles, or found by d.VMDir when none were recorded).
	// Objects already gone are not an error.
	Detach(ctx context.Context, d SystemDisk) error

	// Remove deletes the durable files Create made. Missing files are not an
	// error.
	Remove(ctx context.Context, vmDir string) error
}
