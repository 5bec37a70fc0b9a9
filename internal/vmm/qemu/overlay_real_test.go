package qemu

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/banger/banger/internal/vmm"
)

// openMode reports whether pid holds the file at path open (by inode: a
// file renamed or linked since counts) and whether writable.
func openMode(t *testing.T, pid int, path string) (open, writable bool) {
	t.Helper()
	want, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		fi, err := os.Stat(filepath.Join(dir, e.Name()))
		if err != nil || !os.SameFile(fi, want) {
			continue
		}
		open = true
		info, err := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%s", pid, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range strings.Split(string(info), "\n") {
			if v, ok := strings.CutPrefix(l, "flags:"); ok {
				f, _ := strconv.ParseInt(strings.TrimSpace(v), 8, 64)
				writable = writable || int(f)&(os.O_WRONLY|os.O_RDWR) != 0
			}
		}
	}
	return open, writable
}

// TestRealOverlay captures a running machine's qcow2 disk twice the way a
// snapshot does (Save, Overlay, rename, Resume), as confined as this host
// allows: after each, QEMU holds the captured file read-only and writes
// only the new top. Overlay refuses a running guest and changes nothing
// then. Stream then copies the captured files' data up into the top,
// which afterwards reads the same with them removed.
func TestRealOverlay(t *testing.T) {
	needQEMU(t)
	ctx := context.Background()
	d := New(Options{Machine: MachineQ35, Accel: "tcg"})
	what, _ := d.Confinement(ctx)
	t.Logf("confinement: %s", what)
	spec := firmwareSpec(t)
	dir := spec.Dir
	base := filepath.Join(dir, "base.img")
	root := filepath.Join(dir, "root.qcow2")
	runCmd(t, "truncate", "-s", "8M", base)
	runCmd(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "raw", root)
	runCmd(t, "qemu-io", "-c", "write -P 7 0 1M", root)
	spec.Disks = []vmm.Disk{{ID: "root", Path: root, Format: vmm.FormatQcow2}}
	killAfter(t, d, spec)
	h, err := d.Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Overlay(ctx, h, "root", root); !errors.Is(err, vmm.ErrNoOverlay) {
		t.Fatalf("Overlay of a running guest: %v, want ErrNoOverlay", err)
	}
	state := filepath.Join(dir, "state")
	if err := os.Mkdir(state, 0o700); err != nil {
		t.Fatal(err)
	}
	capture := func(name string) {
		t.Helper()
		if err := d.Save(ctx, h, state); err != nil {
			t.Fatal(err)
		}
		snap := filepath.Join(dir, name)
		next := root + ".next"
		if err := os.Link(root, snap); err != nil {
			t.Fatal(err)
		}
		runCmd(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", snap, "-F", "qcow2", "-o", "size=8M", next)
		if err := d.Overlay(ctx, h, "root", next); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(next, root); err != nil {
			t.Fatal(err)
		}
		if err := d.Resume(ctx, h); err != nil {
			t.Fatal(err)
		}
		if st := status(t, h); st != "running" {
			t.Fatalf("status after Resume = %q", st)
		}
		if open, w := openMode(t, h.PID, snap); !open || w {
			t.Fatalf("captured %s: open %v writable %v, want open read-only", name, open, w)
		}
		if open, w := openMode(t, h.PID, root); !open || !w {
			t.Fatalf("new top: open %v writable %v, want writable", open, w)
		}
	}
	capture("s1.qcow2")
	capture("s2.qcow2")

	// The top reads through s2 and s1 to base: copy s2 up onto s1, then
	// s1 onto base.
	s1 := filepath.Join(dir, "s1.qcow2")
	if err := d.Stream(ctx, h, "root", s1); err != nil {
		t.Fatal(err)
	}
	if err := d.Stream(ctx, h, "root", base); err != nil {
		t.Fatal(err)
	}
	if err := d.Kill(ctx, h); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"s1.qcow2", "s2.qcow2"} {
		if err := os.Remove(filepath.Join(dir, f)); err != nil {
			t.Fatal(err)
		}
	}
	runCmd(t, "qemu-io", "-r", "-c", "read -P 7 0 1M", root)
	assertNothingLeft(t, spec)
}
