package podvm

import (
	"bufio"
	"fmt"
	"strconv"
	"strings"
	"time"

	dto "github.com/prometheus/client_model/go"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	statsv1alpha1 "k8s.io/kubelet/pkg/apis/stats/v1alpha1"

	"github.com/banger/banger/internal/model"
)

// StatsScript samples a pod VM's guest: the aggregate CPU line of
// /proc/stat (cumulative ticks) and its memory. Its output is the
// guest's: read it with ParseStats.
const StatsScript = `head -n 1 /proc/stat; grep -E '^(MemTotal|MemAvailable):' /proc/meminfo`

// MaxStatsOutput bounds what is read of StatsScript's output.
const MaxStatsOutput = 4 << 10

// userHZ is the guest kernel's clock tick (/proc/stat counts in 1/100 s
// on every Linux architecture banger runs).
const userHZ = 100

// statsSlack is how much more CPU time than its vCPUs could have used
// since the VM started a guest may report (clock skew, boot accounting).
const statsSlack = 5 * time.Second

// GuestStats is one sample of a pod VM's guest, checked against what the
// VM can have: CPUNanos is the CPU time the guest used since it booted
// (all vCPUs), memory is in bytes.
type GuestStats struct {
	At           time.Time
	CPUNanos     uint64
	MemTotal     uint64
	MemAvailable uint64
}

// WorkingSet is the memory the guest uses: total minus available.
func (g GuestStats) WorkingSet() uint64 { return g.MemTotal - g.MemAvailable }

// ParseStats reads StatsScript's output, which the guest wrote: a line
// missing, garbage, or a number the VM cannot have (more memory than it
// was given, more CPU time than its vCPUs had since it started) is an
// error naming it.
func ParseStats(out string, vm model.VM, at time.Time) (GuestStats, error) {
	g := GuestStats{At: at}
	if len(out) > MaxStatsOutput {
		return g, fmt.Errorf("guest stats: %d bytes of output, at most %d expected", len(out), MaxStatsOutput)
	}
	haveCPU, haveTotal, haveAvail := false, false, false
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		switch f[0] {
		case "cpu":
			if haveCPU || len(f) < 5 {
				return g, fmt.Errorf("guest /proc/stat: cpu line %q", truncate(sc.Text()))
			}
			var busy uint64
			for i, s := range f[1:] {
				v, err := strconv.ParseUint(s, 10, 64)
				if err != nil || v > 1<<53 {
					return g, fmt.Errorf("guest /proc/stat: %q is not a tick count", truncate(s))
				}
				// user nice system idle iowait irq softirq steal guest
				// guest_nice: idle and iowait are not use; guest time
				// is counted in user already.
				if i == 3 || i == 4 || i >= 8 {
					continue
				}
				busy += v
			}
			if busy > 1<<53 {
				return g, fmt.Errorf("guest /proc/stat: %d busy ticks", busy)
			}
			g.CPUNanos = busy * (uint64(time.Second) / userHZ)
			haveCPU = true
		case "MemTotal:", "MemAvailable:":
			if len(f) < 2 {
				return g, fmt.Errorf("guest /proc/meminfo: %q", truncate(sc.Text()))
			}
			kb, err := strconv.ParseUint(f[1], 10, 64)
			if err != nil || kb > 1<<40 {
				return g, fmt.Errorf("guest /proc/meminfo %s %q is not a size in kB", f[0], truncate(f[1]))
			}
			if f[0] == "MemTotal:" {
				g.MemTotal, haveTotal = kb<<10, true
			} else {
				g.MemAvailable, haveAvail = kb<<10, true
			}
		}
	}
	if !haveCPU || !haveTotal || !haveAvail {
		return g, fmt.Errorf("guest stats incomplete (cpu %v, MemTotal %v, MemAvailable %v)", haveCPU, haveTotal, haveAvail)
	}
	if g.MemTotal == 0 {
		return g, fmt.Errorf("guest reports no memory")
	}
	if vm.MemoryMiB > 0 && g.MemTotal > uint64(vm.MemoryMiB)<<20 {
		return g, fmt.Errorf("guest reports %d bytes of memory, its VM has %d MiB", g.MemTotal, vm.MemoryMiB)
	}
	if g.MemAvailable > g.MemTotal {
		return g, fmt.Errorf("guest reports %d bytes available of %d", g.MemAvailable, g.MemTotal)
	}
	if vm.StartedAt != nil && vm.CPUs > 0 {
		up := at.Sub(*vm.StartedAt) + statsSlack
		if up < 0 || g.CPUNanos > uint64(up)*uint64(vm.CPUs) {
			return g, fmt.Errorf("guest reports %s of CPU time, more than %d vCPUs had since the VM started", time.Duration(g.CPUNanos), vm.CPUs)
		}
	}
	return g, nil
}

