package qemu

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/banger/banger/internal/testenv"
	"github.com/banger/banger/internal/vmm"
	"github.com/banger/banger/internal/vmm/vmmuser"
)

// fakePVMQEMU is a QEMU that behaves like one on a host whose KVM is
// paravirtual: firmware runs under KVM, a kernel under KVM aborts at once
// (as QEMU does there, failing to set an MSR), anything under TCG idles.
// Every invocation's argv is appended to $FAKE_QEMU_LOG.
const fakePVMQEMU = `#!/bin/sh
echo "$*" >> "$FAKE_QEMU_LOG"
case " $* " in *" -version "*) echo "QEMU emulator version 7.2.0"; exit 0 ;; esac
case "$*" in
*"-accel kvm"*"-kernel"*) echo "qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69" >&2; exit 1 ;;
esac
for a; do
	case "$a" in file:*) echo "No bootable device." > "${a#file:}" ;; esac
done
exec sleep 30
`

func TestWeakKVMChoiceIsCheckedWithAKernel(t *testing.T) {
	kvm := testenv.FakeKVM(t)
	dir := t.TempDir()
	bin := filepath.Join(dir, "qemu")
	if err := os.WriteFile(bin, []byte(fakePVMQEMU), 0o755); err != nil {
		t.Fatal(err)
	}
	log := filepath.Join(dir, "argv.log")
	t.Setenv("FAKE_QEMU_LOG", log)
	kernel := filepath.Join(dir, "vmlinuz")
	os.WriteFile(kernel, []byte("not really a kernel"), 0o644)
	ctx := context.Background()

	// No kernel yet: the firmware probe passes and KVM is chosen, weakly.
	var pk *ProbeKernel
	d := New(Options{Binary: bin, ProbeKernel: func() *ProbeKernel { return pk }, StartTimeout: time.Second, KVMDevice: kvm})
	accel, why := d.Accel(ctx)
	if accel != "kvm" || !strings.Contains(why, "firmware only") {
		t.Fatalf("without a kernel: %s (%s), want a weak kvm", accel, why)
	}
	// Asked again with still no kernel: the answer stands, no new probe.
	before, _ := os.ReadFile(log)
	if accel, _ := d.Accel(ctx); accel != "kvm" {
		t.Fatalf("second answer %s", accel)
	}
	if after, _ := os.ReadFile(log); len(after) != len(before) {
		t.Errorf("asking again without a kernel probed again:\n%s", after[len(before):])
	}

	// A kernel appears: the next answer boots it under KVM and falls back.
	pk = &ProbeKernel{Kernel: kernel}
	accel, why = d.Accel(ctx)
	if accel != "tcg" || !strings.Contains(why, "do not run under it") || !strings.Contains(why, "MSR") {
		t.Fatalf("with a kernel: %s (%s), want tcg with the probe's reason", accel, why)
	}

	// Start with a weak choice probes the kernel it is about to boot, and
	// boots it under TCG (the fake never answers QMP, so Start fails after).
	os.Remove(log)
	d = New(Options{Binary: bin, ProbeKernel: func() *ProbeKernel { return nil }, StartTimeout: time.Second, KVMDevice: kvm})
	if accel, _ := d.Accel(ctx); accel != "kvm" {
		t.Fatalf("weak choice: %s", accel)
	}
	spec := firmwareSpec(t)
	spec.Kernel = vmm.Kernel{BzImage: kernel}
	spec.Cmdline = "console=ttyS0"
	if _, err := d.Start(ctx, spec); err == nil {
		t.Fatal("the fake answered QMP?")
	}
	b, _ := os.ReadFile(log)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	last := lines[len(lines)-1]
	if !strings.Contains(last, "-accel tcg") || !strings.Contains(last, spec.APISocket) {
		t.Errorf("the VM was launched as %q, want TCG", last)
	}
	var probed bool
	for _, l := range lines {
		if strings.Contains(l, "-accel kvm") && strings.Contains(l, kernel) {
			probed = true
		}
	}
	if !probed {
		t.Errorf("Start did not probe the VM's kernel under KVM:\n%s", b)
	}
}

// fakeFlagsQEMU answers -version, refusing the flag named in
// $FAKE_QEMU_REFUSE as QEMU refuses an option it does not know.
const fakeFlagsQEMU = `#!/bin/sh
for a; do
	if [ "$a" = "$FAKE_QEMU_REFUSE" ]; then echo "qemu-system-x86_64: $a: invalid option" >&2; exit 1; fi
done
echo "QEMU emulator version 7.2.0"
`

// A QEMU that refuses a confinement flag, or a driver told not to drop
// privileges, still runs VMs; Confinement says what is missing.
func TestConfinementFallbacks(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "qemu")
	if err := os.WriteFile(bin, []byte(fakeFlagsQEMU), 0o755); err != nil {
		t.Fatal(err)
	}
	root := os.Geteuid() == 0
	for _, tc := range []struct {
		name, refuse string
		opts         Options
		ok           bool
		want         []string
		args         []string // in BuildArgs' output
		absent       []string
	}{
		{name: "all taken", ok: root, want: []string{"seccomp sandbox"},
			args: []string{"-sandbox"}},
		{name: "no seccomp", refuse: "-sandbox", want: []string{"no seccomp sandbox", "invalid option"},
			absent: []string{"-sandbox"}},
		{name: "no chroot", refuse: "-chroot", want: []string{"file system stays in view", "seccomp sandbox"},
			absent: []string{"-chroot"}},
		{name: "no runas", refuse: "-runas", want: []string{"runs as", "seccomp sandbox"},
			args: []string{"-sandbox"}, absent: []string{"-runas", "-chroot"}},
		{name: "off", opts: Options{NoRunAs: true}, want: []string{"off in the configuration", "elevateprivileges=deny"},
			args: []string{"-sandbox"}, absent: []string{"-runas", "-chroot"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("FAKE_QEMU_REFUSE", tc.refuse)
			o := tc.opts
			o.Binary, o.Accel = bin, "tcg"
			d := New(o)
			if ok, why := d.Available(context.Background()); !ok {
				t.Fatalf("unavailable: %s", why)
			}
			what, ok := d.Confinement(context.Background())
			t.Logf("%v: %s", ok, what)
			if ok != tc.ok {
				t.Errorf("ok = %v, want %v: %s", ok, tc.ok, what)
			}
			for _, w := range tc.want {
				if !strings.Contains(what, w) {
					t.Errorf("confinement %q lacks %q", what, w)
				}
			}
			args, err := BuildArgs(firmwareSpec(t), ArgOptions{Accel: "tcg", Sandbox: d.sandbox, RunAs: d.runAs, Chroot: d.chroot})
			if err != nil {
				t.Fatal(err)
			}
			line := strings.Join(args, " ")
			for _, a := range tc.args {
				if !strings.Contains(line, a) {
					t.Errorf("args lack %s: %s", a, line)
				}
			}
			if root && tc.refuse == "" && !tc.opts.NoRunAs && (!strings.Contains(line, "-runas "+vmmuser.Default) || !strings.Contains(line, "-chroot ")) {
				t.Errorf("confined args lack -runas or -chroot: %s", line)
			}
			for _, a := range tc.absent {
				if strings.Contains(line, a+" ") {
					t.Errorf("args carry %s: %s", a, line)
				}
			}
		})
	}
}
