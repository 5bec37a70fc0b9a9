package storage

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/banger/banger/internal/testenv"
)

// fakeStrategy lets Choose be tested without the host's abilities.
type fakeStrategy struct {
	name   string
	ok     bool
	reason string
}

func (f fakeStrategy) Name() string                    { return f.name }
func (f fakeStrategy) Available(string) (bool, string) { return f.ok, f.reason }
func (f fakeStrategy) Format() string {
	if f.name == "qcow2" {
		return "qcow2"
	}
	return "raw"
}
func (f fakeStrategy) Create(context.Context, string, string) error {
	return errors.New("fake")
}
func (f fakeStrategy) Attach(context.Context, string, string) (SystemDisk, error) {
	return SystemDisk{}, errors.New("fake")
}
func (f fakeStrategy) Detach(context.Context, SystemDisk) error { return nil }
func (f fakeStrategy) Remove(context.Context, string) error     { return nil }

func TestChoose(t *testing.T) {
	q := fakeStrategy{"qcow2", true, ""}
	qNo := fakeStrategy{"qcow2", false, "qemu-img missing"}
	dm := fakeStrategy{"dm-snapshot", true, ""}
	dmNo := fakeStrategy{"dm-snapshot", false, "device-mapper not available"}
	rl := fakeStrategy{"reflink", true, ""}
	rlNo := fakeStrategy{"reflink", false, "reflink not supported"}
	qcow2First := []string{"qcow2", "raw"} // QEMU
	rawOnly := []string{"raw"}             // Firecracker
	tests := []struct {
		formats    []string
		strategies []Strategy
		want       string // name, or "" for none
		reason     string
	}{
		{qcow2First, []Strategy{rl, dm, q}, "qcow2", "qcow2"},
		{qcow2First, []Strategy{qNo, dmNo, rl}, "reflink", "reflink"},
		{qcow2First, []Strategy{qNo, rl, dm}, "dm-snapshot", "dm-snapshot"},
		{rawOnly, []Strategy{q, dm, rl}, "dm-snapshot", "dm-snapshot"},
		{rawOnly, []Strategy{rl, q, dm}, "dm-snapshot", "dm-snapshot"},
		{rawOnly, []Strategy{q, dmNo, rl}, "reflink", "reflink"},
		{rawOnly, []Strategy{q, dmNo, rlNo}, "", "device-mapper not available; reflink: reflink not supported"},
		{rawOnly, []Strategy{q}, "", "for raw disks among those given"},
		{nil, []Strategy{q, dm, rl}, "", "among those given"},
	}
	for _, tt := range tests {
		s, reason := Choose(tt.formats, "/state", tt.strategies...)
		got := ""
		if s != nil {
			got = s.Name()
		}
		if got != tt.want || !strings.Contains(reason, tt.reason) {
			t.Errorf("Choose(%v) = %q, %q; want %q with reason containing %q", tt.formats, got, reason, tt.want, tt.reason)
		}
	}
	if s, reason := Choose(rawOnly, "/state", q, dmNo, rlNo); s == nil && !strings.Contains(reason, "reflink=1") {
		t.Errorf("reason %q does not say what to configure", reason)
	}
}

func need(t testing.TB, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s on PATH", tool)
		}
	}
}

func needRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: loop devices and mounts")
	}
}

// noLoopsUnder fails the test if a loop device is still backed by a file
// under dir when the test ends.
func noLoopsUnder(t *testing.T, dir string) {
	t.Cleanup(func() {
		if loops, err := Loops(dir); err != nil || len(loops) != 0 {
			t.Errorf("loop devices left over %s: %v %v", dir, loops, err)
		}
	})
}

// sparseImage makes a sparse file of size bytes with a marker at its start.
func sparseImage(t testing.TB, path string, size int64) {
	t.Helper()
	if err := os.WriteFile(path, []byte("banger-image"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, size); err != nil {
		t.Fatal(err)
	}
}

// head returns the first 64 KiB of a file.
func head(t *testing.T, path string) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 64<<10)
	if _, err := f.ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	return b
}

