package storage

import (
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// loopBacking returns the backing file of loop device dev (e.g.
// /dev/loop3), and false when the device is not attached.
func loopBacking(dev string) (string, bool) {
	b, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(dev), "loop", "backing_file"))
	if err != nil {
		return "", false
	}
	return strings.TrimSpace(string(b)), true
}

// attachedLoops returns every attached loop device with its backing file.
func attachedLoops() (map[string]string, error) {
	entries, err := filepath.Glob("/sys/block/loop*")
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, e := range entries {
		dev := "/dev/" + filepath.Base(e)
		if b, ok := loopBacking(dev); ok {
			out[dev] = b
		}
	}
	return out, nil
}

// Loops lists the loop devices whose backing file is under dir (or is
// dir), sorted. Tests use it to prove nothing leaked.
func Loops(dir string) ([]string, error) {
	all, err := attachedLoops()
	if err != nil {
		return nil, err
	}
	dir = filepath.Clean(dir)
	var out []string
	for dev, b := range all {
		b = strings.TrimSuffix(b, " (deleted)")
		if b == dir || strings.HasPrefix(b, dir+"/") {
			out = append(out, dev)
		}
	}
	sort.Strings(out)
	return out, nil
}

// LoopsOf lists the loop devices backed by exactly file.
func LoopsOf(file string) ([]string, error) {
	all, err := attachedLoops()
	if err != nil {
		return nil, err
	}
	abs, err := filepath.Abs(file)
	if err != nil {
		return nil, err
	}
	var out []string
	for dev, b := range all {
		if b == abs {
			out = append(out, dev)
		}
	}
	sort.Strings(out)
	return out, nil
}

// DMTargets lists the device-mapper targets whose names start with prefix,
// sorted. Without device-mapper there are none.
func DMTargets(prefix string) ([]string, error) {
	entries, err := filepath.Glob("/sys/block/dm-*/dm/name")
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range entries {
		b, err := os.ReadFile(e)
		if err != nil {
			continue // removed meanwhile
		}
		if name := strings.TrimSpace(string(b)); strings.HasPrefix(name, prefix) {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out, nil
}
