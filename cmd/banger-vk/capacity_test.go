package main

import (
	"errors"
	"strings"
	"testing"
)

func TestNodeCapacity(t *testing.T) {
	host := func() (int64, error) { return 7977, nil }
	noHost := func() (int64, error) { t.Fatal("host memory read although --memory was given"); return 0, nil }
	for _, tc := range []struct {
		name   string
		cpus   int
		memory string
		pods   int
		hostFn func() (int64, error)
		want   capacity
		err    string
	}{
		{name: "flags", cpus: 2, memory: "4G", pods: 10, hostFn: noHost, want: capacity{cpus: 2, memoryMiB: 4096, pods: 10}},
		{name: "mebibytes", cpus: 1, memory: "1536MiB", pods: 1, hostFn: noHost, want: capacity{cpus: 1, memoryMiB: 1536, pods: 1}},
		{name: "host memory", cpus: 4, memory: "", pods: 20, hostFn: host, want: capacity{cpus: 4, memoryMiB: 7977, pods: 20}},
		{name: "no cpus", cpus: 0, memory: "4G", pods: 10, hostFn: noHost, err: "--cpus 0"},
		{name: "negative cpus", cpus: -2, memory: "4G", pods: 10, hostFn: noHost, err: "--cpus -2"},
		{name: "no pods", cpus: 2, memory: "4G", pods: 0, hostFn: noHost, err: "--max-pods 0"},
		{name: "bad memory", cpus: 2, memory: "lots", pods: 10, hostFn: noHost, err: `--memory: invalid size "lots"`},
		{name: "tiny memory", cpus: 2, memory: "512K", pods: 10, hostFn: noHost, err: "--memory 512K"},
		{name: "host unreadable", cpus: 2, memory: "", pods: 10, hostFn: func() (int64, error) { return 0, errors.New("no meminfo") }, err: "give --memory"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := nodeCapacity(tc.cpus, tc.memory, tc.pods, tc.hostFn)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one containing %q", err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("nodeCapacity = %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
}

func TestMemTotalMiB(t *testing.T) {
	got, err := memTotalMiB(strings.NewReader("MemTotal:       24563640 kB\nMemFree:         1234 kB\n"))
	if err != nil || got != 23987 {
		t.Fatalf("memTotalMiB = %d, %v; want 23987", got, err)
	}
	for _, bad := range []string{"MemFree: 12 kB\n", "MemTotal: x kB\n", "MemTotal: 12 kB\n", ""} {
		if _, err := memTotalMiB(strings.NewReader(bad)); err == nil {
			t.Errorf("memTotalMiB(%q) gave no error", bad)
		}
	}
}
