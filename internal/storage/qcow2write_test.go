package storage

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// qcow2Header is the part of a qcow2 header the tests read back,
// decoded independently of the writer.
type qcow2Header struct {
	magic                     string
	version                   uint32
	backingOffset             uint64
	backingSize               uint32
	clusterBits               uint32
	size                      uint64
	crypt, l1Size             uint32
	l1Offset, refcountOffset  uint64
	refcountClusters, nbSnaps uint32
	snapOffset                uint64
	incompat, compat, autoclr uint64
	refcountOrder, headerLen  uint32
}

func parseQcow2Header(b []byte) qcow2Header {
	be := binary.BigEndian
	return qcow2Header{
		magic: string(b[0:4]), version: be.Uint32(b[4:]),
		backingOffset: be.Uint64(b[8:]), backingSize: be.Uint32(b[16:]),
		clusterBits: be.Uint32(b[20:]), size: be.Uint64(b[24:]),
		crypt: be.Uint32(b[32:]), l1Size: be.Uint32(b[36:]),
		l1Offset: be.Uint64(b[40:]), refcountOffset: be.Uint64(b[48:]),
		refcountClusters: be.Uint32(b[56:]), nbSnaps: be.Uint32(b[60:]),
		snapOffset: be.Uint64(b[64:]),
		incompat:   be.Uint64(b[72:]), compat: be.Uint64(b[80:]), autoclr: be.Uint64(b[88:]),
		refcountOrder: be.Uint32(b[96:]), headerLen: be.Uint32(b[100:]),
	}
}

// qcow2Extensions walks the header extensions and returns them by type.
func qcow2Extensions(t *testing.T, b []byte, headerLen uint32) (map[uint32][]byte, int) {
	t.Helper()
	exts := map[uint32][]byte{}
	off := int(headerLen)
	for {
		typ := binary.BigEndian.Uint32(b[off:])
		n := int(binary.BigEndian.Uint32(b[off+4:]))
		if typ == 0 {
			if n != 0 {
				t.Fatalf("end-of-extensions with length %d", n)
			}
			return exts, off + 8
		}
		exts[typ] = b[off+8 : off+8+n]
		off += 8 + (n+7)&^7
	}
}

func TestQcow2OverlayLayout(t *testing.T) {
	const backing = "/var/lib/banger/images/base.ext4"
	tests := []struct {
		size       int64
		l1Size     uint32
		l1Clusters int
	}{
		{1 << 20, 1, 1},
		{512 << 20, 1, 1},
		{512<<20 + 512, 2, 1},
		{1 << 30, 2, 1},
		{1<<30 + 3*512, 3, 1},
		{20 << 30, 40, 1},
		{2 << 40, 4096, 1},
		{4 << 40, 8192, 1},
		{4<<40 + 512, 8193, 2},
		{Qcow2MaxSize, 4 << 20, 512},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.size), func(t *testing.T) {
			b, err := Qcow2Overlay(backing, tt.size)
			if err != nil {
				t.Fatal(err)
			}
			h := parseQcow2Header(b)
			want := qcow2Header{
				magic: "QFI\xfb", version: 3,
				backingOffset: h.backingOffset, backingSize: uint32(len(backing)),
				clusterBits: 16, size: uint64(tt.size), l1Size: tt.l1Size,
				l1Offset: 3 << 16, refcountOffset: 1 << 16, refcountClusters: 1,
				refcountOrder: 4, headerLen: 112,
			}
			if h != want {
				t.Fatalf("header\n got %+v\nwant %+v", h, want)
			}
			if c := b[104:112]; !bytes.Equal(c, make([]byte, 8)) {
				t.Errorf("compression type and padding = %x, want zeros", c)
			}
			exts, end := qcow2Extensions(t, b, h.headerLen)
			if len(exts) != 1 || string(exts[0xE2792ACA]) != "raw" {
				t.Errorf("extensions = %v, want only backing format raw", exts)
			}
			if h.backingOffset != uint64(end) {
				t.Errorf("backing name at %d, want right after the extensions at %d", h.backingOffset, end)
			}
			if got := string(b[h.backingOffset : h.backingOffset+uint64(h.backingSize)]); got != backing {
				t.Errorf("backing name %q, want %q", got, backing)
			}
			if got := binary.BigEndian.Uint64(b[1<<16:]); got != 2<<16 {
				t.Errorf("refcount table[0] = %#x, want the block at %#x", got, 2<<16)
			}
			if !allZero(b[1<<16+8 : 2<<16]) {
				t.Error("refcount table has more than one entry")
			}
			used := 3 + tt.l1Clusters
			for c := 0; c < 32768; c++ {
				got := binary.BigEndian.Uint16(b[2<<16+2*c:])
				if want := c < used; (got == 1) != want || got > 1 {
					t.Fatalf("refcount of cluster %d = %d (used clusters: %d)", c, got, used)
				}
			}
			if len(b) != 3<<16+int(tt.l1Size)*8 {
				t.Errorf("length %d, want the three clusters and %d L1 entries", len(b), tt.l1Size)
			}
			if !allZero(b[3<<16:]) {
				t.Error("L1 table is not all unallocated")
			}
		})
	}
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

