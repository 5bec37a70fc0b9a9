package e2e

import (
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/banger/banger/internal/api"
)

// TestFirecrackerVM runs the VM lifecycle on Firecracker, pause and resume
// included. It needs the real
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
	h.MustRun("vm", "delete", "--force", "fc")
	h.AssertNoLeaks()
}
