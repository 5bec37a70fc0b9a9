package storage

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/banger/banger/internal/vmm"
)

// dmControl is the device-mapper control node; its absence means the
// kernel has no device-mapper (dm_mod not built or not loaded).
const dmControl = "/dev/mapper/control"

// DMSnapshot makes a device-mapper snapshot target over a read-only loop of
// the image (through a per-VM hard link) and a loop of a sparse per-VM cow
// file: any VMM, needs device-mapper. The zero value looks losetup and dmsetup up on PATH.
type DMSnapshot struct {
	Losetup string // "" means look it up on PATH
	Dmsetup string // "" means look it up on PATH
}

// Name returns "dm-snapshot".
func (DMSnapshot) Name() string { return "dm-snapshot" }

// Format returns "raw": the VMM opens a block device.
func (DMSnapshot) Format() string { return vmm.FormatRaw }

func (d DMSnapshot) bins() (losetup, dmsetup string, err error) {
	if losetup, err = d.losetupBin(); err != nil {
		return "", "", err
	}
	if dmsetup, err = d.dmsetupBin(); err != nil {
		return "", "", err
	}
	return losetup, dmsetup, nil
}

func (d DMSnapshot) losetupBin() (string, error) {
	if d.Losetup != "" {
		return d.Losetup, nil
	}
	p, err := exec.LookPath("losetup")
	if err != nil {
		return "", fmt.Errorf("dm-snapshot storage needs losetup: not found on PATH (install util-linux)")
	}
	return p, nil
}

func (d DMSnapshot) dmsetupBin() (string, error) {
	if d.Dmsetup != "" {
		return d.Dmsetup, nil
	}
	p, err := exec.LookPath("dmsetup")
	if err != nil {
		return "", fmt.Errorf("dm-snapshot storage needs dmsetup: not found on PATH (install dmsetup)")
	}
	return p, nil
}

// Available reports whether the kernel has device-mapper and the tools are
// installed. dir does not matter: the cow file may live anywhere.
func (d DMSnapshot) Available(dir string) (bool, string) {
	// Opening the node asks the kernel: a stale node left by dmsetup on a
	// kernel without device-mapper exists but answers ENODEV.
	f, err := os.OpenFile(dmControl, os.O_RDWR, 0)
	if err != nil {
		return false, "device-mapper not available: " + err.Error() + " (no dm_mod)"
	}
	f.Close()
	if _, _, err := d.bins(); err != nil {
		return false, err.Error()
	}
	return true, ""
}

// DMName returns the device-mapper target name of the VM whose directory
// is vmDir (named by the VM's id): "banger-<id>-root".
func DMName(vmDir string) string { return "banger-" + filepath.Base(vmDir) + "-root" }

// DMSnapshotTable returns the dmsetup table of a persistent snapshot of
// base (sectors long) storing its changes in cow, with 8-sector (4 KiB)
// chunks.
func DMSnapshotTable(sectors int64, base, cow string) string {
	return fmt.Sprintf("0 %d snapshot %s %s P 8", sectors, base, cow)
}

// LosetupAttachArgs returns the argv attaching file to a free loop device
// and printing its name.
func LosetupAttachArgs(losetup, file string, readOnly bool) []string {
	argv := []string{losetup, "--find", "--show"}
	if readOnly {
		argv = append(argv, "--read-only")
	}
	return append(argv, file)
}

// LosetupDetachArgs returns the argv detaching loop device dev.
func LosetupDetachArgs(losetup, dev string) []string { return []string{losetup, "--detach", dev} }

// DmsetupCreateArgs returns the argv creating target name with table.
func DmsetupCreateArgs(dmsetup, name, table string) []string {
	return []string{dmsetup, "create", name, "--table", table}
}

// DmsetupRemoveArgs returns the argv removing target name; --retry rides
// out a udev process briefly holding the device open.
func DmsetupRemoveArgs(dmsetup, name string) []string {
	return []string{dmsetup, "remove", "--retry", name}
}

// DmsetupDepsArgs returns the argv listing the devices target name uses,
// by kernel name.
func DmsetupDepsArgs(dmsetup, name string) []string {
	return []string{dmsetup, "deps", "-o", "devname", name}
}

// ParseDMDeps reads "dmsetup deps -o devname" output, e.g.
// " 2 dependencies\t: (loop4) (loop3)", into device paths.
func ParseDMDeps(out string) []string {
	var devs []string
	for _, f := range strings.Fields(out) {
		if strings.HasPrefix(f, "(") && strings.HasSuffix(f, ")") && len(f) > 2 {
			devs = append(devs, "/dev/"+f[1:len(f)-1])
		}
	}
	return devs
}

// Create writes VMDIR/system.cow, a sparse file as large as the image (the
// most a snapshot can need), replacing a previous one.
func (DMSnapshot) Create(ctx context.Context, image, vmDir string) error {
	st, err := os.Stat(image)
	if err != nil {
		return fmt.Errorf("dm-snapshot cow file: image: %w", err)
	}
	path := filepath.Join(vmDir, CowFile)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, nil, 0o600); err != nil {
		return fmt.Errorf("dm-snapshot cow file: %w", err)
	}
	if err := os.Truncate(tmp, st.Size()); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("dm-snapshot cow file: %w", err)
	}
	return replaceFile(tmp, path)
}

