package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/banger/banger/internal/hostnet"
	"github.com/banger/banger/internal/model"
	"github.com/banger/banger/internal/proc"
	"github.com/banger/banger/internal/storage"
	"github.com/banger/banger/internal/testenv"
)

// vmmPID is the pid of the VM's VMM, from its pid file (QEMU's).
func vmmPID(t *testing.T, v model.VM) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(v.Dir, "qemu.pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

// allocatedBytes is the room a file takes on disk.
func allocatedBytes(t *testing.T, p string) int64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(p, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

// waitBacking waits until the qcow2 file's header names backing.
func waitBacking(t *testing.T, file, backing string) {
	t.Helper()
	var b string
	var err error
	for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if b, err = storage.Qcow2Backing(file); err == nil && b == backing {
			return
		}
	}
	t.Fatalf("%s reads through %q (%v), want %s", file, b, err, backing)
}

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
// a stopped VM, a missing snapshot), a snapshot of the VM paused (a VM
// made from it has its files) and removal, leaving nothing behind.
func TestVMSnapshot(t *testing.T) {
	h := NewHarness(t)
	const vm = "orig"
	h.StartVM(vm)
	h.MustRun("vm", "exec", vm, "--", "sh", "-c", "echo before > /root/before.txt && echo sys > /etc/before-sys && sync")

	sysBefore, err := os.Stat(h.VM(vm).SystemDisk)
	if err != nil {
		t.Fatal(err)
	}
	workBefore, err := os.Stat(h.VM(vm).WorkDisk)
	if err != nil {
		t.Fatal(err)
	}
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

	// Its system disk was overlaid, not copied: the snapshot's
	// system.qcow2 is the file the VM wrote until then, which its VMM
	// holds read-only (if still: TestRealOverlay checks it is), and the
	// VM reads through it until the daemon has copied it up, then
	// through the image again.
	v := h.VM(vm)
	sysSnap := filepath.Join(sn.Dir, "system.qcow2")
	if fi, err := os.Stat(sysSnap); err != nil || !os.SameFile(fi, sysBefore) {
		t.Errorf("the snapshot's system disk is not the file the vm had (%v): copied, not taken in place", err)
	}
	sysSum := fileSum(t, sysSnap)
	if open, w := proc.Holds(vmmPID(t, v), sysSnap); w {
		t.Errorf("the vmm holds the snapshot's system disk writable (open %v)", open)
	}
	var im model.Image
	h.JSON(&im, "image", "show", v.ImageID)
	img, _ := filepath.Abs(im.Path)
	waitBacking(t, v.SystemDisk, img)

	// The disks are as they were when it was taken.
	h.MustRun("vm", "exec", vm, "--", "sh", "-c", "echo after > /root/after.txt && echo sys > /etc/after-sys && sync")
	ls := debugfsLs(t, filepath.Join(sn.Dir, "work.ext4"), "/")
	if !strings.Contains(ls, "before.txt") || strings.Contains(ls, "after.txt") {
		t.Fatalf("snapshot's work disk:\n%s", ls)
	}
	if fileSum(t, sysSnap) != sysSum {
		t.Fatal("the snapshot's system disk changed after it was taken")
	}
	// Its work disk was taken in place too: the snapshot's work.ext4 is
	// the file the VM had, which its VMM holds read-only, and the VM
	// goes on over an overlay over it.
	workOverlay := filepath.Join(v.Dir, "work.qcow2")
	snapWork := filepath.Join(sn.Dir, "work.ext4")
	if fi, err := os.Stat(snapWork); err != nil || !os.SameFile(fi, workBefore) {
		t.Errorf("the snapshot's work disk is not the file the vm had (%v): copied, not taken in place", err)
	}
	if b, err := storage.Qcow2Backing(workOverlay); err != nil || b != snapWork {
		t.Errorf("the vm's work disk reads through %q (%v), want its snapshot's", b, err)
	}
	if _, err := os.Stat(v.WorkDisk); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the vm kept a work.ext4 beside its overlay: %v", err)
	}
	if open, w := proc.Holds(vmmPID(t, v), snapWork); w {
		t.Errorf("the vmm holds the snapshot's work disk writable (open %v)", open)
	}

	// A snapshot the VM still reads through is copied up before it goes:
	// its removal waits for that, and the VM keeps its files. Its work
	// disk is made raw by the VMM before the next snapshot takes it in
	// place, and again before that snapshot goes.
	workS1, err := os.Stat(snapWork)
	if err != nil {
		t.Fatal(err)
	}
	var s0 model.Snapshot
	h.JSON(&s0, "vm", "snapshot", "create", vm, "--name", "s0")
	if b, err := storage.Qcow2Backing(workOverlay); err != nil || b != filepath.Join(s0.Dir, "work.ext4") {
		t.Errorf("after a second snapshot the vm's work disk reads through %q (%v), want the second's", b, err)
	}
	h.MustRun("vm", "snapshot", "rm", "s0")
	if b, err := storage.Qcow2Backing(v.SystemDisk); err != nil || b != img {
		t.Fatalf("after removing the snapshot it was overlaid on, the vm's system disk reads through %q (%v), want the image", b, err)
	}
	if _, err := os.Stat(workOverlay); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("after removing the snapshot its work disk was over, the vm's work disk is still an overlay: %v", err)
	}
	if out := h.MustRun("vm", "exec", vm, "--", "cat", "/etc/before-sys", "/etc/after-sys", "/root/after.txt"); out != "sys\nsys\nafter\n" {
		t.Fatalf("after removing the snapshot it was overlaid on: %q", out)
	}
	// Made raw by the VMM, its holes stay holes: it takes about the room
	// s1's does (the guest wrote a few small files since).
	if a, b := allocatedBytes(t, v.WorkDisk), allocatedBytes(t, snapWork); a > b+16<<20 {
		t.Errorf("the vm's work disk made raw holds %d bytes, s1's %d: its holes were filled", a, b)
	}
	if fi, err := os.Stat(snapWork); err != nil || !os.SameFile(fi, workS1) {
		t.Errorf("s1's work disk changed under the second snapshot (%v)", err)
	}
	if ls := debugfsLs(t, snapWork, "/"); !strings.Contains(ls, "before.txt") || strings.Contains(ls, "after.txt") {
		t.Fatalf("s1's work disk after a second snapshot:\n%s", ls)
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

	// A paused VM's snapshot is its saved state and disks as they are; it
	// stays paused, and a VM made from the snapshot has its files.
	// Its system disk is taken in place too (no VMM to switch).
	h.MustRun("vm", "pause", vm)
	pausedSys, err := os.Stat(v.SystemDisk)
	if err != nil {
		t.Fatal(err)
	}
	pausedWork, err := os.Stat(v.WorkDisk)
	if err != nil {
		t.Fatal(err)
	}
	var sp model.Snapshot
	h.JSON(&sp, "vm", "snapshot", "create", vm, "--name", "sp")
	if fi, err := os.Stat(filepath.Join(sp.Dir, "system.qcow2")); err != nil || !os.SameFile(fi, pausedSys) {
		t.Errorf("the paused vm's snapshot's system disk is not the file the vm had (%v): copied, not taken in place", err)
	}
	// Its work disk too: the snapshot's is the file the VM had, and the
	// VM goes on over an overlay over it.
	if fi, err := os.Stat(filepath.Join(sp.Dir, "work.ext4")); err != nil || !os.SameFile(fi, pausedWork) {
		t.Errorf("the paused vm's snapshot's work disk is not the file the vm had (%v): copied, not taken in place", err)
	}
	if b, err := storage.Qcow2Backing(workOverlay); err != nil || b != filepath.Join(sp.Dir, "work.ext4") {
		t.Errorf("the paused vm's work disk reads through %q (%v), want its snapshot's", b, err)
	}
	if _, err := os.Stat(v.WorkDisk); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the paused vm kept a work.ext4 beside its overlay: %v", err)
	}
	if st := h.VM(vm).State; st != model.VMPaused {
		t.Fatalf("after a snapshot of a paused vm: state %s", st)
	}
	h.MustRun("vm", "create", "--from-snapshot", "sp", "--name", "from-paused")
	if out := h.MustRun("vm", "exec", "from-paused", "--", "cat", "/root/after.txt"); strings.TrimSpace(out) != "after" {
		t.Fatalf("vm from a paused vm's snapshot: %q", out)
	}
	h.MustRun("vm", "delete", "--force", "from-paused")
	// The paused vm reads through it: copied up by the daemon first, and
	// its work disk made raw.
	h.MustRun("vm", "snapshot", "rm", "sp")
	if b, err := storage.Qcow2Backing(v.SystemDisk); err != nil || b != img {
		t.Fatalf("after removing its snapshot while paused, the vm's system disk reads through %q (%v), want the image", b, err)
	}
	if _, err := os.Stat(workOverlay); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("after removing its snapshot while paused, the vm's work disk is still an overlay: %v", err)
	}
	// Again, removed while the VM runs on: its VMM makes the disk raw.
	h.MustRun("vm", "snapshot", "create", vm, "--name", "sq")
	h.MustRun("vm", "resume", vm)
	h.MustRun("vm", "exec", vm, "--", "sh", "-c", "echo over > /root/over.txt && sync")
	h.MustRun("vm", "snapshot", "rm", "sq")
	if _, err := os.Stat(workOverlay); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("after removing its snapshot while running, the vm's work disk is still an overlay: %v", err)
	}
	if out := h.MustRun("vm", "exec", vm, "--", "cat", "/root/after.txt", "/root/over.txt"); out != "after\nover\n" {
		t.Fatalf("the vm's files after its work disk was made raw while it ran: %q", out)
	}
	h.MustRun("vm", "pause", vm)

	// A VM killed before its VMM copied its snapshot up is copied by the
	// daemon: the snapshot goes while the VM is stopped, and the VM boots
	// with everything it wrote.
	h.MustRun("vm", "resume", vm)
	bigSum := strings.Fields(h.MustRun("vm", "exec", vm, "--", "sh", "-c", "head -c 96M /dev/urandom > /var/tmp/big && echo late > /etc/late-sys && sync && sha256sum /var/tmp/big"))[0]
	h.MustRun("vm", "snapshot", "create", vm, "--name", "s2")
	h.MustRun("vm", "stop", "--force", vm)
	start = time.Now()
	h.MustRun("vm", "snapshot", "rm", "s2")
	logb, _ := os.ReadFile(filepath.Join(h.StateDir, "bangerd.log"))
	var copies []string
	for _, l := range strings.Split(string(logb), "\n") {
		if strings.Contains(l, "copied up") && strings.Contains(l, `"s2"`) {
			copies = append(copies, l)
		}
	}
	// Offline when the kill came before the VMM's copy ended (usually).
	t.Logf("snapshot of a stopped vm removed in %.2fs; its copy up: %s", time.Since(start).Seconds(), strings.Join(copies, "\n"))
	if b, err := storage.Qcow2Backing(v.SystemDisk); err != nil || b != img {
		t.Fatalf("after removing its snapshot while stopped, the vm's system disk reads through %q (%v), want the image", b, err)
	}
	h.MustRun("vm", "start", vm)
	if out := h.MustRun("vm", "exec", vm, "--", "sh", "-c", "cat /etc/before-sys /etc/late-sys && sha256sum /var/tmp/big"); !strings.HasPrefix(out, "sys\nlate\n"+bigSum+" ") {
		t.Fatalf("after its snapshot was copied up offline and removed: %q", out)
	}
	h.MustRun("vm", "stop", vm)
	if _, errOut, code := h.Run("vm", "snapshot", "create", vm); code == 0 || !strings.Contains(errOut, "only a running or paused vm can be snapshotted") {
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
	h.AssertStopsClean()
	h.AssertNoLeaks()
}

