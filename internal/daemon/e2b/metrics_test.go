package e2b

import (
	"strings"
	"testing"
	"time"
)

func TestParseMetrics(t *testing.T) {
	now := time.Unix(1700000000, 0)
	out := `cpu  100 0 100 700 100 0 0 0 0 0
cpu  150 0 150 750 150 0 0 0 0 0
MemTotal:        1000 kB
Cached:           200 kB
MemAvailable:     600 kB
ncpu 2
/dev/vda        2147483648 1073741824 1073741824  50% /
`
	m, err := ParseMetrics(out, now)
	if err != nil {
		t.Fatal(err)
	}
	// 200 jiffies passed, 100 of them idle or iowait.
	if m.CPUUsedPct != 50 || m.CPUCount != 2 || m.MemTotal != 1000<<10 || m.MemUsed != 400<<10 || m.MemCache != 200<<10 ||
		m.DiskTotal != 2<<30 || m.DiskUsed != 1<<30 || m.TimestampUnix != now.Unix() {
		t.Fatalf("ParseMetrics = %+v", m)
	}
	for name, bad := range map[string]string{
		"one cpu sample": strings.Replace(out, "cpu  150 0 150 750 150 0 0 0 0 0\n", "", 1),
		"cpu garbage":    strings.Replace(out, "cpu  150", "cpu  x", 1),
		"no memory":      strings.Replace(out, "MemTotal:        1000 kB\n", "", 1),
		"no disk":        strings.Replace(out, "/dev/vda        2147483648 1073741824 1073741824  50% /\n", "", 1),
		"bad ncpu":       strings.Replace(out, "ncpu 2", "ncpu 0", 1),
		"empty":          "",
	} {
		if _, err := ParseMetrics(bad, now); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	// Counters that went backwards (a hostile guest) give 0%, not garbage.
	back := strings.Replace(out, "cpu  150 0 150 750 150", "cpu  1 0 1 1 1", 1)
	if m, err := ParseMetrics(back, now); err != nil || m.CPUUsedPct != 0 {
		t.Errorf("backwards counters: %+v, %v", m, err)
	}
}
