package podvm

import (
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/banger/banger/internal/model"
)

func statsVM(start time.Time) model.VM {
	return model.VM{Name: "k8s-x", CPUs: 2, MemoryMiB: 512, StartedAt: &start}
}

const goodStats = `cpu  1000 50 300 90000 20 0 10 0 0 0
MemTotal:         498000 kB
MemAvailable:     400000 kB
`

func TestParseStats(t *testing.T) {
	start := time.Unix(1000, 0)
	at := start.Add(time.Hour)
	g, err := ParseStats(goodStats, statsVM(start), at)
	if err != nil {
		t.Fatal(err)
	}
	// user+nice+system+irq+softirq ticks, 10 ms each.
	if want := uint64(1000+50+300+0+10) * 10_000_000; g.CPUNanos != want {
		t.Errorf("cpu %d ns, want %d", g.CPUNanos, want)
	}
	if g.MemTotal != 498000<<10 || g.MemAvailable != 400000<<10 || g.WorkingSet() != 98000<<10 || !g.At.Equal(at) {
		t.Errorf("memory %+v", g)
	}
}

// TestParseStatsRefusesWhatTheVMCannotHave: the guest writes the
// numbers; what is missing, garbage, or beyond the VM's means is refused
// with an error naming it.
func TestParseStatsRefusesWhatTheVMCannotHave(t *testing.T) {
	start := time.Unix(1000, 0)
	at := start.Add(time.Minute)
	cases := []struct{ name, out, want string }{
		{"empty", "", "incomplete"},
		{"no memavailable", "cpu 1 1 1 1 1\nMemTotal: 1000 kB\n", "incomplete"},
		{"garbage tick", "cpu 1 x 1 1 1\nMemTotal: 1000 kB\nMemAvailable: 10 kB\n", `"x"`},
		{"negative", "cpu 1 -1 1 1 1\nMemTotal: 1000 kB\nMemAvailable: 10 kB\n", `"-1"`},
		{"two cpu lines", "cpu 1 1 1 1 1\ncpu 1 1 1 1 1\nMemTotal: 1000 kB\nMemAvailable: 10 kB\n", "cpu line"},
		{"more memory than the vm", "cpu 1 1 1 1 1\nMemTotal: 99999999 kB\nMemAvailable: 10 kB\n", "its VM has 512 MiB"},
		{"available over total", "cpu 1 1 1 1 1\nMemTotal: 1000 kB\nMemAvailable: 2000 kB\n", "available of"},
		// 2 vCPUs for a minute (plus slack) is at most 13000 ticks.
		{"more cpu than the vcpus had", "cpu 20000 0 0 1 1\nMemTotal: 1000 kB\nMemAvailable: 10 kB\n", "more than 2 vCPUs"},
		{"huge", "cpu 99999999999999999999 0 0 1 1\nMemTotal: 1000 kB\nMemAvailable: 10 kB\n", "not a tick count"},
		{"too long", strings.Repeat("x", MaxStatsOutput+1), "bytes of output"},
	}
	for _, c := range cases {
		if _, err := ParseStats(c.out, statsVM(start), at); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one containing %q", c.name, err, c.want)
		}
	}
}

func TestCPURate(t *testing.T) {
	t0 := time.Unix(1000, 0)
	a := GuestStats{At: t0, CPUNanos: 1e9}
	b := GuestStats{At: t0.Add(2 * time.Second), CPUNanos: 2e9}
	if r, ok := CPURate(a, b, 2); !ok || r != 5e8 {
		t.Errorf("half a CPU: %d %v", r, ok)
	}
	if _, ok := CPURate(GuestStats{}, b, 2); ok {
		t.Error("a rate without an earlier sample")
	}
	if _, ok := CPURate(b, a, 2); ok {
		t.Error("a rate from a counter going back")
	}
	c := GuestStats{At: t0.Add(time.Second), CPUNanos: 100e9}
	if r, ok := CPURate(a, c, 2); !ok || r != 2e9 {
		t.Errorf("a rate over the vCPUs is bounded by them: %d %v", r, ok)
	}
}

func TestSummaryAndMetrics(t *testing.T) {
	p := pod(ctr("main", "sleep", "1"), ctr("side", "sleep", "1"))
	p.CreationTimestamp = metav1.NewTime(time.Unix(500, 0))
	at := time.Unix(2000, 0)
	nano := uint64(250e6)
	u := PodUsage{Pod: p, Stats: GuestStats{At: at, CPUNanos: 3e9, MemTotal: 100 << 20, MemAvailable: 60 << 20}, NanoCores: &nano}
	s := Summary("node", time.Unix(100, 0), at, []PodUsage{u})
	if len(s.Pods) != 1 || s.Pods[0].PodRef.Name != p.Name || *s.Pods[0].Memory.WorkingSetBytes != 40<<20 || *s.Pods[0].CPU.UsageNanoCores != nano {
		t.Fatalf("pod stats %+v", s.Pods)
	}
	if cs := s.Pods[0].Containers; len(cs) != 2 || cs[0].Memory == nil || cs[1].Memory != nil {
		t.Errorf("the VM's use is the first container's only: %+v", cs)
	}
	if *s.Node.Memory.WorkingSetBytes != 40<<20 || *s.Node.CPU.UsageCoreNanoSeconds != 3e9 {
		t.Errorf("node stats %+v %+v", s.Node.CPU, s.Node.Memory)
	}
	got := map[string]float64{}
	for _, f := range MetricFamilies(at, []PodUsage{u}) {
		for _, m := range f.Metric {
			v := m.GetGauge().GetValue() + m.GetCounter().GetValue()
			got[f.GetName()] += v
		}
	}
	if got["container_memory_working_set_bytes"] != 40<<20 || got["pod_cpu_usage_seconds_total"] != 3 || got["node_cpu_usage_seconds_total"] != 3 || got["container_start_time_seconds"] != 500 {
		t.Errorf("metrics %v", got)
	}
}
