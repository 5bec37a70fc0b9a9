package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/banger/banger/internal/model"
)

// gone waits until no VM named name is listed, and returns when that was.
func (h *Harness) gone(name string, limit time.Duration) (time.Time, bool) {
	h.t.Helper()
	end := time.Now().Add(limit)
	for time.Now().Before(end) {
		var vms []model.VM
		h.JSON(&vms, "vm", "list")
		found := false
		for _, vm := range vms {
			found = found || vm.Name == name
		}
		if !found {
			return time.Now(), true
		}
		time.Sleep(500 * time.Millisecond)
	}
	return time.Time{}, false
}

// TestVMTTL: a VM made with --ttl 20s, and a running one given 20s with
// `vm ttl`, are deleted by the daemon on time, leaving nothing behind.
func TestVMTTL(t *testing.T) {
	t.Parallel() // mostly waiting on a clock: overlaps the others that do
	h := NewHarness(t)
	run := h.StartVM("ttl-run")
	if run.ExpiresAt != nil {
		t.Fatalf("a vm made without --ttl has deadline %v", run.ExpiresAt)
	}
	t0 := time.Now()
	h.MustRun("vm", "create", "--name", "ttl-new", "--ttl", "20s")
	out := h.MustRun("vm", "ttl", "ttl-run", "20s")
	t.Logf("vm ttl: %s", strings.TrimSpace(out))
	if !strings.Contains(out, "then delete") {
		t.Errorf("vm ttl answered %q", out)
	}
	vm := h.VM("ttl-new")
	if vm.ExpiresAt == nil || vm.ExpireAction != model.TTLDelete || vm.ExpiresAt.Sub(t0) > 21*time.Second || vm.ExpiresAt.Sub(t0) < 19*time.Second {
		t.Fatalf("vm show: deadline %v (%v after the create) action %q", vm.ExpiresAt, vm.ExpiresAt.Sub(t0), vm.ExpireAction)
	}
	list := h.MustRun("vm", "list")
	t.Logf("vm list:\n%s", list)
	if !strings.Contains(strings.Split(list, "\n")[0], "TTL") {
		t.Errorf("vm list has no TTL column")
	}
	if _, _, code := h.Run("vm", "ttl", "ttl-run", "soon"); code == 0 {
		t.Errorf("vm ttl accepted soon")
	}
	for _, name := range []string{"ttl-new", "ttl-run"} {
		at, ok := h.gone(name, 60*time.Second)
		if !ok {
			t.Fatalf("vm %s still listed 60s after a 20s ttl", name)
		}
		t.Logf("vm %s gone %.1fs after its ttl was set (20s)", name, at.Sub(t0).Seconds())
		if d := at.Sub(t0); d < 19*time.Second || d > 28*time.Second {
			t.Errorf("vm %s gone after %v, want about 20s", name, d)
		}
	}
	log, _ := os.ReadFile(filepath.Join(h.StateDir, "bangerd.log"))
	if !strings.Contains(string(log), "vm deadline passed; deleting it") {
		t.Errorf("bangerd.log has no deadline line")
	}
	h.AssertNoLeaks()
}

// TestVMIdleTimeout: a VM made with --idle-timeout 15s is kept while an
// exec comes every 5s for longer than that, then deleted about 15s after
// the last one ends.
func TestVMIdleTimeout(t *testing.T) {
	t.Parallel() // mostly waiting on a clock: overlaps the others that do
	h := NewHarness(t)
	vm := h.StartVM("idler", "--idle-timeout", "15s")
	if vm.IdleTimeoutSeconds != 15 || vm.IdleAction != model.TTLDelete {
		t.Fatalf("vm show: idle %d %q", vm.IdleTimeoutSeconds, vm.IdleAction)
	}
	t.Logf("vm show: %s", strings.TrimSpace(grepLine(h.MustRun("vm", "show", "idler"), "idle timeout")))
	inUse := time.Now().Add(30 * time.Second)
	var last time.Time
	for time.Now().Before(inUse) {
		h.MustRun("vm", "exec", "idler", "--", "true")
		last = time.Now()
		time.Sleep(5 * time.Second)
	}
	if _, _, code := h.Run("vm", "show", "idler"); code != 0 {
		t.Fatal("vm deleted while in use")
	}
	t.Logf("kept for %.0fs of periodic exec", 30.0)
	at, ok := h.gone("idler", 60*time.Second)
	if !ok {
		t.Fatal("vm still listed 60s after its last activity (idle timeout 15s)")
	}
	d := at.Sub(last)
	t.Logf("vm gone %.1fs after its last exec (idle timeout 15s)", d.Seconds())
	if d < 14*time.Second || d > 25*time.Second {
		t.Errorf("gone %v after the last activity, want about 15s", d)
	}
	log, _ := os.ReadFile(filepath.Join(h.StateDir, "bangerd.log"))
	if !strings.Contains(string(log), "vm idle; deleting it") {
		t.Errorf("bangerd.log has no idle line")
	}
	h.AssertNoLeaks()
}

