package vms

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/banger/banger/internal/api"
	"github.com/banger/banger/internal/errdefs"
	"github.com/banger/banger/internal/guestctl"
	"github.com/banger/banger/internal/hostnet"
	"github.com/banger/banger/internal/model"
	"github.com/banger/banger/internal/storage"
	"github.com/banger/banger/internal/testenv"
	"github.com/banger/banger/internal/vmm"
	"github.com/banger/banger/internal/vmm/firecracker"
)

// rawStrategy is a reflink-named strategy of plain raw files: what a
// Firecracker VM's system disk is on a reflink-capable state directory.
type rawStrategy struct{}

func (rawStrategy) Name() string                    { return "reflink" }
func (rawStrategy) Available(string) (bool, string) { return true, "" }
func (rawStrategy) Format() string                  { return vmm.FormatRaw }
func (rawStrategy) Create(ctx context.Context, image, dir string) error {
	return os.WriteFile(storage.SystemFile("reflink", dir), []byte("clone of "+image), 0o600)
}
func (rawStrategy) Attach(ctx context.Context, image, dir string) (storage.SystemDisk, error) {
	return storage.SystemDisk{Path: storage.SystemFile("reflink", dir), Format: vmm.FormatRaw, VMDir: dir}, nil
}
func (rawStrategy) Detach(ctx context.Context, d storage.SystemDisk) error { return nil }
func (rawStrategy) Remove(ctx context.Context, dir string) error {
	return vmm.RemoveFiles(storage.SystemFile("reflink", dir))
}

// fakeGuests stands in for the guest side of every VM's control channel
// behind fakefc's vsock (FAKEFC_VSOCK_FORWARD): it answers as banger-init
// does, taking the identity it is told, and records, for each identity
// request, whether that VM's tap was still held off the bridge.
type fakeGuests struct {
	mu       sync.Mutex
	told     map[string]guestctl.Request // hostname → identity request
	heldThen map[string]bool             // hostname → its tap was held when told
	clocks   int
	// renamed are the hostnames told alone (a spare taken from the warm
	// pool); refuseRename makes the guest refuse these.
	renamed      []string
	refuseRename map[string]bool
}

func serveFakeGuests(t *testing.T, f *fixture) (*fakeGuests, string) {
	g := &fakeGuests{told: map[string]guestctl.Request{}, heldThen: map[string]bool{}, refuseRename: map[string]bool{}}
	sock := filepath.Join(t.TempDir(), "guest.sock")
	l := testenv.Listen(t, "unix", sock)
	h := func(req guestctl.Request) (guestctl.Reply, func(), error) {
		var rep guestctl.Reply
		switch req.Op {
		case guestctl.OpHello:
			rep.Version = guestctl.Version
		case guestctl.OpClock:
			g.mu.Lock()
			g.clocks++
			g.mu.Unlock()
		case guestctl.OpIdentity:
			if req.MAC == "" && len(req.HostKey) == 0 && req.MachineID == "" {
				g.mu.Lock()
				defer g.mu.Unlock()
				if g.refuseRename[req.Hostname] {
					return rep, nil, errors.New("hostname refused")
				}
				g.renamed = append(g.renamed, req.Hostname)
				rep.Identity = &guestctl.Identity{Hostname: req.Hostname}
				return rep, nil, nil
			}
			held := false
			if vm, err := f.m.Get(context.Background(), req.Hostname); err == nil {
				held = f.taps.IsHeld(hostnet.TapName(vm.ID))
			}
			g.mu.Lock()
			g.told[req.Hostname] = req
			g.heldThen[req.Hostname] = held
			g.mu.Unlock()
			rep.Identity = &guestctl.Identity{Hostname: req.Hostname, MAC: req.MAC, Addrs: []string{req.Addr}, LinkUp: true}
		}
		return rep, nil, nil
	}
	testenv.Serve(l, func(c net.Conn) { _ = guestctl.Serve(c, h, time.Now) })
	return g, sock
}