func TestQcow2OverlayRejects(t *testing.T) {
	long := "/" + strings.Repeat("a", 1023)
	tests := []struct {
		backing string
		size    int64
		want    string
	}{
		{"", 1 << 30, "empty"},
		{"images/base.ext4", 1 << 30, "relative"},
		{long, 1 << 30, "1024 bytes; qcow2 allows at most 1023"},
		{"/a\x00b", 1 << 30, "NUL"},
		{"/base", 0, "want more than 0"},
		{"/base", -512, "want more than 0"},
		{"/base", 1000, "not a multiple of 512"},
		{"/base", Qcow2MaxSize + 512, "exceeds"},
	}
	for _, tt := range tests {
		b, err := Qcow2Overlay(tt.backing, tt.size)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Qcow2Overlay(%.20q, %d) = %d bytes, %v; want an error containing %q", tt.backing, tt.size, len(b), err, tt.want)
		}
	}
	if _, err := Qcow2Overlay(long[:1023], 1<<30); err != nil {
		t.Errorf("a 1023-byte backing name: %v", err)
	}
}

// qemuInfo is what qemu-img info says of an overlay.
type qemuInfo struct {
	Format         string `json:"format"`
	VirtualSize    int64  `json:"virtual-size"`
	ClusterSize    int64  `json:"cluster-size"`
	BackingFile    string `json:"backing-filename"`
	FullBacking    string `json:"full-backing-filename"`
	BackingFormat  string `json:"backing-filename-format"`
	FormatSpecific struct {
		Data struct {
			Compat        string `json:"compat"`
			RefcountBits  int    `json:"refcount-bits"`
			Corrupt       bool   `json:"corrupt"`
			ExtendedL2    bool   `json:"extended-l2"`
			LazyRefcounts bool   `json:"lazy-refcounts"`
		} `json:"data"`
	} `json:"format-specific"`
}

func qemuImgInfo(t *testing.T, path string) qemuInfo {
	t.Helper()
	out, err := exec.Command("qemu-img", "info", "--output=json", path).Output()
	if err != nil {
		t.Fatalf("qemu-img info %s: %v", path, err)
	}
	var info qemuInfo
	if err := json.Unmarshal(out, &info); err != nil {
		t.Fatal(err)
	}
	return info
}

// qemuImgCheck fails the test unless qemu-img check finds the image clean:
// no corruption, no leaked cluster, no check error.
func qemuImgCheck(t *testing.T, path string) {
	t.Helper()
	out, err := exec.Command("qemu-img", "check", "--output=json", path).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img check %s: %v: %s", path, err, out)
	}
	var r struct {
		Corruptions int `json:"corruptions"`
		Leaks       int `json:"leaks"`
		CheckErrors int `json:"check-errors"`
	}
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("qemu-img check: %v: %s", err, out)
	}
	if r.Corruptions+r.Leaks+r.CheckErrors != 0 {
		t.Fatalf("qemu-img check %s: %s", path, out)
	}
}

