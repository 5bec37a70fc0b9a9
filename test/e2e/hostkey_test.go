package e2e

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/banger/banger/internal/model"
)

// servedHostKey is the host key name's guest serves, read inside the guest
// ("ssh-ed25519 AAAA…", without comment).
func servedHostKey(t *testing.T, h *Harness, name string) string {
	t.Helper()
	f := strings.Fields(h.MustRun("vm", "exec", name, "--", "cat", "/etc/ssh/ssh_host_ed25519_key.pub"))
	if len(f) < 2 {
		t.Fatalf("vm %s: no host key served: %q", name, f)
	}
	return f[0] + " " + f[1]
}

// keyTail is the end of a key's base64, which tells keys apart in a log
// (the start is the same for every ed25519 key).
func keyTail(k string) string {
	if len(k) < 16 {
		return k
	}
	return "…" + k[len(k)-16:]
}

// checkHostKey: the guest serves the key its record pins, installed 0600
// root, and the system ssh reaches it with the pinned known_hosts.
func checkHostKey(t *testing.T, h *Harness, vm model.VM) {
	t.Helper()
	if served := servedHostKey(t, h, vm.Name); served != vm.HostKey {
		t.Fatalf("vm %s serves %q, its record pins %q", vm.Name, served, vm.HostKey)
	}
	modes := strings.TrimSpace(h.MustRun("vm", "exec", vm.Name, "--", "stat", "-c", "%a %U %n",
		"/etc/ssh/ssh_host_ed25519_key", "/root/.banger/ssh_host_ed25519_key", "/root/.banger"))
	want := "600 root /etc/ssh/ssh_host_ed25519_key\n600 root /root/.banger/ssh_host_ed25519_key\n700 root /root/.banger"
	if modes != want {
		t.Fatalf("vm %s host key files:\n%s\nwant\n%s", vm.Name, modes, want)
	}
	h.MustRun("vm", "ssh", vm.Name, "--", "true")
	t.Logf("vm %s serves its recorded key %s; vm ssh -- true: ok", vm.Name, keyTail(vm.HostKey))
}

// TestVMHostKeys: each VM serves a host key of its own, the one its record
// pins (daemon and `vm ssh` alike), two VMs of one image differ, and a VM
// keeps its key across stop and start. The private key never appears on a
// host command line.
func TestVMHostKeys(t *testing.T) {
	h := NewHarness(t)
	a := h.StartVM("ka")
	b := h.StartVM("kb")
	var im model.Image
	h.JSON(&im, "image", "show", a.ImageID)
	if a.ImageID != b.ImageID {
		t.Fatalf("vms of different images: %s %s", a.ImageID, b.ImageID)
	}
	if a.HostKey == "" || b.HostKey == "" || a.HostKey == b.HostKey || a.HostKey == im.HostKey || b.HostKey == im.HostKey {
		t.Fatalf("host keys: ka %q, kb %q, image %q; want two of their own", a.HostKey, b.HostKey, im.HostKey)
	}
	for _, vm := range []model.VM{a, b} {
		checkHostKey(t, h, vm)
		if kh, err := os.ReadFile(filepath.Join(vm.Dir, "known_hosts")); err != nil || !strings.Contains(string(kh), strings.Fields(vm.HostKey)[1]) {
			t.Fatalf("known_hosts of %s = %q, %v; want its own key", vm.Name, kh, err)
		}
		ents, _ := os.ReadDir(vm.Dir)
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), ".work-seed") {
				t.Fatalf("work disk seed left in %s", vm.Dir)
			}
		}
	}
	t.Logf("ka %s and kb %s differ from each other and from the image's %s", keyTail(a.HostKey), keyTail(b.HostKey), keyTail(im.HostKey))

	// No process on the host carries the private key in its argv.
	priv := h.MustRun("vm", "exec", "ka", "--", "cat", "/etc/ssh/ssh_host_ed25519_key")
	var body []string
	for _, l := range strings.Split(priv, "\n") {
		if len(l) >= 40 && !strings.HasPrefix(l, "-----") {
			body = append(body, l)
		}
	}
	if len(body) == 0 {
		t.Fatalf("ka's private host key reads %q", priv)
	}
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		if _, err := strconv.Atoi(p.Name()); err != nil {
			continue
		}
		cmd, err := os.ReadFile(filepath.Join("/proc", p.Name(), "cmdline"))
		if err != nil {
			continue
		}
		for _, l := range body {
			if strings.Contains(string(cmd), l) {
				t.Fatalf("process %s has the private host key on its command line: %.200s", p.Name(), cmd)
			}
		}
	}

	h.MustRun("vm", "stop", "ka")
	h.MustRun("vm", "start", "ka")
	again := h.VM("ka")
	if again.HostKey != a.HostKey {
		t.Fatalf("host key changed across stop/start: %q → %q", a.HostKey, again.HostKey)
	}
	checkHostKey(t, h, again)
	t.Logf("ka keeps its key across stop/start")
}

// TestVMHostKeySystemdImage: an image whose PID 1 is systemd installs the
// VM's key through the banger-init setup unit before ssh.service.
func TestVMHostKeySystemdImage(t *testing.T) {
	h := NewHarness(t)
	h.MustRun("image", "build", "--name", "sd", "--init", "systemd")
	vm := h.StartVM("ksd", "--image", "sd")
	var im model.Image
	h.JSON(&im, "image", "show", "sd")
	if vm.HostKey == "" || vm.HostKey == im.HostKey {
		t.Fatalf("host key %q (image's %q)", vm.HostKey, im.HostKey)
	}
	checkHostKey(t, h, vm)
}
