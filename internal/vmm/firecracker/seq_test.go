package firecracker

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/banger/banger/internal/vmm"
)

func baseSpec(dir string) vmm.Spec {
	return vmm.Spec{
		ID: "vm_1", Name: "dev", Dir: dir, CPUs: 2, MemoryMiB: 256,
		Kernel:    vmm.Kernel{Vmlinux: dir + "/vmlinux", Initrd: dir + "/initrd"},
		Cmdline:   "root=/dev/vda rw panic=1",
		Disks:     []vmm.Disk{{ID: "root", Path: dir + "/root.img", Format: "raw"}, {ID: "work", Path: dir + "/work.img", ReadOnly: true}},
		Net:       &vmm.NetIface{Tap: "tap0", MAC: "02:00:ac:10:00:02"},
		CID:       5,
		APISocket: dir + "/api.sock", VsockPath: dir + "/vsock.sock",
		LogPath: dir + "/fc.log", Console: dir + "/console.log", Metrics: dir + "/metrics.json",
	}
}

func TestBootSequence(t *testing.T) {
	reqs, err := BootSequence(baseSpec("/v"))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range reqs {
		b, _ := json.Marshal(r.Body)
		got = append(got, r.Method+" "+r.Path+" "+string(b))
	}
	want := []string{
		`PUT /logger {"log_path":"/v/fc.log","level":"Info","show_level":true,"show_log_origin":false}`,
		`PUT /metrics {"metrics_path":"/v/metrics.json"}`,
		`PUT /machine-config {"vcpu_count":2,"mem_size_mib":256,"smt":false}`,
		`PUT /boot-source {"kernel_image_path":"/v/vmlinux","initrd_path":"/v/initrd","boot_args":"root=/dev/vda rw panic=1 console=ttyS0 reboot=k"}`,
		`PUT /drives/root {"drive_id":"root","path_on_host":"root.img","is_root_device":true,"is_read_only":false}`,
		`PUT /drives/work {"drive_id":"work","path_on_host":"work.img","is_root_device":false,"is_read_only":true}`,
		`PUT /network-interfaces/eth0 {"iface_id":"eth0","host_dev_name":"tap0","guest_mac":"02:00:ac:10:00:02"}`,
		`PUT /vsock {"guest_cid":5,"uds_path":"vsock.sock"}`,
		`PUT /actions {"action_type":"InstanceStart"}`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("sequence differs\n got:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestBootSequenceRefuses(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  func(*vmm.Spec)
		err  string
	}{
		{"no vmlinux", func(s *vmm.Spec) { s.Kernel = vmm.Kernel{BzImage: "/bz"} }, "uncompressed ELF vmlinux"},
		{"qcow2", func(s *vmm.Spec) { s.Disks[0].Format = "qcow2" }, "raw disks only"},
		{"dup drive", func(s *vmm.Spec) { s.Disks[1].ID = "root" }, `disk 1 id "root"`},
		{"slash in drive id", func(s *vmm.Spec) { s.Disks[1].ID = "a/b" }, `id "a/b"`},
		{"reserved cid", func(s *vmm.Spec) { s.CID = 2 }, "CID 2 is reserved"},
		{"cid without socket", func(s *vmm.Spec) { s.VsockPath = "" }, "without a vsock socket"},
		{"no memory", func(s *vmm.Spec) { s.MemoryMiB = 0 }, "memory must be positive"},
		{"too many cpus", func(s *vmm.Spec) { s.CPUs = 64 }, "at most 32"},
		{"no tap", func(s *vmm.Spec) { s.Net.Tap = "" }, "no tap"},
	} {
		s := baseSpec("/v")
		tc.mod(&s)
		if _, err := BootSequence(s); err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%s: err = %v, want containing %q", tc.name, err, tc.err)
		}
	}
	s := baseSpec("/v")
	s.Net, s.CID, s.Metrics, s.LogPath = nil, 0, "", ""
	reqs, err := BootSequence(s)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range reqs {
		if r.Path == "/vsock" || r.Path == "/network-interfaces/eth0" || r.Path == "/metrics" || r.Path == "/logger" {
			t.Errorf("unexpected request %s", r.Path)
		}
	}
}

func TestHelpers(t *testing.T) {
	for in, want := range map[string]string{
		"root=/dev/vda":                     "root=/dev/vda console=ttyS0 reboot=k",
		"console=hvc0 reboot=t":             "console=hvc0 reboot=t",
		"  a   b ":                          "a b console=ttyS0 reboot=k",
		"consoleblank=0":                    "consoleblank=0 console=ttyS0 reboot=k",
		"console=ttyS0,115200 reboot=k x=1": "console=ttyS0,115200 reboot=k x=1",
	} {
		if got := BootArgs(in); got != want {
			t.Errorf("BootArgs(%q) = %q, want %q", in, got, want)
		}
	}
	for in, want := range map[string]string{
		"vm_1":                  "vm-1",
		"abc-DEF-123":           "abc-DEF-123",
		"":                      "anonymous-instance",
		strings.Repeat("a", 70): strings.Repeat("a", 64),
	} {
		if got := InstanceID(in); got != want {
			t.Errorf("InstanceID(%q) = %q, want %q", in, got, want)
		}
	}
	if got := ParseVersion("Firecracker v1.14.2\n\n"); got != "1.14.2" {
		t.Errorf("ParseVersion = %q", got)
	}
	if got := Args(vmm.Spec{APISocket: "/a.sock", ID: "x"}, true); strings.Join(got, " ") != "--api-sock /a.sock --id x --enable-pci" {
		t.Errorf("Args = %q", got)
	}
	if got := Args(vmm.Spec{APISocket: "/a.sock", ID: "x"}, false); strings.Join(got, " ") != "--api-sock /a.sock --id x" {
		t.Errorf("Args = %q", got)
	}
}