func truncate(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}

// CPURate is the guest's CPU use between two samples in nanocores
// (1e9 is one whole CPU), and false when it cannot be told: no earlier
// sample, time not moving on, or the counter going back (the guest
// rebooted). It is at most cpus whole CPUs.
func CPURate(prev, cur GuestStats, cpus int) (uint64, bool) {
	dt := cur.At.Sub(prev.At)
	if prev.At.IsZero() || dt <= 0 || cur.CPUNanos < prev.CPUNanos {
		return 0, false
	}
	rate := uint64(float64(cur.CPUNanos-prev.CPUNanos) / dt.Seconds())
	if limit := uint64(max(cpus, 1)) * uint64(time.Second); rate > limit {
		rate = limit
	}
	return rate, true
}

// PodUsage is what one pod's VM used, as sampled.
type PodUsage struct {
	Pod       *corev1.Pod
	Stats     GuestStats
	NanoCores *uint64 // nil: no rate yet
}

// PodStats is a pod's entry in the kubelet's stats summary. A pod's
// containers share its VM, which has no per-container accounting: the
// VM's use is the pod's and its first container's; the others report
// none.
func PodStats(u PodUsage) statsv1alpha1.PodStats {
	pod := u.Pod
	start := pod.CreationTimestamp
	if pod.Status.StartTime != nil {
		start = *pod.Status.StartTime
	}
	ps := statsv1alpha1.PodStats{
		PodRef:    statsv1alpha1.PodReference{Name: pod.Name, Namespace: pod.Namespace, UID: string(pod.UID)},
		StartTime: start,
		CPU:       cpuStats(u),
		Memory:    memStats(u),
	}
	for i, c := range pod.Spec.Containers {
		cs := statsv1alpha1.ContainerStats{Name: c.Name, StartTime: start}
		if i == 0 {
			cs.CPU, cs.Memory = cpuStats(u), memStats(u)
		}
		ps.Containers = append(ps.Containers, cs)
	}
	return ps
}

func cpuStats(u PodUsage) *statsv1alpha1.CPUStats {
	total := u.Stats.CPUNanos
	s := &statsv1alpha1.CPUStats{Time: metav1.NewTime(u.Stats.At), UsageCoreNanoSeconds: &total}
	if u.NanoCores != nil {
		v := *u.NanoCores
		s.UsageNanoCores = &v
	}
	return s
}

func memStats(u PodUsage) *statsv1alpha1.MemoryStats {
	ws, avail := u.Stats.WorkingSet(), u.Stats.MemAvailable
	return &statsv1alpha1.MemoryStats{Time: metav1.NewTime(u.Stats.At), WorkingSetBytes: &ws, UsageBytes: &ws, AvailableBytes: &avail}
}

