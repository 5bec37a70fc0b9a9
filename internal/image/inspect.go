package image

import (
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"strings"

	"github.com/banger/banger/internal/guestinit"
)

// Report is what Inspect found in an ext4 file offered as an image.
type Report struct {
	Ext4          bool     `json:"ext4"`
	HasSSHD       bool     `json:"has_sshd"`
	HasBangerInit bool     `json:"has_banger_init"`
	HasBash       bool     `json:"has_bash"`
	HostKey       string   `json:"host_key,omitempty"` // "ssh-ed25519 AAAA…" when the image carries one
	Missing       []string `json:"missing,omitempty"`  // what a banger guest needs and the file lacks
}

// Inspect reads an image file without mounting it (superblock in Go, files
// through `debugfs -R`) and reports whether it can boot as a banger guest.
// It errors only when the file cannot be read; a file that is not ext4 is a
// Report with Ext4 false.
func Inspect(path string) (Report, error) {
	var r Report
	f, err := os.Open(path)
	if err != nil {
		return r, err
	}
	sb := make([]byte, 1024)
	_, err = f.ReadAt(sb, 1024)
	f.Close()
	if err != nil {
		r.Missing = []string{"ext4 file system"}
		return r, nil
	}
	r.Ext4 = isExt4(sb)
	if !r.Ext4 {
		r.Missing = []string{"ext4 file system"}
		return r, nil
	}
	exists := func(paths ...string) bool {
		for _, p := range paths {
			out, err := exec.Command("debugfs", "-R", "stat "+p, path).CombinedOutput()
			if err == nil && !strings.Contains(string(out), "File not found") && strings.Contains(string(out), "Inode:") {
				return true
			}
		}
		return false
	}
	if _, err := exec.LookPath("debugfs"); err != nil {
		return r, fmt.Errorf("debugfs not found (install e2fsprogs)")
	}
	r.HasSSHD = exists("/usr/sbin/sshd", "/sbin/sshd")
	r.HasBangerInit = exists(guestinit.InitPath)
	r.HasBash = exists("/usr/bin/bash", "/bin/bash")
	if out, err := exec.Command("debugfs", "-R", "cat /etc/ssh/ssh_host_ed25519_key.pub", path).Output(); err == nil {
		if f := strings.Fields(string(out)); len(f) >= 2 && f[0] == "ssh-ed25519" {
			r.HostKey = f[0] + " " + f[1]
		}
	}
	for _, m := range []struct {
		ok   bool
		name string
	}{{r.HasSSHD, "sshd"}, {r.HasBangerInit, "banger-init at " + guestinit.InitPath}, {r.HasBash, "bash"}, {r.HostKey != "", "ed25519 host key"}} {
		if !m.ok {
			r.Missing = append(r.Missing, m.name)
		}
	}
	return r, nil
}

// isExt4 checks an ext2/3/4 superblock (the 1024 bytes at offset 1024) for
// the magic and the extents feature an ext4 file system has.
func isExt4(sb []byte) bool {
	if len(sb) < 0x64 {
		return false
	}
	const incompatExtents = 0x40
	return binary.LittleEndian.Uint16(sb[0x38:]) == 0xEF53 &&
		binary.LittleEndian.Uint32(sb[0x60:])&incompatExtents != 0
}
