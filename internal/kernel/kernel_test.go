package kernel

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"

	"github.com/banger/banger/internal/testenv"
)

func TestCatalog(t *testing.T) {
	entries, err := Catalog()
	if err != nil {
		t.Fatal(err)
	}
	e, ok := Lookup("debian-cloud-bookworm")
	if !ok || len(entries) == 0 {
		t.Fatalf("default entry missing: %v", entries)
	}
	if e.Package != "linux-image-cloud-amd64" || !strings.Contains(e.Cmdline, "reboot=k") || len(e.Modules) == 0 {
		t.Errorf("default entry = %+v", e)
	}
	if _, ok := Lookup("nope"); ok {
		t.Error("Lookup of an unknown name succeeded")
	}
}

func TestParseCatalog(t *testing.T) {
	tests := []struct {
		name, raw, wantErr string
		wantNames          []string
	}{
		{name: "sorted", raw: `{"entries":[{"name":"b","distro":"debian","package":"p"},{"name":"a","distro":"debian","package":"p"}]}`, wantNames: []string{"a", "b"}},
		{name: "empty", raw: `{"entries":[]}`},
		{name: "bad json", raw: `{`, wantErr: "kernel catalog"},
		{name: "bad name", raw: `{"entries":[{"name":"Bad","distro":"debian","package":"p"}]}`, wantErr: "invalid"},
		{name: "duplicate", raw: `{"entries":[{"name":"a","distro":"debian","package":"p"},{"name":"a","distro":"debian","package":"p"}]}`, wantErr: "twice"},
		{name: "distro", raw: `{"entries":[{"name":"a","distro":"arch","package":"p"}]}`, wantErr: "allowed: debian"},
		{name: "no package", raw: `{"entries":[{"name":"a","distro":"debian"}]}`, wantErr: "no package"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseCatalog([]byte(tt.raw))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, e := range got {
				names = append(names, e.Name)
			}
			if !reflect.DeepEqual(names, tt.wantNames) {
				t.Fatalf("names = %v, want %v", names, tt.wantNames)
			}
		})
	}
}

// fakeELF is an ELF-looking payload larger than one LZ4 legacy block.
func fakeELF(n int) []byte {
	b := make([]byte, n)
	r := rand.New(rand.NewSource(1))
	for i := range b {
		b[i] = byte(r.Intn(4)) // compressible but not trivial
	}
	copy(b, elfMagic)
	return b
}

func lz4Legacy(t *testing.T, data []byte) []byte {
	t.Helper()
	out := append([]byte(nil), lz4LegacyMagic...)
	for off := 0; off < len(data); off += lz4LegacyBlock {
		chunk := data[off:min(off+lz4LegacyBlock, len(data))]
		dst := make([]byte, lz4.CompressBlockBound(len(chunk)))
		n, err := lz4.CompressBlock(chunk, dst, nil)
		if err != nil || n == 0 {
			t.Fatalf("compress: %v", err)
		}
		out = binary.LittleEndian.AppendUint32(out, uint32(n))
		out = append(out, dst[:n]...)
	}
	return out
}

func TestExtractVmlinux(t *testing.T) {
	payload := fakeELF(lz4LegacyBlock + 12345)
	setup := bytes.Repeat([]byte{0xAA}, 1000) // stands in for the bzImage setup code
	// The kernel appends the uncompressed size after the stream.
	trailer := binary.LittleEndian.AppendUint32(nil, uint32(len(payload)))
	trailer = append(trailer, bytes.Repeat([]byte{0x55}, 300)...)

	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(payload)
	zw.Close()
	zenc, _ := zstd.NewWriter(nil)
	zst := zenc.EncodeAll(payload, nil)

	notELF := lz4Legacy(t, []byte("just some text, not a kernel"))

	tests := []struct {
		name    string
		in      []byte
		want    []byte
		wantErr string
	}{
		{"lz4 legacy with trailing data", cat(setup, lz4Legacy(t, payload), trailer), payload, ""},
		{"gzip with trailing data", cat(setup, gz.Bytes(), trailer), payload, ""},
		{"zstd", cat(setup, zst), payload, ""},
		{"already ELF", payload, payload, ""},
		{"no stream", setup, nil, "no LZ4, gzip or zstd"},
		{"not an ELF inside", cat(setup, notELF), nil, "not an ELF"},
		{"corrupt lz4", cat(setup, lz4LegacyMagic, []byte{10, 0, 0, 0}, bytes.Repeat([]byte{0xff}, 10)), nil, "lz4"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ExtractVmlinux(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, tt.want) {
				t.Fatalf("got %d bytes, want %d", len(got), len(tt.want))
			}
		})
	}
}

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

func TestModuleOrder(t *testing.T) {
	deps := map[string][]string{
		"virtio_net": {"virtio_ring", "virtio", "net_failover"}, "net_failover": {"failover"}, "failover": nil,
		"virtio": {"virtio_ring"}, "virtio_ring": nil, "virtio_blk": {"virtio", "virtio_ring"}, "evdev": nil,
		"a": {"b"}, "b": {"a"}, "c": {"missing"},
	}
	tests := []struct {
		name    string
		wanted  []string
		want    []string
		wantErr string
	}{
		{"deps first, each once", []string{"virtio_blk", "virtio-net", "evdev"},
			[]string{"virtio_ring", "virtio", "virtio_blk", "failover", "net_failover", "virtio_net", "evdev"}, ""},
		{"cycle", []string{"a"}, nil, "cycle"},
		{"missing dependency", []string{"c"}, nil, "missing (needed by c)"},
		{"missing wanted", []string{"zz"}, nil, "module zz not found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := moduleOrder(tt.wanted, deps)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("got %v, %v; want %v", got, err, tt.want)
			}
		})
	}
}

