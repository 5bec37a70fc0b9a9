package kernel

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/banger/banger/internal/progress"
	"github.com/banger/banger/internal/testenv"
)

// TestPullReal pulls the default catalog entry with the host's apt. It
// needs root, apt and the network path to the Debian mirror, so it runs only
// with BANGER_E2E=1.
func TestPullReal(t *testing.T) {
	testenv.RequireE2E(t)
	testenv.RequireBinary(t, "apt-get")
	e, ok := Lookup("debian-cloud-bookworm")
	if !ok {
		t.Fatal("default entry missing from the catalog")
	}
	dir := t.TempDir()
	cache := filepath.Join(dir, "cache")
	a, err := Pull(context.Background(), e, filepath.Join(dir, "k1"), cache, func(p progress.Event) { t.Logf("%s: %s", p.Phase, p.Message) })
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", a)
	vm, err := os.ReadFile(a.Vmlinux)
	if err != nil || !bytes.HasPrefix(vm, elfMagic) {
		t.Fatalf("vmlinux not an ELF: %v", err)
	}
	if !bytes.Contains(vm, []byte(a.Version)) {
		t.Errorf("vmlinux does not name its release %s", a.Version)
	}
	out, err := exec.Command("sh", "-c", "cpio -t < "+a.Initrd).CombinedOutput()
	if err != nil {
		t.Fatalf("cpio -t: %v: %s", err, out)
	}
	for _, want := range []string{"init", "bin/busybox", "lib/modules/virtio_blk.ko", "lib/modules/virtio_ring.ko", "lib/modules/virtio_console.ko", "lib/modules/vmw_vsock_virtio_transport.ko", "lib/modules/vsock.ko", "lib/modules/evdev.ko", "dev/console"} {
		if !bytes.Contains(out, []byte(want+"\n")) {
			t.Errorf("initrd lacks %s:\n%s", want, out)
		}
	}
	// A second pull of the same entry comes from the cache.
	var phases []string
	b, err := Pull(context.Background(), e, filepath.Join(dir, "k2"), cache, func(p progress.Event) { phases = append(phases, p.Phase) })
	if err != nil {
		t.Fatal(err)
	}
	if b.Checksums[vmlinuxName] != a.Checksums[vmlinuxName] || phases[len(phases)-1] != "cache" || len(phases) != 2 {
		t.Errorf("second pull not a cache hit: phases %v", phases)
	}
}
