package e2e

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/banger/banger/internal/api"
	"github.com/banger/banger/internal/model"
)

// counterScript prints 1, 2, 3, … one a second, forever.
const counterScript = `i=0; while :; do i=$((i+1)); echo "$i"; sleep 1; done`

// counts parses a counter session's logs into its numbers.
func counts(t *testing.T, logs string) []int {
	t.Helper()
	var out []int
	for _, l := range strings.Fields(logs) {
		n, err := strconv.Atoi(l)
		if err != nil {
			t.Fatalf("counter logs hold %q: %q", l, logs)
		}
		out = append(out, n)
	}
	return out
}

// vmmProcesses lists what Leaks finds besides the VM directories
// themselves: processes, taps, guards, loops.
func (h *Harness) hostHolds() []string {
	var held []string
	for _, l := range h.Leaks() {
		if !strings.HasPrefix(l, "vm dir: ") {
			held = append(held, l)
		}
	}
	return held
}

// guestClockSkew is how far the guest's wall clock is from the host's,
// bounded by the time an exec takes: it returns the guest's time minus
// the host's before the exec, and minus the host's after it.
func (h *Harness) guestClockSkew(vm string) (early, late float64) {
	h.t.Helper()
	before := time.Now()
	out := h.MustRun("vm", "exec", vm, "--", "date", "+%s.%N")
	after := time.Now()
	g, err := strconv.ParseFloat(strings.TrimSpace(out), 64)
	if err != nil {
		h.t.Fatalf("guest date said %q", out)
	}
	return g - float64(before.UnixNano())/1e9, g - float64(after.UnixNano())/1e9
}

