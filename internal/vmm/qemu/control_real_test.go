package qemu

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/banger/banger/internal/guestctl"
	"github.com/banger/banger/internal/testenv"
	"github.com/banger/banger/internal/testenv/artifacts"
	"github.com/banger/banger/internal/vmm"
)

// ctlCall dials the control channel and makes one call.
func ctlCall(t *testing.T, d *Driver, dir string, timeout time.Duration, req guestctl.Request) guestctl.Reply {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	conn, err := d.DialControl(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	c := guestctl.NewClient(conn)
	defer c.Close()
	rep, err := c.Call(ctx, req)
	if err != nil {
		t.Fatalf("%s: %v", req.Op, err)
	}
	return rep
}

// TestRealControlChannel boots the default image and kernel through the
// driver, confined as this host allows and with no network interface at
// all, and speaks to banger-init over the virtio-serial control channel:
// hello answers once the guest is up, identity changes the hostname and
// machine id and reports them, clock sets the guest's wall clock, the
// channel survives Save+Resume and a Restore into a new QEMU (the same
// guest, by its boot id, keeps its new name), a connection dropped with
// a request unanswered does not confuse the next caller, and poweroff
// ends QEMU; nothing is left after Cleanup.
func TestRealControlChannel(t *testing.T) {
	testenv.RequireE2E(t)
	testenv.RequireRoot(t)
	needQEMU(t)
	testenv.RequireBinary(t, "qemu-img")
	img, kern := artifacts.Artifacts(t)
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	overlay := filepath.Join(dir, "root.qcow2")
	runCmd(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", img.Path, "-F", "raw", overlay)
	spec := vmm.Spec{
		ID: "ctl", Name: "ctl", Dir: dir, CPUs: 1, MemoryMiB: 512,
		Kernel: vmm.Kernel{Vmlinux: kern.Vmlinux, Initrd: kern.Initrd},
		Cmdline: strings.Join([]string{kern.Cmdline, "root=/dev/vda rw",
			"banger.ip=" + artifacts.GuestIP + "/24", "banger.gw=" + artifacts.GatewayIP,
			"banger.hostname=ctl"}, " "),
		Disks:     []vmm.Disk{{ID: "root", Path: overlay, Format: vmm.FormatQcow2}},
		APISocket: filepath.Join(dir, "api.sock"),
		LogPath:   filepath.Join(dir, "vmm.log"),
		Console:   filepath.Join(dir, "console.log"),
	}
	d := New(Options{Accel: "tcg"})
	what, _ := d.Confinement(context.Background())
	t.Logf("confinement: %s", what)
	killAfter(t, d, spec)

	start := time.Now()
	h, err := d.Start(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	// Asked at once: the request waits in the socket until banger-init
	// opens its port.
	hello := ctlCall(t, d, dir, 3*time.Minute, guestctl.Request{Op: guestctl.OpHello})
	t.Logf("hello answered %s after Start: %+v", time.Since(start).Round(10*time.Millisecond), hello)
	if hello.Version != guestctl.Version || len(hello.BootID) != 36 {
		t.Fatalf("hello = %+v; console: %s", hello, vmm.LogTail(spec.Console))
	}
	// Every module of the catalog's initrd loaded (the vsock transport
	// too, which binds to no device here).
	if con, _ := os.ReadFile(spec.Console); strings.Contains(string(con), "banger initrd: insmod") {
		t.Errorf("a module of the initrd did not load: %s", vmm.LogTail(spec.Console))
	}

	// A caller that goes away with its request unanswered: its answer
	// must not be taken by the next one.
	func() {
		conn, err := d.DialControl(context.Background(), dir)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = conn.Write([]byte(`{"id":"gone","op":"hello"}` + "\n" + `{"id":"half","op":"hel`))
		conn.Close()
	}()

	mid := guestctl.NewMachineID()
	rep := ctlCall(t, d, dir, time.Minute, guestctl.Request{Op: guestctl.OpIdentity, Hostname: "ctl-renamed", MachineID: mid, Seed: []byte("fork seed")})
	id := rep.Identity
	if id == nil || id.Hostname != "ctl-renamed" || id.MachineID != mid || id.BootID != hello.BootID || id.Processes < 2 || id.KernelRel != kern.Version {
		t.Fatalf("identity = %+v", id)
	}
	if id.MAC != "" || len(id.Addrs) != 0 {
		t.Errorf("a guest without a NIC reports mac %q addrs %v", id.MAC, id.Addrs)
	}
	if !strings.HasPrefix(id.HostKey, "ssh-ed25519 ") {
		t.Errorf("host key %q", id.HostKey)
	}
	t.Logf("identity: %+v", *id)

	// The clock: set it a day ahead, read it back, set it to now.
	ahead := time.Now().Add(24 * time.Hour)
	rep = ctlCall(t, d, dir, time.Minute, guestctl.Request{Op: guestctl.OpClock, UnixNano: ahead.UnixNano()})
	if skew := time.Duration(rep.UnixNano - ahead.UnixNano()); skew < 0 || skew > 5*time.Second {
		t.Fatalf("guest clock after setting it a day ahead: off by %s", skew)
	}
	rep = ctlCall(t, d, dir, time.Minute, guestctl.Request{Op: guestctl.OpClock, UnixNano: time.Now().UnixNano()})
	if skew := time.Since(time.Unix(0, rep.UnixNano)); skew < -time.Second || skew > 5*time.Second {
		t.Fatalf("guest clock off by %s after setting it", skew)
	}

	// Saved and resumed in place, then saved, ended and restored in a new
	// QEMU: the same guest answers on the new process's socket.
	state := filepath.Join(dir, "state")
	if err := os.Mkdir(state, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := d.Save(context.Background(), h, state); err != nil {
		t.Fatal(err)
	}
	if err := d.Resume(context.Background(), h); err != nil {
		t.Fatal(err)
	}
	if rep := ctlCall(t, d, dir, time.Minute, guestctl.Request{Op: guestctl.OpHello}); rep.BootID != hello.BootID {
		t.Fatalf("after Save+Resume boot id %q, want %q", rep.BootID, hello.BootID)
	}
	if err := d.Save(context.Background(), h, state); err != nil {
		t.Fatal(err)
	}
	if err := d.Kill(context.Background(), h); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(CtlSocket(dir)); err == nil {
		t.Log("control socket left by the killed QEMU (Cleanup removes it)")
	}
	restored := time.Now()
	h, err = d.Restore(context.Background(), spec, state)
	if err != nil {
		t.Fatal(err)
	}
	rep = ctlCall(t, d, dir, time.Minute, guestctl.Request{Op: guestctl.OpIdentity})
	t.Logf("identity answered %s after Restore began", time.Since(restored).Round(10*time.Millisecond))
	if rep.Identity == nil || rep.Identity.BootID != hello.BootID || rep.Identity.Hostname != "ctl-renamed" {
		t.Fatalf("after Restore identity = %+v", rep.Identity)
	}

	ctlCall(t, d, dir, time.Minute, guestctl.Request{Op: guestctl.OpPowerOff})
	wctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if !vmm.WaitExit(wctx, d, h, 100*time.Millisecond) {
		t.Fatal("qemu still runs 90s after poweroff over the control channel")
	}
	if err := d.Kill(context.Background(), h); err != nil {
		t.Fatal(err)
	}
	if err := d.Cleanup(spec); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{spec.APISocket, CtlSocket(dir), PIDFile(dir), ChrootDir(dir)} {
		if _, err := os.Lstat(p); err == nil {
			t.Errorf("%s left after poweroff and Cleanup", p)
		}
	}
}
