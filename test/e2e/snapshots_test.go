package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/banger/banger/internal/model"
)

// debugfsLs lists a directory of an ext4 image offline.
func debugfsLs(t *testing.T, img, dir string) string {
	t.Helper()
	out, err := exec.Command("debugfs", "-R", "ls -l "+dir, img).CombinedOutput()
	if err != nil {
		t.Fatalf("debugfs ls %s in %s: %v: %s", dir, img, err, out)
	}
	return string(out)
}

// TestVMSnapshot takes a snapshot of a running guest and checks that the
// guest runs on (exec answers, its clock is the host's), that the
// snapshot holds the memory state and the disks as they were at that
// instant (a file synced before is on its work disk, one written after
// is not), then list, show, the bad inputs (a taken name, a missing VM,
// a paused or stopped VM, a missing snapshot) and removal, leaving
// nothing behind.
func TestVMSnapshot(t *testing.T) {
	h := NewHarness(t)
	const vm = "orig"
	h.StartVM(vm)
	h.MustRun("vm", "exec", vm, "--", "sh", "-c", "echo before > /root/before.txt && echo sys > /etc/before-sys && sync")

	start := time.Now()
	var sn model.Snapshot
	h.JSON(&sn, "vm", "snapshot", "create", vm, "--name", "s1")
	t.Logf("snapshot taken in %.2fs: %d bytes", time.Since(start).Seconds(), sn.SizeBytes)
	if sn.Name != "s1" || sn.State != model.SnapshotReady || sn.VMName != vm || sn.SizeBytes <= 0 || sn.CowStrategy != "qcow2" {
		t.Fatalf("snapshot = %+v", sn)
	}
	for _, f := range []string{"state/qemu.state", "system.qcow2", "work.ext4"} {
		if fi, err := os.Stat(filepath.Join(sn.Dir, f)); err != nil || fi.Size() == 0 {
			t.Fatalf("snapshot file %s: %v", f, err)
		}
	}

	// The guest runs on, with its clock right.
	if st := h.VM(vm).State; st != model.VMRunning {
		t.Fatalf("after snapshot: state %s", st)
	}
	if out := h.MustRun("vm", "exec", vm, "--", "cat", "/root/before.txt"); strings.TrimSpace(out) != "before" {
		t.Fatalf("after snapshot: %q", out)
	}
	early, late := h.guestClockSkew(vm)
	t.Logf("guest clock after snapshot: %+.3fs / %+.3fs", early, late)
	if early < -1 || late > 1 {
		t.Errorf("guest clock off by %.3f..%.3fs after a snapshot", early, late)
	}

	// The disks are as they were when it was taken.
	h.MustRun("vm", "exec", vm, "--", "sh", "-c", "echo after > /root/after.txt && sync")
	ls := debugfsLs(t, filepath.Join(sn.Dir, "work.ext4"), "/")
	if !strings.Contains(ls, "before.txt") || strings.Contains(ls, "after.txt") {
		t.Fatalf("snapshot's work disk:\n%s", ls)
	}

	var list []model.Snapshot
	h.JSON(&list, "vm", "snapshot", "list")
	if len(list) != 1 || list[0].ID != sn.ID {
		t.Fatalf("snapshot list = %+v", list)
	}
	if out := h.MustRun("vm", "snapshot", "show", "s1"); !strings.Contains(out, "state:") || !strings.Contains(out, "ready") {
		t.Fatalf("snapshot show:\n%s", out)
	}

	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"vm", "snapshot", "create", vm, "--name", "s1"}, "already exists"},
		{[]string{"vm", "snapshot", "create", "no-such-vm"}, `vm "no-such-vm" not found`},
		{[]string{"vm", "snapshot", "create", vm, "--name", "Bad Name"}, "snapshot name"},
		{[]string{"vm", "snapshot", "show", "no-such-snap"}, `snapshot "no-such-snap" not found`},
		{[]string{"vm", "snapshot", "rm", "no-such-snap"}, `snapshot "no-such-snap" not found`},
	} {
		if _, errOut, code := h.Run(c.args...); code == 0 || !strings.Contains(errOut, c.want) {
			t.Errorf("banger %s: exit %d, stderr %q; want an error with %q", strings.Join(c.args, " "), code, errOut, c.want)
		}
	}
	// A failed snapshot leaves nothing: still one snapshot.
	h.JSON(&list, "vm", "snapshot", "list")
	if len(list) != 1 {
		t.Fatalf("after refused snapshots: %+v", list)
	}

	h.MustRun("vm", "pause", vm)
	if _, errOut, code := h.Run("vm", "snapshot", "create", vm); code == 0 || !strings.Contains(errOut, "vm orig is paused") {
		t.Errorf("snapshot of a paused vm: exit %d, %q", code, errOut)
	}
	h.MustRun("vm", "stop", vm)
	if _, errOut, code := h.Run("vm", "snapshot", "create", vm); code == 0 || !strings.Contains(errOut, "only a running vm can be snapshotted") {
		t.Errorf("snapshot of a stopped vm: exit %d, %q", code, errOut)
	}

	// The snapshot outlives its VM.
	h.MustRun("vm", "delete", vm)
	h.MustRun("vm", "snapshot", "rm", "s1")
	h.JSON(&list, "vm", "snapshot", "list")
	if len(list) != 0 {
		t.Fatalf("after rm: %+v", list)
	}
	if _, err := os.Stat(sn.Dir); !os.IsNotExist(err) {
		t.Fatalf("snapshot dir left: %v", err)
	}
	h.AssertNoLeaks()
}