// TestPauseResume pauses a real guest with a session and a process
// running, checks the VM holds no VMM, tap or loop while paused, kills
// the daemon outright while it is paused, resumes it through a new
// daemon, and checks the session answers, the counter went on, and the
// guest's clock is the host's. Then the bad inputs, a pause refused
// while a workspace prepare holds the VM, a pause and resume within one
// daemon that keep its SSH connection, and a stop that discards the
// saved state.
func TestPauseResume(t *testing.T) {
	h := NewHarness(t)
	const vm = "nap"
	h.StartVM(vm)

	h.MustRun("session", "start", vm, "--name", "cat", "--", "cat")
	h.MustRun("session", "start", vm, "--name", "count", "--", "sh", "-c", counterScript)
	h.MustRun("session", "send", vm, "cat", "before")
	h.waitLogs(vm, "cat", "before\n")
	h.waitLogs(vm, "count", "\n3\n")
	before := counts(t, h.MustRun("session", "logs", vm, "count"))

	start := time.Now()
	if out := h.MustRun("vm", "pause", vm); strings.TrimSpace(out) != vm+" paused" {
		t.Fatalf("vm pause said %q", out)
	}
	t.Logf("paused in %.2fs", time.Since(start).Seconds())
	paused := h.VM(vm)
	if paused.State != model.VMPaused {
		t.Fatalf("after pause: state %s", paused.State)
	}
	if held := h.hostHolds(); len(held) != 0 {
		t.Fatalf("a paused vm holds host resources:\n%s", strings.Join(held, "\n"))
	}
	if _, err := os.Stat(filepath.Join(paused.Dir, "state")); err != nil {
		t.Fatalf("saved state: %v", err)
	}

	// Bad input while paused: each a clear error.
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"vm", "exec", vm, "--", "true"}, "vm nap is paused: resume it with `banger vm resume nap`"},
		{[]string{"vm", "pause", vm}, "vm nap is already paused"},
		{[]string{"session", "logs", vm, "count"}, "vm nap is paused: its sessions' logs are in its memory"},
		{[]string{"vm", "cp", vm + ":/root/x", filepath.Join(h.StateDir, "x")}, "vm nap is paused: its files are read once it runs again"},
		{[]string{"vm", "pause", "no-such-vm"}, `vm "no-such-vm" not found`},
	} {
		if _, errOut, code := h.Run(c.args...); code == 0 || !strings.Contains(errOut, c.want) {
			t.Errorf("banger %s: exit %d, stderr %q; want an error with %q", strings.Join(c.args, " "), code, errOut, c.want)
		}
	}

	// The daemon dies outright while the VM is paused; the next CLI call
	// starts a new one, which must keep it paused.
	pid := h.DaemonPID()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 100 && syscall.Kill(pid, 0) == nil; i++ {
		time.Sleep(50 * time.Millisecond)
	}
	if st := h.VM(vm).State; st != model.VMPaused {
		t.Fatalf("after a daemon restart: state %s, want paused", st)
	}
	if s := h.session(vm, "cat"); s.Status != model.SessionRunning {
		t.Fatalf("cat of a paused vm after a daemon restart: %+v", s)
	}
	// Long enough that a guest clock left alone would be seconds behind.
	time.Sleep(3 * time.Second)

	start = time.Now()
	out, phases, code := h.Run("vm", "resume", vm)
	if code != 0 || strings.TrimSpace(out) != vm+" running" {
		t.Fatalf("vm resume: exit %d, said %q, %s", code, out, phases)
	}
	t.Logf("resumed in %.2fs:\n%s", time.Since(start).Seconds(), phases)
	early, late := h.guestClockSkew(vm)
	t.Logf("guest clock after resume: %+.3fs after the exec began, %+.3fs before it ended", early, -late)
	if early < -1 || late > 1 {
		t.Errorf("guest clock off by more than 1s after resume: %+.3f / %+.3f", early, late)
	}

	h.MustRun("session", "send", vm, "cat", "after")
	h.waitLogs(vm, "cat", "before\nafter\n")
	if s := h.session(vm, "cat"); s.Status != model.SessionRunning {
		t.Fatalf("cat after resume: %+v", s)
	}
	last := before[len(before)-1]
	h.waitLogs(vm, "count", "\n"+strconv.Itoa(last+2)+"\n")
	after := counts(t, h.MustRun("session", "logs", vm, "count"))
	for i, n := range after {
		if n != i+1 {
			t.Fatalf("the counter did not go on across the pause (restarted or skipped): %v", after)
		}
	}

	// Bad input while running.
	if _, errOut, code := h.Run("vm", "resume", vm); code == 0 || !strings.Contains(errOut, "vm nap is not paused (state running)") {
		t.Errorf("resume of a running vm: exit %d %q", code, errOut)
	}

	// A pause while a workspace prepare holds the VM is refused, and the
	// prepare is not disturbed by it.
	c := api.NewClient(filepath.Join(h.StateDir, "bangerd.sock"))
	pr, pw := io.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	prepared := make(chan error, 1)
	go func() {
		_, err := c.PrepareWorkspace(ctx, vm, api.WorkspaceRequest{GuestPath: "/root/ws", Mode: "tracked"}, pr)
		prepared <- err
	}()
	// The daemon holds the VM from the moment the request arrives; the
	// stream stalls after its first bytes.
	_, _ = pw.Write(make([]byte, 512))
	time.Sleep(2 * time.Second)
	if _, errOut, code := h.Run("vm", "pause", vm); code == 0 || !strings.Contains(errOut, "vm nap is busy") {
		t.Errorf("pause during a workspace prepare: exit %d %q", code, errOut)
	}
	_ = pw.CloseWithError(errors.New("test: prepare abandoned"))
	cancel()
	<-prepared
	if st := h.VM(vm).State; st != model.VMRunning {
		t.Fatalf("after the refused pause: state %s", st)
	}

	// Within one daemon a pause keeps the daemon's SSH connection and the
	// resume takes it back: the guest sees the same client port.
	port := sshClientPort(t, h, vm)
	h.MustRun("vm", "pause", vm)
	start = time.Now()
	h.MustRun("vm", "resume", vm)
	t.Logf("resumed with its connection kept in %.2fs", time.Since(start).Seconds())
	if again := sshClientPort(t, h, vm); again != port {
		t.Errorf("after a pause and resume the daemon's SSH connection comes from port %s, before from %s: not kept", again, port)
	}

	// A stop of a paused VM discards its saved state.
	h.MustRun("vm", "pause", vm)
	h.MustRun("vm", "stop", vm)
	v := h.VM(vm)
	if v.State != model.VMStopped {
		t.Fatalf("stop of a paused vm: state %s", v.State)
	}
	if _, err := os.Stat(filepath.Join(v.Dir, "state")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("saved state left after stop (%v)", err)
	}
	if _, errOut, code := h.Run("vm", "pause", vm); code == 0 || !strings.Contains(errOut, "vm nap is not running (state stopped)") {
		t.Errorf("pause of a stopped vm: exit %d %q", code, errOut)
	}
	if _, errOut, code := h.Run("vm", "resume", vm); code == 0 || !strings.Contains(errOut, "vm nap is not paused (state stopped)") {
		t.Errorf("resume of a stopped vm: exit %d %q", code, errOut)
	}
	if held := h.hostHolds(); len(held) != 0 {
		t.Fatalf("a stopped vm holds host resources:\n%s", strings.Join(held, "\n"))
	}
}

