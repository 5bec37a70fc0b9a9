package drivers

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/banger/banger/internal/vmm"
)

// TestNew: Firecracker is preferred, each driver says what disks it takes,
// and a VM directory with no record is told apart as it always was: a QEMU
// pid file or a qcow2 overlay means QEMU, anything else Firecracker.
func TestNew(t *testing.T) {
	r := New(Config{})
	if got := r.Names(); !slices.Equal(got, []string{"firecracker", "qemu"}) {
		t.Fatalf("Names = %v", got)
	}
	fc, _ := r.Get("firecracker")
	q, _ := r.Get("qemu")
	if !slices.Equal(fc.Formats(), []string{vmm.FormatRaw}) || !slices.Equal(q.Formats(), []string{vmm.FormatQcow2, vmm.FormatRaw}) {
		t.Fatalf("Formats: firecracker %v, qemu %v", fc.Formats(), q.Formats())
	}
	if _, ok := q.(vmm.AccelReporter); !ok {
		t.Fatal("qemu does not report its accelerator")
	}
	for _, d := range r.All() {
		if _, ok := d.(vmm.Confiner); !ok {
			t.Errorf("%s does not report its confinement", d.Name())
		}
	}
	for files, want := range map[string]string{
		"":                        "firecracker",
		"api.sock,system.img":     "firecracker",
		"system.cow,metrics.json": "firecracker",
		"qemu.pid":                "qemu",
		"qemu-root":               "qemu",
		"system.qcow2,work.ext4":  "qemu",
	} {
		dir := t.TempDir()
		for _, f := range strings.Split(files, ",") {
			if f != "" {
				os.WriteFile(filepath.Join(dir, f), nil, 0o600)
			}
		}
		if got := r.Owner(dir); got != want {
			t.Errorf("Owner of a dir with %q = %s, want %s", files, got, want)
		}
	}
}
