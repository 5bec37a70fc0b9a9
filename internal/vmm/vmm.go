// Package vmm defines what the daemon needs of a virtual machine monitor and
// the Registry that picks one. Each VMM lives in its own sub-package
// (vmm/firecracker, vmm/qemu) and vmm/drivers builds the registry of both
// from the daemon's configuration; nothing outside internal/vmm knows a
// VMM's name, API, flags or files.
//
// What a driver owns: the VMM process, its api socket, the vsock socket the
// VMM binds, and files of its own in the VM directory (QEMU's pid file).
// What it must not touch: host networking, disks and the store. Taps and
// disk files arrive ready in the Spec; a driver says only which disk formats
// it accepts (Formats) and storage picks a strategy to match.
//
// The daemon is not the parent of a VMM process after it restarts, so a VM is
// identified on the host by the api socket its VMM was started with: Find
// looks the process up by that socket, and every method that acts on a
// running VM takes the Handle recorded at Start (or rebuilt by Find).
//
// Abilities that not every VMM has are small interfaces next to Driver
// (AccelReporter, Confiner, Snapshotter, Overlayer, Controller,
// LinkSetter), found by a type assertion on a
// Driver and never stubbed: a driver without the ability does not
// implement the interface.
package vmm

import (
	"context"
	"errors"
	"net"
	"time"
)

// Disk formats a driver may accept (see Driver.Formats).
const (
	FormatRaw   = "raw"
	FormatQcow2 = "qcow2"
)

// Disk is a block device given to the guest, in the order the guest sees
// them (vda, vdb, …).
type Disk struct {
	ID       string // "root", "work", …; unique within a Spec
	Path     string // file or block device on the host
	Format   string // FormatRaw or FormatQcow2, one of the driver's Formats
	ReadOnly bool
}

// NetIface is the guest's network interface, backed by a host tap device.
type NetIface struct {
	Tap string // host tap device name, already created and attached to the bridge
	MAC string // guest MAC, "02:…"
	// LinkDown holds the guest's link down when a Restore lets the guest
	// run, until LinkSetter.SetLink raises it: a fork restored with its
	// parent's addresses must not reach the bridge before it is told its
	// own. Only drivers that implement LinkSetter honour it.
	LinkDown bool
}

// Kernel is the guest kernel and how to boot it.
type Kernel struct {
	Vmlinux string // uncompressed ELF; Firecracker needs it, QEMU accepts it
	BzImage string // optional compressed image, preferred by QEMU when set
	Initrd  string // optional
}

// Spec is everything a driver needs to boot one VM. All paths are absolute
// and live in the VM's directory unless noted.
type Spec struct {
	ID        string // VM id; used as the VMM's instance id
	Name      string
	Dir       string // the VM directory
	CPUs      int
	MemoryMiB int
	Kernel    Kernel
	Cmdline   string // full kernel command line (the driver may append console settings of its own)
	Disks     []Disk // Disks[0] is the root disk
	Net       *NetIface
	CID       uint32 // vsock context id (0: no vsock)
	APISocket string // firecracker api socket or QEMU QMP socket
	VsockPath string // host side unix socket of the vsock
	LogPath   string // VMM's own log
	Console   string // guest serial console output
	Metrics   string // metrics file (firecracker)
}

// VsockFile is the name of a VM's vsock socket in its directory: the
// daemon gives Spec.VsockPath as <Dir>/VsockFile, and a driver whose
// control channel runs over vsock finds it there (Controller gets the
// directory only).
const VsockFile = "vsock.sock"

// Handle identifies a started VMM process.
type Handle struct {
	PID       int
	APISocket string
}

// ErrNotFound is returned by Find when no live VMM process holds the socket.
var ErrNotFound = errors.New("vmm process not found")

