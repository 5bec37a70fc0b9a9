package storage

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

func TestParseLosetupList(t *testing.T) {
	// util-linux 2.38: BACK-INO a number, BACK-MAJ:MIN a padded string.
	out := `{
   "loopdevices": [
      {
         "name": "/dev/loop1",
         "back-file": "/state/vms/ced5/system.cow (deleted)",
         "back-ino": 9996242,
         "back-maj:min": "     254:0  "
      },{
         "name": "/dev/loop12",
         "back-file": "/state/vms/ab cd/system.base",
         "back-ino": 12,
         "back-maj:min": "259:1048575"
      }
   ]
}`
	got, err := ParseLosetupList([]byte(out))
	want := []LoopDevice{
		{Name: "/dev/loop1", Backing: "/state/vms/ced5/system.cow (deleted)", Dev: unix.Mkdev(254, 0), Ino: 9996242},
		{Name: "/dev/loop12", Backing: "/state/vms/ab cd/system.base", Dev: unix.Mkdev(259, 1048575), Ino: 12},
	}
	if err != nil || !slices.Equal(got, want) {
		t.Fatalf("ParseLosetupList = %+v, %v", got, err)
	}
	// Older util-linux prints every field as a string.
	got, err = ParseLosetupList([]byte(`{"loopdevices": [{"name": "/dev/loop0", "back-file": "/i", "back-ino": "42", "back-maj:min": "8:1"}]}`))
	if err != nil || !slices.Equal(got, []LoopDevice{{Name: "/dev/loop0", Backing: "/i", Dev: unix.Mkdev(8, 1), Ino: 42}}) {
		t.Fatalf("string fields: %+v, %v", got, err)
	}
	for _, none := range []string{"", "\n", `{"loopdevices": []}`, "{\n   \"loopdevices\": [\n\n   ]\n}\n"} {
		if got, err := ParseLosetupList([]byte(none)); err != nil || len(got) != 0 {
			t.Errorf("ParseLosetupList(%q) = %v, %v", none, got, err)
		}
	}
	for _, bad := range []string{
		`not json`,
		`{"loopdevices": [{"name": "/dev/loop0", "back-ino": 1, "back-maj:min": "8:1"}]}`,
		`{"loopdevices": [{"name": "/dev/loop0", "back-file": "/i", "back-ino": null, "back-maj:min": "8:1"}]}`,
		`{"loopdevices": [{"name": "/dev/loop0", "back-file": "/i", "back-ino": 1, "back-maj:min": "8"}]}`,
		`{"loopdevices": [{"name": "/dev/loop0", "back-file": "/i", "back-ino": 1, "back-maj:min": "x:1"}]}`,
		`{"loopdevices": [{"name": "/dev/loop0", "back-file": "/i", "back-ino": 1}]}`,
	} {
		if got, err := ParseLosetupList([]byte(bad)); err == nil {
			t.Errorf("ParseLosetupList(%q) = %v, want an error", bad, got)
		}
	}
}

func TestLosetupListArgs(t *testing.T) {
	if got := strings.Join(LosetupListArgs("losetup"), " "); got != "losetup --json --list --output NAME,BACK-FILE,BACK-INO,BACK-MAJ:MIN" {
		t.Fatal(got)
	}
}

// TestOwnsLoop holds a loop to the VM's files by path and by identity.
func TestOwnsLoop(t *testing.T) {
	vmDir := t.TempDir()
	cow := filepath.Join(vmDir, CowFile)
	os.WriteFile(cow, nil, 0o600)
	fi, _ := os.Stat(cow)
	st := fi.Sys().(*syscall.Stat_t)
	own := vmLoopFiles(vmDir)
	if !slices.Contains(own, cow) || !slices.Contains(own, filepath.Join(vmDir, BaseFile)) {
		t.Fatalf("vmLoopFiles = %v", own)
	}
	same := LoopDevice{Name: "/dev/loop9", Backing: cow, Dev: uint64(st.Dev), Ino: st.Ino}
	for name, tt := range map[string]struct {
		l    LoopDevice
		want bool
	}{
		"same file":                 {same, true},
		"another inode there":       {LoopDevice{Backing: cow, Dev: same.Dev, Ino: same.Ino + 1}, false},
		"another device":            {LoopDevice{Backing: cow, Dev: same.Dev + 1, Ino: same.Ino}, false},
		"deleted":                   {LoopDevice{Backing: cow + " (deleted)", Dev: same.Dev, Ino: same.Ino}, false},
		"another VM's cow":          {LoopDevice{Backing: "/elsewhere/" + CowFile, Dev: same.Dev, Ino: same.Ino}, false},
		"base link not there (yet)": {LoopDevice{Backing: filepath.Join(vmDir, BaseFile), Dev: same.Dev, Ino: same.Ino}, false},
	} {
		if got := ownsLoop(own, tt.l); got != tt.want {
			t.Errorf("%s: ownsLoop = %v, want %v", name, got, tt.want)
		}
	}
}

