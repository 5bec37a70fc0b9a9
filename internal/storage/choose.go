package storage

import (
	"fmt"
	"slices"
	"strings"
)

// rank orders strategies that hand out the same format: dm-snapshot before
// reflink, because it needs nothing of the state directory's filesystem.
// Unknown names come last, in the order given.
var rank = []string{"qcow2", "dm-snapshot", "reflink"}

// Choose picks the system disk strategy for a VMM that opens formats
// (preferred first) and a VM directory, from strategies (Qcow2, DMSnapshot
// and Reflink when none are given). For each format in turn it takes the
// first available strategy of that format: a VMM that prefers qcow2 gets
// an overlay, else any raw strategy; a raw-only VMM gets dm-snapshot when
// the host has device-mapper, else reflink when dir's filesystem clones.
// It returns the strategy and why it was picked, or nil and what to install
// or configure.
func Choose(formats []string, dir string, strategies ...Strategy) (Strategy, string) {
	if len(strategies) == 0 {
		strategies = []Strategy{Qcow2{}, DMSnapshot{}, Reflink{}}
	}
	ordered := slices.Clone(strategies)
	slices.SortStableFunc(ordered, func(a, b Strategy) int {
		return rankOf(a.Name()) - rankOf(b.Name())
	})
	disks := strings.Join(formats, " or ") + " disks"
	var why []string
	for _, f := range formats {
		for _, s := range ordered {
			if s.Format() != f {
				continue
			}
			if ok, reason := s.Available(dir); ok {
				return s, fmt.Sprintf("%s: %s system disks in %s", f, s.Name(), dir)
			} else {
				why = append(why, s.Name()+": "+reason)
			}
		}
	}
	if len(why) == 0 {
		return nil, fmt.Sprintf("no copy-on-write storage strategy for %s among those given", disks)
	}
	return nil, fmt.Sprintf("no copy-on-write storage for %s in %s: %s. Load dm_mod and install dmsetup for dm-snapshot, or put the state directory on XFS (mkfs.xfs -m reflink=1) or btrfs for reflink",
		disks, dir, strings.Join(why, "; "))
}

func rankOf(name string) int {
	if i := slices.Index(rank, name); i >= 0 {
		return i
	}
	return len(rank)
}
