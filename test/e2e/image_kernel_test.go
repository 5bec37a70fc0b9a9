package e2e

import (
	"crypto/ed25519"
	"crypto/rand"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/banger/banger/internal/image"
	"github.com/banger/banger/internal/testenv"
	"github.com/banger/banger/internal/testenv/artifacts"
)

func testKey(t *testing.T) (ssh.Signer, string) {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return signer, string(ssh.MarshalAuthorizedKey(signer.PublicKey()))
}

func requireBoot(t *testing.T) {
	testenv.RequireE2E(t)
	testenv.RequireRoot(t)
	testenv.RequireBinary(t, "qemu-system-x86_64")
	testenv.RequireBinary(t, "mmdebstrap")
}

// bootAndCheck boots img with the default kernel, reaches SSH with the
// image's pinned host key, checks the guest's configuration, then stops it
// with an ACPI power-button press and checks QEMU ends.
func bootAndCheck(t *testing.T, img image.Result) {
	kern := artifacts.Kernel(t)
	ns := testenv.Netns(t)
	signer, authorized := testKey(t)
	vm := artifacts.BootQEMU(t, ns, artifacts.QEMUOptions{Image: img, Kernel: kern, AuthorizedKey: authorized, Hostname: "e2e-" + img.Init})
	client, err := vm.DialSSH(signer, img.HostKey, 3*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	t.Logf("boot to SSH (%s init): %s", img.Init, time.Since(vm.Started).Round(100*time.Millisecond))

	checks := []struct {
		cmd, want string
	}{
		{"uname -a", kern.Version},
		{"findmnt -n -o SOURCE,FSTYPE /root", "/dev/vdb ext4"},
		{"findmnt -n -o SOURCE /", "/dev/vda"},
		{"hostname", "e2e-" + img.Init},
		{"cat /etc/resolv.conf", "nameserver " + artifacts.GatewayIP},
		{"ip -4 -o addr show", artifacts.GuestIP + "/24"},
		{"ip route show default", "default via " + artifacts.GatewayIP},
		{"python3 -c 'print(6*7)'", "42"},
		{"touch /root/persist && git --version", "git version"},
	}
	for _, c := range checks {
		out, err := testenv.Run(client, c.cmd)
		if err != nil || !strings.Contains(out, c.want) {
			t.Errorf("%s: %q (err %v), want it to contain %q", c.cmd, out, err, c.want)
		}
	}

	stop := time.Now()
	if err := vm.Powerdown(); err != nil {
		t.Fatalf("system_powerdown: %v", err)
	}
	if !vm.WaitExit(30 * time.Second) {
		t.Fatal("QEMU still running 30s after the power button was pressed")
	}
	t.Logf("power button to QEMU exit (%s init): %s", img.Init, time.Since(stop).Round(100*time.Millisecond))
}

// TestImageKernelFastInit is the contract between image, kernel, banger-init
// and the VMM drivers, proven with plain QEMU before the daemon exists.
func TestImageKernelFastInit(t *testing.T) {
	requireBoot(t)
	img := artifacts.Image(t, image.InitFast)
	bootAndCheck(t, img)

	// The same recipe again is an instant cache hit.
	start := time.Now()
	again := artifacts.Image(t, image.InitFast)
	took := time.Since(start)
	if !again.Cached || again.Checksum != img.Checksum || again.HostKey != img.HostKey {
		t.Errorf("second build not a cache hit: %+v", again)
	}
	if took > 10*time.Second { // includes go build of banger-init
		t.Errorf("cached build took %s", took)
	}
	t.Logf("cached build (with banger-init compile): %s", took.Round(time.Millisecond))
}

// TestImageKernelSystemdInit boots an image whose PID 1 is systemd, with
// banger-init setup as a unit.
func TestImageKernelSystemdInit(t *testing.T) {
	requireBoot(t)
	bootAndCheck(t, artifacts.Image(t, image.InitSystemd))
}