// Attach attaches a read-only loop over the VM's base link to image (see
// baseLink) and a loop over the VM's cow file, and creates the snapshot
// target DMName(vmDir) over them. A target or loops of this VM left by a
// crash are removed first. On failure everything made so far is undone.
func (d DMSnapshot) Attach(ctx context.Context, image, vmDir string) (sd SystemDisk, err error) {
	if ok, reason := d.Available(vmDir); !ok {
		return SystemDisk{}, errors.New(reason)
	}
	losetup, dmsetup, _ := d.bins()
	st, err := os.Stat(image)
	if err != nil {
		return SystemDisk{}, fmt.Errorf("dm-snapshot: image: %w", err)
	}
	if st.Size()%512 != 0 || st.Size() == 0 {
		return SystemDisk{}, fmt.Errorf("dm-snapshot: image %s is %d bytes: must be a non-zero multiple of 512", image, st.Size())
	}
	cow := filepath.Join(vmDir, CowFile)
	if _, err := os.Stat(cow); err != nil {
		return SystemDisk{}, fmt.Errorf("dm-snapshot: cow file: %w (was the VM created?)", err)
	}
	name := DMName(vmDir)

	// Replace what a crashed daemon left: Detach finds the target and the
	// loops by the VM directory.
	if err := d.Detach(ctx, SystemDisk{VMDir: vmDir}); err != nil {
		return SystemDisk{}, fmt.Errorf("dm-snapshot: remove leftovers of %s: %w", name, err)
	}

	made := SystemDisk{VMDir: vmDir}
	defer func() {
		if err != nil {
			if derr := d.Detach(context.WithoutCancel(ctx), made); derr != nil {
				err = errors.Join(err, fmt.Errorf("undo: %w", derr))
			}
		}
	}()
	out, err := runArgv(ctx, LosetupAttachArgs(losetup, baseLink(image, vmDir), true))
	if err != nil {
		return SystemDisk{}, fmt.Errorf("dm-snapshot base loop: %w", err)
	}
	base := strings.TrimSpace(out)
	made.Loops = append(made.Loops, base)
	if out, err = runArgv(ctx, LosetupAttachArgs(losetup, cow, false)); err != nil {
		return SystemDisk{}, fmt.Errorf("dm-snapshot cow loop: %w", err)
	}
	cowLoop := strings.TrimSpace(out)
	made.Loops = append(made.Loops, cowLoop)
	table := DMSnapshotTable(st.Size()/512, base, cowLoop)
	if _, err = runArgv(ctx, DmsetupCreateArgs(dmsetup, name, table)); err != nil {
		return SystemDisk{}, fmt.Errorf("dm-snapshot target: %w", err)
	}
	made.DMNames = []string{name}
	made.Path = "/dev/mapper/" + name
	made.Format = vmm.FormatRaw
	return made, nil
}

// baseLink makes VMDIR/system.base a hard link to image (kept while it is
// one) and returns it: the VM's base loop is attached over the link, so its
// backing file names this VM, where the image is shared by every VM made
// from it. When the link cannot be made (the image on another file system)
// it returns image: the base loop is then told apart only as a dependency
// of this VM's target, and a crash before the target exists leaks it.
func baseLink(image, vmDir string) string {
	link := filepath.Join(vmDir, BaseFile)
	if a, err := os.Stat(link); err == nil {
		if b, err := os.Stat(image); err == nil && os.SameFile(a, b) {
			return link
		}
	}
	tmp := link + ".tmp"
	_ = os.Remove(tmp)
	if err := os.Link(image, tmp); err != nil {
		_ = os.Remove(link) // a link to a replaced image must not be used
		return image
	}
	if err := replaceFile(tmp, link); err != nil {
		_ = os.Remove(link)
		return image
	}
	return link
}

// Detach removes the VM's target, then its loops; what is gone already is
// skipped. A loop is detached only when it is this VM's: used by one of the
// targets removed, or backed by the VM's cow file or base link (the same
// path, and the same file as is there now). sd.Loops are the numbers
// recorded at Attach, possibly before a reboot that reassigned them: they
// decide nothing, as every attached loop is judged by what backs it. With
// sd.VMDir set, the VM's target and loops are found without any record (a
// crash before they were recorded).
func (d DMSnapshot) Detach(ctx context.Context, sd SystemDisk) error {
	names := append([]string{}, sd.DMNames...)
	var own []string
	if sd.VMDir != "" {
		names = append(names, DMName(sd.VMDir))
		own = vmLoopFiles(sd.VMDir)
	}
	var errs []error
	deps := map[string]bool{}
	done := map[string]bool{}
	if _, err := os.Stat(dmControl); err == nil {
		for _, name := range names {
			if done[name] {
				continue
			}
			done[name] = true
			if _, err := os.Stat("/dev/mapper/" + name); err != nil {
				continue // gone already
			}
			dmsetup, err := d.dmsetupBin()
			if err != nil {
				return err
			}
			if out, err := runArgv(ctx, DmsetupDepsArgs(dmsetup, name)); err == nil {
				for _, dev := range ParseDMDeps(out) {
					deps[dev] = true
				}
			}
			if _, err := runArgv(ctx, DmsetupRemoveArgs(dmsetup, name)); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if len(deps) == 0 && len(own) == 0 {
		return errors.Join(errs...) // no loop can be told to be the VM's
	}
	losetup, err := d.losetupBin()
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	loops, err := listLoops(ctx, losetup)
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	for _, l := range loops {
		if !deps[l.Name] && !ownsLoop(own, l) {
			continue
		}
		if _, err := runArgv(ctx, LosetupDetachArgs(losetup, l.Name)); err != nil {
			if _, still := loopBacking(l.Name); still {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// Remove deletes the cow file and the base link.
func (DMSnapshot) Remove(ctx context.Context, vmDir string) error {
	cow, base := filepath.Join(vmDir, CowFile), filepath.Join(vmDir, BaseFile)
	return removeFiles(cow, cow+".tmp", base, base+".tmp")
}
