package proc

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Holds reports whether process pid has the file at path open (matched by
// inode, so a file renamed or linked since counts) and whether any of
// those descriptors is open for writing (its /proc fdinfo flags). A
// process or file that is gone holds nothing.
func Holds(pid int, path string) (open, writable bool) {
	want, err := os.Stat(path)
	if err != nil || pid <= 0 {
		return false, false
	}
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return false, false
	}
	for _, e := range ents {
		fi, err := os.Stat(filepath.Join(dir, e.Name()))
		if err != nil || !os.SameFile(fi, want) {
			continue
		}
		open = true
		info, err := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%s", pid, e.Name()))
		if err != nil {
			continue
		}
		if f, ok := fdinfoFlags(string(info)); ok && f&(os.O_WRONLY|os.O_RDWR) != 0 {
			writable = true
		}
	}
	return open, writable
}

// fdinfoFlags reads the octal "flags:" line of a /proc fdinfo file.
func fdinfoFlags(info string) (int, bool) {
	for _, l := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(l, "flags:"); ok {
			f, err := strconv.ParseInt(strings.TrimSpace(v), 8, 64)
			return int(f), err == nil
		}
	}
	return 0, false
}