// fcFixture is a fixture whose VMs run under the real Firecracker
// driver over fakefc, their control channel answered by fakeGuests,
// with a kernel "fck" and an image "fast" whose PID 1 is banger-init.
func fcFixture(t *testing.T) (*fixture, *firecracker.Driver, *fakeGuests) {
	ctx := context.Background()
	bin := testenv.BuildFakeFirecracker(t, t.TempDir())
	f := newFixture(t)
	drv := firecracker.New(firecracker.Options{Binary: bin, KVMDevice: testenv.FakeKVM(t)})
	if ok, why := drv.Available(ctx); !ok {
		t.Skipf("firecracker driver over fakefc unavailable here: %s", why)
	}
	f.m = New(Deps{
		Config: f.m.cfg, Store: f.m.store, Log: f.m.log, Now: time.Now,
		Drivers: vmm.NewRegistry(drv), Strategies: []storage.Strategy{rawStrategy{}},
		Taps: f.taps, Subnet: f.m.subnet, AuthorizedKey: f.m.authorizedKey, Artifacts: f.art,
		WaitGuest: func(ctx context.Context, vm model.VM, vmmAlive func() bool) error {
			return f.waitGuest(ctx, vm, vmmAlive)
		},
		WaitListening: func(ctx context.Context, vm model.VM, vmmAlive func() bool) error {
			return f.waitListening(ctx, vm, vmmAlive)
		},
	})
	guests, sock := serveFakeGuests(t, f)
	t.Setenv("FAKEFC_VSOCK_FORWARD", "1024="+sock)
	vmlinux := filepath.Join(t.TempDir(), "vmlinux")
	if err := os.WriteFile(vmlinux, []byte("ELF"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := f.st.CreateKernel(ctx, model.Kernel{ID: model.NewID(), Name: "fck", VmlinuxPath: vmlinux, Cmdline: "console=ttyS0", CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	// An image whose PID 1 is banger-init: what a restore needs.
	img := filepath.Join(t.TempDir(), "fast.ext4")
	if err := os.WriteFile(img, []byte("image"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := f.st.CreateImage(ctx, model.Image{ID: model.NewID(), Name: "fast", Path: img, Init: "fast", HostKey: "ssh-ed25519 AAAA", CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	return f, drv, guests
}

// TestForkFirecrackerWithFakefc forks a Firecracker snapshot end to end
// with the real Firecracker driver over fakefc, whose vsock relays the
// control channel to a guest side in the test: each fork is restored in
// its own directory (its own disks and vsock socket, while the parent
// runs), told its identity over the vsock while its tap is still held
// down, and its tap raised only then; a warm start's refusal is lifted
// the same way; deletes leave no process or socket.
func TestForkFirecrackerWithFakefc(t *testing.T) {
	ctx := context.Background()
	f, drv, guests := fcFixture(t)
	parent, err := f.m.Create(ctx, api.CreateVMRequest{Name: "dev", Image: "fast", Disk: "64M", Kernel: "fck", VMM: "firecracker", Start: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, n := range []string{"kid-1", "kid-2", "kid-3", "dev"} {
			_ = f.m.Delete(context.Background(), n, true)
		}
	})
	if parent.VMM != "firecracker" || !f.m.Alive(parent) {
		t.Fatalf("parent: %+v", parent)
	}
	if _, err := f.m.CreateSnapshot(ctx, "dev", "s1"); err != nil {
		t.Fatal(err)
	}
	if guests.clocks != 1 {
		t.Fatalf("the snapshot set the guest's clock %d times over the vsock, want 1", guests.clocks)
	}
	// Bad input to a fork is refused before anything is made.
	for _, c := range []struct {
		req  api.ForkRequest
		want string
	}{
		{api.ForkRequest{Labels: map[string]string{"bad key": "x"}}, "label"},
		{api.ForkRequest{TTL: "forever"}, "ttl"},
		{api.ForkRequest{Net: "sideways"}, "sideways"},
		{api.ForkRequest{Labels: map[string]string{"banger.dev/spare": "x"}}, "banger.dev/spare"},
	} {
		c.req.Source, c.req.Count, c.req.NamePrefix = "s1", 2, "kid"
		if _, err := f.m.Fork(ctx, c.req, nil); errdefs.CodeOf(err) != errdefs.CodeInvalid || !strings.Contains(err.Error(), c.want) {
			t.Errorf("fork %+v: %v, want invalid naming %q", c.req, err, c.want)
		}
	}
	if all, _ := f.m.List(ctx); len(all) != 1 {
		t.Fatalf("a refused fork left vms: %d", len(all))
	}
	// Each fork gets the fork's labels, deadline and network policy.
	kids, err := f.m.Fork(ctx, api.ForkRequest{Source: "s1", Count: 2, NamePrefix: "kid",
		Labels: map[string]string{"team": "a"}, TTL: "1h", Net: "none", Allow: []string{"203.0.113.0/24"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(kids) != 2 {
		t.Fatalf("forks: %+v", kids)
	}
	for _, k := range kids {
		if k.Labels["team"] != "a" || k.ExpiresAt == nil || k.ExpiresAt.Before(time.Now().Add(59*time.Minute)) ||
			k.Net.Mode != "none" || !slices.Equal(k.Net.Allow, []string{"203.0.113.0/24"}) {
			t.Fatalf("fork %s: labels %v, expires %v, net %+v", k.Name, k.Labels, k.ExpiresAt, k.Net)
		}
	}
	seen := map[string]bool{parent.GuestIP: true, parent.GuestMAC: true}
	for _, k := range kids {
		if seen[k.GuestIP] || seen[k.GuestMAC] {
			t.Fatalf("fork %s shares an address: %s %s", k.Name, k.GuestIP, k.GuestMAC)
		}
		seen[k.GuestIP], seen[k.GuestMAC] = true, true
		if k.State != model.VMRunning || !f.m.Alive(k) {
			t.Fatalf("fork %s: %s", k.Name, k.State)
		}
		req, ok := guests.told[k.Name]
		if !ok || req.MAC != k.GuestMAC || !strings.HasPrefix(req.Addr, k.GuestIP+"/") || len(req.HostKey) == 0 {
			t.Fatalf("fork %s was told %+v", k.Name, req)
		}
		tap := hostnet.TapName(k.ID)
		if !guests.heldThen[k.Name] {
			t.Fatalf("fork %s was told its identity with its tap already on the bridge", k.Name)
		}
		if f.taps.IsHeld(tap) || !slices.Contains(f.taps.Raised, tap) {
			t.Fatalf("fork %s's tap not raised after its identity (raised %v)", k.Name, f.taps.Raised)
		}
		// Its own vsock socket, answering its own firecracker.
		if fi, err := os.Stat(k.VsockSocket); err != nil || fi.Mode()&os.ModeSocket == 0 || filepath.Dir(k.VsockSocket) != k.Dir {
			t.Fatalf("fork %s's vsock socket: %v", k.Name, err)
		}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		conn, err := drv.DialControl(cctx, k.Dir)
		if err != nil {
			t.Fatal(err)
		}
		c := guestctl.NewClient(conn)
		if _, err := c.Call(cctx, guestctl.Request{Op: guestctl.OpHello}); err != nil {
			t.Fatalf("hello to %s: %v", k.Name, err)
		}
		c.Close()
		cancel()
	}
	if f.taps.IsHeld(hostnet.TapName(parent.ID)) || !f.m.Alive(parent) {
		t.Fatal("the parent's tap was held or the parent died")
	}

	// A create from the snapshot goes the same way; asked to, it is
	// proved up by its sshd listening rather than by a session.
	readied := f.recordReadiness()
	one, err := f.m.Create(ctx, api.CreateVMRequest{Name: "kid-3", FromSnapshot: "s1", Ready: api.ReadyListening}, nil)
	if err != nil {
		t.Fatalf("create from a firecracker snapshot: %v", err)
	}
	if readied["kid-3"] != "listening" {
		t.Fatalf("kid-3 proved up by %q, want listening", readied["kid-3"])
	}
	if !guests.heldThen["kid-3"] || !f.m.Alive(one) || one.VMM != "firecracker" {
		t.Fatalf("kid-3: held when told %v, alive %v, vmm %s", guests.heldThen["kid-3"], f.m.Alive(one), one.VMM)
	}
	// Booted VMs are told their machine id there too.
	guests.mu.Lock()
	booted := guests.told[""]
	guests.mu.Unlock()
	if booted.MachineID != machineIDOf(parent.ID) {
		t.Fatalf("the parent's boot was not told its machine id over the vsock: %+v", booted)
	}

	for _, k := range append(kids, parent, one) {
		if err := f.m.Delete(ctx, k.Name, true); err != nil {
			t.Fatal(err)
		}
		if _, err := drv.Find(k.APISocket); err == nil {
			t.Fatalf("%s: firecracker left after delete", k.Name)
		}
		if _, err := os.Stat(k.Dir); !os.IsNotExist(err) {
			t.Fatalf("%s: directory left after delete: %v", k.Name, err)
		}
	}
	if len(f.taps.Made) != 0 {
		t.Fatalf("taps left: %v", f.taps.Made)
	}
}
