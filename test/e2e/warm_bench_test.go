package e2e

import (
	"os"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/banger/banger/internal/model"
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

// sec is a progress line's seconds as a duration.
func sec(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

// runFrom times `vm run --rm -v -- true` and returns its progress
// phases (phases), failing the bench unless the run went through phase
// from ("warm": restored from the template; "pool": a spare taken).
func runFrom(b *testing.B, h *Harness, from string) (time.Duration, map[string]float64) {
	b.Helper()
	start := time.Now()
	_, errOut, code := h.Run("vm", "run", "--rm", "-v", "--", "true")
	took := time.Since(start)
	if code != 0 {
		b.Fatalf("vm run: exit %d: %s", code, errOut)
	}
	p := phases(errOut)
	if _, ok := p[from]; !ok {
		b.Fatalf("the run did not go through phase %s:\n%s", from, errOut)
	}
	return took, p
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
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for j := 0; j < 3; j++ {
			start := time.Now()
			h.MustRun("vm", "run", "--rm", "--cold", "--", "true")
			cold = append(cold, time.Since(start))

			took, p := runFrom(b, h, "warm")
			warm = append(warm, took)
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

// BenchmarkWarmPool compares `vm run --rm -- true` taken from the warm
// pool (warm_pool 1, the default shape's template) with the same run
// booted cold (--cold), alternating, three rounds each, in the same run:
// before each pooled run it waits until the pool's spare is ready again,
// and reports how long that took from the previous pooled run's end
// (the refill's wait after a claim, then a restore of a spare, its
// identity and its first SSH handshake), and
// the claim itself (rename, hostname: the progress from phase pool to
// ready). Run with BenchmarkWarmStart for the restore ratios of the same
// host. Run with BANGER_BENCH=1.
func BenchmarkWarmPool(b *testing.B) {
	if os.Getenv("BANGER_BENCH") != "1" {
		b.Skip("set BANGER_BENCH=1 (with BANGER_E2E=1) to run the warm pool bench")
	}
	h := NewHarness(b, "BANGER_WARM_POOL=1")
	var tmpl model.Snapshot
	h.JSON(&tmpl, "image", "warm")
	b.Logf("spare ready %.1fs after the template", waitSpares(b, h, tmpl.Name, 1).Seconds())
	var cold, pooled, claim, refill []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for j := 0; j < 3; j++ {
			took, p := runFrom(b, h, "pool")
			pooled = append(pooled, took)
			claim = append(claim, sec(p["ready"]-p["pool"]))
			refill = append(refill, waitSpares(b, h, tmpl.Name, 1))

			start := time.Now()
			h.MustRun("vm", "run", "--rm", "--cold", "--", "true")
			cold = append(cold, time.Since(start))
		}
	}
	b.StopTimer()
	mc, mp := median(cold), median(pooled)
	b.ReportMetric(mc.Seconds(), "s/cold-run")
	b.ReportMetric(mp.Seconds(), "s/pooled-run")
	b.ReportMetric(mp.Seconds()/mc.Seconds(), "ratio-pooled/cold")
	b.ReportMetric(median(claim).Seconds(), "s/claim")
	b.ReportMetric(median(refill).Seconds(), "s/refill")
	h.MustRun("image", "unwarm", tmpl.Name)
}
