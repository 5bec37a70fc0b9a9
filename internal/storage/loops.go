package storage

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// LoopDevice is an attached loop device as losetup lists it. Dev and Ino
// name the backing file as the kernel holds it, which a path cannot: a
// path may since name another file.
type LoopDevice struct {
	Name    string // e.g. /dev/loop3
	Backing string // path of the backing file; " (deleted)" appended once unlinked
	Dev     uint64 // device of the backing file, as unix.Mkdev makes it
	Ino     uint64 // inode of the backing file
}

// LosetupListArgs returns the argv listing every attached loop device with
// its backing file's path, inode and device, as JSON.
func LosetupListArgs(losetup string) []string {
	return []string{losetup, "--json", "--list", "--output", "NAME,BACK-FILE,BACK-INO,BACK-MAJ:MIN"}
}

// ParseLosetupList reads the output of LosetupListArgs. util-linux prints
// BACK-INO as a number and BACK-MAJ:MIN as a padded "254:0" string; older
// versions print every field as a string, so both are accepted.
func ParseLosetupList(out []byte) ([]LoopDevice, error) {
	if len(strings.TrimSpace(string(out))) == 0 {
		return nil, nil // older losetup prints nothing when no loop is attached
	}
	var doc struct {
		Loops []struct {
			Name    string          `json:"name"`
			Backing *string         `json:"back-file"`
			Ino     json.RawMessage `json:"back-ino"`
			MajMin  *string         `json:"back-maj:min"`
		} `json:"loopdevices"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		return nil, fmt.Errorf("losetup --list: %w", err)
	}
	var devs []LoopDevice
	for _, l := range doc.Loops {
		if l.Name == "" || l.Backing == nil || l.MajMin == nil {
			return nil, fmt.Errorf("losetup --list: incomplete entry %q", l.Name)
		}
		ino, err := strconv.ParseUint(strings.Trim(strings.TrimSpace(string(l.Ino)), `"`), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("losetup --list: %s: inode %s", l.Name, l.Ino)
		}
		maj, mnr, ok := strings.Cut(strings.TrimSpace(*l.MajMin), ":")
		ma, err1 := strconv.ParseUint(maj, 10, 32)
		mi, err2 := strconv.ParseUint(mnr, 10, 32)
		if !ok || err1 != nil || err2 != nil {
			return nil, fmt.Errorf("losetup --list: %s: device %q", l.Name, *l.MajMin)
		}
		devs = append(devs, LoopDevice{Name: l.Name, Backing: *l.Backing, Dev: unix.Mkdev(uint32(ma), uint32(mi)), Ino: ino})
	}
	return devs, nil
}

// listLoops lists every attached loop device.
func listLoops(ctx context.Context, losetup string) ([]LoopDevice, error) {
	out, err := runArgv(ctx, LosetupListArgs(losetup))
	if err != nil {
		return nil, err
	}
	return ParseLosetupList([]byte(out))
}

// vmLoopFiles returns the files of the VM directory vmDir that its loops
// are backed by (the cow file and the base link), by the path the kernel
// reports: symbolic links resolved, as d_path sees them.
func vmLoopFiles(vmDir string) []string {
	dir, err := filepath.EvalSymlinks(vmDir)
	if err != nil {
		if dir, err = filepath.Abs(vmDir); err != nil {
			return nil
		}
	}
	return []string{filepath.Join(dir, CowFile), filepath.Join(dir, BaseFile)}
}

// ownsLoop reports whether loop l is backed by one of files, by path and
// by identity: the path alone may name a file that has since been replaced
// or be another mount namespace's view.
func ownsLoop(files []string, l LoopDevice) bool {
	for _, f := range files {
		if l.Backing != f {
			continue
		}
		fi, err := os.Stat(f)
		if err != nil {
			return false
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		return ok && uint64(st.Dev) == l.Dev && st.Ino == l.Ino
	}
	return false
}