func TestInitrdArchive(t *testing.T) {
	busybox := []byte("\x7fELF fake busybox")
	kos := map[string][]byte{"virtio_ring": []byte("ring"), "virtio_blk": []byte("blk")}
	img, err := buildInitrd(busybox, []string{"virtio_ring", "virtio_blk"}, kos)
	if err != nil {
		t.Fatal(err)
	}
	if len(img)%4 != 0 || !bytes.HasPrefix(img, []byte("070701")) || !bytes.Contains(img, []byte("TRAILER!!!\x00")) {
		t.Fatal("not a newc archive")
	}
	testenv.RequireBinary(t, "cpio") // the archive was checked above; only the listing needs cpio
	dir := t.TempDir()
	cmd := exec.Command("cpio", "-idm", "--quiet")
	cmd.Dir = dir
	cmd.Stdin = bytes.NewReader(img)
	if out, err := cmd.CombinedOutput(); err != nil && !strings.Contains(string(out), "dev/console") {
		t.Fatalf("cpio -i: %v: %s", err, out)
	}
	for name, want := range map[string]string{"bin/busybox": string(busybox), "lib/modules/virtio_blk.ko": "blk"} {
		got, err := readFile(filepath.Join(dir, name))
		if err != nil || got != want {
			t.Errorf("%s = %q, %v; want %q", name, got, err, want)
		}
	}
	if target, err := readLink(filepath.Join(dir, "bin/switch_root")); err != nil || target != "busybox" {
		t.Errorf("bin/switch_root -> %q, %v", target, err)
	}
	if _, err := buildInitrd(busybox, []string{"virtio_net"}, kos); err == nil {
		t.Error("module without a file accepted")
	}
	if _, err := writeCPIO([]cpioFile{{Name: "/abs", Kind: 'f'}}); err == nil {
		t.Error("absolute member name accepted")
	}
}

func TestInitScript(t *testing.T) {
	s := initScript([]string{"virtio_ring", "virtio_blk"})
	ring := strings.Index(s, "insmod /lib/modules/virtio_ring.ko")
	blk := strings.Index(s, "insmod /lib/modules/virtio_blk.ko")
	if ring < 0 || blk < ring {
		t.Errorf("modules not loaded in order:\n%s", s)
	}
	for _, want := range []string{"root=*)", "init=*)", "mount --move /dev /newroot/dev", `exec switch_root /newroot "$init"`, "reboot -f"} {
		if !strings.Contains(s, want) {
			t.Errorf("init script lacks %q", want)
		}
	}
	if _, err := exec.LookPath("shellcheck"); err == nil {
		cmd := exec.Command("shellcheck", "-s", "sh", "-")
		cmd.Stdin = strings.NewReader(s)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("shellcheck: %v\n%s", err, out)
		}
	}
}

func TestAptParsing(t *testing.T) {
	show := `Package: linux-image-cloud-amd64
Source: linux-signed-amd64 (6.1.192+2)
Version: 6.1.192-2
Depends: linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)
Description-en: Linux for x86-64 cloud (meta-package)
 This package depends on the latest Linux kernel
 and modules for use on cloud platforms.

Package: other
Version: 1
`
	f := parseAptStanza(show)
	if f["Version"] != "6.1.192-2" || !strings.Contains(f["Description-en"], "\nand modules") || f["Package"] != "linux-image-cloud-amd64" {
		t.Errorf("stanza = %q", f)
	}
	tests := []struct{ depends, want string }{
		{f["Depends"], "linux-image-6.1.0-56-cloud-amd64"},
		{"kmod, linux-base (>= 4.3~), initramfs-tools | linux-initramfs-tool", ""},
		{"foo | linux-image-6.1.0-9-amd64", "linux-image-6.1.0-9-amd64"},
		{"", ""},
	}
	for _, tt := range tests {
		if got := kernelDependency(tt.depends); got != tt.want {
			t.Errorf("kernelDependency(%q) = %q, want %q", tt.depends, got, tt.want)
		}
	}
}

func TestPullKey(t *testing.T) {
	e, _ := Lookup("debian-cloud-bookworm")
	k := pullKey(e, "linux-image-x", "1", []byte("bb"))
	if k != pullKey(e, "linux-image-x", "1", []byte("bb")) {
		t.Fatal("key not stable")
	}
	e2 := e
	e2.Modules = append([]string{"extra"}, e.Modules...)
	for name, other := range map[string]string{
		"version": pullKey(e, "linux-image-x", "2", []byte("bb")),
		"busybox": pullKey(e, "linux-image-x", "1", []byte("bb2")),
		"modules": pullKey(e2, "linux-image-x", "1", []byte("bb")),
	} {
		if other == k {
			t.Errorf("changing %s kept the key", name)
		}
	}
}

func readFile(p string) (string, error) {
	b, err := os.ReadFile(p)
	return string(b), err
}

func readLink(p string) (string, error) { return os.Readlink(p) }
