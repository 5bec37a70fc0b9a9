package storage

import (
	"errors"
	"io/fs"
	"slices"
	"strings"
	"testing"
)

func TestDMSnapshotTable(t *testing.T) {
	tests := []struct {
		sectors   int64
		base, cow string
		want      string
	}{
		{2097152, "/dev/loop0", "/dev/loop1", "0 2097152 snapshot /dev/loop0 /dev/loop1 P 8"},
		{41943040, "/dev/loop7", "/dev/loop12", "0 41943040 snapshot /dev/loop7 /dev/loop12 P 8"},
	}
	for _, tt := range tests {
		if got := DMSnapshotTable(tt.sectors, tt.base, tt.cow); got != tt.want {
			t.Errorf("DMSnapshotTable = %q, want %q", got, tt.want)
		}
	}
}

func TestDMArgv(t *testing.T) {
	tests := []struct {
		got  []string
		want string
	}{
		{LosetupAttachArgs("losetup", "/i/img.ext4", true), "losetup --find --show --read-only /i/img.ext4"},
		{LosetupAttachArgs("losetup", "/v/system.cow", false), "losetup --find --show /v/system.cow"},
		{LosetupDetachArgs("losetup", "/dev/loop3"), "losetup --detach /dev/loop3"},
		{DmsetupCreateArgs("dmsetup", "banger-x-root", "0 8 snapshot /dev/loop0 /dev/loop1 P 8"), "dmsetup create banger-x-root --table 0 8 snapshot /dev/loop0 /dev/loop1 P 8"},
		{DmsetupRemoveArgs("dmsetup", "banger-x-root"), "dmsetup remove --retry banger-x-root"},
		{DmsetupDepsArgs("dmsetup", "banger-x-root"), "dmsetup deps -o devname banger-x-root"},
	}
	for _, tt := range tests {
		if got := strings.Join(tt.got, " "); got != tt.want {
			t.Errorf("argv = %q, want %q", got, tt.want)
		}
	}
	// The table stays one argument.
	if a := DmsetupCreateArgs("dmsetup", "n", "0 8 snapshot a b P 8"); len(a) != 5 || a[4] != "0 8 snapshot a b P 8" {
		t.Errorf("table split across arguments: %q", a)
	}
}

func TestParseDMDeps(t *testing.T) {
	tests := []struct {
		out  string
		want []string
	}{
		{" 2 dependencies\t: (loop4) (loop3)\n", []string{"/dev/loop4", "/dev/loop3"}},
		{" 0 dependencies\t:\n", nil},
		{"", nil},
	}
	for _, tt := range tests {
		if got := ParseDMDeps(tt.out); !slices.Equal(got, tt.want) {
			t.Errorf("ParseDMDeps(%q) = %q, want %q", tt.out, got, tt.want)
		}
	}
}

func TestDMName(t *testing.T) {
	if got := DMName("/var/lib/banger/vms/0123abcd"); got != "banger-0123abcd-root" {
		t.Errorf("DMName = %q", got)
	}
}

func TestSystemFile(t *testing.T) {
	tests := map[string]string{"qcow2": "/v/system.qcow2", "reflink": "/v/system.img", "dm-snapshot": "/v/system.cow", "zfs": ""}
	for s, want := range tests {
		if got := SystemFile(s, "/v"); got != want {
			t.Errorf("SystemFile(%s) = %q, want %q", s, got, want)
		}
	}
}

func TestMkfsWorkDiskArgs(t *testing.T) {
	got := strings.Join(MkfsWorkDiskArgs("mkfs.ext4", "/v/work.ext4", ""), " ")
	want := "mkfs.ext4 -q -F -m 0 -E lazy_itable_init=1,lazy_journal_init=1,root_owner=0:0 -L banger-work /v/work.ext4"
	if got != want {
		t.Errorf("argv = %q, want %q", got, want)
	}
	got = strings.Join(MkfsWorkDiskArgs("mkfs.ext4", "/v/work.ext4", "/v/.seed"), " ")
	want = "mkfs.ext4 -q -F -m 0 -E lazy_itable_init=1,lazy_journal_init=1,root_owner=0:0 -L banger-work -d /v/.seed /v/work.ext4"
	if got != want {
		t.Errorf("argv with a seed = %q, want %q", got, want)
	}
}

func TestDebugfsRequest(t *testing.T) {
	tests := []struct {
		cmd, path, want, err string
	}{
		{"cat", "/a.txt", `cat "/a.txt"`, ""},
		{"ls -p", "/dir with space", `ls -p "/dir with space"`, ""},
		{"cat", "relative", "", "must be absolute"},
		{"cat", `/a"b`, `cat "/a""b"`, ""},
		{"cat", "/a\nb", "", "newline"},
	}
	for _, tt := range tests {
		got, err := debugfsRequest(tt.cmd, tt.path)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("debugfsRequest(%q) error = %v, want %q", tt.path, err, tt.err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("debugfsRequest(%q) = %q, %v; want %q", tt.path, got, err, tt.want)
		}
	}
}

func TestDebugfsError(t *testing.T) {
	if err := debugfsError("d", "/a", "debugfs 1.47.0 (5-Feb-2023)\n"); err != nil {
		t.Errorf("banner only: %v", err)
	}
	err := debugfsError("d", "/nope", "debugfs 1.47.0 (5-Feb-2023)\n/nope: File not found by ext2_lookup \n")
	if !errors.Is(err, ErrNotFound) || !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("not found: %v is not ErrNotFound", err)
	}
	err = debugfsError("d", "/a", "debugfs 1.47.0 (5-Feb-2023)\n-p: Ext2 inode is not a directory \n")
	if err == nil || errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "not a directory") {
		t.Errorf("not a directory: %v", err)
	}
}

func TestParseDebugfsLs(t *testing.T) {
	out := "/2/040755/0/0/.//\n/2/040755/0/0/..//\n/11/040700/0/0/lost+found//\n/14/100644/0/0/we ird.txt/2/\n/0/000000/0/0/gone/0/\n\n"
	want := []string{"lost+found", "we ird.txt"}
	if got := ParseDebugfsLs(out); !slices.Equal(got, want) {
		t.Errorf("ParseDebugfsLs = %q, want %q", got, want)
	}
}