// TestVMFork forks a snapshot of a running guest into three VMs and checks
// each is its own machine: its own name, address, MAC, hostname,
// machine id and SSH host key (the one the daemon pinned), all answering
// exec at once, each seeing the file written before the snapshot and
// neither seeing what the other wrote after; the original runs on. Then
// the bad inputs (a missing source, a taken name, removing a snapshot in
// use); a fork stopped and booted cold is still itself, and refuses to
// start while its disk's header names the host's disk as its backing
// file or a sibling's snapshot; a snapshot of a fork keeps the first
// snapshot; a third generation's snapshot, deeper than chain_depth 2, is
// flattened and needs neither earlier one; deleting everything leaves
// nothing behind.
func TestVMFork(t *testing.T) {
	h := NewHarness(t, "BANGER_CHAIN_DEPTH=2")
	const vm = "parent"
	orig := h.StartVM(vm)
	h.MustRun("vm", "exec", vm, "--", "sh", "-c", "echo before > /root/before.txt && echo sys > /etc/before-sys && sync")
	// A confined VM's copies are as confined: the snapshot keeps its policy.
	h.MustRun("vm", "net", vm, "--deny", "203.0.113.0/24")
	var base model.Snapshot
	h.JSON(&base, "vm", "snapshot", "create", vm, "--name", "base")

	start := time.Now()
	out, phases, code := h.Run("vm", "fork", "base", "--count", "3", "--name-prefix", "kid", "--json")
	if code != 0 {
		t.Fatalf("vm fork: exit %d\n%s\n%s", code, out, phases)
	}
	t.Logf("3 forks in %.2fs:\n%s", time.Since(start).Seconds(), phases)
	var forks []model.VM
	if err := json.Unmarshal([]byte(out), &forks); err != nil || len(forks) != 3 {
		t.Fatalf("vm fork said %q (%v)", out, err)
	}
	seen := map[string]string{orig.GuestIP: vm, orig.GuestMAC: vm}
	for i, f := range forks {
		if f.Name != fmt.Sprintf("kid-%d", i+1) || f.State != model.VMRunning {
			t.Fatalf("fork %d = %s %s", i, f.Name, f.State)
		}
		if got := f.Net.String(); got != "internet deny=203.0.113.0/24" {
			t.Errorf("fork %s has network policy %q, want the snapshot's", f.Name, got)
		}
		for _, v := range []string{f.GuestIP, f.GuestMAC} {
			if other, dup := seen[v]; dup {
				t.Fatalf("%s shares %s with %s", f.Name, v, other)
			}
			seen[v] = f.Name
		}
	}

	// Each fork's work disk is an overlay over the snapshot's, made in
	// constant time: no copy of it.
	for _, f := range forks {
		if _, err := os.Stat(f.WorkDisk); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("fork %s has a work.ext4 (%v): copied, not overlaid", f.Name, err)
		}
		if b, err := storage.Qcow2Backing(filepath.Join(f.Dir, "work.qcow2")); err != nil || b != filepath.Join(base.Dir, "work.ext4") {
			t.Errorf("fork %s's work overlay reads through %q (%v), want the snapshot's work disk", f.Name, b, err)
		}
	}

	// All at once: each answers as itself.
	type answer struct {
		out, errOut string
		code        int
	}
	answers := make([]answer, len(forks))
	done := make(chan int)
	for i, f := range forks {
		go func() {
			o, e, c := h.Run("vm", "exec", f.Name, "--", "sh", "-c",
				"hostname; cat /root/before.txt; cat /etc/machine-id; ip -4 -o addr show eth0 | awk '{print $4}'; cat /sys/class/net/eth0/address; cut -d' ' -f2 /etc/ssh/ssh_host_ed25519_key.pub")
			answers[i] = answer{o, e, c}
			done <- i
		}()
	}
	for range forks {
		<-done
	}
	machineIDs := map[string]string{}
	origMID := strings.TrimSpace(h.MustRun("vm", "exec", vm, "--", "cat", "/etc/machine-id"))
	machineIDs[origMID] = vm
	for i, f := range forks {
		a := answers[i]
		lines := strings.Split(strings.TrimSpace(a.out), "\n")
		if a.code != 0 || len(lines) != 6 {
			t.Fatalf("exec in %s: exit %d, %q, %q", f.Name, a.code, a.out, a.errOut)
		}
		t.Logf("%s: %q", f.Name, lines)
		if lines[0] != f.Name || lines[1] != "before" || !strings.HasPrefix(lines[3], f.GuestIP+"/") || lines[4] != f.GuestMAC {
			t.Errorf("%s answered %q", f.Name, lines)
		}
		if other, dup := machineIDs[lines[2]]; dup {
			t.Errorf("%s has the machine id of %s", f.Name, other)
		}
		machineIDs[lines[2]] = f.Name
		if fields := strings.Fields(f.HostKey); len(fields) < 2 || fields[1] != lines[5] || f.HostKey == orig.HostKey {
			t.Errorf("%s serves host key %q; its record pins %q (parent's %q)", f.Name, lines[5], f.HostKey, orig.HostKey)
		}
	}

	// Writes stay in their fork.
	h.MustRun("vm", "exec", "kid-1", "--", "sh", "-c", "echo mine > /root/kid1.txt")
	for _, other := range []string{"kid-2", "kid-3", vm} {
		if out, _, code := h.Run("vm", "exec", other, "--", "ls", "/root"); code != 0 || strings.Contains(out, "kid1.txt") || !strings.Contains(out, "before.txt") {
			t.Errorf("%s's /root: exit %d, %q", other, code, out)
		}
	}
	if out := h.MustRun("vm", "exec", vm, "--", "hostname"); strings.TrimSpace(out) != vm {
		t.Errorf("the parent now says it is %q", out)
	}

	// A pause keeps a fork's work overlay; the resume opens it again.
	h.MustRun("vm", "pause", "kid-3")
	if _, err := os.Stat(filepath.Join(h.VM("kid-3").Dir, "work.qcow2")); err != nil {
		t.Errorf("kid-3's work overlay after a pause: %v", err)
	}
	h.MustRun("vm", "resume", "kid-3")
	if out := h.MustRun("vm", "exec", "kid-3", "--", "sh", "-c", "cat /root/before.txt; echo three > /root/kid3.txt && cat /root/kid3.txt"); out != "before\nthree\n" {
		t.Errorf("kid-3 after a pause and resume: %q", out)
	}

	// A snapshot of a fork: it holds what kid-1 wrote, its system disk
	// an overlay over base's.
	h.MustRun("vm", "exec", "kid-1", "--", "sh", "-c", "echo kid > /etc/kid1-sys && sync")
	var grand model.Snapshot
	h.JSON(&grand, "vm", "snapshot", "create", "kid-1", "--name", "grand")
	// Its work disk was made raw by its VMM first, while it ran, then
	// taken in place: kid-1 goes on over an overlay over grand's.
	if b, err := storage.Qcow2Backing(filepath.Join(h.VM("kid-1").Dir, "work.qcow2")); err != nil || b != filepath.Join(grand.Dir, "work.ext4") {
		t.Errorf("kid-1's work disk reads through %q (%v), want grand's", b, err)
	}
	workRaw := func(name string) {
		t.Helper()
		v := h.VM(name)
		if _, err := os.Stat(filepath.Join(v.Dir, "work.qcow2")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s's work overlay is still there (%v)", name, err)
		}
		if ls := debugfsLs(t, v.WorkDisk, "/"); !strings.Contains(ls, "before.txt") {
			t.Errorf("%s's raw work disk:\n%s", name, ls)
		}
	}
	if ls := debugfsLs(t, filepath.Join(grand.Dir, "work.ext4"), "/"); !strings.Contains(ls, "kid1.txt") {
		t.Errorf("grand's work disk:\n%s", ls)
	}

	// A fork is an ordinary VM afterwards: stopped and booted cold from
	// its own disks, it is still itself (its host key is on its work disk).
	h.MustRun("vm", "stop", "kid-2")
	// Stopped, its work disk was made raw by the daemon.
	workRaw("kid-2")
	// Hostile: a guest that took over its QEMU can rewrite the header of
	// the qcow2 system disk that QEMU holds open, so that the next start
	// opens the host's disk as the backing file (QEMU opens backing
	// files before it drops its privileges). The daemon reads the chain
	// first and refuses, starting nothing.
	kid2 := h.VM("kid-2")
	own, err := storage.Qcow2Backing(kid2.SystemDisk)
	if err != nil || own == "" {
		t.Fatalf("kid-2's system disk's backing file: %q, %v", own, err)
	}
	rebase := func(backing, format string) {
		t.Helper()
		// -u: only the header changes, as a VMM writing it would do.
		if out, err := exec.Command("qemu-img", "rebase", "-u", "-f", "qcow2", "-b", backing, "-F", format, kid2.SystemDisk).CombinedOutput(); err != nil {
			t.Fatalf("qemu-img rebase -u %s: %v %s", backing, err, out)
		}
	}
	refused := func(what, want string) {
		t.Helper()
		if _, errOut, code := h.Run("vm", "start", "kid-2"); code == 0 || !strings.Contains(errOut, want) {
			t.Fatalf("start %s: exit %d, %q", what, code, errOut)
		}
		for _, l := range h.Leaks() {
			if !strings.HasPrefix(l, "vm dir") && (strings.Contains(l, kid2.ID) || strings.Contains(l, hostnet.TapName(kid2.ID))) {
				t.Errorf("a refused start left %s", l)
			}
		}
	}
	// Nor may it name another VM's snapshot: grand holds kid-1's files,
	// and kid-2 descends from base alone.
	for _, c := range []struct{ backing, format string }{
		{"/dev/sda", "raw"},
		{filepath.Join(grand.Dir, "system.qcow2"), "qcow2"},
	} {
		rebase(c.backing, c.format)
		refused("over "+c.backing, fmt.Sprintf("backing file %q is not the vm's image or the system disk of a snapshot it descends from", c.backing))
	}
	rebase(own, "qcow2")
	// Nor may it state a virtual size beyond the image's: a flatten's
	// qemu-img would walk a petabyte. The header stays consistent (an L1
	// table that maps it, which QEMU accepts); the file is put back from
	// a copy (shrinking it back would have qemu-img walk the petabyte).
	saved, err := os.ReadFile(kid2.SystemDisk)
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("qemu-img", "resize", "-q", "-f", "qcow2", kid2.SystemDisk, "1P").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img resize: %v %s", err, out)
	}
	refused("of a disk stating a petabyte", "virtual size of 1125899906842624 bytes exceeds the")
	if err := os.WriteFile(kid2.SystemDisk, saved, 0o600); err != nil {
		t.Fatal(err)
	}
	h.MustRun("vm", "start", "kid-2")
	if out := h.MustRun("vm", "exec", "kid-2", "--", "sh", "-c", "hostname; cat /root/before.txt"); strings.TrimSpace(out) != "kid-2\nbefore" {
		t.Errorf("kid-2 after a cold boot said %q", out)
	}

	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"vm", "fork", "no-such-thing"}, `no snapshot or vm named "no-such-thing" to fork`},
		{[]string{"vm", "fork", "base", "--name-prefix", "kid"}, `vm "kid-1" already exists`},
		{[]string{"vm", "fork", "base", "--count", "0"}, "invalid count 0"},
		{[]string{"vm", "snapshot", "rm", "base"}, "snapshot base is used by vm kid-1, kid-2, kid-3"},
	} {
		if _, errOut, code := h.Run(c.args...); code == 0 || !strings.Contains(errOut, c.want) {
			t.Errorf("banger %s: exit %d, stderr %q; want an error with %q", strings.Join(c.args, " "), code, errOut, c.want)
		}
	}

	// A snapshot of a fork reads through to the snapshot the fork was
	// made from: that one stays until this one goes, even with no VM
	// left, and a fork of it has both snapshots' files.
	h.MustRun("vm", "delete", "--force", "kid-1", "kid-2", "kid-3", vm)
	// kid-3, deleted running, never copied its work disk.
	if logb, err := os.ReadFile(filepath.Join(h.StateDir, "bangerd.log")); err != nil || strings.Contains(string(logb), `"msg":"vm work disk made raw","vm":"kid-3"`) {
		t.Errorf("kid-3's work disk was copied before its deletion (%v)", err)
	}
	if _, errOut, code := h.Run("vm", "snapshot", "rm", "base"); code == 0 || !strings.Contains(errOut, "snapshot base is the base of snapshot grand") {
		t.Errorf("snapshot rm base under grand: exit %d, %q", code, errOut)
	}
	// A fork's own labels and deadline.
	h.MustRun("vm", "fork", "grand", "--name-prefix", "grandkid", "--label", "gen=2", "--ttl", "1h")
	if gk := h.VM("grandkid-1"); gk.Labels["gen"] != "2" || gk.ExpiresAt == nil || time.Until(*gk.ExpiresAt) < 50*time.Minute {
		t.Errorf("grandkid-1: labels %v, expires %v", gk.Labels, gk.ExpiresAt)
	}
	// The system disk is the chain (image, base's, grand's, its own);
	// the work disk an overlay over grand's.
	if out := h.MustRun("vm", "exec", "grandkid-1", "--", "cat", "/etc/before-sys", "/etc/kid1-sys", "/root/before.txt", "/root/kid1.txt"); out != "sys\nkid\nbefore\nmine\n" {
		t.Errorf("a fork of a fork's snapshot reads %q", out)
	}

	// A third generation: its snapshot's chain (its own file, grand's,
	// base's) is deeper than chain_depth 2, so the daemon flattens it in
	// the background onto the image alone. Then grand and base can go,
	// and a fork of it still has every generation's files.
	image, err := storage.Qcow2Backing(filepath.Join(base.Dir, "system.qcow2"))
	if err != nil || image == "" {
		t.Fatalf("base's backing file: %q, %v", image, err)
	}
	h.MustRun("vm", "exec", "grandkid-1", "--", "sh", "-c", "echo gk > /etc/gk-sys && sync")
	var great model.Snapshot
	h.JSON(&great, "vm", "snapshot", "create", "grandkid-1", "--name", "great")
	baseOf := func(name string) string {
		var sn model.Snapshot
		h.JSON(&sn, "vm", "snapshot", "show", name)
		return sn.Base
	}
	if b := baseOf("great"); b != "grand" && b != "" {
		t.Errorf("great's base = %q, want grand (none once flattened)", b)
	}
	flatStart := time.Now()
	for baseOf("great") != "" {
		if time.Since(flatStart) > 2*time.Minute {
			t.Fatal("great was not flattened in 2 minutes")
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("great flattened within %.2fs of its snapshot's end", time.Since(flatStart).Seconds())
	if b := baseOf("grand"); b != "base" {
		t.Errorf("grand's base = %q, want base", b)
	}
	if b, err := storage.Qcow2Backing(filepath.Join(great.Dir, "system.qcow2")); err != nil || b != image {
		t.Fatalf("flattened great's backing file = %q, %v; want the image %s", b, err, image)
	}
	h.MustRun("vm", "delete", "--force", "grandkid-1")
	h.MustRun("vm", "snapshot", "rm", "grand")
	h.MustRun("vm", "snapshot", "rm", "base")
	h.MustRun("vm", "fork", "great", "--name-prefix", "greatkid")
	if out := h.MustRun("vm", "exec", "greatkid-1", "--", "cat", "/etc/before-sys", "/etc/kid1-sys", "/etc/gk-sys", "/root/before.txt"); out != "sys\nkid\ngk\nbefore\n" {
		t.Errorf("a fork of a flattened snapshot reads %q", out)
	}
	h.MustRun("vm", "delete", "--force", "greatkid-1")
	h.MustRun("vm", "snapshot", "rm", "great")
	h.AssertStopsClean()
	h.AssertNoLeaks()
}

// BenchmarkFork forks a snapshot of a running 1 GiB guest into 10 VMs
// against a cold `vm start` of a VM of the same size measured in the same
// run, and reports the fork's total time, its time per VM (from the
// fork's start to every VM answering SSH, made one after another) and
// the ratio per VM / cold start (goal ≤ 0.1), and the host memory of the
// 10 forks running (their VMMs' resident memory) and then paused (VMM
// resident memory, and the saved state on disk). Run with BANGER_BENCH=1.
func BenchmarkFork(b *testing.B) {
	if os.Getenv("BANGER_BENCH") != "1" {
		b.Skip("set BANGER_BENCH=1 (with BANGER_E2E=1) to run the fork bench")
	}
	const n = 10
	h := NewHarness(b)
	h.MustRun("vm", "create", "--name", "bench-cold", "--memory", "1G")
	h.MustRun("vm", "create", "--name", "bench-parent", "--memory", "1G")
	var cold, total []time.Duration
	var rss, rssPaused, statePaused int64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		h.MustRun("vm", "start", "bench-cold")
		cold = append(cold, time.Since(start))
		h.MustRun("vm", "stop", "bench-cold")

		h.MustRun("vm", "start", "bench-parent")
		snap := fmt.Sprintf("bench-snap-%d", i)
		h.MustRun("vm", "snapshot", "create", "bench-parent", "--name", snap)
		h.MustRun("vm", "stop", "bench-parent")
		start = time.Now()
		out, phases, code := h.Run("vm", "fork", snap, "--count", fmt.Sprint(n), "--name-prefix", "bench-kid", "--json")
		if code != 0 {
			b.Fatalf("vm fork: exit %d %s %s", code, out, phases)
		}
		total = append(total, time.Since(start))
		var forks []model.VM
		if err := json.Unmarshal([]byte(out), &forks); err != nil || len(forks) != n {
			b.Fatalf("vm fork said %q (%v)", out, err)
		}
		rss = 0
		for _, f := range forks {
			rss += vmmRSS(f.Dir)
		}
		// The same 10 paused: their VMMs end, their memory goes to disk.
		for _, f := range forks {
			h.MustRun("vm", "pause", f.Name)
		}
		rssPaused, statePaused = 0, 0
		for _, f := range forks {
			rssPaused += vmmRSS(f.Dir)
			statePaused += dirBytes(filepath.Join(f.Dir, "state"))
		}
		for _, f := range forks {
			h.MustRun("vm", "delete", "--force", f.Name)
		}
		h.MustRun("vm", "snapshot", "rm", snap)
	}
	mc, mt := median(cold), median(total)
	b.ReportMetric(mc.Seconds(), "s/cold-start")
	b.ReportMetric(mt.Seconds(), "s/fork-10")
	b.ReportMetric(mt.Seconds()/n, "s/fork-per-vm")
	b.ReportMetric(mt.Seconds()/n/mc.Seconds(), "ratio-per-vm/cold")
	b.ReportMetric(float64(rss)/(1<<20), "MB-rss-10-forks")
	b.ReportMetric(float64(rssPaused)/(1<<20), "MB-rss-10-paused")
	b.ReportMetric(float64(statePaused)/(1<<20), "MB-disk-10-paused")
}

