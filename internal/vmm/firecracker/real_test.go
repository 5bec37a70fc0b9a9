package firecracker

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/banger/banger/internal/testenv"
	"github.com/banger/banger/internal/vmm"
	"github.com/banger/banger/internal/vmm/firecracker/fcapi"
)

// TestRealFirecracker runs the real binary when one is on PATH. Without a
// guest kernel it checks the API conversation up to InstanceStart, which
// firecracker refuses for a kernel file that is not an ELF: the refusal
// must come back with firecracker's fault_message and leave nothing behind.
// With BANGER_TEST_VMLINUX and a usable /dev/kvm it also starts a guest.
func TestRealFirecracker(t *testing.T) {
	bin, err := exec.LookPath(DefaultBinary)
	if err != nil {
		t.Skip("real firecracker test: no firecracker binary on PATH (it is not packaged for Debian; install a release binary to run this)")
	}
	ctx := context.Background()
	vmlinux := os.Getenv("BANGER_TEST_VMLINUX")
	// With a kernel, Available probes a boot first: on a host whose KVM
	// runs no ordinary guest (PVM) the guest part then skips instead of
	// failing.
	d := New(Options{Binary: bin, ProbeKernel: func() string { return vmlinux }})
	ok, reason := d.Available(ctx)
	t.Logf("available=%v: %s", ok, reason)

	spec := fakeSpec(t) // kernel and disks are one-byte files
	spec.Net = nil      // no tap outside a network namespace
	cleanupVM(t, d, spec.APISocket)
	_, err = d.Start(ctx, spec)
	var ae *APIError
	if !errors.As(err, &ae) {
		t.Fatalf("Start with a non-ELF kernel: %v, want a firecracker API error", err)
	}
	t.Logf("refused as expected: %v", ae)
	assertNothingLeft(t, spec)

	if vmlinux == "" || !ok {
		t.Skip("guest boot under real firecracker: set BANGER_TEST_VMLINUX and have a KVM that runs guests")
	}
	spec = fakeSpec(t)
	spec.Net, spec.Disks, spec.CID = nil, nil, 0
	spec.Kernel = vmm.Kernel{Vmlinux: vmlinux}
	spec.Cmdline = "console=ttyS0 panic=-1"
	cleanupVM(t, d, spec.APISocket)
	h, err := d.Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	var info fcapi.InstanceInfo
	if err := newClient(h.APISocket).do(ctx, "GET", "/", nil, &info); err != nil || info.State != "Running" {
		t.Fatalf("GET / = %+v, %v", info, err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		if b, _ := os.ReadFile(spec.Console); strings.Contains(string(b), "Linux version") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no kernel output on the console within 20s")
		}
		time.Sleep(100 * time.Millisecond)
	}

	// Save, kill, restore: the guest runs again in a new process.
	state := filepath.Join(spec.Dir, "state")
	if err := os.Mkdir(state, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := d.Save(ctx, h, state); err != nil {
		t.Fatal(err)
	}
	if err := newClient(h.APISocket).do(ctx, "GET", "/", nil, &info); err != nil || info.State != "Paused" {
		t.Fatalf("GET / after Save = %+v, %v", info, err)
	}
	if err := d.Kill(ctx, h); err != nil {
		t.Fatal(err)
	}
	h2, err := d.Restore(ctx, spec, state)
	if err != nil {
		t.Fatal(err)
	}
	if err := newClient(h2.APISocket).do(ctx, "GET", "/", nil, &info); err != nil || info.State != "Running" {
		t.Fatalf("GET / after Restore = %+v, %v", info, err)
	}
	if err := d.Kill(ctx, h2); err != nil {
		t.Fatal(err)
	}
	assertNothingLeft(t, spec)
}

func TestAvailableWithoutKVM(t *testing.T) {
	d := New(Options{Binary: fakeBin})
	ok, reason := d.Available(context.Background())
	if _, err := os.Stat("/dev/kvm"); err != nil {
		if ok || !strings.Contains(reason, "KVM is unusable") || !strings.Contains(reason, "1.14.2") {
			t.Fatalf("Available without /dev/kvm = %v, %q", ok, reason)
		}
	} else if !strings.Contains(reason, "1.14.2") {
		t.Fatalf("Available = %v, %q", ok, reason)
	}
	if ok, reason := New(Options{Binary: "/nonexistent/firecracker"}).Available(context.Background()); ok || !strings.Contains(reason, "not found") {
		t.Fatalf("missing binary: %v %q", ok, reason)
	}
}

// TestAvailableProbesOnceAKernelExists: without a kernel to probe with the
// answer is provisional and not kept; once the kernel function gives one,
// Available boots it (the fake's guest prints nothing, so the probe fails)
// and keeps that answer.
func TestAvailableProbesOnceAKernelExists(t *testing.T) {
	kernel := ""
	asked := 0
	d := New(Options{Binary: fakeBin, ProbeTimeout: 300 * time.Millisecond, ProbeKernel: func() string { asked++; return kernel },
		KVMDevice: testenv.FakeKVM(t)})
	ok, reason := d.Available(context.Background())
	if !ok || !strings.Contains(reason, "not probed yet") {
		t.Fatalf("without a kernel: %v, %q", ok, reason)
	}
	kernel = fakeSpec(t).Kernel.Vmlinux
	ok, reason = d.Available(context.Background())
	if ok || !strings.Contains(reason, "runs no ordinary guest") {
		t.Fatalf("with a kernel that does not boot: %v, %q", ok, reason)
	}
	n := asked
	if ok, _ := d.Available(context.Background()); ok || asked != n {
		t.Errorf("a probed answer was not kept (asked %d times, then %d)", n, asked)
	}
}
