package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/banger/banger/internal/api"
	"github.com/banger/banger/internal/model"
)

// TestFirecrackerVM runs the VM lifecycle on Firecracker, pause and
// resume, a snapshot and two forks of it (each itself, its writes its
// own) included. It needs the real
// firecracker binary, a KVM that runs ordinary guests and a copy-on-write
// strategy Firecracker can use (dm-snapshot or reflink); without them it
// skips, saying which is missing. The driver itself is tested against a fake
// of Firecracker's API in internal/vmm/firecracker.
func TestFirecrackerVM(t *testing.T) {
	if _, err := exec.LookPath("firecracker"); err != nil {
		t.Skip("firecracker is not on PATH: install it to run the Firecracker e2e cases")
	}
	if _, err := os.Stat("/dev/kvm"); err != nil {
		t.Skip("no /dev/kvm: Firecracker needs KVM")
	}
	h := NewHarness(t, "BANGER_VMM=firecracker")
	var rep api.DoctorReport
	h.JSON(&rep, "doctor")
	for _, c := range rep.Checks {
		if c.Name == "firecracker" && !c.OK {
			t.Skipf("firecracker cannot run guests here: %s", c.Detail)
		}
	}
	usable := false
	for _, c := range rep.Checks {
		if (c.Name == "cow:dm-snapshot" || c.Name == "cow:reflink") && c.OK {
			usable = true
		}
	}
	if !usable {
		t.Skip("no copy-on-write strategy for Firecracker here: needs device-mapper or a reflink-capable state directory")
	}
	vm := h.StartVM("fc")
	if vm.VMM != "firecracker" {
		t.Fatalf("vmm = %s, want firecracker", vm.VMM)
	}
	if out := h.MustRun("vm", "exec", "fc", "--", "uname", "-a"); !strings.HasPrefix(out, "Linux fc ") {
		t.Fatalf("uname -a = %q", out)
	}
	h.MustRun("vm", "exec", "fc", "--", "sh", "-c", "echo kept > /root/marker && sync")
	h.MustRun("vm", "stop", "fc")
	h.MustRun("vm", "start", "fc")
	if got := strings.TrimSpace(h.MustRun("vm", "exec", "fc", "--", "cat", "/root/marker")); got != "kept" {
		t.Fatalf("marker after restart = %q", got)
	}
	// Pause and resume: a session and the guest's memory go on.
	h.MustRun("session", "start", "fc", "--name", "cat", "--", "cat")
	h.MustRun("vm", "exec", "fc", "--", "sh", "-c", "echo in-memory > /dev/shm/marker")
	h.MustRun("vm", "pause", "fc")
	if st := h.VM("fc").State; st != "paused" {
		t.Fatalf("state after pause = %s", st)
	}
	h.MustRun("vm", "resume", "fc")
	if got := strings.TrimSpace(h.MustRun("vm", "exec", "fc", "--", "cat", "/dev/shm/marker")); got != "in-memory" {
		t.Fatalf("memory after resume = %q", got)
	}
	h.MustRun("session", "send", "fc", "cat", "after-resume")
	h.waitLogs("fc", "cat", "after-resume\n")

	// Forks: restored in their own directories while the parent runs,
	// told who they are over the vsock before their taps come up.
	h.MustRun("vm", "snapshot", "create", "fc", "--name", "fcbase")
	out, phases, code := h.Run("vm", "fork", "fcbase", "--count", "2", "--name-prefix", "fckid", "--json")
	if code != 0 {
		t.Fatalf("vm fork: exit %d\n%s\n%s", code, out, phases)
	}
	var forks []model.VM
	if err := json.Unmarshal([]byte(out), &forks); err != nil || len(forks) != 2 {
		t.Fatalf("vm fork said %q (%v)", out, err)
	}
	seen := map[string]string{vm.GuestIP: "fc", vm.GuestMAC: "fc"}
	for _, f := range forks {
		for _, v := range []string{f.GuestIP, f.GuestMAC} {
			if other, dup := seen[v]; dup {
				t.Fatalf("%s shares %s with %s", f.Name, v, other)
			}
			seen[v] = f.Name
		}
		got := strings.Fields(h.MustRun("vm", "exec", f.Name, "--", "sh", "-c",
			"hostname; cat /root/marker; cat /sys/class/net/eth0/address; ip -4 -o addr show eth0 | awk '{print $4}'"))
		if len(got) != 4 || got[0] != f.Name || got[1] != "kept" || got[2] != f.GuestMAC || !strings.HasPrefix(got[3], f.GuestIP+"/") {
			t.Errorf("%s answered %q", f.Name, got)
		}
	}
	h.MustRun("vm", "exec", "fckid-1", "--", "sh", "-c", "echo mine > /root/kid1.txt && sync")
	if out := h.MustRun("vm", "exec", "fc", "--", "ls", "/root"); strings.Contains(out, "kid1.txt") {
		t.Errorf("a fork's write reached the parent's disk: %q", out)
	}
	if out := strings.TrimSpace(h.MustRun("vm", "exec", "fc", "--", "hostname")); out != "fc" {
		t.Errorf("the parent now says it is %q", out)
	}
	h.MustRun("vm", "delete", "--force", "fckid-1", "fckid-2")
	h.MustRun("vm", "snapshot", "rm", "fcbase")
	h.MustRun("vm", "delete", "--force", "fc")
	h.AssertNoLeaks()
}
