package e2b

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// metricsScript samples the guest: the aggregate CPU line of /proc/stat
// twice 0.2 s apart, memory, CPU count and the root file system.
const metricsScript = `head -n 1 /proc/stat; sleep 0.2; head -n 1 /proc/stat
grep -E '^(MemTotal|MemAvailable|Cached):' /proc/meminfo
echo "ncpu $(nproc)"
df -P -B1 / | tail -n 1`

// metricJSON is one of E2B's SandboxMetric samples (bytes for memory and
// disk).
type metricJSON struct {
	Timestamp     time.Time `json:"timestamp"`
	TimestampUnix int64     `json:"timestampUnix"`
	CPUCount      int       `json:"cpuCount"`
	CPUUsedPct    float64   `json:"cpuUsedPct"`
	MemUsed       int64     `json:"memUsed"`
	MemTotal      int64     `json:"memTotal"`
	MemCache      int64     `json:"memCache"`
	DiskUsed      int64     `json:"diskUsed"`
	DiskTotal     int64     `json:"diskTotal"`
}

// ParseMetrics reads metricsScript's output (written by the guest: any
// line may be missing or garbage, which gives an error naming it).
func ParseMetrics(out string, now time.Time) (metricJSON, error) {
	m := metricJSON{Timestamp: now.UTC(), TimestampUnix: now.Unix()}
	var cpu [][]uint64
	mem := map[string]int64{}
	haveDisk := false
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		switch {
		case f[0] == "cpu":
			var vals []uint64
			for _, s := range f[1:] {
				v, err := strconv.ParseUint(s, 10, 64)
				if err != nil {
					return m, fmt.Errorf("guest /proc/stat: %q is not a number", s)
				}
				vals = append(vals, v)
			}
			if len(vals) < 4 {
				return m, fmt.Errorf("guest /proc/stat: %d cpu fields, want at least 4", len(vals))
			}
			cpu = append(cpu, vals)
		case strings.HasSuffix(f[0], ":") && len(f) >= 2:
			v, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil || v < 0 {
				return m, fmt.Errorf("guest /proc/meminfo %s %q is not a number", f[0], f[1])
			}
			mem[strings.TrimSuffix(f[0], ":")] = v << 10 // kB
		case f[0] == "ncpu" && len(f) == 2:
			n, err := strconv.Atoi(f[1])
			if err != nil || n < 1 {
				return m, fmt.Errorf("guest nproc %q is not a count", f[1])
			}
			m.CPUCount = n
		case len(f) >= 6 && strings.HasSuffix(f[len(f)-1], "/"):
			total, err1 := strconv.ParseInt(f[1], 10, 64)
			used, err2 := strconv.ParseInt(f[2], 10, 64)
			if err1 != nil || err2 != nil || total < 0 || used < 0 {
				return m, fmt.Errorf("guest df: %q", sc.Text())
			}
			m.DiskTotal, m.DiskUsed, haveDisk = total, used, true
		}
	}
	if len(cpu) != 2 || m.CPUCount == 0 || mem["MemTotal"] == 0 || !haveDisk {
		return m, fmt.Errorf("guest metrics incomplete (%d cpu samples, %d cpus, memory %v, disk %v)", len(cpu), m.CPUCount, mem["MemTotal"] != 0, haveDisk)
	}
	var total, idle [2]uint64
	for i, vals := range cpu {
		for j, v := range vals {
			total[i] += v
			if j == 3 || j == 4 { // idle, iowait
				idle[i] += v
			}
		}
	}
	if dt := total[1] - total[0]; total[1] > total[0] && idle[1] >= idle[0] && idle[1]-idle[0] <= dt {
		m.CPUUsedPct = 100 * float64(dt-(idle[1]-idle[0])) / float64(dt)
	}
	m.MemTotal = mem["MemTotal"]
	m.MemCache = mem["Cached"]
	if avail, ok := mem["MemAvailable"]; ok && avail <= m.MemTotal {
		m.MemUsed = m.MemTotal - avail
	}
	return m, nil
}

// handleMetrics answers one sample taken now (E2B keeps a series; banger
// samples on request).
func (s *Service) handleMetrics(w http.ResponseWriter, r *http.Request) {
	sb, err := s.running(r.Context(), r.PathValue("id"))
	if err != nil {
		fail(w, err)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
	defer cancel()
	out, code, err := s.RunGuest(ctx, sb.vm, metricsScript, nil)
	if err != nil || code != 0 {
		replyError(w, http.StatusBadGateway, fmt.Sprintf("sample the guest of %s: exit %d, %v: %s", sb.vm.Name, code, err, strings.TrimSpace(out)))
		return
	}
	m, err := ParseMetrics(out, s.Now())
	if err != nil {
		replyError(w, http.StatusBadGateway, err.Error())
		return
	}
	reply(w, http.StatusOK, []metricJSON{m})
}