// dirBytes adds up the sizes of the regular files directly in dir.
func dirBytes(dir string) int64 {
	var n int64
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if fi, err := e.Info(); err == nil && fi.Mode().IsRegular() {
			n += fi.Size()
		}
	}
	return n
}

// warmProbe prints what a VM made from a template must answer as a cold
// boot does: the workspace file, hostname, kernel, distribution, the
// image's user, machine id, eth0's address and MAC, the SSH host key it
// serves and its wall clock.
const warmProbe = `cat hello.txt; hostname; uname -r; . /etc/os-release; echo "$ID $VERSION_ID"; id user; cat /etc/machine-id; ` +
	`ip -4 -o addr show eth0 | awk '{print $4}'; cat /sys/class/net/eth0/address; cut -d' ' -f2 /etc/ssh/ssh_host_ed25519_key.pub; date +%s`

// TestWarmOnFirstUse: with warm_on_first_use, the first `vm run` of a
// shape boots, the daemon then makes that shape's template in the
// background, and the next `vm run` of it is restored from the template
// and answers as its own VM; nothing is left behind.
func TestWarmOnFirstUse(t *testing.T) {
	h := NewHarness(t, "BANGER_WARM_ON_FIRST_USE=1")
	shape := []string{"--cpus", "1", "--memory", "256M"}
	run := func(name string) string {
		t.Helper()
		start := time.Now()
		out, errOut, code := h.Run(append(append([]string{"vm", "run", "--rm", "-v", "--name", name}, shape...), "--", "hostname")...)
		if code != 0 || strings.TrimSpace(out) != name {
			t.Fatalf("%s: exit %d, %q\n%s", name, code, out, errOut)
		}
		t.Logf("%s in %.1fs:\n%s", name, time.Since(start).Seconds(), errOut)
		return errOut
	}
	if errOut := run("first"); strings.Contains(errOut, "restoring from template") || !strings.Contains(errOut, "boot") {
		t.Fatalf("the first run was not booted:\n%s", errOut)
	}
	var ts []model.Snapshot
	start := time.Now()
	for deadline := start.Add(3 * time.Minute); ; time.Sleep(500 * time.Millisecond) {
		h.JSON(&ts, "image", "warm", "--list")
		if len(ts) == 1 && ts[0].State == model.SnapshotReady {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no ready template 3 minutes after the first run: %+v", ts)
		}
	}
	t.Logf("template %s ready %.1fs after the first run", ts[0].Name, time.Since(start).Seconds())
	if ts[0].CPUs != 1 || ts[0].MemoryMiB != 256 || ts[0].Stale != "" {
		t.Fatalf("template = %+v", ts[0])
	}
	if errOut := run("second"); !strings.Contains(errOut, "restoring from template "+ts[0].Name) {
		t.Fatalf("the second run was not restored from %s:\n%s", ts[0].Name, errOut)
	}
	h.MustRun("image", "unwarm", ts[0].Name)
}