// Driver starts and stops VMs with one VMM.
//
// Implementations must be safe for concurrent use on different VMs; the
// daemon serialises calls for one VM.
type Driver interface {
	// Name is the driver's name as shown to users, given to --vmm and
	// stored in VM records. It never changes: records keep it.
	Name() string

	// Formats lists the disk formats the VMM opens, preferred first. The
	// daemon picks the system disk's storage strategy from it. Constant.
	Formats() []string

	// InstallHint tells a user what to install or configure when Available
	// says no, for `banger doctor`. Constant.
	InstallHint() string

	// Available reports whether this host can run the driver (binary found,
	// accelerator usable), with a human reason in both cases. It may take
	// a few seconds the first time (a probe) and must cache its answer.
	Available(ctx context.Context) (ok bool, reason string)

	// Start launches the VMM process for spec, configures it and boots the
	// guest. It returns once the VMM reports the guest started (not when the
	// guest is ready for SSH). The process must not be a child that dies with
	// the daemon: it runs in its own session, its output goes to spec.LogPath.
	// On error Start leaves no process behind and removes the sockets it
	// made. Calling Start for a spec whose APISocket is held by a live
	// process must fail.
	Start(ctx context.Context, spec Spec) (Handle, error)

	// Shutdown asks the guest to power off (Ctrl-Alt-Del for Firecracker,
	// ACPI power button for QEMU) and returns without waiting. It is not an
	// error if the process is already gone.
	Shutdown(ctx context.Context, h Handle) error

	// Kill ends the VMM process at once (SIGKILL after a short grace) and
	// removes the sockets it leaves (api socket, and the vsock socket where
	// the VMM binds one), unless a newer VMM holds the api socket.
	// Idempotent: killing a gone process is not an error.
	Kill(ctx context.Context, h Handle) error

	// Find returns the handle of the live VMM process started with
	// apiSocket, or ErrNotFound. Used to reconcile after a daemon restart.
	Find(apiSocket string) (Handle, error)

	// Alive reports whether the process of h is still the VMM started with
	// h.APISocket (a recycled PID is not alive).
	Alive(h Handle) bool

	// Owns reports whether vmDir holds a file only this driver's VMs have,
	// so that a VM directory with no record can be told apart. A driver
	// that leaves no such file says false. It reads, never writes.
	Owns(vmDir string) bool

	// Cleanup removes every file a Start of spec may leave in the VM
	// directory once the process is gone: spec.APISocket, spec.VsockPath
	// and the driver's own files (QEMU's pid file). Only spec.Dir,
	// spec.APISocket and spec.VsockPath are read. Logs, console and disks
	// are the VM's and stay. Idempotent: missing files are not an error.
	// The caller ends the process first (Kill).
	Cleanup(spec Spec) error
}

// AccelReporter is an optional ability of a Driver: which accelerator
// ("kvm", "tcg") it uses on this host, and why. A driver that can only
// use one has no need to say.
type AccelReporter interface {
	// Accel returns the accelerator Start will use ("" when the driver is
	// unavailable) and why it was chosen. It may probe like Available and
	// caches like it.
	Accel(ctx context.Context) (accel, reason string)
}

// Confiner is an optional ability of a Driver: how the VMM processes it
// starts are confined on this host (another user, a seccomp filter, a
// chroot), for `banger doctor`. The guest runs a stranger's code; a VMM
// bug that hands it the VMM process should hand it as little as possible.
type Confiner interface {
	// Confinement describes the confinement Start applies ("qemu runs as
	// user banger-vmm (uid 996) under -sandbox …") and reports whether it
	// is the confinement the driver aims for: ok is false when the VMM runs
	// with the daemon's privileges or without its sandbox, and what then
	// says why and what is missing. It never fails a Start: a driver that
	// cannot confine still runs VMs. It may probe like Available and
	// caches like it.
	Confinement(ctx context.Context) (what string, ok bool)
}

