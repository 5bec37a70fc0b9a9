package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/banger/banger/internal/api"
	"github.com/banger/banger/internal/model"
)

// TestVMRun is the main job: one command boots a VM from the default image
// and kernel, runs a command, streams its output and returns its exit code.
func TestVMRun(t *testing.T) {
	h := NewHarness(t)
	out, errOut, code := h.Run("vm", "run", "--rm", "--", "uname", "-a")
	if code != 0 || !strings.HasPrefix(out, "Linux ") || !strings.Contains(out, "x86_64") {
		t.Fatalf("vm run uname -a: exit %d, printed %q, want the guest kernel's line; stderr %q", code, out, errOut)
	}
	// stderr is not a terminal here: banger adds nothing to the command's.
	if errOut != "" {
		t.Errorf("vm run without --verbose wrote to stderr: %q", errOut)
	}
	var k []struct {
		Kernel *model.Kernel `json:"kernel"`
	}
	h.JSON(&k, "kernel", "list")
	found := false
	for _, e := range k {
		if e.Kernel != nil && strings.Contains(out, e.Kernel.Version) {
			found = true
		}
	}
	if !found {
		t.Errorf("uname -a %q names none of the pulled kernels' versions", out)
	}
	_, _, code = h.Run("vm", "run", "--rm", "--", "sh", "-c", "exit 7")
	if code != 7 {
		t.Fatalf("vm run -- sh -c 'exit 7' exited %d, want 7", code)
	}
	// --verbose: one line per boot phase, each once.
	_, errOut, code = h.Run("vm", "run", "--rm", "--verbose", "--", "true")
	t.Logf("vm run --verbose stderr:\n%s", errOut)
	if code != 0 {
		t.Fatalf("vm run --verbose: exit %d: %s", code, errOut)
	}
	for _, phase := range []string{"disks", "boot", "ssh", "ready"} {
		if n := strings.Count(errOut, "] "+phase); n != 1 {
			t.Errorf("vm run --verbose: phase %s on %d lines, want 1", phase, n)
		}
	}
	var vms []model.VM
	h.JSON(&vms, "vm", "list")
	if len(vms) != 0 {
		t.Fatalf("--rm left vms: %+v", vms)
	}
	h.AssertNoLeaks()

	// doctor says what this host gives and why.
	var rep api.DoctorReport
	h.JSON(&rep, "doctor")
	if rep.VMM != "qemu" || rep.CowStrategy != "qcow2" || rep.Accel == "" || rep.NetworkMode != "netns:"+h.Netns {
		t.Fatalf("doctor: %+v", rep)
	}
}

// TestVMRunInterrupt: Ctrl-C of `vm run --rm` while the guest command runs
// ends it, deletes the VM, exits 130 and says so on one line.
func TestVMRunInterrupt(t *testing.T) {
	h := NewHarness(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := h.Command(ctx, "vm", "run", "--rm", "--name", "intr", "--", "sleep", "30")
	var out, errOut syncBuf
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Wait until sleep runs in the guest (the image may lack pgrep).
	findSleep := `for p in /proc/[0-9]*; do [ "$(cat $p/comm 2>/dev/null)" = sleep ] && exit 0; done; exit 1`
	deadline := time.Now().Add(5 * time.Minute)
	for {
		if _, _, code := h.Run("vm", "exec", "intr", "--", "sh", "-c", findSleep); code == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("sleep never ran in the guest; vm run stderr %q", errOut.String())
		}
		time.Sleep(time.Second)
	}
	t0 := time.Now()
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	code := cmd.ProcessState.ExitCode()
	t.Logf("vm run after SIGINT: exit %d in %.1fs, stderr %q", code, time.Since(t0).Seconds(), errOut.String())
	if code != 130 {
		t.Errorf("exit %d, want 130", code)
	}
	if got, want := errOut.String(), "banger: interrupted; deleted vm intr\n"; got != want {
		t.Errorf("stderr %q, want the one line %q", got, want)
	}
	if out.String() != "" {
		t.Errorf("stdout %q, want nothing", out.String())
	}
	var vms []model.VM
	h.JSON(&vms, "vm", "list")
	if len(vms) != 0 {
		t.Fatalf("vms left after the interrupt: %+v", vms)
	}
	h.AssertNoLeaks()
}

