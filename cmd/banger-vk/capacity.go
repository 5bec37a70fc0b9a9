package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/banger/banger/internal/model"
)

// capacity is what the node offers the scheduler: pods are placed on it
// while their requests fit.
type capacity struct {
	cpus      int
	memoryMiB int64
	pods      int
}

// nodeCapacity checks the capacity flags: --cpus and --max-pods at least
// 1, --memory a size of at least 1 MiB, or the host's memory (hostMiB,
// called only then) when it is empty.
func nodeCapacity(cpus int, memory string, pods int, hostMiB func() (int64, error)) (capacity, error) {
	c := capacity{cpus: cpus, pods: pods}
	if cpus < 1 {
		return c, fmt.Errorf("--cpus %d: the node must offer at least 1 CPU", cpus)
	}
	if pods < 1 {
		return c, fmt.Errorf("--max-pods %d: the node must accept at least 1 pod", pods)
	}
	if memory == "" {
		mib, err := hostMiB()
		if err != nil {
			return c, fmt.Errorf("the host's memory (give --memory): %w", err)
		}
		c.memoryMiB = mib
		return c, nil
	}
	b, err := model.ParseSize(memory)
	if err != nil {
		return c, fmt.Errorf("--memory: %w", err)
	}
	if b < 1<<20 {
		return c, fmt.Errorf("--memory %s: the node must offer at least 1 MiB", memory)
	}
	c.memoryMiB = b >> 20
	return c, nil
}

// hostMemoryMiB is MemTotal of /proc/meminfo in MiB.
func hostMemoryMiB() (int64, error) {
	fh, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0, err
	}
	defer fh.Close()
	return memTotalMiB(fh)
}

// memTotalMiB reads MemTotal (kB) from meminfo text.
func memTotalMiB(r io.Reader) (int64, error) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == "MemTotal:" {
			kb, err := strconv.ParseInt(fields[1], 10, 64)
			if err != nil || kb < 1024 {
				return 0, fmt.Errorf("MemTotal %q in /proc/meminfo", fields[1])
			}
			return kb >> 10, nil
		}
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, errors.New("no MemTotal in /proc/meminfo")
}