func TestBaseLink(t *testing.T) {
	dir := t.TempDir()
	image := filepath.Join(dir, "base.ext4")
	sparseImage(t, image, 1<<20)
	vmDir := filepath.Join(dir, "vm")
	os.Mkdir(vmDir, 0o700)
	link := filepath.Join(vmDir, BaseFile)
	sameAs := func(a, b string) bool {
		x, err1 := os.Stat(a)
		y, err2 := os.Stat(b)
		return err1 == nil && err2 == nil && os.SameFile(x, y)
	}
	if got := baseLink(image, vmDir); got != link || !sameAs(link, image) {
		t.Fatalf("baseLink = %s (same file: %v)", got, sameAs(link, image))
	}
	fi, _ := os.Stat(link)
	if got := baseLink(image, vmDir); got != link || !sameAs(link, image) {
		t.Fatalf("second baseLink = %s", got)
	}
	if fi2, _ := os.Stat(link); !os.SameFile(fi, fi2) {
		t.Fatal("an up-to-date link was replaced")
	}
	// An image replaced under the same name gets a new link.
	os.Remove(image)
	sparseImage(t, image, 2<<20)
	if got := baseLink(image, vmDir); got != link || !sameAs(link, image) {
		t.Fatalf("baseLink after the image changed = %s", got)
	}
	if _, err := os.Stat(link + ".tmp"); !os.IsNotExist(err) {
		t.Fatalf("temporary link left: %v", err)
	}
	// Remove deletes the link with the cow file.
	if err := (DMSnapshot{}).Remove(context.Background(), vmDir); err != nil {
		t.Fatal(err)
	}
	if entries, _ := os.ReadDir(vmDir); len(entries) != 0 {
		t.Fatalf("files left in the VM dir: %v", entries)
	}
}

// TestBaseLinkCrossDevice: an image on another file system cannot be
// linked; the image itself is used and no link is left.
func TestBaseLinkCrossDevice(t *testing.T) {
	shm, err := os.MkdirTemp("/dev/shm", "banger-test-")
	if err != nil {
		t.Skip("no /dev/shm: ", err)
	}
	defer os.RemoveAll(shm)
	vmDir := t.TempDir()
	a, _ := os.Stat(shm)
	b, _ := os.Stat(vmDir)
	if a.Sys().(*syscall.Stat_t).Dev == b.Sys().(*syscall.Stat_t).Dev {
		t.Skip("/dev/shm and the temporary directory share a file system")
	}
	image := filepath.Join(shm, "base.ext4")
	sparseImage(t, image, 1<<20)
	os.WriteFile(filepath.Join(vmDir, BaseFile), []byte("stale"), 0o600)
	if got := baseLink(image, vmDir); got != image {
		t.Fatalf("baseLink across file systems = %s, want the image", got)
	}
	if entries, _ := os.ReadDir(vmDir); len(entries) != 0 {
		t.Fatalf("files left in the VM dir: %v", entries)
	}
}

// attachLoop attaches a loop over file and detaches it when the test ends,
// if it is still over file.
func attachLoop(t *testing.T, file string, readOnly bool) string {
	t.Helper()
	out, err := runArgv(context.Background(), LosetupAttachArgs("losetup", file, readOnly))
	if err != nil {
		t.Fatal(err)
	}
	dev := strings.TrimSpace(out)
	t.Cleanup(func() {
		if b, ok := loopBacking(dev); ok && strings.TrimSuffix(b, " (deleted)") == file {
			exec.Command("losetup", "--detach", dev).Run()
		}
	})
	return dev
}