// TestVMLifecycle: a file written in /root survives stop and start; the
// image is never written through.
func TestVMLifecycle(t *testing.T) {
	h := NewHarness(t)
	vm := h.StartVM("life")
	var im model.Image
	h.JSON(&im, "image", "show", vm.ImageID)
	before := fileSum(t, im.Path)
	// vm list names the image and kernel, not their ids.
	var k model.Kernel
	h.JSON(&k, "kernel", "show", vm.KernelID)
	list := h.MustRun("vm", "list")
	t.Logf("vm list:\n%s", list)
	if row := strings.Fields(strings.Split(list, "\n")[1]); len(row) < 5 || row[1] != "life" || row[3] != im.Name || row[4] != k.Name {
		t.Errorf("vm list row %q, want image %s and kernel %s", row, im.Name, k.Name)
	}

	h.MustRun("vm", "exec", "life", "--", "sh", "-c", "echo kept > /root/marker && echo gone > /etc/banger-marker && sync")
	if got := strings.TrimSpace(h.MustRun("vm", "exec", "life", "--", "cat", "/root/marker")); got != "kept" {
		t.Fatalf("marker = %q", got)
	}
	h.MustRun("vm", "stop", "life")
	if st := h.VM("life").State; st != model.VMStopped {
		t.Fatalf("state after stop = %s", st)
	}
	if l := h.Leaks(); len(l) > 1 || (len(l) == 1 && !strings.HasPrefix(l[0], "vm dir")) {
		t.Fatalf("stopped vm still holds host resources: %v", l)
	}
	h.MustRun("vm", "start", "life")
	if got := strings.TrimSpace(h.MustRun("vm", "exec", "life", "--", "cat", "/root/marker")); got != "kept" {
		t.Fatalf("after restart /root/marker = %q, want kept", got)
	}
	// The system disk is per VM and kept too; the image is untouched.
	if got := strings.TrimSpace(h.MustRun("vm", "exec", "life", "--", "cat", "/etc/banger-marker")); got != "gone" {
		t.Fatalf("system disk change lost across stop/start: %q", got)
	}
	_, _, code := h.Run("vm", "exec", "life", "--", "false")
	if code != 1 {
		t.Fatalf("vm exec false exited %d, want 1", code)
	}
	logs := h.MustRun("vm", "logs", "life")
	if !strings.Contains(logs, "Linux version") {
		t.Errorf("vm logs does not show the guest console:\n%.500s", logs)
	}
	h.MustRun("vm", "restart", "life")
	h.MustRun("vm", "exec", "life", "--", "true")
	h.MustRun("vm", "delete", "--force", "life")
	if after := fileSum(t, im.Path); after != before {
		t.Fatalf("image checksum changed: %s → %s", before, after)
	}
	h.AssertStopsClean()
	h.AssertNoLeaks()
}

