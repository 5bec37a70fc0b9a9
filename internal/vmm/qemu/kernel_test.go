package qemu

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/banger/banger/internal/vmm"
)

// TestRealKernelBoot boots a real kernel (BANGER_TEST_KERNEL: a bzImage or
// vmlinux, e.g. Debian's linux-image-cloud-amd64 vmlinuz) under TCG on
// microvm with no disk (an ELF goes in as Kernel.Vmlinux, through PVH): the kernel must print its banner on the serial
// console and then panic at root mount, which -no-reboot and panic=-1 turn
// into QEMU exiting. It also checks the kernel probe accepts that kernel.
func TestRealKernelBoot(t *testing.T) {
	needQEMU(t)
	kernel := os.Getenv("BANGER_TEST_KERNEL")
	if kernel == "" {
		t.Skip("real kernel boot: set BANGER_TEST_KERNEL to a bzImage or vmlinux")
	}
	ctx := context.Background()
	d := New(Options{Accel: "tcg"})
	spec := firmwareSpec(t)
	spec.MemoryMiB = 256
	spec.Kernel = vmm.Kernel{BzImage: kernel}
	if b, _ := os.ReadFile(kernel); len(b) > 4 && string(b[:4]) == "\x7fELF" {
		spec.Kernel = vmm.Kernel{Vmlinux: kernel}
	}
	spec.Cmdline = "panic=-1"
	killAfter(t, d, spec)
	h, err := d.Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if !vmm.WaitExit(wctx, d, h, 100*time.Millisecond) {
		b, _ := os.ReadFile(spec.Console)
		t.Fatalf("kernel did not reach its root-mount panic in 60s; console:\n%s", lastLine(string(b)))
	}
	b, _ := os.ReadFile(spec.Console)
	con := string(b)
	if !strings.Contains(con, "Linux version") || !strings.Contains(con, "Kernel panic") {
		t.Fatalf("console lacks the banner or the panic:\n%s", con)
	}
	if !strings.Contains(con, "tsc_early_khz=") {
		t.Errorf("command line lacks tsc_early_khz under TCG")
	}
	ok, why := probe(ctx, d.bin, "tcg", &ProbeKernel{Kernel: kernel}, 60*time.Second)
	if !ok {
		t.Fatalf("kernel probe under TCG failed: %s", why)
	}
	t.Log(why)
}