// TestDMSnapshotDetachOwnLoopsOnly runs Detach over real loops (device-mapper
// is not needed: no target exists): only the VM's own loops go, whatever
// the recorded numbers say.
func TestDMSnapshotDetachOwnLoopsOnly(t *testing.T) {
	needRoot(t)
	if _, err := exec.LookPath("losetup"); err != nil {
		t.Skip("no losetup")
	}
	ctx := context.Background()
	dir := t.TempDir()
	noLoopsUnder(t, dir)
	image := filepath.Join(dir, "base.ext4")
	sparseImage(t, image, 8<<20)
	vm := func(id string) string {
		d := filepath.Join(dir, "vms", id)
		os.MkdirAll(d, 0o700)
		if err := (DMSnapshot{}).Create(ctx, image, d); err != nil {
			t.Fatal(err)
		}
		if got := baseLink(image, d); got != filepath.Join(d, BaseFile) {
			t.Fatalf("baseLink = %s", got)
		}
		return d
	}
	mine, other := vm("aaaaaaaaaaaaaaaa"), vm("bbbbbbbbbbbbbbbb")
	attached := func(dev, file string) bool {
		b, ok := loopBacking(dev)
		return ok && b == file
	}
	s := DMSnapshot{}

	// The other VM's base loop (read-only, like every base loop) and its cow
	// loop (the same base name), recorded as if this VM's: both stay.
	otherBase := attachLoop(t, filepath.Join(other, BaseFile), true)
	otherCow := attachLoop(t, filepath.Join(other, CowFile), false)
	// A recorded number now over an unrelated file: it stays.
	unrelated := filepath.Join(dir, "unrelated.img")
	sparseImage(t, unrelated, 1<<20)
	stranger := attachLoop(t, unrelated, true)
	recorded := []string{otherBase, otherCow, stranger}
	if err := s.Detach(ctx, SystemDisk{VMDir: mine, Loops: recorded, DMNames: []string{DMName(mine)}}); err != nil {
		t.Fatal(err)
	}
	// Without the VM directory nothing can be told to be the VM's.
	if err := s.Detach(ctx, SystemDisk{Loops: recorded}); err != nil {
		t.Fatal(err)
	}
	if !attached(otherBase, filepath.Join(other, BaseFile)) || !attached(otherCow, filepath.Join(other, CowFile)) || !attached(stranger, unrelated) {
		t.Fatal("Detach took loops that were not the VM's")
	}

	// The VM's own loops go, recorded (a normal stop) or not (a crash
	// before the handles were written), and the others still stay.
	for _, record := range []bool{true, false} {
		base := attachLoop(t, filepath.Join(mine, BaseFile), true)
		cow := attachLoop(t, filepath.Join(mine, CowFile), false)
		sd := SystemDisk{VMDir: mine}
		if record {
			sd.Loops, sd.DMNames = []string{base, cow}, []string{DMName(mine)}
		}
		if err := s.Detach(ctx, sd); err != nil {
			t.Fatal(err)
		}
		if loops, _ := Loops(mine); len(loops) != 0 {
			t.Fatalf("recorded %v: loops of the VM left: %v", record, loops)
		}
		if !attached(otherBase, filepath.Join(other, BaseFile)) || !attached(otherCow, filepath.Join(other, CowFile)) || !attached(stranger, unrelated) {
			t.Fatalf("recorded %v: Detach took loops that were not the VM's", record)
		}
	}

	// Tearing the other VM down takes its loops, and only those.
	if err := s.Detach(ctx, SystemDisk{VMDir: other}); err != nil {
		t.Fatal(err)
	}
	if loops, _ := Loops(filepath.Join(dir, "vms")); len(loops) != 0 || !attached(stranger, unrelated) {
		t.Fatalf("after the other VM's teardown: VM loops %v, unrelated attached %v", loops, attached(stranger, unrelated))
	}
}
