package qemu

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/banger/banger/internal/proc"
	"github.com/banger/banger/internal/vmm"
)

func needQEMU(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath(DefaultBinary)
	if err != nil {
		t.Skipf("real QEMU test: %s not on PATH (apt-get install qemu-system-x86)", DefaultBinary)
	}
	return p
}

// firmwareSpec is a VM with no kernel and no disk: q35's SeaBIOS finds no
// boot device and the machine stays running, which is all QMP needs.
func firmwareSpec(t *testing.T) vmm.Spec {
	dir := t.TempDir()
	return vmm.Spec{
		ID: "t1", Name: "qemu-test", Dir: dir, CPUs: 1, MemoryMiB: 64,
		APISocket: filepath.Join(dir, "api.sock"),
		LogPath:   filepath.Join(dir, "vmm.log"),
		Console:   filepath.Join(dir, "console.log"),
	}
}

func killAfter(t *testing.T, d *Driver, spec vmm.Spec) {
	t.Cleanup(func() {
		if h, err := d.Find(spec.APISocket); err == nil {
			_ = d.Kill(context.Background(), h)
		}
	})
}

func TestRealLifecycle(t *testing.T) {
	needQEMU(t)
	ctx := context.Background()
	d := New(Options{Machine: MachineQ35, Accel: "tcg"})
	spec := firmwareSpec(t)
	killAfter(t, d, spec)

	h, err := d.Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	if h.PID <= 0 || h.APISocket != spec.APISocket {
		t.Fatalf("handle %+v", h)
	}
	if !d.Alive(h) {
		t.Fatal("not alive after Start")
	}
	if d.Alive(vmm.Handle{PID: h.PID, APISocket: spec.APISocket + ".other"}) {
		t.Fatal("alive under another socket")
	}
	b, err := os.ReadFile(PIDFile(spec.Dir))
	if err != nil || strings.TrimSpace(string(b)) != strconv.Itoa(h.PID) {
		t.Fatalf("pidfile = %q, %v; want %d", b, err, h.PID)
	}
	// Find by scanning /proc too, not only through the pidfile.
	os.Remove(PIDFile(spec.Dir))
	if f, err := d.Find(spec.APISocket); err != nil || f != h {
		t.Fatalf("Find = %+v, %v; want %+v", f, err, h)
	}
	if _, err := d.Start(ctx, spec); err == nil || !strings.Contains(err.Error(), "held by running qemu") {
		t.Fatalf("second Start on the same socket: %v", err)
	}

	// QEMU runs as configured: its version, the guest running, TCG, q35.
	var v qmpVersion
	var st qmpStatus
	var kvm struct {
		Enabled bool `json:"enabled"`
	}
	err = withQMP(ctx, h.APISocket, func(c *qmp) error {
		if err := c.execute(ctx, "query-version", nil, &v); err != nil {
			return err
		}
		if err := c.execute(ctx, "query-status", nil, &st); err != nil {
			return err
		}
		return c.execute(ctx, "query-kvm", nil, &kvm)
	})
	if err != nil {
		t.Fatal(err)
	}
	out, _ := exec.Command(DefaultBinary, "-version").Output()
	argv, _ := proc.Cmdline(h.PID)
	if v.String() != ParseVersion(string(out)) || st.Status != "running" || kvm.Enabled || !strings.Contains(strings.Join(argv, " "), "-M q35") {
		t.Fatalf("version %s, status %q, kvm %v, argv %q", v.String(), st.Status, kvm.Enabled, argv)
	}

	// Firmware has no ACPI OS to act on the button; the request must still
	// be accepted and the VM keep running.
	if err := d.Shutdown(ctx, h); err != nil {
		t.Fatal(err)
	}

	if err := d.Kill(ctx, h); err != nil {
		t.Fatal(err)
	}
	if d.Alive(h) {
		t.Fatal("alive after Kill")
	}
	if _, err := os.Stat(spec.APISocket); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("api socket left after Kill: %v", err)
	}
	if _, err := d.Find(spec.APISocket); !errors.Is(err, vmm.ErrNotFound) {
		t.Fatalf("Find after Kill: %v", err)
	}
	if err := d.Kill(ctx, h); err != nil {
		t.Fatalf("second Kill: %v", err)
	}
	if err := d.Shutdown(ctx, h); err != nil {
		t.Fatalf("Shutdown of a gone VM: %v", err)
	}
}