// sshClientPort is the source port of the daemon's SSH connection that
// carries a command in vm, as the guest's sshd sees it (SSH_CLIENT).
func sshClientPort(t *testing.T, h *Harness, vm string) string {
	t.Helper()
	out := h.MustRun("vm", "exec", vm, "--", "sh", "-c", `echo "$SSH_CLIENT"`)
	f := strings.Fields(out)
	if len(f) != 3 {
		t.Fatalf("SSH_CLIENT in %s is %q", vm, out)
	}
	return f[1]
}

// vmmRSS is the resident memory of the processes running from a VM's
// directory (its VMM), 0 when none runs.
func vmmRSS(dir string) int64 {
	var n int64
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(b), dir+"/") {
			n += procStatusBytes(pid, "VmRSS")
		}
	}
	return n
}

// BenchmarkPauseResume pauses and resumes a 1 GiB guest with ~200 MB of
// its memory written, against a cold boot of the same VM measured in the
// same run (vm stop, vm start), and reports the resume alone and up to
// the end of a first `vm exec -- true` after it, the host memory it holds
// running and paused (VMM resident memory; the saved state on disk).
// Run with BANGER_BENCH=1.
func BenchmarkPauseResume(b *testing.B) {
	if os.Getenv("BANGER_BENCH") != "1" {
		b.Skip("set BANGER_BENCH=1 (with BANGER_E2E=1) to run the pause/resume bench")
	}
	h := NewHarness(b)
	const vm = "bench-nap"
	h.MustRun("vm", "create", "--name", vm, "--memory", "1G")
	var cold, pause, resume, firstExec []time.Duration
	var rssRunning, rssPaused, stateBytes int64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for j := 0; j < 3; j++ {
			start := time.Now()
			h.MustRun("vm", "start", vm)
			cold = append(cold, time.Since(start))
			// ~200 MB written that is not zero (zero pages are not saved).
			h.MustRun("vm", "exec", vm, "--", "sh", "-c", "yes abcdefgh | head -c 209715200 > /dev/shm/fill")
			dir := h.VM(vm).Dir
			rssRunning = vmmRSS(dir)

			start = time.Now()
			h.MustRun("vm", "pause", vm)
			pause = append(pause, time.Since(start))
			rssPaused = vmmRSS(dir)
			stateBytes = dirBytes(filepath.Join(dir, "state"))

			start = time.Now()
			out, phases, code := h.Run("vm", "resume", vm)
			if code != 0 {
				b.Fatalf("vm resume: exit %d %s %s", code, out, phases)
			}
			resume = append(resume, time.Since(start))
			b.Logf("resume %d:\n%s", j, phases)
			h.MustRun("vm", "exec", vm, "--", "true")
			firstExec = append(firstExec, time.Since(start))
			h.MustRun("vm", "stop", vm)
		}
	}
	mc, mp, mr := median(cold), median(pause), median(resume)
	b.ReportMetric(mc.Seconds(), "s/cold-start")
	b.ReportMetric(mp.Seconds(), "s/pause")
	b.ReportMetric(mr.Seconds(), "s/resume")
	b.ReportMetric(mr.Seconds()/mc.Seconds(), "ratio-resume/cold")
	b.ReportMetric(median(firstExec).Seconds(), "s/resume+exec")
	b.ReportMetric(float64(rssRunning)/(1<<20), "MB-rss-running")
	b.ReportMetric(float64(rssPaused)/(1<<20), "MB-rss-paused")
	b.ReportMetric(float64(stateBytes)/(1<<20), "MB-state-on-disk")
}
