package storage

import (
	"bytes"
	"context"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
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

// TestCheckQcow2Chain: an overlay over an allowed file passes; a backing
// file outside the allowed ones, a wrong or missing format, an external
// data file (bit or name), encryption, a virtual size beyond the bound
// and a loop are refused.
func TestCheckQcow2Chain(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "image.raw")
	write := func(name string, b []byte) string {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	overlay := func(backing string) []byte {
		t.Helper()
		b, err := Qcow2Overlay(backing, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	write("image.raw", make([]byte, 1<<20))
	good := write("good.qcow2", overlay(img))
	allowed := map[string]string{img: "raw"}
	if err := CheckQcow2Chain(good, allowed, 1<<20); err != nil {
		t.Fatalf("overlay over the image: %v", err)
	}
	be := binary.BigEndian
	extAt := func(b []byte) int { return int(be.Uint32(b[100:])) }
	for name, c := range map[string]struct {
		b    []byte
		want string
	}{
		"host disk": {overlay("/dev/sda"), `backing file "/dev/sda" is not the vm's image`},
		"data file bit": {func() []byte {
			b := overlay(img)
			be.PutUint64(b[72:], qcow2IncompatDataFile)
			return b
		}(), "external data file"},
		"data file name": {func() []byte {
			b := overlay(img)
			be.PutUint32(b[extAt(b):], qcow2ExtDataFile) // the backing format extension renamed
			return b
		}(), "names an external data file"},
		"encrypted": {func() []byte {
			b := overlay(img)
			be.PutUint32(b[32:], 2)
			return b
		}(), "encrypted"},
		"wrong format": {func() []byte {
			b := overlay(img)
			copy(b[extAt(b)+8:], "qco")
			return b
		}(), `named with format "qco"`},
		"no format": {func() []byte {
			b := overlay(img)
			be.PutUint32(b[extAt(b):], qcow2ExtEnd)
			return b
		}(), `named with format ""`},
		"endless extensions": {func() []byte {
			b := overlay(img)
			for at := extAt(b); at+8 <= qcow2ClusterSize; at += 8 {
				be.PutUint32(b[at:], 0x1234)
				be.PutUint32(b[at+4:], 0)
			}
			return b
		}(), "extensions"},
		"petabytes": {func() []byte {
			b := overlay(img)
			be.PutUint64(b[24:], 1<<50)
			return b
		}(), "virtual size of 1125899906842624 bytes exceeds the 1048576 bytes"},
		"one sector more": {func() []byte {
			b := overlay(img)
			be.PutUint64(b[24:], 1<<20+512)
			return b
		}(), "virtual size"},
	} {
		p := write(strings.ReplaceAll(name, " ", "-")+".qcow2", c.b)
		if err := CheckQcow2Chain(p, allowed, 1<<20); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error with %q", name, err, c.want)
		}
	}
	// A loop of two qcow2 files each allowed as the other's backing.
	a, b := filepath.Join(dir, "a.qcow2"), filepath.Join(dir, "b.qcow2")
	ab, ba := overlay(b), overlay(a)
	for _, x := range [][]byte{ab, ba} {
		copy(x[extAt(x)+8:], "qcow2")
		be.PutUint32(x[extAt(x)+4:], 5)
	}
	write("a.qcow2", ab)
	write("b.qcow2", ba)
	if err := CheckQcow2Chain(a, map[string]string{a: "qcow2", b: "qcow2"}, 1<<20); err == nil || !strings.Contains(err.Error(), "longer than") {
		t.Errorf("a loop: %v", err)
	}
	// A symlink on the way is not followed.
	link := filepath.Join(dir, "link.raw")
	if err := os.Symlink(img, link); err != nil {
		t.Fatal(err)
	}
	if err := CheckQcow2Chain(link, allowed, 1<<20); err == nil {
		t.Error("a symlink as the top was followed")
	}
}

// TestCheckQcow2ChainOfQemuImg: a chain qemu-img makes (an image, a
// snapshot's system disk over it, an overlay over that) passes with
// both allowed, and not with the middle one left out.
func TestCheckQcow2ChainOfQemuImg(t *testing.T) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("qemu-img not installed")
	}
	dir := t.TempDir()
	img, mid, top := filepath.Join(dir, "image.raw"), filepath.Join(dir, "mid.qcow2"), filepath.Join(dir, "top.qcow2")
	for _, argv := range [][]string{
		{"qemu-img", "create", "-q", "-f", "raw", img, "64M"},
		{"qemu-img", "create", "-q", "-f", "qcow2", "-b", img, "-F", "raw", mid},
		{"qemu-img", "create", "-q", "-f", "qcow2", "-b", mid, "-F", "qcow2", top},
	} {
		if out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v %s", strings.Join(argv, " "), err, out)
		}
	}
	if err := CheckQcow2Chain(top, map[string]string{img: "raw", mid: "qcow2"}, 64<<20); err != nil {
		t.Fatalf("qemu-img's chain: %v", err)
	}
	if err := CheckQcow2Chain(top, map[string]string{img: "raw"}, 64<<20); err == nil {
		t.Fatal("a chain through a file not allowed passed")
	}
	// A middle file that states more than the bound is refused, though
	// the top does not.
	if out, err := exec.Command("qemu-img", "resize", "-q", "-f", "qcow2", mid, "1P").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img resize: %v %s", err, out)
	}
	if err := CheckQcow2Chain(top, map[string]string{img: "raw", mid: "qcow2"}, 64<<20); err == nil || !strings.Contains(err.Error(), mid+": virtual size") {
		t.Fatalf("a middle file of 1 PiB: %v", err)
	}
}

