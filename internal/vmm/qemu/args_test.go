package qemu

import (
	"reflect"
	"strings"
	"testing"

	"github.com/banger/banger/internal/vmm"
)

func baseSpec() vmm.Spec {
	return vmm.Spec{
		ID: "vm1", Name: "dev", Dir: "/var/lib/banger/vms/vm1", CPUs: 2, MemoryMiB: 512,
		Kernel:    vmm.Kernel{Vmlinux: "/k/vmlinux", Initrd: "/k/initrd"},
		Cmdline:   "root=/dev/vda rw",
		Disks:     []vmm.Disk{{ID: "root", Path: "/d/root.qcow2", Format: "qcow2"}, {ID: "work", Path: "/d/work.img", Format: "raw"}},
		Net:       &vmm.NetIface{Tap: "tap-vm1", MAC: "02:00:ac:10:00:02"},
		APISocket: "/var/lib/banger/vms/vm1/api.sock",
		Console:   "/var/lib/banger/vms/vm1/console.log",
		LogPath:   "/var/lib/banger/vms/vm1/vmm.log",
	}
}

func TestBuildArgsMicrovmTCG(t *testing.T) {
	got, err := BuildArgs(baseSpec(), ArgOptions{Accel: "tcg", TSCkHz: 2096008})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"-name", "dev", "-M", "microvm,acpi=on",
		"-accel", "tcg,thread=multi", "-cpu", "max",
		"-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
		"-smp", "2", "-m", "512",
		"-kernel", "/k/vmlinux", "-initrd", "/k/initrd",
		"-append", "root=/dev/vda rw console=ttyS0 tsc_early_khz=2096008 reboot=t",
		"-add-fd", "fd=3,set=1,opaque=rw", "-add-fd", "fd=4,set=1,opaque=ro",
		"-drive", "file=/dev/fdset/1,format=qcow2,if=none,id=root,cache=writeback,discard=unmap,file.auto-read-only=off,file.locking=off",
		"-device", "virtio-blk-device,drive=root",
		"-add-fd", "fd=5,set=2,opaque=rw", "-add-fd", "fd=6,set=2,opaque=ro",
		"-drive", "file=/dev/fdset/2,format=raw,if=none,id=work,cache=writeback,discard=unmap,file.auto-read-only=off,file.locking=off",
		"-device", "virtio-blk-device,drive=work",
		"-netdev", "tap,id=net0,ifname=tap-vm1,script=no,downscript=no",
		"-device", "virtio-net-device,netdev=net0,mac=02:00:ac:10:00:02",
		"-chardev", "socket,id=ctl,path=/var/lib/banger/vms/vm1/ctl.sock,server=on,wait=off",
		"-device", "virtio-serial-device,id=ctlbus",
		"-device", "virtserialport,bus=ctlbus.0,chardev=ctl,name=org.banger.ctl",
		"-chardev", "file,id=serial0,path=/var/lib/banger/vms/vm1/console.log,append=on", "-serial", "chardev:serial0",
		"-qmp", "unix:/var/lib/banger/vms/vm1/api.sock,server=on,wait=off",
		"-pidfile", "/var/lib/banger/vms/vm1/qemu.pid",
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("args differ\n got: %q\nwant: %q", got, want)
	}
}

