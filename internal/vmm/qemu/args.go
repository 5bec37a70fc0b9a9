package qemu

import (
	"fmt"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/banger/banger/internal/guestctl"
	"github.com/banger/banger/internal/vmm"
)

// Machine types the driver knows how to wire devices for.
const (
	MachineMicrovm = "microvm" // virtio-mmio devices, no PCI; fastest boot
	MachineQ35     = "q35"     // PCI (virtio-*-pci), firmware boot path
)

// ArgOptions are the host-dependent choices that BuildArgs does not take
// from the spec.
type ArgOptions struct {
	Machine    string // MachineMicrovm (default) or MachineQ35
	Accel      string // "kvm" or "tcg"
	TSCkHz     int    // host TSC in kHz; under TCG added as tsc_early_khz= when > 0
	VhostVsock bool   // host has /dev/vhost-vsock: give the guest a vsock when spec.CID != 0
	// Sandbox turns on QEMU's seccomp filter (-sandbox, see SandboxArg).
	Sandbox bool
	// RunAs is the user QEMU drops to once started (-runas); "" keeps the
	// daemon's user.
	RunAs string
	// Chroot makes QEMU chroot into ChrootDir(spec.Dir) as it drops to
	// RunAs, so that it can open no path afterwards.
	Chroot bool
}

// SandboxArg is the -sandbox value: QEMU's seccomp filter denying obsolete
// system calls, spawning processes and changing scheduling or resource
// limits, and, when QEMU keeps the daemon's user (runAs false), changing
// user or group ids. With -runas that last part has to go: QEMU 7.2
// installs the filter before -runas drops privileges, so
// elevateprivileges=deny kills QEMU at its own setuid ("Bad system call").
// Once dropped QEMU has no capabilities and no_new_privs set (the filter
// sets it), so set*id calls cannot raise it anyway.
func SandboxArg(runAs bool) string {
	s := "on,obsolete=deny,spawn=deny,resourcecontrol=deny"
	if !runAs {
		s += ",elevateprivileges=deny"
	}
	return s
}