// TestTwoVMsAndDaemonCrash: two VMs get distinct addresses and reach each
// other; kill -9 of bangerd leaves them running and reachable, and the next
// CLI call brings the daemon back.
func TestTwoVMsAndDaemonCrash(t *testing.T) {
	h := NewHarness(t)
	a := h.StartVM("va")
	b := h.StartVM("vb")
	if a.GuestIP == b.GuestIP || a.CID == b.CID || a.GuestMAC == b.GuestMAC || a.ID == b.ID {
		t.Fatalf("vms share identity: %+v %+v", a, b)
	}
	ha, hb := readHandles(t, a), readHandles(t, b)
	if ha.Tap == "" || ha.Tap == hb.Tap {
		t.Fatalf("taps: %q %q", ha.Tap, hb.Tap)
	}
	// VMs do not reach each other unless a policy says so: va reaches
	// vb's sshd only once it is allowed to, and vb still not va's.
	if reachable(h, "va", b.GuestIP, 22, "SSH-2.0") {
		t.Fatalf("va reached vb:22 without --allow-vm")
	}
	h.MustRun("vm", "net", "va", "--allow-vm", "vb")
	if !reachable(h, "va", b.GuestIP, 22, "SSH-2.0") {
		t.Fatalf("va → vb:22 failed with --allow-vm vb")
	}
	if reachable(h, "vb", a.GuestIP, 22, "SSH-2.0") {
		t.Fatalf("vb reached va:22: va's --allow-vm vb let vb in")
	}
	// <vm>.vm resolves through the daemon's DNS responder on the gateway,
	// which is each guest's nameserver.
	if got := h.MustRun("vm", "exec", "va", "--", "getent", "hosts", "vb.vm"); !strings.HasPrefix(got, b.GuestIP+" ") {
		t.Fatalf("getent hosts vb.vm in va = %q, want %s", got, b.GuestIP)
	}
	if _, _, code := h.Run("vm", "exec", "va", "--", "getent", "hosts", "nosuch.vm"); code == 0 {
		t.Fatalf("an unknown name resolved")
	}
	// vm ssh execs the system ssh with the daemon key and the pinned host key.
	if got := strings.TrimSpace(h.MustRun("vm", "ssh", "vb", "--", "hostname")); got != "vb" {
		t.Fatalf("vm ssh vb -- hostname = %q", got)
	}
	hosts := h.MustRun("vm", "hosts")
	if !strings.Contains(hosts, b.GuestIP) || !strings.Contains(hosts, "vb.vm") {
		t.Fatalf("vm hosts = %q", hosts)
	}

	pid := h.DaemonPID()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitGone(t, pid)
	// va's tap loses its policy table, as a tap made by a banger older
	// than policies has none: the next daemon must write it again.
	if out, err := h.InNetns("nft", "delete", "table", "ip", "banger-"+ha.Tap); err != nil {
		t.Fatalf("delete va's policy table: %v: %s", err, out)
	}
	for _, name := range []string{"va", "vb"} {
		if got := strings.TrimSpace(h.MustRun("vm", "exec", name, "--", "hostname")); got != name {
			t.Fatalf("after daemon kill -9, exec in %s: hostname %q", name, got)
		}
		if st := h.VM(name).State; st != model.VMRunning {
			t.Fatalf("%s state after daemon restart = %s", name, st)
		}
	}
	if newPID := h.DaemonPID(); newPID == pid {
		t.Fatalf("daemon pid unchanged after kill -9")
	}
	// The new daemon re-applied the policies of the VMs it found running.
	if out, err := h.InNetns("nft", "list", "table", "ip", "banger-"+ha.Tap); err != nil || !strings.Contains(out, b.GuestIP) {
		t.Fatalf("va's policy table after the daemon restart: %v\n%s", err, out)
	}
	if !reachable(h, "va", b.GuestIP, 22, "SSH-2.0") || reachable(h, "vb", a.GuestIP, 22, "SSH-2.0") {
		t.Fatalf("policies after the daemon restart: va → vb:22 must pass, vb → va:22 must not")
	}
	h.MustRun("vm", "delete", "--force", "va")
	h.MustRun("vm", "delete", "--force", "vb")
	h.AssertNoLeaks()
}