func TestBuildArgsVariants(t *testing.T) {
	has := func(args []string, seq ...string) bool {
		for i := 0; i+len(seq) <= len(args); i++ {
			if reflect.DeepEqual(args[i:i+len(seq)], seq) {
				return true
			}
		}
		return false
	}
	for _, tc := range []struct {
		name   string
		mod    func(*vmm.Spec)
		o      ArgOptions
		want   [][]string // subsequences that must appear
		absent []string   // arguments that must not appear
		err    string
	}{
		{name: "q35 kvm pci devices", o: ArgOptions{Machine: MachineQ35, Accel: "kvm", TSCkHz: 1},
			want: [][]string{{"-M", "q35"}, {"-accel", "kvm", "-cpu", "host"}, {"-device", "virtio-blk-pci,drive=root"},
				{"-device", "virtio-net-pci,netdev=net0,mac=02:00:ac:10:00:02"}, {"-append", "root=/dev/vda rw console=ttyS0 reboot=t"},
				{"-device", "virtio-serial-pci,id=ctlbus"}}},
		{name: "bzImage preferred", mod: func(s *vmm.Spec) { s.Kernel.BzImage = "/k/bzImage" }, o: ArgOptions{Accel: "tcg"},
			want: [][]string{{"-kernel", "/k/bzImage"}}, absent: []string{"/k/vmlinux"}},
		{name: "read-only disk", mod: func(s *vmm.Spec) { s.Disks[0].ReadOnly = true }, o: ArgOptions{Accel: "tcg"},
			want: [][]string{{"-drive", "file=/d/root.qcow2,format=qcow2,if=none,id=root,cache=writeback,discard=unmap,file.auto-read-only=off,readonly=on"}}},
		{name: "commas escaped", mod: func(s *vmm.Spec) {
			s.Disks[1].Path = "/d/a,b.img"
			s.Disks[1].ReadOnly = true
			s.APISocket = "/x,y/api.sock"
		}, o: ArgOptions{Accel: "tcg"},
			// Only read-only disks are opened by path (DescriptorDisks).
			want: [][]string{{"-drive", "file=/d/a,,b.img,format=raw,if=none,id=work,cache=writeback,discard=unmap,file.auto-read-only=off,readonly=on"}, {"-qmp", "unix:/x,,y/api.sock,server=on,wait=off"}}},
		{name: "no net no console", mod: func(s *vmm.Spec) { s.Net = nil; s.Console = "" }, o: ArgOptions{Accel: "tcg"},
			absent: []string{"-netdev", "-serial", "chardev:serial0"}},
		{name: "console kept, tsc kept", mod: func(s *vmm.Spec) { s.Cmdline = "console=hvc0 tsc_early_khz=5" }, o: ArgOptions{Accel: "tcg", TSCkHz: 99},
			want: [][]string{{"-append", "console=hvc0 tsc_early_khz=5 reboot=t"}}},
		// A kernel's own reboot method (reboot=k, for Firecracker's
		// i8042) gives way: microvm has no keyboard controller.
		{name: "reboot by triple fault", mod: func(s *vmm.Spec) { s.Cmdline = "console=ttyS0 reboot=k panic=1" }, o: ArgOptions{Accel: "tcg"},
			want: [][]string{{"-append", "console=ttyS0 panic=1 reboot=t"}}},
		{name: "vsock only with vhost", mod: func(s *vmm.Spec) { s.CID = 7 }, o: ArgOptions{Accel: "tcg", VhostVsock: true},
			want: [][]string{{"-device", "vhost-vsock-device,guest-cid=7"}}},
		{name: "vsock skipped without vhost", mod: func(s *vmm.Spec) { s.CID = 7 }, o: ArgOptions{Accel: "tcg"},
			absent: []string{"vhost-vsock-device,guest-cid=7"}},
		{name: "confined", o: ArgOptions{Accel: "tcg", Sandbox: true, RunAs: "banger-vmm", Chroot: true},
			want: [][]string{{"-sandbox", "on,obsolete=deny,spawn=deny,resourcecontrol=deny"}, {"-runas", "banger-vmm"},
				{"-chroot", "/var/lib/banger/vms/vm1/qemu-root"}},
			absent: []string{"on,obsolete=deny,spawn=deny,resourcecontrol=deny,elevateprivileges=deny"}},
		{name: "sandbox as root denies set*id", o: ArgOptions{Accel: "tcg", Sandbox: true, Chroot: true},
			want:   [][]string{{"-sandbox", "on,obsolete=deny,spawn=deny,resourcecontrol=deny,elevateprivileges=deny"}},
			absent: []string{"-runas", "-chroot"}},
		{name: "unconfined", o: ArgOptions{Accel: "tcg"}, absent: []string{"-sandbox", "-runas", "-chroot"}},
		{name: "firmware only", mod: func(s *vmm.Spec) { s.Kernel = vmm.Kernel{}; s.Cmdline = "" }, o: ArgOptions{Accel: "tcg"},
			absent: []string{"-kernel", "-append", "-initrd"}},
		{name: "cmdline without kernel", mod: func(s *vmm.Spec) { s.Kernel = vmm.Kernel{} }, o: ArgOptions{Accel: "tcg"}, err: "no kernel"},
		{name: "bad machine", o: ArgOptions{Machine: "pc", Accel: "tcg"}, err: `unknown qemu machine "pc"`},
		{name: "bad accel", o: ArgOptions{Accel: "hvf"}, err: `unknown accelerator "hvf"`},
		{name: "bad format", mod: func(s *vmm.Spec) { s.Disks[0].Format = "vmdk" }, o: ArgOptions{Accel: "tcg"}, err: `format "vmdk"`},
		{name: "duplicate disk id", mod: func(s *vmm.Spec) { s.Disks[1].ID = "root" }, o: ArgOptions{Accel: "tcg"}, err: `disk 1 id "root"`},
		{name: "disk id with comma", mod: func(s *vmm.Spec) { s.Disks[1].ID = "a,b" }, o: ArgOptions{Accel: "tcg"}, err: `id "a,b"`},
		{name: "no api socket", mod: func(s *vmm.Spec) { s.APISocket = "" }, o: ArgOptions{Accel: "tcg"}, err: "no api socket"},
		{name: "no memory", mod: func(s *vmm.Spec) { s.MemoryMiB = 0 }, o: ArgOptions{Accel: "tcg"}, err: "memory must be positive"},
		{name: "net without mac", mod: func(s *vmm.Spec) { s.Net.MAC = "" }, o: ArgOptions{Accel: "tcg"}, err: "tap and a MAC"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := baseSpec()
			if tc.mod != nil {
				tc.mod(&s)
			}
			args, err := BuildArgs(s, tc.o)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want containing %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range tc.want {
				if !has(args, w...) {
					t.Errorf("args lack %q:\n%q", w, args)
				}
			}
			for _, a := range tc.absent {
				if has(args, a) {
					t.Errorf("args carry %q:\n%q", a, args)
				}
			}
		})
	}
}

func TestParsers(t *testing.T) {
	klog := "<6>[    0.000295] tsc: Detected 2096.008 MHz processor\n<6>[    1.2] tsc: Refined TSC clocksource calibration: 2095.990 MHz\n"
	if got := ParseKlogTSC(klog); got != 2095990 {
		t.Errorf("refined: %d", got)
	}
	if got := ParseKlogTSC("[0.1] tsc: Detected 2096.008 MHz processor"); got != 2096008 {
		t.Errorf("detected: %d", got)
	}
	if got := ParseKlogTSC("nothing"); got != 0 {
		t.Errorf("none: %d", got)
	}
	for in, want := range map[string]int{
		"processor\t: 0\ncpu MHz\t\t: 2096.008\n": 2096008,
		"cpu MHz\t\t: 3000.5\n":                   3000500,
		"cpu MHz : 2400\n":                        2400000,
		"bogomips: 1\n":                           0,
	} {
		if got := ParseCPUInfoMHz(in); got != want {
			t.Errorf("ParseCPUInfoMHz(%q) = %d, want %d", in, got, want)
		}
	}
	if got := ParseVersion("QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\nCopyright"); got != "7.2.22" {
		t.Errorf("ParseVersion = %q", got)
	}
}