// TestFlattenQcow2: a chain of an image and two overlays, each layer
// writing its own bytes, flattens to one file over the image that reads
// the same as the chain, also once the middle layer is gone; the image's
// own blocks are not copied into it.
func TestFlattenQcow2(t *testing.T) {
	need(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	img, mid, top := filepath.Join(dir, "image.raw"), filepath.Join(dir, "mid.qcow2"), filepath.Join(dir, "top.qcow2")
	whole := filepath.Join(dir, "whole.raw")
	run := func(argv ...string) {
		t.Helper()
		if out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v %s", strings.Join(argv, " "), err, out)
		}
	}
	run("qemu-img", "create", "-q", "-f", "raw", img, "64M")
	run("qemu-io", "-f", "raw", "-c", "write -P 0x11 0 16M", img)
	run("qemu-img", "create", "-q", "-f", "qcow2", "-b", img, "-F", "raw", mid)
	run("qemu-io", "-f", "qcow2", "-c", "write -P 0x22 16M 1M", mid)
	run("qemu-img", "create", "-q", "-f", "qcow2", "-b", mid, "-F", "qcow2", top)
	run("qemu-io", "-f", "qcow2", "-c", "write -P 0x33 17M 1M", "-c", "write -P 0x44 0 64k", top)
	run("qemu-img", "convert", "-f", "qcow2", "-O", "raw", top, whole)
	before, err := os.Stat(top)
	if err != nil {
		t.Fatal(err)
	}

	if err := FlattenQcow2(context.Background(), top, img, top); err != nil {
		t.Fatal(err)
	}
	if b, err := Qcow2Backing(top); err != nil || b != img {
		t.Fatalf("flattened file's backing = %q, %v; want %s", b, err, img)
	}
	if err := CheckQcow2Chain(top, map[string]string{img: "raw"}, 64<<20); err != nil {
		t.Fatalf("flattened chain: %v", err)
	}
	if err := os.Remove(mid); err != nil {
		t.Fatal(err)
	}
	run("qemu-img", "compare", "-q", "-f", "qcow2", "-F", "raw", top, whole)
	after, err := os.Stat(top)
	if err != nil {
		t.Fatal(err)
	}
	// The middle layer's 1 MiB came in; the image's 16 MiB did not.
	if grown := after.Size() - before.Size(); grown < 1<<20 || grown > 4<<20 {
		t.Errorf("flattened file grew by %d bytes (from %d), want about 1 MiB", grown, before.Size())
	}
	if _, err := os.Stat(top + ".flat"); !os.IsNotExist(err) {
		t.Errorf("scratch file left: %v", err)
	}
	// A failure leaves dst as it was and no scratch file.
	if err := FlattenQcow2(context.Background(), filepath.Join(dir, "nope.qcow2"), img, top); err == nil {
		t.Fatal("flatten of a missing file passed")
	}
	if _, err := os.Stat(top + ".flat"); !os.IsNotExist(err) {
		t.Errorf("scratch file left after a failure: %v", err)
	}
	run("qemu-img", "compare", "-q", "-f", "qcow2", "-F", "raw", top, whole)
}

// TestQcow2ToRaw: an overlay over a sparse raw file converts to a raw
// file reading the same, sparse where both were; a failure leaves no
// file.
func TestQcow2ToRaw(t *testing.T) {
	need(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	base, top, out := filepath.Join(dir, "base.ext4"), filepath.Join(dir, "work.qcow2"), filepath.Join(dir, "work.ext4")
	run := func(argv ...string) {
		t.Helper()
		if b, err := exec.Command(argv[0], argv[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v %s", strings.Join(argv, " "), err, b)
		}
	}
	run("qemu-img", "create", "-q", "-f", "raw", base, "256M")
	run("qemu-io", "-f", "raw", "-c", "write -P 0x11 0 1M", base)
	if err := WriteQcow2Overlay(top, base, "raw", 256<<20); err != nil {
		t.Fatal(err)
	}
	run("qemu-io", "-f", "qcow2", "-c", "write -P 0x22 100M 1M", top)
	if err := Qcow2ToRaw(context.Background(), top, out); err != nil {
		t.Fatal(err)
	}
	run("qemu-io", "-f", "raw", "-r", "-c", "read -P 0x11 0 1M", "-c", "read -P 0x22 100M 1M", "-c", "read -P 0 1M 99M", out)
	fi, err := os.Stat(out)
	if err != nil || fi.Size() != 256<<20 {
		t.Fatalf("raw file: %v, %v", fi, err)
	}
	if st := fi.Sys().(*syscall.Stat_t); st.Blocks*512 > 8<<20 {
		t.Errorf("raw file takes %d bytes for 2 MiB of data", st.Blocks*512)
	}
	if err := Qcow2ToRaw(context.Background(), filepath.Join(dir, "nope"), filepath.Join(dir, "x")); err == nil {
		t.Fatal("conversion of a missing file passed")
	}
	if m, _ := filepath.Glob(filepath.Join(dir, "x*")); len(m) != 0 {
		t.Fatalf("left: %v", m)
	}
}