// TestVMMCrash: kill -9 of a VM's QEMU stops the VM and frees its tap.
func TestVMMCrash(t *testing.T) {
	h := NewHarness(t)
	vm := h.StartVM("crash")
	hd := readHandles(t, vm)
	if err := syscall.Kill(hd.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for h.VM("crash").State == model.VMRunning {
		if time.Now().After(deadline) {
			t.Fatal("vm still running 30s after its vmm was killed")
		}
		time.Sleep(500 * time.Millisecond)
	}
	got := h.VM("crash")
	if got.State != model.VMStopped && got.State != model.VMFailed {
		t.Fatalf("state = %s", got.State)
	}
	if got.LastError == "" {
		t.Errorf("no last_error recorded for the crash")
	}
	if l := h.Leaks(); len(l) != 1 {
		t.Fatalf("after vmm crash, leaks besides the kept vm dir: %v", l)
	}
	_, errOut, code := h.Run("vm", "exec", "crash", "--", "true")
	if code == 0 || !strings.Contains(errOut, "not running") {
		t.Fatalf("exec on crashed vm: code %d, %q", code, errOut)
	}
	h.MustRun("vm", "start", "crash")
	h.MustRun("vm", "exec", "crash", "--", "true")
}

// TestCreateDeleteCyclesAndFailures: repeated create/delete and every failing
// path leave nothing behind.
func TestCreateDeleteCyclesAndFailures(t *testing.T) {
	h := NewHarness(t)
	for i := 0; i < 20; i++ {
		name := fmt.Sprintf("cyc-%d", i)
		h.MustRun("vm", "create", "--name", name)
		h.MustRun("vm", "delete", name)
	}
	h.AssertNoLeaks()

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"vm", "create", "--image", "no-such-image"}, `image "no-such-image" not found`},
		{[]string{"vm", "create", "--kernel", "no-such-kernel"}, `kernel "no-such-kernel" not found`},
		{[]string{"vm", "create", "--name", "Bad_Name"}, "invalid vm name"},
		{[]string{"vm", "create", "--memory", "12Q"}, "invalid size"},
		{[]string{"vm", "start", "ghost"}, `vm "ghost" not found`},
	} {
		_, errOut, code := h.Run(tc.args...)
		if code == 0 || !strings.Contains(errOut, tc.want) {
			t.Errorf("banger %s: code %d stderr %q, want an error containing %q", strings.Join(tc.args, " "), code, errOut, tc.want)
		}
	}

	// A kernel the VMM cannot boot: the start fails, the record says why,
	// and nothing is left running.
	bad := filepath.Join(t.TempDir(), "vmlinux")
	if err := os.WriteFile(bad, append([]byte("\x7fELF"), make([]byte, 4096)...), 0o644); err != nil {
		t.Fatal(err)
	}
	h.MustRun("kernel", "import", "--name", "broken", "--vmlinux", bad)
	h.MustRun("vm", "create", "--name", "nokern", "--kernel", "broken")
	_, errOut, code := h.Run("vm", "start", "nokern")
	if code == 0 {
		t.Fatalf("start with a broken kernel succeeded")
	}
	vm := h.VM("nokern")
	if vm.State != model.VMFailed || vm.LastError == "" {
		t.Fatalf("after failed start: state %s last_error %q (cli said %q)", vm.State, vm.LastError, errOut)
	}
	if l := h.Leaks(); len(l) != 1 {
		t.Fatalf("failed start leaked: %v", l)
	}
	h.MustRun("vm", "delete", "nokern")

	// Disk full: the VM directory's filesystem has no room for the disks.
	// The daemon runs in its own mount namespace (ip netns exec makes one),
	// so the tiny filesystem is mounted there.
	vmsDir := filepath.Join(h.StateDir, "vms")
	inDaemonMounts := func(args ...string) (string, error) {
		out, err := exec.Command("nsenter", append([]string{"-t", fmt.Sprint(h.DaemonPID()), "-m", "--"}, args...)...).CombinedOutput()
		return string(out), err
	}
	if out, err := inDaemonMounts("mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", vmsDir); err != nil {
		t.Fatalf("mount tiny tmpfs: %v: %s", err, out)
	}
	defer inDaemonMounts("umount", vmsDir)
	_, errOut, code = h.Run("vm", "create", "--name", "full")
	if code == 0 {
		t.Fatalf("create on a full disk succeeded")
	}
	if !strings.Contains(strings.ToLower(errOut), "no space left on device") {
		t.Errorf("create on a full disk: %q does not say the disk is full", errOut)
	}
	if _, _, c := h.Run("vm", "show", "full"); c == 0 {
		t.Fatalf("a failed create left a record (cli said %q)", errOut)
	}
	if out, _ := inDaemonMounts("ls", "-A", vmsDir); strings.TrimSpace(out) != "" {
		t.Fatalf("a failed create left files: %s", out)
	}
	if out, err := inDaemonMounts("umount", vmsDir); err != nil {
		t.Fatalf("umount: %v: %s", err, out)
	}
	h.AssertNoLeaks()
}