func TestRealStartFailureLeavesNothing(t *testing.T) {
	needQEMU(t)
	ctx := context.Background()
	d := New(Options{Accel: "tcg"})

	t.Run("bad kernel", func(t *testing.T) {
		spec := firmwareSpec(t)
		spec.Kernel.Vmlinux = filepath.Join(spec.Dir, "no-such-vmlinux")
		spec.Cmdline = "console=ttyS0"
		_, err := d.Start(ctx, spec)
		if err == nil || !strings.Contains(err.Error(), "no-such-vmlinux") {
			t.Fatalf("Start with a missing kernel: %v", err)
		}
		assertNothingLeft(t, spec)
	})
	t.Run("busy socket", func(t *testing.T) {
		spec := firmwareSpec(t)
		l, err := net.Listen("unix", spec.APISocket)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		_, err = d.Start(ctx, spec)
		if err == nil || !strings.Contains(err.Error(), "in use") {
			t.Fatalf("Start on a busy socket: %v", err)
		}
		if pids, _ := proc.Find(matcher(spec.APISocket)); len(pids) != 0 {
			t.Fatalf("qemu processes left: %v", pids)
		}
		if _, err := os.Stat(spec.APISocket); err != nil {
			t.Fatalf("the other owner's socket was removed: %v", err)
		}
	})
	t.Run("stale socket reused", func(t *testing.T) {
		spec := firmwareSpec(t)
		killAfter(t, d, spec)
		if err := os.WriteFile(spec.APISocket, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		h, err := d.Start(ctx, spec)
		if err != nil {
			t.Fatalf("Start over a stale socket file: %v", err)
		}
		if err := d.Kill(ctx, h); err != nil {
			t.Fatal(err)
		}
		assertNothingLeft(t, spec)
	})
}

func assertNothingLeft(t *testing.T, spec vmm.Spec) {
	t.Helper()
	if pids, _ := proc.Find(matcher(spec.APISocket)); len(pids) != 0 {
		t.Fatalf("qemu processes left: %v", pids)
	}
	for _, p := range []string{spec.APISocket, PIDFile(spec.Dir)} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("%s left behind (%v)", p, err)
		}
	}
}

func TestRealProbe(t *testing.T) {
	bin := needQEMU(t)
	ok, why := probe(context.Background(), bin, "tcg", nil, 30*time.Second)
	if !ok {
		t.Fatalf("TCG firmware probe failed: %s", why)
	}
	if _, err := os.Stat("/dev/kvm"); err != nil {
		ok, why := probe(context.Background(), bin, "kvm", nil, 5*time.Second)
		if ok {
			t.Fatalf("KVM probe succeeded without /dev/kvm: %s", why)
		}
		t.Logf("kvm probe without /dev/kvm: %s", why)
	}
}

func TestRealAvailable(t *testing.T) {
	needQEMU(t)
	d := New(Options{})
	ok, reason := d.Available(context.Background())
	if !ok {
		t.Fatalf("unavailable: %s", reason)
	}
	accel, _ := d.Accel(context.Background())
	if accel != "kvm" && accel != "tcg" {
		t.Fatalf("accel %q", accel)
	}
	if kvm, _ := kvmOpens(""); !kvm && accel != "tcg" {
		t.Fatalf("accel %q without a usable /dev/kvm", accel)
	}
	t.Logf("available: %s", reason)

	if ok, reason := New(Options{Binary: "/nonexistent/qemu"}).Available(context.Background()); ok || !strings.Contains(reason, "not found") {
		t.Fatalf("missing binary: %v %s", ok, reason)
	}
	if kvm, _ := kvmOpens(""); !kvm {
		if ok, reason := New(Options{Accel: "kvm"}).Available(context.Background()); ok || !strings.Contains(reason, "/dev/kvm") {
			t.Fatalf("forced kvm without /dev/kvm: %v %s", ok, reason)
		}
	}
}