func qemuIO(t *testing.T, path, cmd string) {
	t.Helper()
	out, err := exec.Command("qemu-io", "-f", "qcow2", "-c", cmd, path).CombinedOutput()
	if err != nil || strings.Contains(string(out), "failed") || strings.Contains(string(out), "error") {
		t.Fatalf("qemu-io %q %s: %v: %s", cmd, path, err, out)
	}
}

// TestQcow2OverlayQemu has QEMU's own tools judge overlays of many sizes:
// each must check clean, read like qemu-img's own overlay of the same
// image, and take writes (at its first and last cluster) without touching
// the image.
func TestQcow2OverlayQemu(t *testing.T) {
	need(t, "qemu-img", "qemu-io")
	ctx := context.Background()
	sizes := []struct {
		name string
		size int64
	}{
		{"1MiB", 1 << 20},
		{"1GiB", 1 << 30},
		{"20GiB", 20 << 30},
		{"1GiB+3sectors", 1<<30 + 3*512},
		{"2TiB", 2 << 40},
		{"4TiB+1cluster", 4<<40 + 1<<16}, // L1 table over two clusters
	}
	for _, s := range sizes {
		t.Run(s.name, func(t *testing.T) {
			dir := t.TempDir()
			image := filepath.Join(dir, "base.ext4")
			sparseImage(t, image, s.size)
			vmDir := filepath.Join(dir, "vm")
			os.Mkdir(vmDir, 0o700)
			if err := (Qcow2{}).Create(ctx, image, vmDir); err != nil {
				t.Fatal(err)
			}
			overlay := filepath.Join(vmDir, Qcow2File)
			qemuImgCheck(t, overlay)

			ref := filepath.Join(dir, "ref.qcow2")
			if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", image, ref).CombinedOutput(); err != nil {
				t.Fatalf("qemu-img create: %v: %s", err, out)
			}
			got, want := qemuImgInfo(t, overlay), qemuImgInfo(t, ref)
			if got != want {
				t.Fatalf("qemu-img info\n ours %+v\n qemu %+v", got, want)
			}
			if got.Format != "qcow2" || got.VirtualSize != s.size || got.BackingFile != image || got.BackingFormat != "raw" || got.FormatSpecific.Data.Compat != "1.1" {
				t.Fatalf("qemu-img info = %+v, want a v3 qcow2 of %d bytes over raw %s", got, s.size, image)
			}
			// Past the header cluster, where qemu-img adds a feature name
			// table, the two files are the same bytes.
			ours, _ := os.ReadFile(overlay)
			theirs, _ := os.ReadFile(ref)
			if !bytes.Equal(ours[1<<16:], theirs[1<<16:]) {
				t.Fatal("refcount and L1 clusters differ from qemu-img's")
			}
			if !bytes.Equal(ours[:8], theirs[:8]) || !bytes.Equal(ours[16:104], theirs[16:104]) {
				t.Fatalf("header differs from qemu-img's:\n ours %x\n qemu %x", ours[:112], theirs[:112])
			}

			last := (s.size - 1) &^ (64<<10 - 1) // start of the last cluster
			qemuIO(t, overlay, "write -P 0xab 0 64k")
			qemuIO(t, overlay, fmt.Sprintf("write -P 0xcd %d %d", last, s.size-last))
			qemuImgCheck(t, overlay)
			qemuIO(t, overlay, "read -P 0xab 0 64k")
			qemuIO(t, overlay, fmt.Sprintf("read -P 0xcd %d %d", last, s.size-last))
			// The image still reads as it was: marker, then zeros.
			f, err := os.Open(image)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			b := make([]byte, 64<<10)
			f.ReadAt(b, 0)
			if !bytes.HasPrefix(b, []byte("banger-image")) || !allZero(b[len("banger-image"):]) {
				t.Fatal("write through the overlay changed the image's first cluster")
			}
			f.ReadAt(b[:s.size-last], last)
			if !allZero(b[:s.size-last]) {
				t.Fatal("write through the overlay changed the image's last cluster")
			}
		})
	}
}