type handles struct {
	PID int    `json:"pid"`
	Tap string `json:"tap"`
}

func readHandles(t *testing.T, vm model.VM) handles {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(vm.Dir, "handles.json"))
	if err != nil {
		t.Fatal(err)
	}
	var h handles
	if err := json.Unmarshal(b, &h); err != nil {
		t.Fatal(err)
	}
	return h
}

func waitGone(t *testing.T, pid int) {
	t.Helper()
	for i := 0; i < 100; i++ {
		if syscall.Kill(pid, 0) != nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("pid %d still alive", pid)
}

func fileSum(t *testing.T, p string) string {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// TestVMRunWorkspace is the first job of banger: a repository copied into a
// fresh VM, a command run in it, its exit code returned, the VM gone after.
func TestVMRunWorkspace(t *testing.T) {
	h := NewHarness(t)
	repo := t.TempDir()
	git := func(args ...string) {
		t.Helper()
		cmd := exec.Command("git", append([]string{"-C", repo, "-c", "user.name=t", "-c", "user.email=t@example.com"}, args...)...)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v: %s", args, err, out)
		}
	}
	git("init", "-q", "-b", "main")
	os.WriteFile(filepath.Join(repo, "hello.txt"), []byte("hello from the host\n"), 0o644)
	git("add", "hello.txt")
	git("commit", "-q", "-m", "first")
	os.WriteFile(filepath.Join(repo, "hello.txt"), []byte("edited, not committed\n"), 0o644)

	out := h.MustRun("vm", "run", "--rm", "--workspace", repo, "--", "sh", "-c", "pwd && cat hello.txt && git log --format=%s && git status --short")
	want := "/root/repo\nedited, not committed\nfirst\n M hello.txt\n"
	if out != want {
		t.Fatalf("vm run --workspace printed\n%q\nwant\n%q", out, want)
	}
	_, _, code := h.Run("vm", "run", "--rm", "--workspace", repo, "--", "sh", "-c", "test -f hello.txt && exit 5")
	if code != 5 {
		t.Fatalf("exit code %d, want 5", code)
	}
	// A plain directory is refused as a workspace unless --no-git says so.
	plain := t.TempDir()
	os.WriteFile(filepath.Join(plain, "notes.txt"), []byte("plain\n"), 0o644)
	if _, errOut, code := h.Run("vm", "run", "--rm", "--workspace", plain, "--", "true"); code == 0 || !strings.Contains(errOut, "git") {
		t.Fatalf("plain dir as workspace: exit %d %q, want a clear not-a-repository error", code, errOut)
	}
	if out := h.MustRun("vm", "run", "--rm", "--workspace", plain, "--no-git", "--", "cat", "notes.txt"); out != "plain\n" {
		t.Fatalf("--no-git workspace: %q", out)
	}
	var vms []model.VM
	h.JSON(&vms, "vm", "list")
	if len(vms) != 0 {
		t.Fatalf("--rm left vms: %+v", vms)
	}
	h.AssertNoLeaks()
}
