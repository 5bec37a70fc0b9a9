package qemu

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/banger/banger/internal/proc"
	"github.com/banger/banger/internal/vmm"
)

// openMode reports whether pid holds the file at path open and whether
// writable.
func openMode(t *testing.T, pid int, path string) (open, writable bool) {
	t.Helper()
	if _, err := os.Stat(path); err != nil {
		t.Fatal(err)
	}
	return proc.Holds(pid, path)
}

// captureRaw takes a running machine's raw disk diskID (the file at
// path) in place as a snapshot of a running VM does its work disk: Save,
// Overlay onto a qcow2 file naming snap (returned), the file renamed
// snap (the daemon renames it just before the switch; QEMU, holding it
// by descriptor, sees no difference), Resume. QEMU must then hold snap
// read-only and the new top writable.
func captureRaw(t *testing.T, d *Driver, h vmm.Handle, diskID, path, snap string) string {
	t.Helper()
	ctx := context.Background()
	state := filepath.Join(filepath.Dir(path), "state-"+filepath.Base(snap))
	if err := os.Mkdir(state, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := d.Save(ctx, h, state); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	top := snap + ".qcow2"
	// -u: snap is the name path takes after the switch.
	runCmd(t, "qemu-img", "create", "-q", "-u", "-f", "qcow2", "-b", snap, "-F", "raw", top, fmt.Sprint(fi.Size()))
	if err := d.Overlay(ctx, h, diskID, top); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path, snap); err != nil {
		t.Fatal(err)
	}
	if err := d.Resume(ctx, h); err != nil {
		t.Fatal(err)
	}
	if open, w := openMode(t, h.PID, snap); !open || w {
		t.Fatalf("captured %s: open %v writable %v, want open read-only", filepath.Base(snap), open, w)
	}
	if open, w := openMode(t, h.PID, top); !open || !w {
		t.Fatalf("new top: open %v writable %v, want writable", open, w)
	}
	return top
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

// TestRealBackup copies a raw disk as it is at a Save into a file while
// the guest runs on and writes it (QEMU's own qemu-io over HMP stands in
// for the guest): the copy holds the instant's data, the disk the new
// data, and QEMU keeps nothing of the copy's file once WaitBackup
// returns. A running guest is refused.
func TestRealBackup(t *testing.T) {
	needQEMU(t)
	ctx := context.Background()
	d := New(Options{Machine: MachineQ35, Accel: "tcg"})
	spec := firmwareSpec(t)
	dir := spec.Dir
	work := filepath.Join(dir, "work.ext4")
	runCmd(t, "truncate", "-s", "64M", work)
	runCmd(t, "qemu-io", "-f", "raw", "-c", "write -P 9 0 1M", "-c", "write -P 9 63M 1M", work)
	spec.Disks = []vmm.Disk{{ID: "work", Path: work, Format: vmm.FormatRaw}}
	killAfter(t, d, spec)
	h, err := d.Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	copyPath := filepath.Join(dir, "copy.ext4")
	runCmd(t, "truncate", "-s", "64M", copyPath)
	if _, err := d.StartBackup(ctx, h, "work", copyPath); !errors.Is(err, vmm.ErrNoOverlay) {
		t.Fatalf("StartBackup of a running guest: %v, want ErrNoOverlay", err)
	}
	state := filepath.Join(dir, "state")
	if err := os.Mkdir(state, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := d.Save(ctx, h, state); err != nil {
		t.Fatal(err)
	}
	d.backupSpeed = 1 << 20 // the writes below land before the copy reaches the end
	job, err := d.StartBackup(ctx, h, "work", copyPath)
	if err != nil {
		t.Fatal(err)
	}
	hmp := func(c *qmp, cmd string) error {
		return c.execute(ctx, "human-monitor-command", map[string]any{"command-line": cmd}, nil)
	}
	if err := d.Resume(ctx, h); err != nil {
		t.Fatal(err)
	}
	if err := withQMP(ctx, h.APISocket, func(c *qmp) error {
		if err := hmp(c, `qemu-io work "write -P 5 0 1M"`); err != nil {
			return err
		}
		if err := hmp(c, `qemu-io work "write -P 5 63M 1M"`); err != nil {
			return err
		}
		var jobs []struct {
			ID       string `json:"id"`
			Status   string `json:"status"`
			Progress int64  `json:"current-progress"`
			Total    int64  `json:"total-progress"`
		}
		if err := c.execute(ctx, "query-jobs", nil, &jobs); err != nil {
			return err
		}
		if len(jobs) != 1 || jobs[0].Status != "running" || jobs[0].Progress >= 63<<20 {
			return fmt.Errorf("the writes did not land while the copy was short of them: %+v", jobs)
		}
		return c.execute(ctx, "block-job-set-speed", map[string]any{"device": job, "speed": 0}, nil)
	}); err != nil {
		t.Fatal(err)
	}
	if err := d.WaitBackup(ctx, h, job); err != nil {
		t.Fatal(err)
	}
	if open, _ := openMode(t, h.PID, copyPath); open {
		t.Fatal("qemu still holds the copy's file")
	}

	// A copy whose daemon went before it waited: the next one drops it.
	lost := filepath.Join(dir, "lost.ext4")
	runCmd(t, "truncate", "-s", "64M", lost)
	d.backupSpeed = 1 << 16
	if err := withQMP(ctx, h.APISocket, func(c *qmp) error { return c.execute(ctx, "stop", nil, nil) }); err != nil {
		t.Fatal(err)
	}
	if _, err := d.StartBackup(ctx, h, "work", lost); err != nil {
		t.Fatal(err)
	}
	if err := d.Resume(ctx, h); err != nil {
		t.Fatal(err)
	}
	if open, _ := openMode(t, h.PID, lost); !open {
		t.Fatal("qemu does not hold the second copy's file")
	}
	if n, err := d.DropBackups(ctx, h); n != 1 || err != nil {
		t.Fatalf("DropBackups = %d, %v; want the one copy", n, err)
	}
	if open, _ := openMode(t, h.PID, lost); open {
		t.Fatal("qemu still holds a dropped copy's file")
	}
	if err := withQMP(ctx, h.APISocket, func(c *qmp) error {
		var jobs []qmpJob
		if err := c.execute(ctx, "query-jobs", nil, &jobs); err != nil {
			return err
		}
		if len(jobs) != 0 {
			return fmt.Errorf("jobs left: %+v", jobs)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if n, err := d.DropBackups(ctx, h); n != 0 || err != nil {
		t.Fatalf("DropBackups with none = %d, %v", n, err)
	}
	// The raw disk, opened by descriptor, taken in place instead: the
	// captured file keeps the instant, the top takes what follows.
	snap := filepath.Join(dir, "snap.ext4")
	top := captureRaw(t, d, h, "work", work, snap)
	if err := withQMP(ctx, h.APISocket, func(c *qmp) error { return hmp(c, `qemu-io work "write -P 3 0 1M"`) }); err != nil {
		t.Fatal(err)
	}
	if err := d.Kill(ctx, h); err != nil {
		t.Fatal(err)
	}
	runCmd(t, "qemu-io", "-f", "raw", "-r", "-c", "read -P 9 0 1M", "-c", "read -P 9 63M 1M", copyPath)
	runCmd(t, "qemu-io", "-f", "raw", "-r", "-c", "read -P 5 0 1M", "-c", "read -P 5 63M 1M", snap)
	runCmd(t, "qemu-io", "-r", "-c", "read -P 3 0 1M", "-c", "read -P 5 63M 1M", top)
	assertNothingLeft(t, spec)
}

// TestRealMirror switches a running machine's qcow2 overlay disk (over a
// raw file, as a fork's work disk over its snapshot's) onto a raw file
// the VMM copies it into while it runs: afterwards QEMU holds neither
// the overlay nor the file under it, writes land in the new file, which
// holds what both held and keeps their holes. A raw disk is left as it
// is.
func TestRealMirror(t *testing.T) {
	needQEMU(t)
	ctx := context.Background()
	d := New(Options{Machine: MachineQ35, Accel: "tcg"})
	spec := firmwareSpec(t)
	dir := spec.Dir
	base := filepath.Join(dir, "base.ext4")
	top := filepath.Join(dir, "work.qcow2")
	target := filepath.Join(dir, "work.ext4")
	runCmd(t, "truncate", "-s", "64M", base)
	runCmd(t, "qemu-io", "-f", "raw", "-c", "write -P 9 0 1M", "-c", "write -P 9 63M 1M", base)
	runCmd(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "raw", top, "64M")
	spec.Disks = []vmm.Disk{{ID: "work", Path: top, Format: vmm.FormatQcow2}}
	killAfter(t, d, spec)
	h, err := d.Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	hmp := func(cmd string) {
		t.Helper()
		if err := withQMP(ctx, h.APISocket, func(c *qmp) error {
			return c.execute(ctx, "human-monitor-command", map[string]any{"command-line": cmd}, nil)
		}); err != nil {
			t.Fatal(err)
		}
	}
	hmp(`qemu-io work "write -P 5 32M 1M"`)
	runCmd(t, "truncate", "-s", "64M", target)
	if err := d.Mirror(ctx, h, "work", target); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{top, base} {
		if open, _ := openMode(t, h.PID, f); open {
			t.Fatalf("qemu still holds %s after the switch", filepath.Base(f))
		}
	}
	if open, w := openMode(t, h.PID, target); !open || !w {
		t.Fatalf("the new disk: open %v writable %v", open, w)
	}
	hmp(`qemu-io work "write -P 7 40M 1M"`)
	// Done already (a daemon that restarted after the switch): nothing
	// to do. A raw disk on another file than the one named is an error,
	// so the caller never takes that file for the disk.
	if err := d.Mirror(ctx, h, "work", target); err != nil {
		t.Fatalf("Mirror of a raw disk onto its own file: %v", err)
	}
	runCmd(t, "truncate", "-s", "64M", filepath.Join(dir, "other"))
	if err := d.Mirror(ctx, h, "work", filepath.Join(dir, "other")); err == nil || !strings.Contains(err.Error(), "does not hold") {
		t.Fatalf("Mirror of a raw disk onto a file qemu does not hold: %v", err)
	}
	if n, err := d.DropBackups(ctx, h); n != 0 || err != nil {
		t.Fatalf("DropBackups after a mirror = %d, %v", n, err)
	}
	// The mirrored disk can be taken in place (its fdset has a read-only
	// descriptor): a copy of the new disk keeps the instant, for the
	// checks below, and the top takes what follows.
	snap := filepath.Join(dir, "snap.ext4")
	top2 := captureRaw(t, d, h, "work", target, snap)
	hmp(`qemu-io work "write -P 3 48M 1M"`)
	if err := d.Kill(ctx, h); err != nil {
		t.Fatal(err)
	}
	runCmd(t, "qemu-io", "-r", "-c", "read -P 3 48M 1M", "-c", "read -P 7 40M 1M", top2)
	target = snap
	runCmd(t, "qemu-io", "-f", "raw", "-r", "-c", "read -P 0 48M 1M", target)
	runCmd(t, "qemu-io", "-f", "raw", "-r", "-c", "read -P 9 0 1M", "-c", "read -P 5 32M 1M", "-c", "read -P 7 40M 1M", "-c", "read -P 9 63M 1M", "-c", "read -P 0 1M 31M", target)
	var st syscall.Stat_t
	if err := syscall.Stat(target, &st); err != nil {
		t.Fatal(err)
	}
	if st.Blocks*512 > 16<<20 {
		t.Errorf("the new disk takes %d bytes for 4 MiB written: its holes were filled", st.Blocks*512)
	}
	assertNothingLeft(t, spec)
}