// grepLine is the first line of s holding sub.
func grepLine(s, sub string) string {
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			return l
		}
	}
	return ""
}

// TestVMTTLDaemonDown: a deadline that passes while bangerd is stopped is
// enforced when the next CLI call starts it again: the running VM it left
// is gone, VMM included.
func TestVMTTLDaemonDown(t *testing.T) {
	t.Parallel() // mostly waiting on a clock: overlaps the others that do
	h := NewHarness(t)
	h.StartVM("ttl-down")
	h.MustRun("vm", "ttl", "ttl-down", "10s")
	pid := h.DaemonPID()
	h.MustRun("daemon", "stop")
	time.Sleep(15 * time.Second)
	var vms []model.VM
	h.JSON(&vms, "vm", "list") // starts a new daemon
	if npid := h.DaemonPID(); npid == pid {
		t.Fatalf("daemon pid unchanged (%d): it was not stopped", pid)
	}
	t.Logf("vms listed by the restarted daemon: %d", len(vms))
	if len(vms) != 0 {
		t.Fatalf("vm outlived its deadline across a daemon restart: %+v", vms[0].Name)
	}
	h.AssertNoLeaks()
}

// TestVMRunRmOwned: kill -9 of `vm run --rm` leaves a VM whose lease the
// daemon enforces: it is deleted within the lease, and nothing leaks.
func TestVMRunRmOwned(t *testing.T) {
	h := NewHarness(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := h.Command(ctx, "vm", "run", "--rm", "--name", "lease", "--", "sleep", "5")
	var out, errOut syncBuf
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Minute)
	for {
		var vms []model.VM
		h.JSON(&vms, "vm", "list")
		if len(vms) == 1 && vms[0].State == model.VMRunning {
			if vms[0].ExpiresAt == nil {
				t.Fatalf("a vm run --rm vm has no lease")
			}
			t.Logf("lease: %s left", time.Until(*vms[0].ExpiresAt).Round(time.Second))
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("vm never ran; vm run stderr %q", errOut.String())
		}
		time.Sleep(500 * time.Millisecond)
	}
	t0 := time.Now()
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	at, ok := h.gone("lease", 60*time.Second)
	if !ok {
		t.Fatalf("vm still there 60s after its vm run was killed")
	}
	t.Logf("vm of the killed vm run --rm gone %.1fs after the kill", at.Sub(t0).Seconds())
	if d := at.Sub(t0); d > 40*time.Second {
		t.Errorf("gone after %v, want within the 30s lease", d)
	}
	h.AssertNoLeaks()
}

// TestVMIdlePause: a VM made with --idle-timeout 10s --ttl-action pause
// is paused once idle, not deleted; `vm list --label` finds it paused,
// and it resumes with its processes.
func TestVMIdlePause(t *testing.T) {
	t.Parallel() // mostly waiting on a clock: overlaps the others that do
	h := NewHarness(t)
	vm := h.StartVM("napper", "--idle-timeout", "10s", "--ttl-action", "pause", "--label", "role=napper")
	if vm.IdleAction != model.TTLPause || vm.Labels["role"] != "napper" {
		t.Fatalf("vm show: idle action %q, labels %v", vm.IdleAction, vm.Labels)
	}
	h.MustRun("vm", "exec", "napper", "--", "sh", "-c", "setsid sleep 3600 </dev/null >/dev/null 2>&1 & echo $! > /root/sleeper")
	last := time.Now()
	var vms []model.VM
	for deadline := time.Now().Add(90 * time.Second); ; time.Sleep(time.Second) {
		h.JSON(&vms, "vm", "list", "--label", "role=napper")
		if len(vms) == 1 && vms[0].State == model.VMPaused {
			break
		}
		if len(vms) != 1 || time.Now().After(deadline) {
			t.Fatalf("not paused 90s after its last activity (idle timeout 10s): %+v", vms)
		}
	}
	t.Logf("paused %.1fs after its last exec (idle timeout 10s)", time.Since(last).Seconds())
	log, _ := os.ReadFile(filepath.Join(h.StateDir, "bangerd.log"))
	if !strings.Contains(string(log), "vm idle; pausing it") {
		t.Errorf("bangerd.log has no idle pause line")
	}
	h.MustRun("vm", "resume", "napper")
	if out := h.MustRun("vm", "exec", "napper", "--", "sh", "-c", "kill -0 $(cat /root/sleeper) && echo alive"); !strings.Contains(out, "alive") {
		t.Fatalf("the process started before the pause: %q", out)
	}
	h.MustRun("vm", "delete", "--force", "napper")
	h.AssertNoLeaks()
}