// TestQcow2OverlayData proves reads fall through to the image where the
// overlay holds nothing, and writes land in the overlay only.
func TestQcow2OverlayData(t *testing.T) {
	need(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	image := filepath.Join(dir, "base.raw")
	base := make([]byte, 1<<20)
	rand.Read(base)
	if err := os.WriteFile(image, base, 0o644); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(base)
	if err := (Qcow2{}).Create(context.Background(), image, dir); err != nil {
		t.Fatal(err)
	}
	overlay := filepath.Join(dir, Qcow2File)
	qemuIO(t, overlay, "write -P 0xab 0 64k")
	qemuIO(t, overlay, "read -P 0xab 0 64k")
	qemuImgCheck(t, overlay)
	now, err := os.ReadFile(image)
	if err != nil {
		t.Fatal(err)
	}
	if sha256.Sum256(now) != sum {
		t.Fatal("write through the overlay changed the image")
	}
	// What the guest sees: the write, then the image's own bytes.
	flat := filepath.Join(dir, "flat.raw")
	if out, err := exec.Command("qemu-img", "convert", "-f", "qcow2", "-O", "raw", overlay, flat).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img convert: %v: %s", err, out)
	}
	seen, err := os.ReadFile(flat)
	if err != nil {
		t.Fatal(err)
	}
	if len(seen) != len(base) || !bytes.Equal(seen[:64<<10], bytes.Repeat([]byte{0xab}, 64<<10)) || !bytes.Equal(seen[64<<10:], base[64<<10:]) {
		t.Fatal("overlay does not read as the write over the image")
	}
	// The overlay, not the image, holds the written cluster.
	out, err := exec.Command("qemu-img", "map", "--output=json", overlay).Output()
	if err != nil {
		t.Fatal(err)
	}
	var m []struct {
		Start, Length int64
		Depth         int
		Data          bool
	}
	if err := json.Unmarshal(out, &m); err != nil {
		t.Fatal(err)
	}
	if len(m) == 0 || m[0].Start != 0 || m[0].Length != 64<<10 || m[0].Depth != 0 || !m[0].Data {
		t.Fatalf("qemu-img map = %s, want the first 64 KiB in the overlay", out)
	}
}

func TestQcow2CreateOddSizeAndLeftovers(t *testing.T) {
	need(t, "qemu-img")
	dir := t.TempDir()
	image := filepath.Join(dir, "odd.raw")
	sparseImage(t, image, 1000001)
	// A temp file left by an interrupted Create is replaced.
	tmp := filepath.Join(dir, Qcow2File+".tmp")
	os.WriteFile(tmp, []byte("junk from a crash, longer than nothing"), 0o644)
	if err := (Qcow2{}).Create(context.Background(), image, dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(tmp); !os.IsNotExist(err) {
		t.Errorf("temp file still there: %v", err)
	}
	overlay := filepath.Join(dir, Qcow2File)
	qemuImgCheck(t, overlay)
	// qemu-img rounds the image's size up to 512 bytes too.
	if got := qemuImgInfo(t, overlay).VirtualSize; got != 1000448 {
		t.Errorf("virtual size %d, want 1000448", got)
	}
}

func TestQcow2CreateRejects(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty.raw")
	os.WriteFile(empty, nil, 0o644)
	vmDir := filepath.Join(dir, "vm")
	os.Mkdir(vmDir, 0o700)
	for image, want := range map[string]string{
		empty:                         "want more than 0",
		dir:                           "want a regular raw image file",
		filepath.Join(dir, "missing"): "no such file",
	} {
		err := (Qcow2{}).Create(context.Background(), image, vmDir)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Create over %s: %v; want an error containing %q", image, err, want)
		}
		if entries, _ := os.ReadDir(vmDir); len(entries) != 0 {
			t.Fatalf("failed Create left files: %v", entries)
		}
	}
}
