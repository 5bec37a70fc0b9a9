package storage

import (
	"fmt"
	"strings"
)

// Choose picks the system disk strategy for a VMM and a VM directory from
// strategies (Qcow2, DMSnapshot and Reflink when none are given). QEMU takes
// qcow2 first and then any raw strategy; Firecracker takes dm-snapshot when
// the host has device-mapper, else reflink when dir's filesystem clones.
// It returns the strategy and why it was picked, or nil and what to install
// or configure.
func Choose(vmm string, dir string, strategies ...Strategy) (Strategy, string) {
	if len(strategies) == 0 {
		strategies = []Strategy{Qcow2{}, DMSnapshot{}, Reflink{}}
	}
	byName := map[string]Strategy{}
	for _, s := range strategies {
		byName[s.Name()] = s
	}
	var order []string
	switch vmm {
	case "qemu":
		order = []string{"qcow2", "dm-snapshot", "reflink"}
	case "firecracker":
		order = []string{"dm-snapshot", "reflink"}
	default:
		return nil, fmt.Sprintf("unknown vmm %q: use firecracker or qemu", vmm)
	}
	var why []string
	for _, name := range order {
		s, ok := byName[name]
		if !ok {
			continue
		}
		if ok, reason := s.Available(dir); ok {
			return s, fmt.Sprintf("%s: %s system disks in %s", vmm, name, dir)
		} else {
			why = append(why, name+": "+reason)
		}
	}
	if len(why) == 0 {
		return nil, fmt.Sprintf("no copy-on-write storage strategy for %s among those given", vmm)
	}
	return nil, fmt.Sprintf("no copy-on-write storage for %s in %s: %s. Load dm_mod and install dmsetup for dm-snapshot, or put the state directory on XFS (mkfs.xfs -m reflink=1) or btrfs for reflink",
		vmm, dir, strings.Join(why, "; "))
}