// Summary is the node's stats summary: every sampled pod, and the node
// as their sum (the host's own use is not the node's: the node is its
// pod VMs).
func Summary(node string, start time.Time, at time.Time, pods []PodUsage) *statsv1alpha1.Summary {
	s := &statsv1alpha1.Summary{Node: statsv1alpha1.NodeStats{NodeName: node, StartTime: metav1.NewTime(start)}}
	var cpu, nano, ws uint64
	for _, u := range pods {
		s.Pods = append(s.Pods, PodStats(u))
		cpu += u.Stats.CPUNanos
		ws += u.Stats.WorkingSet()
		if u.NanoCores != nil {
			nano += *u.NanoCores
		}
	}
	t := metav1.NewTime(at)
	s.Node.CPU = &statsv1alpha1.CPUStats{Time: t, UsageCoreNanoSeconds: &cpu, UsageNanoCores: &nano}
	s.Node.Memory = &statsv1alpha1.MemoryStats{Time: t, WorkingSetBytes: &ws, UsageBytes: &ws}
	return s
}

// MetricFamilies are the kubelet's resource metrics (/metrics/resource,
// what metrics-server scrapes) for the sampled pods: CPU seconds and
// working-set bytes of the node, each pod, and each pod's first
// container (see PodStats).
func MetricFamilies(at time.Time, pods []PodUsage) []*dto.MetricFamily {
	ms := at.UnixMilli()
	gauge, counter := dto.MetricType_GAUGE, dto.MetricType_COUNTER
	family := func(name, help string, typ dto.MetricType) *dto.MetricFamily {
		return &dto.MetricFamily{Name: &name, Help: &help, Type: &typ}
	}
	label := func(kv ...string) []*dto.LabelPair {
		var out []*dto.LabelPair
		for i := 0; i+1 < len(kv); i += 2 {
			out = append(out, &dto.LabelPair{Name: &kv[i], Value: &kv[i+1]})
		}
		return out
	}
	sample := func(f *dto.MetricFamily, v float64, labels []*dto.LabelPair) {
		m := &dto.Metric{Label: labels, TimestampMs: &ms}
		if f.GetType() == dto.MetricType_COUNTER {
			m.Counter = &dto.Counter{Value: &v}
		} else {
			m.Gauge = &dto.Gauge{Value: &v}
		}
		f.Metric = append(f.Metric, m)
	}
	nodeCPU := family("node_cpu_usage_seconds_total", "Cumulative cpu time consumed by the node in core-seconds", counter)
	nodeMem := family("node_memory_working_set_bytes", "Current working set of the node in bytes", gauge)
	podCPU := family("pod_cpu_usage_seconds_total", "Cumulative cpu time consumed by the pod in core-seconds", counter)
	podMem := family("pod_memory_working_set_bytes", "Current working set of the pod in bytes", gauge)
	ctrCPU := family("container_cpu_usage_seconds_total", "Cumulative cpu time consumed by the container in core-seconds", counter)
	ctrMem := family("container_memory_working_set_bytes", "Current working set of the container in bytes", gauge)
	ctrStart := family("container_start_time_seconds", "Start time of the container since unix epoch in seconds", gauge)
	var cpu, ws float64
	for _, u := range pods {
		c, w := float64(u.Stats.CPUNanos)/1e9, float64(u.Stats.WorkingSet())
		cpu += c
		ws += w
		ns, name := u.Pod.Namespace, u.Pod.Name
		sample(podCPU, c, label("namespace", ns, "pod", name))
		sample(podMem, w, label("namespace", ns, "pod", name))
		if len(u.Pod.Spec.Containers) > 0 {
			ctr := u.Pod.Spec.Containers[0].Name
			sample(ctrCPU, c, label("container", ctr, "namespace", ns, "pod", name))
			sample(ctrMem, w, label("container", ctr, "namespace", ns, "pod", name))
			start := u.Pod.CreationTimestamp.Time
			if u.Pod.Status.StartTime != nil {
				start = u.Pod.Status.StartTime.Time
			}
			sample(ctrStart, float64(start.Unix()), label("container", ctr, "namespace", ns, "pod", name))
		}
	}
	sample(nodeCPU, cpu, nil)
	sample(nodeMem, ws, nil)
	return []*dto.MetricFamily{nodeCPU, nodeMem, podCPU, podMem, ctrCPU, ctrMem, ctrStart}
}
