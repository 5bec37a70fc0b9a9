package e2e

import (
	"os"
	"regexp"
	"strconv"
	"testing"
	"time"
)

// phaseRE reads a progress line of `vm run -v`: "[   0.3s] identity: …".
var phaseRE = regexp.MustCompile(`(?m)^\[\s*([0-9.]+)s\] ([a-z]+):`)

// phases maps each phase of a run's progress to when it began (seconds
// from the create's start; the first occurrence).
func phases(out string) map[string]float64 {
	at := map[string]float64{}
	for _, m := range phaseRE.FindAllStringSubmatch(out, -1) {
		if _, seen := at[m[2]]; !seen {
			at[m[2]], _ = strconv.ParseFloat(m[1], 64)
		}
	}
	return at
}

// BenchmarkWarmStart compares `vm run --rm -- true` restored from a
// warm-start template (`image warm`, the default shape) with the same
// run booted cold (--cold), alternating, three rounds each, in the same
// run, and reports the medians, their ratio (goal warm ≤ 0.2 × cold),
// where a warm run's time goes (restore, identity, SSH ready, the rest:
// exec, delete, the CLI) and its ratio to the floor under it: the
// restore itself plus one `vm exec -- true` of a running VM. Run with
// BANGER_BENCH=1.
func BenchmarkWarmStart(b *testing.B) {
	if os.Getenv("BANGER_BENCH") != "1" {
		b.Skip("set BANGER_BENCH=1 (with BANGER_E2E=1) to run the warm start bench")
	}
	h := NewHarness(b)
	start := time.Now()
	h.MustRun("image", "warm")
	b.Logf("template made in %.1fs", time.Since(start).Seconds())
	h.MustRun("vm", "create", "--start", "--name", "bench-exec")
	var cold, warm, exec, restore, identity, ssh []time.Duration
	sec := func(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for j := 0; j < 3; j++ {
			start := time.Now()
			h.MustRun("vm", "run", "--rm", "--cold", "--", "true")
			cold = append(cold, time.Since(start))

			start = time.Now()
			_, errOut, code := h.Run("vm", "run", "--rm", "-v", "--", "true")
			if code != 0 {
				b.Fatalf("warm vm run: exit %d: %s", code, errOut)
			}
			warm = append(warm, time.Since(start))
			p := phases(errOut)
			if _, ok := p["warm"]; !ok {
				b.Fatalf("the run was not restored from the template:\n%s", errOut)
			}
			restore = append(restore, sec(p["identity"]-p["restore"]))
			identity = append(identity, sec(p["ssh"]-p["identity"]))
			ssh = append(ssh, sec(p["ready"]-p["ssh"]))

			start = time.Now()
			h.MustRun("vm", "exec", "bench-exec", "--", "true")
			exec = append(exec, time.Since(start))
		}
	}
	b.StopTimer()
	mc, mw, me, mr := median(cold), median(warm), median(exec), median(restore)
	b.ReportMetric(mc.Seconds(), "s/cold-run")
	b.ReportMetric(mw.Seconds(), "s/warm-run")
	b.ReportMetric(mw.Seconds()/mc.Seconds(), "ratio-warm/cold")
	b.ReportMetric(mr.Seconds(), "s/restore")
	b.ReportMetric(median(identity).Seconds(), "s/identity")
	b.ReportMetric(median(ssh).Seconds(), "s/ssh-ready")
	b.ReportMetric(me.Seconds(), "s/exec-true")
	b.ReportMetric(mw.Seconds()/(mr+me).Seconds(), "ratio-warm/restore+exec")
	h.MustRun("vm", "delete", "--force", "bench-exec")
	var ts []struct{ Name string }
	h.JSON(&ts, "image", "warm", "--list")
	for _, t := range ts {
		h.MustRun("image", "unwarm", t.Name)
	}
}
