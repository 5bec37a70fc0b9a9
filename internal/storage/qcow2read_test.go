package storage

import (
	"bytes"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestParseQcow2Backing reads back the backing name of the overlays
// banger writes and refuses headers whose offsets or lengths are out of
// bounds.
func TestParseQcow2Backing(t *testing.T) {
	b, err := Qcow2Overlay("/var/lib/banger/images/x.img", 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := ParseQcow2Backing(b, bytes.NewReader(b)); err != nil || got != "/var/lib/banger/images/x.img" {
		t.Fatalf("ParseQcow2Backing = %q, %v", got, err)
	}
	none := bytes.Clone(b)
	binary.BigEndian.PutUint64(none[8:], 0)
	if got, err := ParseQcow2Backing(none, bytes.NewReader(none)); err != nil || got != "" {
		t.Fatalf("no backing: %q, %v", got, err)
	}
	for name, mutate := range map[string]func([]byte){
		"bad magic":       func(h []byte) { h[0] = 'X' },
		"version 4":       func(h []byte) { binary.BigEndian.PutUint32(h[4:], 4) },
		"name too long":   func(h []byte) { binary.BigEndian.PutUint32(h[16:], 1024) },
		"empty name":      func(h []byte) { binary.BigEndian.PutUint32(h[16:], 0) },
		"offset too far":  func(h []byte) { binary.BigEndian.PutUint64(h[8:], 1<<40) },
		"past the end":    func(h []byte) { binary.BigEndian.PutUint64(h[8:], uint64(len(b)-4)) },
		"NUL in the name": func(h []byte) { h[binary.BigEndian.Uint64(h[8:])+3] = 0 },
	} {
		bad := bytes.Clone(b)
		mutate(bad)
		if got, err := ParseQcow2Backing(bad, bytes.NewReader(bad)); err == nil {
			t.Errorf("%s: accepted, backing %q", name, got)
		}
	}
	if _, err := ParseQcow2Backing([]byte("QFI"), bytes.NewReader(nil)); err == nil {
		t.Error("a short header was accepted")
	}
}

// TestQcow2BackingOfQemuImg: what qemu-img writes reads back the same.
func TestQcow2BackingOfQemuImg(t *testing.T) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("qemu-img not installed")
	}
	dir := t.TempDir()
	base := filepath.Join(dir, "base.qcow2")
	top := filepath.Join(dir, "top.qcow2")
	for _, argv := range [][]string{
		{"qemu-img", "create", "-q", "-f", "qcow2", base, "64M"},
		{"qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top},
	} {
		if out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v %s", strings.Join(argv, " "), err, out)
		}
	}
	if got, err := Qcow2Backing(top); err != nil || got != base {
		t.Fatalf("Qcow2Backing(top) = %q, %v; want %q", got, err, base)
	}
	if got, err := Qcow2Backing(base); err != nil || got != "" {
		t.Fatalf("Qcow2Backing(base) = %q, %v; want none", got, err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(top, link); err != nil {
		t.Fatal(err)
	}
	if _, err := Qcow2Backing(link); err == nil {
		t.Error("Qcow2Backing followed a symlink")
	}
}
