package artifacts

import (
	"bufio"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/banger/banger/internal/image"
	"github.com/banger/banger/internal/kernel"
	"github.com/banger/banger/internal/tail"
	"github.com/banger/banger/internal/testenv"
)

// Addresses of the test network inside each test namespace (never the host's).
const (
	GuestIP   = "172.16.0.2"
	GatewayIP = "172.16.0.1"
	guestMAC  = "02:ba:00:00:00:02"
)

// QEMUOptions describe a guest booted by BootQEMU.
type QEMUOptions struct {
	Image         image.Result
	Kernel        kernel.Artifacts
	AuthorizedKey string // the authorized_keys line put on the command line (banger.key)
	Hostname      string // "guest" when empty
	CPUs          int    // 2 when 0
	MemoryMiB     int    // 512 when 0
	WorkDiskBytes int64  // 256 MiB when 0
}

// QEMU is a guest booted by BootQEMU.
type QEMU struct {
	IP      string // guest address inside the namespace
	Ns      string // the namespace
	Console string // serial console log
	QMP     string // QMP socket
	Started time.Time
	cmd     *exec.Cmd
	exited  chan struct{}
}

// BootQEMU boots opts' image and kernel under plain QEMU/TCG (-M microvm)
// inside namespace ns: a qcow2 overlay over the image (the image is never
// written), a fresh ext4 work disk, a bridge with the gateway address and a
// tap. The guest is killed and its files removed when the test ends.
func BootQEMU(t testing.TB, ns string, opts QEMUOptions) *QEMU {
	t.Helper()
	testenv.RequireBinary(t, "qemu-system-x86_64")
	testenv.RequireBinary(t, "qemu-img")
	if opts.Hostname == "" {
		opts.Hostname = "guest"
	}
	if opts.CPUs == 0 {
		opts.CPUs = 2
	}
	if opts.MemoryMiB == 0 {
		opts.MemoryMiB = 512
	}
	if opts.WorkDiskBytes == 0 {
		opts.WorkDiskBytes = 256 << 20
	}
	dir := t.TempDir()
	overlay := filepath.Join(dir, "root.qcow2")
	work := filepath.Join(dir, "work.ext4")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", opts.Image.Path, "-F", "raw", overlay)
	f, err := os.Create(work)
	if err != nil {
		t.Fatal(err)
	}
	_ = f.Truncate(opts.WorkDiskBytes)
	f.Close()
	run(t, "mkfs.ext4", "-q", "-F", "-L", "banger-work", work)

	// The network, all inside ns.
	run(t, "ip", "-n", ns, "link", "add", "br0", "type", "bridge")
	run(t, "ip", "-n", ns, "addr", "add", GatewayIP+"/24", "dev", "br0")
	run(t, "ip", "-n", ns, "link", "set", "br0", "up")
	run(t, "ip", "-n", ns, "tuntap", "add", "tap0", "mode", "tap")
	run(t, "ip", "-n", ns, "link", "set", "tap0", "master", "br0", "up")
	run(t, "ip", "-n", ns, "neigh", "replace", GuestIP, "lladdr", guestMAC, "dev", "br0", "nud", "permanent")

	khz, err := testenv.HostTSCkHz()
	if err != nil {
		t.Fatal(err)
	}
	cmdline := strings.Join([]string{
		opts.Kernel.Cmdline, "root=/dev/vda rw",
		"banger.ip=" + GuestIP + "/24", "banger.gw=" + GatewayIP, "banger.dns=" + GatewayIP,
		"banger.hostname=" + opts.Hostname,
		"banger.key=" + base64.StdEncoding.EncodeToString([]byte(strings.TrimSpace(opts.AuthorizedKey))),
		"banger.work=/dev/vdb", "tsc_early_khz=" + strconv.Itoa(khz),
	}, " ")
	vm := &QEMU{IP: GuestIP, Ns: ns, Console: filepath.Join(dir, "console.log"), QMP: filepath.Join(dir, "qmp.sock"), exited: make(chan struct{})}
	args := []string{"netns", "exec", ns, "qemu-system-x86_64",
		"-M", "microvm,acpi=on", "-accel", "tcg", "-cpu", "max",
		"-smp", strconv.Itoa(opts.CPUs), "-m", strconv.Itoa(opts.MemoryMiB),
		"-no-reboot", "-nodefaults", "-no-user-config", "-display", "none",
		"-serial", "file:" + vm.Console,
		"-qmp", "unix:" + vm.QMP + ",server=on,wait=off",
		"-kernel", opts.Kernel.Vmlinux, "-initrd", opts.Kernel.Initrd, "-append", cmdline,
		"-drive", "id=root,file=" + overlay + ",format=qcow2,if=none",
		"-device", "virtio-blk-device,drive=root",
		"-drive", "id=work,file=" + work + ",format=raw,if=none",
		"-device", "virtio-blk-device,drive=work",
		"-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no",
		"-device", "virtio-net-device,netdev=n0,mac=" + guestMAC,
	}
	vm.cmd = exec.Command("ip", args...)
	logf, err := os.Create(filepath.Join(dir, "qemu.log"))
	if err != nil {
		t.Fatal(err)
	}
	vm.cmd.Stdout, vm.cmd.Stderr = logf, logf
	vm.Started = time.Now()
	if err := vm.cmd.Start(); err != nil {
		t.Fatalf("start qemu: %v", err)
	}
	go func() {
		_ = vm.cmd.Wait()
		logf.Close()
		close(vm.exited)
	}()
	t.Cleanup(func() {
		if !vm.Exited() {
			_ = vm.cmd.Process.Kill()
			<-vm.exited
		}
		if t.Failed() {
			console, _ := tail.File(vm.Console, 256<<10, 60)
			q, _ := os.ReadFile(filepath.Join(dir, "qemu.log"))
			t.Logf("guest console:\n%s\nqemu log:\n%s", console, q)
		}
	})
	return vm
}

