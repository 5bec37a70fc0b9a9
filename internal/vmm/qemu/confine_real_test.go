package qemu

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/crypto/ssh"

	"github.com/banger/banger/internal/testenv"
	"github.com/banger/banger/internal/testenv/artifacts"
	"github.com/banger/banger/internal/vmm"
	"github.com/banger/banger/internal/vmm/vmmuser"
)

// TestRealConfinedBoot boots the default image and kernel through the
// driver, confined, inside a test namespace: QEMU must have dropped to the
// VMM user in its empty chroot under seccomp, the guest must still reach
// SSH over the tap and read and write its disks (all opened before the
// drop), the console must be opened for append and capped by vmm.CapLog
// while the guest boots, and an ACPI power-off must end QEMU and leave
// nothing behind after Cleanup.
func TestRealConfinedBoot(t *testing.T) {
	testenv.RequireE2E(t)
	testenv.RequireRoot(t)
	needQEMU(t)
	testenv.RequireBinary(t, "qemu-img")
	img, kern := artifacts.Artifacts(t)
	u, err := vmmuser.Ensure(context.Background(), vmmuser.Default)
	if err != nil {
		t.Fatal(err)
	}
	ns := testenv.Netns(t)
	dir := t.TempDir()
	// The VM directory is the daemon's: root's, closed to others.
	if err := os.Chmod(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	overlay := filepath.Join(dir, "root.qcow2")
	work := filepath.Join(dir, "work.ext4")
	runCmd(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", img.Path, "-F", "raw", overlay)
	runCmd(t, "truncate", "-s", "256M", work)
	runCmd(t, "mkfs.ext4", "-q", "-F", "-L", "banger-work", work)
	runCmd(t, "ip", "-n", ns, "link", "add", "br0", "type", "bridge")
	runCmd(t, "ip", "-n", ns, "addr", "add", artifacts.GatewayIP+"/24", "dev", "br0")
	runCmd(t, "ip", "-n", ns, "link", "set", "br0", "up")
	runCmd(t, "ip", "-n", ns, "tuntap", "add", "tap0", "mode", "tap")
	runCmd(t, "ip", "-n", ns, "link", "set", "tap0", "master", "br0", "up")

	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	signer, _ := ssh.NewSignerFromKey(priv)
	authorized := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(signer.PublicKey())))
	spec := vmm.Spec{
		ID: "confined", Name: "confined", Dir: dir, CPUs: 2, MemoryMiB: 512,
		Kernel: vmm.Kernel{Vmlinux: kern.Vmlinux, Initrd: kern.Initrd},
		Cmdline: strings.Join([]string{kern.Cmdline, "root=/dev/vda rw",
			"banger.ip=" + artifacts.GuestIP + "/24", "banger.gw=" + artifacts.GatewayIP, "banger.dns=" + artifacts.GatewayIP,
			"banger.hostname=confined", "banger.key=" + base64.StdEncoding.EncodeToString([]byte(authorized)),
			"banger.work=/dev/vdb"}, " "),
		Disks: []vmm.Disk{
			{ID: "root", Path: overlay, Format: vmm.FormatQcow2},
			{ID: "work", Path: work, Format: vmm.FormatRaw},
		},
		Net:       &vmm.NetIface{Tap: "tap0", MAC: "02:ba:00:00:00:02"},
		APISocket: filepath.Join(dir, "api.sock"),
		LogPath:   filepath.Join(dir, "vmm.log"),
		Console:   filepath.Join(dir, "console.log"),
	}
	d := New(Options{Accel: "tcg"})
	what, ok := d.Confinement(context.Background())
	if !ok {
		t.Fatalf("not confined: %s", what)
	}
	t.Logf("confinement: %s", what)
	killAfter(t, d, spec)

	// Start QEMU from a thread inside the namespace so that it opens tap0
	// there; QEMU inherits the namespace of the thread that forks it.
	h, err := startInNetns(ns, func() (vmm.Handle, error) { return d.Start(context.Background(), spec) })
	if err != nil {
		t.Fatal(err)
	}
	started := time.Now()

	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", h.PID))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		fmt.Sprintf("Uid:\t%d\t%d\t%d\t%d", u.UID, u.UID, u.UID, u.UID),
		fmt.Sprintf("Gid:\t%d\t%d\t%d\t%d", u.GID, u.GID, u.GID, u.GID),
		"Seccomp:\t2", "NoNewPrivs:\t1", "CapEff:\t0000000000000000",
	} {
		if !strings.Contains(string(status), want+"\n") {
			t.Errorf("/proc/%d/status lacks %q:\n%s", h.PID, want, status)
		}
	}
	for _, l := range strings.Split(string(status), "\n") {
		if strings.HasPrefix(l, "Uid:") || strings.HasPrefix(l, "Gid:") || strings.HasPrefix(l, "Seccomp:") ||
			strings.HasPrefix(l, "NoNewPrivs:") || strings.HasPrefix(l, "CapEff:") {
			t.Logf("status %s", l)
		}
	}
	if root, err := os.Readlink(fmt.Sprintf("/proc/%d/root", h.PID)); err != nil || root != ChrootDir(dir) {
		t.Errorf("qemu root %q (%v), want %s", root, err, ChrootDir(dir))
	}
	if flags := fdFlags(t, h.PID, spec.Console); flags&os.O_APPEND == 0 {
		t.Errorf("console opened without O_APPEND (flags %o)", flags)
	}

	// Cap the console hard while the guest boots: it must stay near the
	// cap, the kept part must rotate to console.log.1, and QEMU must
	// write on at the new start (no hole of NULs where the old bytes were).
	const capBytes = 16 << 10
	capDone := make(chan int64)
	stop := make(chan struct{})
	go func() {
		var biggest int64
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				capDone <- biggest
				return
			case <-tick.C:
			}
			if fi, err := os.Stat(spec.Console); err == nil && fi.Size() > biggest {
				biggest = fi.Size()
			}
			if err := vmm.CapLog(spec.Console, capBytes); err != nil {
				t.Errorf("CapLog: %v", err)
			}
		}
	}()

	q := &artifacts.QEMU{IP: artifacts.GuestIP, Ns: ns}
	client, err := q.DialSSH(signer, img.HostKey, 3*time.Minute)
	close(stop)
	biggest := <-capDone
	if err != nil {
		t.Fatalf("%v; vmm log: %s", err, vmm.LogTail(spec.LogPath))
	}
	t.Logf("confined boot to SSH in %s", time.Since(started).Round(100*time.Millisecond))
	out, err := testenv.Run(client, "echo written > /root/f && sync && cat /root/f && findmnt -n -o SOURCE /")
	client.Close()
	if err != nil || !strings.Contains(out, "written") || !strings.Contains(out, "/dev/vda") {
		t.Fatalf("guest disks: %q %v", out, err)
	}

	t.Logf("console peaked at %d bytes under a cap of %d polled every 20ms", biggest, capBytes)
	if biggest > capBytes+256<<10 {
		t.Errorf("console reached %d bytes under a cap of %d", biggest, capBytes)
	}
	kept, err := os.ReadFile(spec.Console + ".1")
	if err != nil || len(kept) == 0 || len(kept) > capBytes/2 {
		t.Errorf("console.log.1: %d bytes, %v; want 1..%d", len(kept), err, capBytes/2)
	}
	con, _ := os.ReadFile(spec.Console)
	if i := bytes.IndexByte(con, 0); i >= 0 {
		t.Errorf("console has a NUL at %d of %d: QEMU wrote at its old offset", i, len(con))
	}

	if err := d.Shutdown(context.Background(), h); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if !vmm.WaitExit(wctx, d, h, 100*time.Millisecond) {
		t.Fatal("qemu still runs 90s after the power button")
	}
	if err := d.Kill(context.Background(), h); err != nil {
		t.Fatal(err)
	}
	if err := d.Cleanup(spec); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{spec.APISocket, PIDFile(dir), ChrootDir(dir)} {
		if _, err := os.Lstat(p); err == nil {
			t.Errorf("%s left after Kill and Cleanup", p)
		}
	}
}

