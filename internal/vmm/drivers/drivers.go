// Package drivers builds banger's vmm.Registry from the daemon's
// configuration. It is the one place that names every VMM package, so that
// the daemon depends on package vmm alone.
package drivers

import (
	"github.com/banger/banger/internal/vmm"
	"github.com/banger/banger/internal/vmm/firecracker"
	"github.com/banger/banger/internal/vmm/qemu"
)

// Config is what the drivers take from the daemon's configuration.
type Config struct {
	Firecracker string // firecracker binary ("": firecracker on PATH)
	QEMU        string // QEMU binary ("": qemu-system-x86_64 on PATH)
	Accel       string // QEMU accelerator: "auto", "kvm" or "tcg"
	// VMMUser is the unprivileged user QEMU drops to (""
	// vmmuser.Default), created when missing; NoVMMUser keeps QEMU
	// running as the daemon's user.
	VMMUser   string
	NoVMMUser bool
	// ProbeKernel returns the kernel the drivers' KVM probes boot, and
	// false while there is none. It is asked at each decision: the
	// default kernel may be registered after the daemon starts.
	ProbeKernel func() (vmm.Kernel, bool)
}

// New returns the registry of every driver, Firecracker first: it is
// preferred where KVM runs guests, QEMU runs everywhere else.
func New(c Config) *vmm.Registry {
	probe := c.ProbeKernel
	if probe == nil {
		probe = func() (vmm.Kernel, bool) { return vmm.Kernel{}, false }
	}
	qpk := func() *qemu.ProbeKernel {
		k, ok := probe()
		if !ok {
			return nil
		}
		kernel := k.BzImage
		if kernel == "" {
			kernel = k.Vmlinux
		}
		return &qemu.ProbeKernel{Kernel: kernel, Initrd: k.Initrd}
	}
	fpk := func() string {
		k, _ := probe()
		return k.Vmlinux
	}
	return vmm.NewRegistry(
		firecracker.New(firecracker.Options{Binary: c.Firecracker, ProbeKernel: fpk}),
		qemu.New(qemu.Options{Binary: c.QEMU, Accel: c.Accel, ProbeKernel: qpk, RunAs: c.VMMUser, NoRunAs: c.NoVMMUser}),
	)
}