func TestQcow2(t *testing.T) {
	need(t, "qemu-img")
	ctx := context.Background()
	dir := t.TempDir()
	image := filepath.Join(dir, "base.ext4")
	sparseImage(t, image, 1<<30)
	vmDir := filepath.Join(dir, "vm1")
	os.Mkdir(vmDir, 0o700)
	s := Qcow2{}
	if ok, reason := s.Available(vmDir); !ok {
		t.Fatalf("qcow2 unavailable: %s", reason)
	}
	if _, err := s.Attach(ctx, image, vmDir); err == nil {
		t.Error("Attach before Create succeeded")
	}
	for i := 0; i < 2; i++ { // Create again replaces
		if err := s.Create(ctx, image, vmDir); err != nil {
			t.Fatalf("Create #%d: %v", i+1, err)
		}
	}
	d, err := s.Attach(ctx, image, vmDir)
	if err != nil {
		t.Fatal(err)
	}
	if d.Path != filepath.Join(vmDir, Qcow2File) || d.Format != "qcow2" || len(d.Loops)+len(d.DMNames) != 0 {
		t.Fatalf("Attach = %+v", d)
	}
	out, err := exec.Command("qemu-img", "info", "--output=json", d.Path).Output()
	if err != nil {
		t.Fatal(err)
	}
	var info struct {
		VirtualSize    int64  `json:"virtual-size"`
		Format         string `json:"format"`
		BackingFile    string `json:"backing-filename"`
		BackingFormat  string `json:"backing-filename-format"`
		FullBackingRef string `json:"full-backing-filename"`
	}
	if err := json.Unmarshal(out, &info); err != nil {
		t.Fatal(err)
	}
	if info.Format != "qcow2" || info.BackingFile != image || info.BackingFormat != "raw" || info.VirtualSize != 1<<30 {
		t.Fatalf("overlay info = %+v, want qcow2 over raw %s, 1 GiB", info, image)
	}
	// Writing through the overlay leaves the image untouched.
	before := head(t, image)
	if out, err := exec.Command("qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 4k", d.Path).CombinedOutput(); err == nil {
		if after := head(t, image); !bytes.Equal(before, after) {
			t.Fatal("write through the overlay changed the image")
		}
		if out, err := exec.Command("qemu-io", "-f", "qcow2", "-c", "read -P 0x5a 0 4k", d.Path).CombinedOutput(); err != nil || strings.Contains(string(out), "Pattern verification failed") {
			t.Fatalf("overlay does not hold the write: %v: %s", err, out)
		}
	} else if _, lerr := exec.LookPath("qemu-io"); lerr == nil {
		t.Fatalf("qemu-io write: %v: %s", err, out)
	}
	if err := s.Detach(ctx, d); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		if err := s.Remove(ctx, vmDir); err != nil {
			t.Fatalf("Remove #%d: %v", i+1, err)
		}
	}
	if entries, _ := os.ReadDir(vmDir); len(entries) != 0 {
		t.Fatalf("files left in the VM dir: %v", entries)
	}
}

func TestQcow2MissingImage(t *testing.T) {
	need(t, "qemu-img")
	vmDir := t.TempDir()
	err := Qcow2{}.Create(context.Background(), filepath.Join(vmDir, "nope.ext4"), vmDir)
	if err == nil {
		t.Fatal("Create over a missing image succeeded")
	}
	if entries, _ := os.ReadDir(vmDir); len(entries) != 0 {
		t.Fatalf("failed Create left files: %v", entries)
	}
}

// mountXFS mounts a fresh XFS with reflink in a temp dir and returns the
// mount point; cleanup unmounts it and checks no loop is left over a
// file in it.
func mountXFS(t *testing.T) string {
	t.Helper()
	// The image is outside the checked directory: MountXFS answers for
	// its own loop, which another process may keep open for a while.
	img := filepath.Join(t.TempDir(), "xfs.img")
	mnt := filepath.Join(t.TempDir(), "mnt")
	noLoopsUnder(t, mnt)
	testenv.MountXFS(t, img, mnt, 512<<20)
	return mnt
}

func TestReflinkUnavailableOnExt4(t *testing.T) {
	dir := t.TempDir()
	if fsName(dir) != "ext4" {
		t.Skipf("temp dir is on %s, not ext4", fsName(dir))
	}
	ok, reason := Reflink{}.Available(dir)
	if ok || !strings.Contains(reason, "ext4") || !strings.Contains(reason, "reflink=1") {
		t.Fatalf("Available on ext4 = %v, %q; want false naming ext4 and what to use", ok, reason)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("probe left files: %v", entries)
	}
	image := filepath.Join(dir, "base.ext4")
	sparseImage(t, image, 1<<20)
	if err := (Reflink{}).Create(context.Background(), image, dir); err == nil {
		t.Fatal("Create on ext4 succeeded")
	}
	if _, err := os.Stat(filepath.Join(dir, CloneFile+".tmp")); err == nil {
		t.Fatal("failed Create left its temp file")
	}
}