// Snapshotter is an optional ability of a Driver: writing a running
// guest's whole state (memory, vCPUs, devices) to files and starting a new
// VMM process from them, so that the guest goes on where it stopped, with
// its processes, open files and connections.
//
// The model: Save freezes the guest and writes its state into a directory
// the caller gives (the caller owns the directory: it makes it, renames it
// once Save succeeded, and removes it); the VMM process stays, with the
// guest paused, until the caller either Kills it (the guest now lives only
// in the directory: pause to disk) or Resumes it (the guest goes on and the
// directory is a point-in-time copy: a snapshot). Restore starts a fresh
// VMM from such a directory. Disks are not part of the state: the caller
// keeps them unchanged between Save and Restore (or captures them while the
// guest is paused, for a snapshot that outlives the disks' next writes).
//
// The three flows:
//
//	pause:    Save(h, dir) → Kill(h) … Restore(spec, dir) → remove dir
//	snapshot: Save(h, dir) → copy disks → Resume(h)
//	fork:     Restore(spec', dir) with spec' naming other disks and tap
type Snapshotter interface {
	// Save stops the guest's vCPUs and writes its memory and device state
	// into dir, which must exist and is the caller's; the files it writes
	// there are named by StateFiles. It returns once every byte is written
	// and synced, leaving the VMM process alive with the guest paused. It
	// takes time proportional to the memory the guest has touched (QEMU
	// skips zero pages). On error the guest is resumed where possible, and
	// files Save left in dir are the caller's to remove with dir. Calling
	// it on a paused guest (a second Save) is allowed.
	Save(ctx context.Context, h Handle, dir string) error

	// Resume lets the vCPUs of a guest paused by Save run again in the
	// same VMM process. Resuming a running guest is not an error.
	Resume(ctx context.Context, h Handle) error

	// Restore starts a new VMM process for spec from the state Save wrote
	// into dir and returns once the guest runs again, with Start's
	// guarantees (own session, output to spec.LogPath, nothing left on
	// error, refused when spec.APISocket is held by a live process).
	// spec must describe the machine the state was saved from: the same
	// CPUs, memory, kernel and disks in the same order with the same
	// contents; its tap may be another device (the guest keeps its MAC and
	// addresses). Like Start, it removes a stale socket the VMM binds
	// (Firecracker's vsock, which must not exist at load). Once it returns, dir may be removed: the VMM keeps open what
	// it still needs.
	Restore(ctx context.Context, spec Spec, dir string) (Handle, error)

	// StateFiles names the files Save writes in dir, for the caller to
	// check, size and remove. Pure.
	StateFiles(dir string) []string
}

// Overlayer is an optional ability of a Driver: capturing a running VM's
// disks with the guest frozen only for a moment. A disk (qcow2 or raw)
// gets an empty qcow2 overlay on top while the guest is stopped, and the
// captured file's data can be copied up into that overlay later while
// the guest runs (Stream), or the whole disk moved onto a new raw file
// (Mirror), so the disk no longer needs it. Any disk can be copied as it is at an
// instant while the guest runs on (a backup).
//
// The flows (a snapshot):
//
//	Save(h, dir) → Overlay(h, disk, next) → rename files → Resume(h) … Stream(h, disk, base)
//	Save(h, dir) → StartBackup(h, disk, path) → Resume(h) → WaitBackup(h, job)
type Overlayer interface {
	// Overlay puts the qcow2 file at path on top of the disk with id
	// diskID of the VM behind h, whose guest Save stopped: the guest's
	// writes go to that file from then on and its reads fall through to
	// the disk's former file, which the VMM holds only read-only from
	// then on. path must be an empty qcow2 image of the disk's size whose
	// header names the former file, by the path it will have, as its
	// backing: the VMM never opens that name. It refuses with
	// ErrNoOverlay, changing nothing, when the guest runs or the VMM
	// could not let go of writing the former file (a disk it was not
	// started with as the driver starts them); the caller captures the
	// disk another way then. An error that wraps ErrOverlaid says the
	// top was switched anyway (the caller must treat the disk as
	// overlaid) though the VMM may still hold the former file writable.
	Overlay(ctx context.Context, h Handle, diskID, path string) error

	// Stream copies what the file under the disk's top holds into the top
	// and then makes that file's own backing the top's backing, named
	// basePath in the top's header: the disk no longer needs the file.
	// basePath must be what that file's header names. It copies one file
	// each time it is called, so the caller checks the top's header first
	// (a Stream that finished unseen is not done again). The guest runs
	// meanwhile. It returns nil once done. When ctx ends it returns, the
	// copy may go on in the VMM, and a later Stream waits for it; if the
	// VMM exits first the disk is left valid, partly copied, and a Stream
	// in its next VMM copies the rest.
	Stream(ctx context.Context, h Handle, diskID, basePath string) error

	// StartBackup starts copying the disk diskID, as it is at this
	// instant, into the file at path (a raw file of the disk's size,
	// which the VMM opens by descriptor), on a guest Save stopped, and
	// returns the copy's name for WaitBackup. The guest may run on
	// meanwhile: the VMM copies the instant's data of a region before
	// the guest overwrites it. It refuses with ErrNoOverlay a running
	// guest.
	StartBackup(ctx context.Context, h Handle, diskID, path string) (string, error)

	// WaitBackup waits for the copy StartBackup started and lets go of
	// its file, also when the copy failed or ctx ended (the copy is
	// cancelled then): the file is whole only when it returns nil. The
	// regions of the disk that read as zeroes may come out written (not
	// holes) in the file.
	WaitBackup(ctx context.Context, h Handle, job string) error

	// DropBackups cancels every copy StartBackup or Mirror started in the
	// VMM behind h and lets go of its file, returning how many there
	// were: for a daemon that restarted, the copies the one before it
	// started and never waited for (their names went with it). A Mirror
	// whose disk was switched already is left switched.
	DropBackups(ctx context.Context, h Handle) (int, error)

	// Mirror makes the file at path (raw, of the disk's size, empty) the
	// disk diskID of the running VM behind h: the VMM copies the disk
	// into it while the guest runs on (what reads as zeroes stays a
	// hole), then switches the disk onto it and lets go of the disk's
	// former files. It returns nil once the disk is that file; an error
	// leaves the disk as it was, unless it says the switch was made. A
	// disk that is raw already (a Mirror cut short after its switch) is
	// left as it is and nil returned if the VMM holds the file at path
	// (the host's view, not the VMM's word); an error if not. A disk
	// Mirror switched can be overlaid later as one the VM started with.
	Mirror(ctx context.Context, h Handle, diskID, path string) error
}