// startInNetns runs start on a thread inside namespace ns.
func startInNetns(ns string, start func() (vmm.Handle, error)) (vmm.Handle, error) {
	type result struct {
		h   vmm.Handle
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		origin, err := netns.Get()
		if err != nil {
			ch <- result{err: err}
			return
		}
		defer origin.Close()
		target, err := netns.GetFromName(ns)
		if err != nil {
			ch <- result{err: err}
			return
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			ch <- result{err: err}
			return
		}
		// Back home before the thread serves anything else; if that
		// fails the thread stays locked and dies with the goroutine.
		defer func() {
			if netns.Set(origin) == nil {
				runtime.UnlockOSThread()
			}
		}()
		h, err := start()
		ch <- result{h, err}
	}()
	r := <-ch
	return r.h, r.err
}

// fdFlags returns the open flags of pid's descriptor on path.
func fdFlags(t *testing.T, pid int, path string) int {
	t.Helper()
	fds := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(fds)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if target, _ := os.Readlink(filepath.Join(fds, e.Name())); target != path {
			continue
		}
		info, err := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%s", pid, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range strings.Split(string(info), "\n") {
			if v, ok := strings.CutPrefix(l, "flags:"); ok {
				f, err := strconv.ParseInt(strings.TrimSpace(v), 8, 64)
				if err != nil {
					t.Fatal(err)
				}
				return int(f)
			}
		}
	}
	t.Fatalf("pid %d has no descriptor on %s", pid, path)
	return 0
}

func runCmd(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
}
