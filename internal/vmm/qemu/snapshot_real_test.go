package qemu

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/banger/banger/internal/proc"
	"github.com/banger/banger/internal/vmm"
)

func status(t *testing.T, h vmm.Handle) string {
	t.Helper()
	var st qmpStatus
	err := withQMP(context.Background(), h.APISocket, func(c *qmp) error {
		return c.execute(context.Background(), "query-status", nil, &st)
	})
	if err != nil {
		t.Fatal(err)
	}
	return st.Status
}

// TestRealSaveRestore saves a firmware-only machine to a file and starts
// a new QEMU from it, as confined as this host allows (the state file
// travels by descriptor, so a chrooted QEMU reaches it too): Save leaves
// the guest paused in a live QEMU, Resume runs it again, Kill then
// Restore runs it in a new process, and a missing or torn state file
// fails Restore with nothing left behind.
func TestRealSaveRestore(t *testing.T) {
	needQEMU(t)
	ctx := context.Background()
	d := New(Options{Machine: MachineQ35, Accel: "tcg"})
	what, _ := d.Confinement(ctx)
	t.Logf("confinement: %s", what)
	spec := firmwareSpec(t)
	// Disks as a VM has them (a qcow2 overlay and a raw file): a
	// completed migration hands them off, which QEMU must do without
	// opening a path.
	base := filepath.Join(spec.Dir, "base.img")
	runCmd(t, "truncate", "-s", "8M", base)
	runCmd(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "raw", filepath.Join(spec.Dir, "root.qcow2"))
	runCmd(t, "truncate", "-s", "8M", filepath.Join(spec.Dir, "work.ext4"))
	spec.Disks = []vmm.Disk{
		{ID: "root", Path: filepath.Join(spec.Dir, "root.qcow2"), Format: vmm.FormatQcow2},
		{ID: "work", Path: filepath.Join(spec.Dir, "work.ext4"), Format: vmm.FormatRaw},
	}
	killAfter(t, d, spec)
	state := filepath.Join(spec.Dir, "state")
	if err := os.Mkdir(state, 0o700); err != nil {
		t.Fatal(err)
	}
	if got := d.StateFiles(state); len(got) != 1 || got[0] != StateFile(state) {
		t.Fatalf("StateFiles = %v", got)
	}

	h, err := d.Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Save(ctx, h, state); err != nil {
		t.Fatal(err)
	}
	if st := status(t, h); st != "postmigrate" {
		t.Fatalf("status after Save = %q, want postmigrate (paused)", st)
	}
	fi, err := os.Stat(StateFile(state))
	if err != nil || fi.Size() < 1024 {
		t.Fatalf("state file %v, %v", fi, err)
	}
	if err := d.Resume(ctx, h); err != nil {
		t.Fatal(err)
	}
	if st := status(t, h); st != "running" {
		t.Fatalf("status after Resume = %q", st)
	}
	// Saved again, from a running guest, then ended: pause to disk.
	if err := d.Save(ctx, h, state); err != nil {
		t.Fatal(err)
	}
	if err := d.Kill(ctx, h); err != nil {
		t.Fatal(err)
	}
	h2, err := d.Restore(ctx, spec, state)
	if err != nil {
		t.Fatal(err)
	}
	if h2.PID == h.PID || !d.Alive(h2) {
		t.Fatalf("restored handle %+v (old %+v)", h2, h)
	}
	if st := status(t, h2); st != "running" {
		t.Fatalf("status after Restore = %q", st)
	}
	if _, err := d.Restore(ctx, spec, state); err == nil || !strings.Contains(err.Error(), "held by running qemu") {
		t.Fatalf("Restore over a live VMM: %v", err)
	}
	if err := d.Kill(ctx, h2); err != nil {
		t.Fatal(err)
	}
	assertNothingLeft(t, spec)

	t.Run("missing state", func(t *testing.T) {
		_, err := d.Restore(ctx, spec, filepath.Join(spec.Dir, "nothing"))
		if err == nil || !strings.Contains(err.Error(), "no such file") {
			t.Fatalf("Restore without state: %v", err)
		}
		assertNothingLeft(t, spec)
	})
	t.Run("torn state", func(t *testing.T) {
		b, err := os.ReadFile(StateFile(state))
		if err != nil {
			t.Fatal(err)
		}
		torn := filepath.Join(spec.Dir, "torn")
		if err := os.Mkdir(torn, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(StateFile(torn), b[:len(b)/2], 0o600); err != nil {
			t.Fatal(err)
		}
		_, err = d.Restore(ctx, spec, torn)
		if err == nil {
			t.Fatal("Restore from half a state file succeeded")
		}
		t.Logf("torn state: %v", err)
		if pids, _ := proc.Find(matcher(spec.APISocket)); len(pids) != 0 {
			t.Fatalf("qemu processes left: %v", pids)
		}
		assertNothingLeft(t, spec)
	})
}