// ErrNoOverlay: Overlayer.Overlay changed nothing; capture the disk
// another way.
var ErrNoOverlay = errors.New("the disk cannot be overlaid in place")

// ErrOverlaid: Overlayer.Overlay switched the disk's top but failed after.
var ErrOverlaid = errors.New("the disk was overlaid")

// Controller is an optional ability of a Driver: a byte stream to
// banger's guest side that needs no network (internal/guestctl speaks on
// it), so a guest can be asked whether it is up, who it is, to set its
// clock or to power off before its network works — a restored fork is
// told its new identity that way before its link reaches the bridge.
type Controller interface {
	// DialControl connects to the control channel of the VM whose
	// directory is dir, running under a VMM this driver started. The
	// connection is the caller's to close. It fails at once when no VMM
	// serves the channel; it does not wait for the guest side, which
	// answers only once the guest has booted that far (ask with a
	// deadline). A guest that never serves it leaves the caller waiting
	// until that deadline: in its reads (a serial port, which accepts
	// the host before the guest listens) or in DialControl itself (a
	// vsock, where the VMM refuses a port the guest does not listen on
	// and the driver asks again).
	DialControl(ctx context.Context, dir string) (net.Conn, error)
}

// LinkSetter is an optional ability of a Driver: raising or dropping the
// link of a running guest's network interface (the carrier the guest
// sees), as a cable would. Restore honours Spec.Net.LinkDown only in a
// driver that has it. A driver without it (Firecracker has no carrier
// API) still runs forks: the daemon then holds the host side of the
// guest's tap down instead, which the driver never touches.
type LinkSetter interface {
	// SetLink sets the link of the VM's interface up or down. Setting it
	// as it is is not an error.
	SetLink(ctx context.Context, h Handle, up bool) error
}

// WaitExit polls until the process of h is gone or ctx ends; it returns true
// when the process exited.
func WaitExit(ctx context.Context, d Driver, h Handle, poll time.Duration) bool {
	t := time.NewTicker(poll)
	defer t.Stop()
	for {
		if !d.Alive(h) {
			return true
		}
		select {
		case <-ctx.Done():
			return !d.Alive(h)
		case <-t.C:
		}
	}
}
