package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/banger/banger/internal/model"
)

func TestZZProbeFork(t *testing.T) {
	h := NewHarness(t)
	h.MustRun("vm", "create", "--name", "p", "--memory", "1G")
	start := time.Now()
	h.MustRun("vm", "start", "p")
	t.Logf("cold start %.2fs, rss %d MB", time.Since(start).Seconds(), vmmRSS(h.VM("p").Dir)>>20)
	h.MustRun("vm", "snapshot", "create", "p", "--name", "s")
	t.Logf("parent rss after snapshot %d MB", vmmRSS(h.VM("p").Dir)>>20)
	h.MustRun("vm", "stop", "p")
	for _, n := range []int{1, 3} {
		vmstat(t)
		start = time.Now()
		out, phases, code := h.Run("vm", "fork", "s", "--count", itoa(n), "--name-prefix", "k"+itoa(n), "--json")
		if code != 0 {
			t.Fatal(out, phases)
		}
		t.Logf("fork %d in %.2fs\n%s", n, time.Since(start).Seconds(), phases)
		vmstat(t)
		var forks []model.VM
		_ = json.Unmarshal([]byte(out), &forks)
		for _, f := range forks {
			t.Logf("%s rss %d MB", f.Name, vmmRSS(f.Dir)>>20)
			b, _ := os.ReadFile(filepath.Join(f.Dir, "qemu.pid"))
			_ = b
		}
		for i := 0; i < 6; i++ {
			var line []string
			for _, f := range forks {
				line = append(line, f.Name+"="+cpuOf(f.Dir))
			}
			t.Logf("t+%ds cpu ticks: %v", i, line)
			time.Sleep(time.Second)
		}
		for _, f := range forks {
			h.MustRun("vm", "delete", "--force", f.Name)
		}
	}
	logb, _ := os.ReadFile(filepath.Join(h.StateDir, "bangerd.log"))
	for _, l := range strings.Split(string(logb), "\n") {
		if strings.Contains(l, "fork") || strings.Contains(l, "restor") {
			t.Log(l)
		}
	}
}

func itoa(n int) string { return string(rune('0' + n)) }

func cpuOf(dir string) string {
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(b), dir+"/") {
			st, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
			s := string(st)
			f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
			return f[11] + "+" + f[12]
		}
	}
	return "?"
}

func vmstat(t *testing.T) {
	b, _ := os.ReadFile("/proc/vmstat")
	var keep []string
	for _, l := range strings.Split(string(b), "\n") {
		for _, k := range []string{"thp_fault_alloc ", "thp_fault_fallback ", "compact_stall ", "pgfault ", "compact_fail ", "thp_zero"} {
			if strings.HasPrefix(l, k) {
				keep = append(keep, l)
			}
		}
	}
	m, _ := os.ReadFile("/proc/meminfo")
	for _, l := range strings.Split(string(m), "\n") {
		if strings.HasPrefix(l, "AnonHugePages") {
			keep = append(keep, l)
		}
	}
	t.Log(strings.Join(keep, "; "))
}