// Exited reports whether the QEMU process has ended.
func (q *QEMU) Exited() bool {
	select {
	case <-q.exited:
		return true
	default:
		return false
	}
}

// WaitExit waits up to d for QEMU to end and reports whether it did.
func (q *QEMU) WaitExit(d time.Duration) bool {
	select {
	case <-q.exited:
		return true
	case <-time.After(d):
		return false
	}
}

// Powerdown presses the ACPI power button over QMP (what `vm stop` does).
func (q *QEMU) Powerdown() error {
	c, err := net.DialTimeout("unix", q.QMP, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(c)
	if _, err := r.ReadString('\n'); err != nil { // greeting
		return err
	}
	for _, cmd := range []string{"qmp_capabilities", "system_powerdown"} {
		if err := json.NewEncoder(c).Encode(map[string]string{"execute": cmd}); err != nil {
			return err
		}
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return err
			}
			var msg map[string]any
			_ = json.Unmarshal([]byte(line), &msg)
			if e, ok := msg["error"]; ok {
				return fmt.Errorf("qmp %s: %v", cmd, e)
			}
			if _, ok := msg["return"]; ok {
				break
			}
		}
	}
	return nil
}

// DialSSH connects to the guest's sshd from inside the namespace as root
// with signer, pinning hostKey, retrying until timeout.
func (q *QEMU) DialSSH(signer ssh.Signer, hostKey string, timeout time.Duration) (*ssh.Client, error) {
	pinned, _, _, _, err := ssh.ParseAuthorizedKey([]byte(hostKey))
	if err != nil {
		return nil, fmt.Errorf("host key %q: %w", hostKey, err)
	}
	cfg := &ssh.ClientConfig{
		User:            "root",
		Auth:            []ssh.AuthMethod{ssh.PublicKeys(signer)},
		HostKeyCallback: ssh.FixedHostKey(pinned),
		Timeout:         3 * time.Second,
	}
	deadline := time.Now().Add(timeout)
	var lastErr error
	for time.Now().Before(deadline) {
		if q.Exited() {
			return nil, fmt.Errorf("qemu exited before SSH answered (last error: %v)", lastErr)
		}
		conn, err := testenv.DialInNetns(q.Ns, "tcp", net.JoinHostPort(q.IP, "22"), 500*time.Millisecond) // short: a fresh SYN beats TCP's retransmit backoff
		if err == nil {
			c, chans, reqs, err := ssh.NewClientConn(conn, q.IP, cfg)
			if err == nil {
				return ssh.NewClient(c, chans, reqs), nil
			}
			conn.Close()
			lastErr = err
		} else {
			lastErr = err
		}
		time.Sleep(200 * time.Millisecond)
	}
	return nil, fmt.Errorf("no SSH to %s within %s: %v", q.IP, timeout, lastErr)
}

func run(t testing.TB, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
}