func TestReflinkOnXFS(t *testing.T) {
	mnt := mountXFS(t)
	ctx := context.Background()
	s := Reflink{}
	if ok, reason := s.Available(mnt); !ok {
		t.Fatalf("reflink unavailable on XFS with reflink=1: %s", reason)
	}
	image := filepath.Join(mnt, "base.ext4")
	sparseImage(t, image, 256<<20)
	vmDir := filepath.Join(mnt, "vm1")
	os.Mkdir(vmDir, 0o700)
	if err := s.Create(ctx, image, vmDir); err != nil {
		t.Fatal(err)
	}
	d, err := s.Attach(ctx, image, vmDir)
	if err != nil || d.Format != "raw" || d.Path != filepath.Join(vmDir, CloneFile) {
		t.Fatalf("Attach = %+v, %v", d, err)
	}
	// The clone has the image's content; writing it leaves the image alone.
	f, err := os.OpenFile(d.Path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	start := make([]byte, 12)
	f.ReadAt(start, 0)
	if string(start) != "banger-image" {
		t.Fatalf("clone starts with %q", start)
	}
	f.WriteAt([]byte("changed-data"), 0)
	f.Close()
	if string(head(t, image)[:12]) != "banger-image" {
		t.Fatal("writing the clone changed the image")
	}
	if err := s.Detach(ctx, d); err != nil {
		t.Fatal(err)
	}
	if err := s.Remove(ctx, vmDir); err != nil {
		t.Fatal(err)
	}
	if entries, _ := os.ReadDir(vmDir); len(entries) != 0 {
		t.Fatalf("files left in the VM dir: %v", entries)
	}
}

func TestDMSnapshotReal(t *testing.T) {
	s := DMSnapshot{}
	ok, reason := s.Available(t.TempDir())
	if !ok {
		t.Skip(reason)
	}
	needRoot(t)
	ctx := context.Background()
	dir := t.TempDir()
	noLoopsUnder(t, dir)
	image := filepath.Join(dir, "base.ext4")
	sparseImage(t, image, 64<<20)
	vmDir := filepath.Join(dir, "0123456789abcdef")
	os.Mkdir(vmDir, 0o700)
	if err := s.Create(ctx, image, vmDir); err != nil {
		t.Fatal(err)
	}
	d, err := s.Attach(ctx, image, vmDir)
	if err != nil {
		t.Fatal(err)
	}
	if d.Path != "/dev/mapper/"+DMName(vmDir) || len(d.Loops) != 2 || len(d.DMNames) != 1 {
		t.Fatalf("Attach = %+v", d)
	}
	// A second Attach (a crashed daemon) replaces what exists.
	d2, err := s.Attach(ctx, image, vmDir)
	if err != nil {
		t.Fatalf("Attach over existing objects: %v", err)
	}
	if targets, _ := DMTargets(DMName(vmDir)); !slices.Equal(targets, []string{DMName(vmDir)}) {
		t.Fatalf("targets after re-Attach = %v", targets)
	}
	// Both loops are over the VM's own files: the base one over its link.
	if loops, _ := Loops(vmDir); len(loops) != 2 {
		t.Fatalf("loops of the VM after re-Attach = %v, want 2", loops)
	}
	// Found without a record (a crash before the handles were written),
	// then the recorded ones are gone already.
	for i, sd := range []SystemDisk{{VMDir: vmDir}, d2} {
		if err := s.Detach(ctx, sd); err != nil {
			t.Fatalf("Detach #%d: %v", i+1, err)
		}
	}
	if targets, _ := DMTargets(DMName(vmDir)); len(targets) != 0 {
		t.Fatalf("targets left: %v", targets)
	}
	if loops, _ := Loops(dir); len(loops) != 0 {
		t.Fatalf("loops left: %v", loops)
	}
	if err := s.Remove(ctx, vmDir); err != nil {
		t.Fatal(err)
	}
	if entries, _ := os.ReadDir(vmDir); len(entries) != 0 {
		t.Fatalf("files left in the VM dir: %v", entries)
	}
}

func TestDMSnapshotUnavailableReason(t *testing.T) {
	if f, err := os.OpenFile(dmControl, os.O_RDWR, 0); err == nil {
		f.Close()
		t.Skip("device-mapper present")
	}
	ok, reason := DMSnapshot{}.Available("/")
	if ok || !strings.HasPrefix(reason, "device-mapper not available: ") || !strings.Contains(reason, dmControl) || !strings.HasSuffix(reason, "(no dm_mod)") {
		t.Fatalf("Available = %v, %q", ok, reason)
	}
	if _, err := (DMSnapshot{}).Attach(context.Background(), "/nope", t.TempDir()); err == nil || !strings.Contains(err.Error(), "device-mapper") {
		t.Fatalf("Attach without device-mapper: %v", err)
	}
	// Detach of nothing, and of objects that are gone, succeeds.
	if err := (DMSnapshot{}).Detach(context.Background(), SystemDisk{DMNames: []string{"banger-gone-root"}, Loops: []string{"/dev/loop250"}}); err != nil {
		t.Fatalf("Detach of gone objects: %v", err)
	}
}

func TestDMSnapshotCreate(t *testing.T) {
	dir := t.TempDir()
	image := filepath.Join(dir, "base.ext4")
	sparseImage(t, image, 20<<30)
	if err := (DMSnapshot{}).Create(context.Background(), image, dir); err != nil {
		t.Fatal(err)
	}
	cow := filepath.Join(dir, CowFile)
	st, err := os.Stat(cow)
	if err != nil || st.Size() != 20<<30 {
		t.Fatalf("cow file: %v, %v", st, err)
	}
	if blocks := statBlocks(t, cow); blocks != 0 {
		t.Fatalf("cow file is not sparse: %d blocks", blocks)
	}
	if err := (DMSnapshot{}).Remove(context.Background(), dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(cow); !os.IsNotExist(err) {
		t.Fatalf("cow file not removed: %v", err)
	}
}