// TestWarmStart makes one warm-start template (`image warm`, 1 vCPU,
// 256 MiB) and checks that `vm run --rm` of that shape is restored from
// it and answers as a cold `vm run --cold --rm` does (kernel,
// distribution, user, its workspace) while being itself (hostname = its
// name, its own address and MAC, machine id, host key, clock); that the
// template is the daemon's own (not in `vm snapshot list`, refused
// removal while a VM uses it); that `vm create --from-snapshot` with a
// published port, a TTL, a network policy and a label makes a running VM
// whose sessions and port work; that bad inputs fail with nothing made;
// and that removing everything leaves nothing behind.
func TestWarmStart(t *testing.T) {
	h := NewHarness(t)
	shape := []string{"--cpus", "1", "--memory", "256M"}

	start := time.Now()
	var tmpl model.Snapshot
	h.JSON(&tmpl, append([]string{"image", "warm"}, shape...)...)
	t.Logf("template %s made in %.1fs (%d bytes)", tmpl.Name, time.Since(start).Seconds(), tmpl.SizeBytes)
	if tmpl.Template == "" || tmpl.State != model.SnapshotReady || tmpl.CPUs != 1 || tmpl.MemoryMiB != 256 {
		t.Fatalf("template = %+v", tmpl)
	}
	var again model.Snapshot
	h.JSON(&again, append([]string{"image", "warm"}, shape...)...)
	if again.ID != tmpl.ID {
		t.Fatalf("a second image warm made %s instead of answering %s", again.Name, tmpl.Name)
	}
	var snaps []model.Snapshot
	h.JSON(&snaps, "vm", "snapshot", "list")
	if len(snaps) != 0 {
		t.Fatalf("vm snapshot list shows the template: %+v", snaps)
	}
	var ts []model.Snapshot
	h.JSON(&ts, "image", "warm", "--list")
	if len(ts) != 1 || ts[0].ID != tmpl.ID || ts[0].Stale != "" {
		t.Fatalf("image warm --list = %+v", ts)
	}
	// The VM the template was made from is gone; a VM made but not booted
	// takes the first address, so the runs' guests must take another one
	// than the template's guest had.
	h.MustRun("vm", "create", "--name", "spacer")

	repo := t.TempDir()
	gitIn(t, repo, "init", "-q")
	if err := os.WriteFile(filepath.Join(repo, "hello.txt"), []byte("hello\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	gitIn(t, repo, "add", ".")
	gitIn(t, repo, "commit", "-q", "-m", "hello")
	run := func(name string, cold bool) []string {
		args := append([]string{"vm", "run", "--rm", "-v", "--name", name, "--workspace", repo}, shape...)
		if cold {
			args = append(args, "--cold")
		}
		start := time.Now()
		out, errOut, code := h.Run(append(args, "--", "sh", "-c", warmProbe)...)
		took := time.Since(start)
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if code != 0 || len(lines) != 10 {
			t.Fatalf("%s: exit %d\n%s\n%s", name, code, out, errOut)
		}
		// The probe's last line is the guest's clock, read just before
		// the run's end (the VM's deletion after it takes well under 2s).
		if secs, err := strconv.ParseInt(lines[9], 10, 64); err != nil || secs < time.Now().Unix()-4 || secs > time.Now().Unix()+1 {
			t.Errorf("%s: guest clock %q, host %d at the run's end", name, lines[9], time.Now().Unix())
		}
		restored := strings.Contains(errOut, "restoring from template "+tmpl.Name)
		t.Logf("%s (cold %v) in %.1fs: %q\n%s", name, cold, took.Seconds(), lines, errOut)
		if restored == cold {
			t.Fatalf("%s: restored from the template %v, want %v:\n%s", name, restored, !cold, errOut)
		}
		return lines
	}
	warm := run("warm-1", false)
	cold := run("cold-1", true)
	for i, what := range []string{"workspace", "", "kernel", "distribution", "user"} {
		if what != "" && warm[i] != cold[i] {
			t.Errorf("%s: warm %q, cold %q", what, warm[i], cold[i])
		}
	}
	if warm[0] != "hello" || warm[1] != "warm-1" || cold[1] != "cold-1" {
		t.Errorf("workspace and hostname: warm %q, cold %q", warm[:2], cold[:2])
	}
	for _, a := range [][]string{warm, cold} {
		ip, _, _ := strings.Cut(a[6], "/")
		if ip == tmpl.GuestIP || a[7] != hostnet.MACForIP(netip.MustParseAddr(ip)) {
			t.Errorf("%s: address %s, MAC %s (the template's guest had %s)", a[1], a[6], a[7], tmpl.GuestIP)
		}
	}
	if warm[5] == cold[5] || warm[8] == cold[8] || len(warm[5]) != 32 || len(cold[5]) != 32 {
		t.Errorf("warm and cold share a machine id (%q) or host key (%q)", warm[5], warm[8])
	}

	// A VM from the template, kept; a snapshot of it; a VM made from
	// that snapshot with the create flags.
	src := h.MustRun(append([]string{"vm", "create", "--start", "--name", "src", "--json"}, shape...)...)
	var srcVM model.VM
	if err := json.Unmarshal([]byte(src), &srcVM); err != nil {
		t.Fatal(err)
	}
	h.MustRun("vm", "exec", "src", "--", "sh", "-c", "mkdir -p /root/www && echo from-src > /root/www/index.html && sync")
	h.MustRun("vm", "snapshot", "create", "src", "--name", "s1")
	out, errOut, code := h.Run("vm", "create", "--from-snapshot", "s1", "--name", "web", "--ttl", "10m", "-p", "0:8000",
		"--net", "open", "--label", "app=web", "--json")
	if code != 0 {
		t.Fatalf("vm create --from-snapshot: exit %d\n%s\n%s", code, out, errOut)
	}
	web := h.VM("web")
	if web.State != model.VMRunning || web.Net.Mode != "open" || web.Labels["app"] != "web" || web.ExpiresAt == nil ||
		time.Until(*web.ExpiresAt) < 9*time.Minute || len(web.Ports) != 1 || web.GuestIP == srcVM.GuestIP {
		t.Fatalf("web = %+v", web)
	}
	if got := strings.TrimSpace(h.MustRun("vm", "exec", "web", "--", "hostname")); got != "web" {
		t.Errorf("web says it is %q", got)
	}
	serveHTTP(h, "web", "www")
	if body := fetch(t, fmt.Sprintf("http://127.0.0.1:%d/", web.Ports[0].HostPort), 60*time.Second); !strings.Contains(body, "from-src") {
		t.Errorf("web's published port answered %q", body)
	}

	var before []model.VM
	h.JSON(&before, "vm", "list")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"vm", "create", "--from-snapshot", "no-such-snap", "--name", "x"}, `no snapshot named "no-such-snap"`},
		{[]string{"vm", "create", "--from-snapshot", tmpl.Name, "--name", "x"}, fmt.Sprintf("no snapshot named %q", tmpl.Name)},
		{[]string{"vm", "create", "--from-snapshot", "s1", "--name", "x", "--cpus", "2"}, "--cpus does not go with --from-snapshot"},
		{[]string{"vm", "create", "--from-snapshot", "s1", "--name", "web"}, `vm "web" already exists`},
		{[]string{"vm", "create", "--from-snapshot", "s1", "--name", "x", "--ttl", "forever"}, "ttl"},
		{[]string{"vm", "create", "--name", "x", "--cold"}, "cold is for a create that boots"},
		{[]string{"vm", "snapshot", "rm", tmpl.Name}, "is a warm-start template"},
		{[]string{"image", "unwarm", tmpl.Name}, "template " + tmpl.Name + " is used by vm src"},
		{[]string{"image", "unwarm", "s1"}, "s1 is a snapshot, not a template"},
	} {
		if _, errOut, code := h.Run(c.args...); code == 0 || !strings.Contains(errOut, c.want) {
			t.Errorf("banger %s: exit %d, stderr %q; want an error with %q", strings.Join(c.args, " "), code, errOut, c.want)
		}
	}
	var after []model.VM
	h.JSON(&after, "vm", "list")
	if len(after) != len(before) {
		t.Errorf("refused creates left vms: %d before, %d after", len(before), len(after))
	}

	h.MustRun("vm", "delete", "--force", "web", "src", "spacer")
	h.MustRun("vm", "snapshot", "rm", "s1")
	h.MustRun("image", "unwarm", tmpl.Name)
	h.JSON(&ts, "image", "warm", "--list")
	if len(ts) != 0 {
		t.Fatalf("after unwarm: %+v", ts)
	}
	h.AssertNoLeaks()
}