var idRE = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_-]{0,31}$`)

// PIDFile is where QEMU writes its PID, in the VM directory.
func PIDFile(dir string) string { return filepath.Join(dir, "qemu.pid") }

// ChrootDir is the empty directory QEMU chroots into, in the VM directory.
// Start makes it (root's, mode 0555: the dropped QEMU cannot write to it)
// and Cleanup removes it.
func ChrootDir(dir string) string { return filepath.Join(dir, "qemu-root") }

// CtlSocket is the host side of the guest's control channel (a
// virtio-serial port named guestctl.PortName), in the VM directory. QEMU
// binds it before it drops privileges, like the QMP socket.
func CtlSocket(dir string) string { return filepath.Join(dir, "ctl.sock") }

// qmpArg is the exact -qmp value for a socket path; Find matches on it.
func qmpArg(socket string) string {
	return "unix:" + escape(socket) + ",server=on,wait=off"
}

// escape doubles commas, QEMU's quoting inside option values.
func escape(s string) string { return strings.ReplaceAll(s, ",", ",,") }

// The opaque strings that mark an fdset's two descriptors of one disk.
const (
	fdWritable = "rw"
	fdReadOnly = "ro"
)

// DescriptorDisks returns the indices in spec.Disks of the disks QEMU is
// handed as descriptors rather than paths: the writable ones (qcow2 or
// raw), each as an fdset holding a read-write and a read-only descriptor
// of the file. That is what lets Overlay put a new file on top of such a
// disk and leave QEMU holding the old one read-only: QEMU reopens the
// old file read-only through its fdset, which a QEMU confined to an
// empty chroot could not do by path. Start passes the files in this
// order, two per disk (read-write, then read-only), from descriptor 3.
// Pure.
func DescriptorDisks(spec vmm.Spec) []int {
	var out []int
	for i, d := range spec.Disks {
		if !d.ReadOnly {
			out = append(out, i)
		}
	}
	return out
}

// diskFDs gives disk i's fdset id and descriptor numbers in the started
// QEMU, ok false when it is opened by path.
func diskFDs(spec vmm.Spec, i int) (set, rw, ro int, ok bool) {
	for k, j := range DescriptorDisks(spec) {
		if j == i {
			return k + 1, 3 + 2*k, 4 + 2*k, true
		}
	}
	return 0, 0, 0, false
}

// fdsetPath is the name QEMU opens an fdset's file by.
func fdsetPath(set int) string { return "/dev/fdset/" + strconv.Itoa(set) }

// BuildArgs returns QEMU's argv (without the binary) for spec. It does no
// I/O. It refuses a spec it cannot express: unknown machine or accelerator,
// a disk with an unknown format or a bad id, no api socket.
func BuildArgs(spec vmm.Spec, o ArgOptions) ([]string, error) {
	machine := o.Machine
	if machine == "" {
		machine = MachineMicrovm
	}
	var blkDev, netDev, vsockDev, serialDev, mflag string
	switch machine {
	case MachineMicrovm:
		// acpi=on: the Debian cloud kernel finds no disk on microvm without it.
		mflag, blkDev, netDev, vsockDev, serialDev = "microvm,acpi=on", "virtio-blk-device", "virtio-net-device", "vhost-vsock-device", "virtio-serial-device"
	case MachineQ35:
		mflag, blkDev, netDev, vsockDev, serialDev = "q35", "virtio-blk-pci", "virtio-net-pci", "vhost-vsock-pci", "virtio-serial-pci"
	default:
		return nil, fmt.Errorf("unknown qemu machine %q: use %s or %s", machine, MachineMicrovm, MachineQ35)
	}
	if spec.APISocket == "" {
		return nil, fmt.Errorf("spec for %q has no api socket: the QMP socket is required", spec.Name)
	}
	if spec.Dir == "" {
		return nil, fmt.Errorf("spec for %q has no VM directory", spec.Name)
	}
	cpus, mem := spec.CPUs, spec.MemoryMiB
	if cpus <= 0 {
		cpus = 1
	}
	if mem <= 0 {
		return nil, fmt.Errorf("spec for %q: memory must be positive, got %d MiB", spec.Name, mem)
	}
	name := spec.Name
	if name == "" {
		name = spec.ID
	}
	args := []string{"-name", escape(name), "-M", mflag}
	switch o.Accel {
	case "kvm":
		args = append(args, "-accel", "kvm", "-cpu", "host")
	case "tcg":
		args = append(args, "-accel", "tcg,thread=multi", "-cpu", "max")
	default:
		return nil, fmt.Errorf("unknown accelerator %q: use kvm or tcg", o.Accel)
	}
	args = append(args,
		"-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
		"-smp", strconv.Itoa(cpus), "-m", strconv.Itoa(mem),
	)
	if kernel := bootKernel(spec.Kernel); kernel != "" {
		args = append(args, "-kernel", kernel)
		if spec.Kernel.Initrd != "" {
			args = append(args, "-initrd", spec.Kernel.Initrd)
		}
		args = append(args, "-append", Cmdline(spec.Cmdline, o))
	} else if spec.Kernel.Initrd != "" || spec.Cmdline != "" {
		return nil, fmt.Errorf("spec for %q has an initrd or command line but no kernel", spec.Name)
	}
	seen := map[string]bool{}
	for i, d := range spec.Disks {
		if !idRE.MatchString(d.ID) || seen[d.ID] {
			return nil, fmt.Errorf("disk %d id %q: want a unique id of letters, digits, '-' or '_' starting with a letter", i, d.ID)
		}
		seen[d.ID] = true
		format := d.Format
		if format == "" {
			format = "raw"
		}
		if format != "raw" && format != "qcow2" {
			return nil, fmt.Errorf("disk %q format %q: use raw or qcow2", d.ID, d.Format)
		}
		if d.Path == "" {
			return nil, fmt.Errorf("disk %q has no path", d.ID)
		}
		// file.auto-read-only=off: a completed migration (vm pause) hands
		// the disks off by dropping write permission, and with
		// auto-read-only QEMU does that by opening the file again by
		// path, which a QEMU confined to its empty chroot cannot.
		file := escape(d.Path)
		var opts string
		if set, rw, ro, ok := diskFDs(spec, i); ok {
			// By descriptor (see DescriptorDisks). locking=off: QEMU's
			// image locks are taken per open file description, and the
			// read-write one, once its fdset entry is dropped, would hold
			// a lock no node can give back; the daemon is the only one
			// to hand a VM's disk to a VMM.
			args = append(args,
				"-add-fd", "fd="+strconv.Itoa(rw)+",set="+strconv.Itoa(set)+",opaque="+fdWritable,
				"-add-fd", "fd="+strconv.Itoa(ro)+",set="+strconv.Itoa(set)+",opaque="+fdReadOnly)
			file, opts = fdsetPath(set), ",file.locking=off"
		}
		drive := "file=" + file + ",format=" + format + ",if=none,id=" + d.ID + ",cache=writeback,discard=unmap,file.auto-read-only=off" + opts
		if d.ReadOnly {
			drive += ",readonly=on"
		}
		args = append(args, "-drive", drive, "-device", blkDev+",drive="+d.ID)
	}
	if spec.Net != nil {
		if spec.Net.Tap == "" || spec.Net.MAC == "" {
			return nil, fmt.Errorf("network interface needs both a tap and a MAC, got tap %q mac %q", spec.Net.Tap, spec.Net.MAC)
		}
		args = append(args,
			"-netdev", "tap,id=net0,ifname="+escape(spec.Net.Tap)+",script=no,downscript=no",
			"-device", netDev+",netdev=net0,mac="+spec.Net.MAC)
	}
	if spec.CID != 0 && o.VhostVsock {
		args = append(args, "-device", vsockDev+",guest-cid="+strconv.FormatUint(uint64(spec.CID), 10))
	}
	// The control channel (internal/guestctl): needs no vhost and no
	// network, so it works before the guest's link is up.
	args = append(args,
		"-chardev", "socket,id=ctl,path="+escape(CtlSocket(spec.Dir))+",server=on,wait=off",
		"-device", serialDev+",id=ctlbus",
		"-device", "virtserialport,bus=ctlbus.0,chardev=ctl,name="+guestctl.PortName)
	if spec.Console != "" {
		// append=on: the console can then be cut short from outside
		// (vmm.CapLog) without QEMU writing on at its old offset.
		args = append(args, "-chardev", "file,id=serial0,path="+escape(spec.Console)+",append=on", "-serial", "chardev:serial0")
	}
	if o.Sandbox {
		args = append(args, "-sandbox", SandboxArg(o.RunAs != ""))
	}
	if o.RunAs != "" {
		// QEMU opens its disks, tap, vsock, console and QMP socket as the
		// daemon's user, then drops to this one before the guest runs.
		args = append(args, "-runas", o.RunAs)
		if o.Chroot {
			args = append(args, "-chroot", ChrootDir(spec.Dir))
		}
	}
	args = append(args,
		"-qmp", qmpArg(spec.APISocket),
		"-pidfile", PIDFile(spec.Dir),
	)
	return args, nil
}

// Cmdline is the kernel command line QEMU passes: the spec's, plus a serial
// console when it names none, plus tsc_early_khz under TCG (microvm hangs at
// TSC calibration under TCG in about one boot of four without it), and
// reboot=t in place of any reboot method: the guest's reboot (how a clean
// stop ends, -no-reboot turning it into QEMU's exit) is then a triple
// fault, which every machine resets on. microvm has no keyboard
// controller, so the reboot=k a kernel may carry for Firecracker's spent
// seconds on it and then went through the firmware's reset vector, where
// some stops (three of 16 here) hung until the stop's timeout killed QEMU.
func Cmdline(base string, o ArgOptions) string {
	args := []string{"console=ttyS0"}
	if o.Accel == "tcg" && o.TSCkHz > 0 {
		args = append(args, "tsc_early_khz="+strconv.Itoa(o.TSCkHz))
	}
	return vmm.SetKernelArg(vmm.KernelArgs(base, args...), "reboot=t")
}

// bootKernel is the kernel file QEMU boots: the compressed image when there
// is one, else the vmlinux; "" when there is neither.
func bootKernel(k vmm.Kernel) string {
	if k.BzImage != "" {
		return k.BzImage
	}
	return k.Vmlinux
}