// TestSnapshotOnReflink runs the daemon with its state on XFS made with
// reflink=1, where the disk side of a snapshot is a clone: the
// snapshot's system and work disks share (nearly) all their blocks with
// the VM's, so taking it costs the same whatever the guest wrote; a fork
// from it clones its work disk the same way and has the files written
// before the snapshot, byte for byte.
func TestSnapshotOnReflink(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireE2E(t)
	testenv.RequireBinary(t, "filefrag")
	base, err := os.MkdirTemp("", "bgx-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	mnt := filepath.Join(base, "m")
	testenv.MountXFS(t, filepath.Join(base, "xfs.img"), mnt, 16<<30)
	state := filepath.Join(mnt, "s")
	if err := os.Mkdir(state, 0o700); err != nil {
		t.Fatal(err)
	}
	h := NewHarnessAt(t, state)
	vm := h.StartVM("src")
	sum := h.MustRun("vm", "exec", "src", "--", "sh", "-c",
		"head -c 64M /dev/urandom > /root/big && sync && sha256sum /root/big")
	start := time.Now()
	h.MustRun("vm", "snapshot", "create", "src", "--name", "s1")
	t.Logf("snapshot of a VM with 64 MiB written in %.2fs", time.Since(start).Seconds())
	var sn model.Snapshot
	h.JSON(&sn, "vm", "snapshot", "show", "s1", "--json")
	// Mostly shared: the source guest runs on and may rewrite a few
	// blocks (its journal) before they are counted; a copy shares none.
	mostlyShared := func(path string) {
		t.Helper()
		shared, total, err := testenv.SharedBlocks(path)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: %d of %d blocks shared", filepath.Base(path), shared, total)
		if total == 0 || shared*10 < total*9 {
			t.Errorf("%s shares %d of its %d blocks: not a clone", path, shared, total)
		}
	}
	mostlyShared(filepath.Join(sn.Dir, "system"+filepath.Ext(vm.SystemDisk)))
	mostlyShared(filepath.Join(sn.Dir, "work.ext4"))

	var forks []model.VM
	h.JSON(&forks, "vm", "fork", "s1", "--count", "1", "--name-prefix", "kid")
	if len(forks) != 1 {
		t.Fatalf("vm fork made %d VMs", len(forks))
	}
	mostlyShared(forks[0].WorkDisk)
	if got := h.MustRun("vm", "exec", "kid-1", "--", "sha256sum", "/root/big"); got != sum {
		t.Fatalf("the fork's /root/big: %q, the source's was %q", got, sum)
	}
}
