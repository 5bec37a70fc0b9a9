package daemon

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/banger/banger/internal/api"
	"github.com/banger/banger/internal/config"
	"github.com/banger/banger/internal/errdefs"
	"github.com/banger/banger/internal/hostnet"
	"github.com/banger/banger/internal/model"
	"github.com/banger/banger/internal/storage"
	"github.com/banger/banger/internal/store"
	"github.com/banger/banger/internal/vmm"
)

// fakeDriver is an in-memory VMM: processes are entries in a map keyed by
// api socket.
type fakeDriver struct {
	mu       sync.Mutex
	alive    map[string]int // api socket → pid
	nextPID  int
	startErr error
	started  []vmm.Spec
	shutdown int
}

func newFakeDriver() *fakeDriver { return &fakeDriver{alive: map[string]int{}, nextPID: 1000} }

func (f *fakeDriver) Name() string                             { return "qemu" }
func (f *fakeDriver) Formats() []string                        { return []string{vmm.FormatQcow2, vmm.FormatRaw} }
func (f *fakeDriver) InstallHint() string                      { return "nothing: it is a fake" }
func (f *fakeDriver) Owns(string) bool                         { return false }
func (f *fakeDriver) Available(context.Context) (bool, string) { return true, "fake" }
func (f *fakeDriver) Cleanup(s vmm.Spec) error {
	return vmm.RemoveFiles(s.APISocket, s.VsockPath)
}
func (f *fakeDriver) Start(ctx context.Context, s vmm.Spec) (vmm.Handle, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.startErr != nil {
		return vmm.Handle{}, f.startErr
	}
	if _, ok := f.alive[s.APISocket]; ok {
		return vmm.Handle{}, errors.New("api socket busy")
	}
	f.nextPID++
	f.alive[s.APISocket] = f.nextPID
	f.started = append(f.started, s)
	return vmm.Handle{PID: f.nextPID, APISocket: s.APISocket}, nil
}
func (f *fakeDriver) Shutdown(ctx context.Context, h vmm.Handle) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.shutdown++
	delete(f.alive, h.APISocket) // the guest powers off at once
	return nil
}
func (f *fakeDriver) Kill(ctx context.Context, h vmm.Handle) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.alive, h.APISocket)
	return nil
}
func (f *fakeDriver) Find(sock string) (vmm.Handle, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if pid, ok := f.alive[sock]; ok {
		return vmm.Handle{PID: pid, APISocket: sock}, nil
	}
	return vmm.Handle{}, vmm.ErrNotFound
}
func (f *fakeDriver) Alive(h vmm.Handle) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	pid, ok := f.alive[h.APISocket]
	return ok && pid == h.PID
}

// fakeStrategy makes plain files and pretend loops.
type fakeStrategy struct {
	createErr error
	detached  [][]string
}

func (s *fakeStrategy) Name() string                    { return "qcow2" }
func (s *fakeStrategy) Available(string) (bool, string) { return true, "" }
func (s *fakeStrategy) Format() string                  { return "qcow2" }
func (s *fakeStrategy) Create(ctx context.Context, image, dir string) error {
	if s.createErr != nil {
		return s.createErr
	}
	return os.WriteFile(filepath.Join(dir, "system.qcow2"), []byte("overlay of "+image), 0o600)
}
func (s *fakeStrategy) Attach(ctx context.Context, image, dir string) (storage.SystemDisk, error) {
	return storage.SystemDisk{Path: filepath.Join(dir, "system.qcow2"), Format: "qcow2", Loops: []string{"/dev/loop-fake"}}, nil
}
func (s *fakeStrategy) Detach(ctx context.Context, d storage.SystemDisk) error {
	s.detached = append(s.detached, d.Loops)
	return nil
}
func (s *fakeStrategy) Remove(ctx context.Context, dir string) error {
	return os.Remove(filepath.Join(dir, "system.qcow2"))
}

type fakeTaps struct {
	mu   sync.Mutex
	taps map[string]bool
}

func (f *fakeTaps) CreateTap(ctx context.Context, name string, g hostnet.Guest) error {
	if len(g.MAC) != 6 || !g.IP.Is4() {
		return fmt.Errorf("tap %s for guest %+v", name, g)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.taps[name] = true
	return nil
}
func (f *fakeTaps) DeleteTap(ctx context.Context, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.taps, name)
	return nil
}
func (f *fakeTaps) Gateway() netip.Addr { return netip.MustParseAddr("172.16.0.1") }

type fixture struct {
	d     *Daemon
	drv   *fakeDriver
	strat *fakeStrategy
	taps  *fakeTaps
	st    *store.Store
	cfg   config.Config
}

// newFixture is a daemon over a real store in a temp dir with a fake VMM,
// strategy and taps, holding an image and a kernel.
func newFixture(t testing.TB) *fixture {
	t.Helper()
	dir := t.TempDir()
	cfg := config.Defaults()
	cfg.StateDir = dir
	cfg.CacheDir = filepath.Join(dir, "cache")
	cfg.Finish()
	st, err := store.Open(cfg.DBPath())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	d, err := New(cfg, st, slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{cfg.VMsDir(), cfg.ImagesDir(), cfg.KernelsDir()} {
		if err := os.MkdirAll(p, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	f := &fixture{d: d, drv: newFakeDriver(), strat: &fakeStrategy{}, taps: &fakeTaps{taps: map[string]bool{}}, st: st, cfg: cfg}
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	d.host.signer = signer
	d.host.drivers = vmm.NewRegistry(f.drv)
	d.host.strategies = []storage.Strategy{f.strat}
	d.host.taps = f.taps
	d.host.subnet = netip.MustParsePrefix("172.16.0.0/24")
	d.processAlive = d.vmmAlive
	d.waitGuest = func(context.Context, model.VM, vmm.Driver, vmm.Handle) error { return nil }
	ctx := context.Background()
	imgPath := filepath.Join(cfg.ImagesDir(), "img.ext4")
	os.WriteFile(imgPath, []byte("image"), 0o600)
	if err := st.CreateImage(ctx, model.Image{ID: model.NewID(), Name: "default", Path: imgPath, HostKey: "ssh-ed25519 AAAA", CreatedAt: d.now()}); err != nil {
		t.Fatal(err)
	}
	if err := st.CreateKernel(ctx, model.Kernel{ID: model.NewID(), Name: cfg.DefaultKernel, VmlinuxPath: "/k", Cmdline: "console=ttyS0", CreatedAt: d.now()}); err != nil {
		t.Fatal(err)
	}
	return f
}

func TestLifecycleWithFakes(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	vm, err := f.d.CreateVM(ctx, api.CreateVMRequest{Name: "one", Disk: "64M"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if vm.State != model.VMCreated || vm.GuestIP != "172.16.0.2" || vm.CID != 3 || vm.VMM != "qemu" {
		t.Fatalf("created vm: %+v", vm)
	}
	vm2, err := f.d.CreateVM(ctx, api.CreateVMRequest{Name: "two", Disk: "64M"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if vm2.GuestIP == vm.GuestIP || vm2.CID == vm.CID || vm2.GuestMAC == vm.GuestMAC {
		t.Fatalf("two vms share identity: %+v %+v", vm, vm2)
	}
	if _, err := f.d.CreateVM(ctx, api.CreateVMRequest{Name: "one"}, nil); errdefs.CodeOf(err) != errdefs.CodeConflict {
		t.Fatalf("duplicate name: %v", err)
	}

	vm, err = f.d.StartVM(ctx, "one", nil)
	if err != nil {
		t.Fatal(err)
	}
	if vm.State != model.VMRunning || !f.d.vmAlive(vm) {
		t.Fatalf("after start: %+v alive=%v", vm, f.d.vmAlive(vm))
	}
	h, err := readHandlesFile(vm.Dir)
	if err != nil || h.PID == 0 || h.Tap == "" || len(h.Loops) != 1 {
		t.Fatalf("handles.json = %+v, %v", h, err)
	}
	if !f.taps.taps[h.Tap] {
		t.Fatalf("tap %s not made", h.Tap)
	}
	spec := f.drv.started[0]
	for _, want := range []string{"root=/dev/vda", "banger.ip=172.16.0.2/24", "banger.gw=172.16.0.1", "banger.hostname=one", "banger.key=", "console=ttyS0"} {
		if !strings.Contains(spec.Cmdline, want) {
			t.Errorf("cmdline %q lacks %q", spec.Cmdline, want)
		}
	}
	if len(spec.Disks) != 2 || spec.Disks[0].Format != "qcow2" || spec.Disks[1].Path != vm.WorkDisk {
		t.Errorf("disks: %+v", spec.Disks)
	}
	// Starting a running VM is a no-op.
	if _, err := f.d.StartVM(ctx, "one", nil); err != nil || len(f.drv.started) != 1 {
		t.Fatalf("second start: %v, %d starts", err, len(f.drv.started))
	}
	if err := f.d.DeleteVM(ctx, "one", false); errdefs.CodeOf(err) != errdefs.CodeConflict {
		t.Fatalf("delete running without force: %v", err)
	}

	vm, err = f.d.StopVM(ctx, "one", api.StopVMRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if vm.State != model.VMStopped || f.drv.shutdown != 1 || len(f.taps.taps) != 0 || len(f.strat.detached) != 1 {
		t.Fatalf("after stop: state %s shutdowns %d taps %v detached %v", vm.State, f.drv.shutdown, f.taps.taps, f.strat.detached)
	}
	if _, err := os.Stat(filepath.Join(vm.Dir, handlesFile)); !os.IsNotExist(err) {
		t.Fatalf("handles.json left after stop: %v", err)
	}
	if _, err := os.Stat(vm.WorkDisk); err != nil {
		t.Fatalf("work disk gone after stop: %v", err)
	}
	if err := f.d.DeleteVM(ctx, "one", false); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(vm.Dir); !os.IsNotExist(err) {
		t.Fatalf("vm dir left after delete")
	}
	if _, err := f.d.GetVM(ctx, "one"); !errdefs.IsNotFound(err) {
		t.Fatalf("get deleted: %v", err)
	}
}

func TestStartFailureLeavesNothing(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	vm, err := f.d.CreateVM(ctx, api.CreateVMRequest{Name: "bad", Disk: "64M"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	f.drv.startErr = errors.New("qemu: could not load kernel")
	if _, err := f.d.StartVM(ctx, "bad", nil); err == nil || !strings.Contains(err.Error(), "could not load kernel") {
		t.Fatalf("start error = %v", err)
	}
	vm, _ = f.d.GetVM(ctx, "bad")
	if vm.State != model.VMFailed || !strings.Contains(vm.LastError, "could not load kernel") {
		t.Fatalf("record after failed start: %+v", vm)
	}
	if len(f.taps.taps) != 0 || len(f.strat.detached) == 0 {
		t.Fatalf("failed start left taps %v (detached %v)", f.taps.taps, f.strat.detached)
	}
	if _, err := os.Stat(filepath.Join(vm.Dir, handlesFile)); !os.IsNotExist(err) {
		t.Fatal("handles.json left after failed start")
	}
	// The guest never answering fails the start the same way.
	f.drv.startErr = nil
	f.d.waitGuest = func(context.Context, model.VM, vmm.Driver, vmm.Handle) error { return errors.New("ssh timeout") }
	if _, err := f.d.StartVM(ctx, "bad", nil); err == nil {
		t.Fatal("start succeeded without ssh")
	}
	if len(f.drv.alive) != 0 || len(f.taps.taps) != 0 {
		t.Fatalf("failed wait left process %v taps %v", f.drv.alive, f.taps.taps)
	}
}

func TestCreateFailureLeavesNothing(t *testing.T) {
	f := newFixture(t)
	f.strat.createErr = errors.New("no space left on device")
	_, err := f.d.CreateVM(context.Background(), api.CreateVMRequest{Name: "full", Disk: "64M"}, nil)
	if err == nil || !strings.Contains(err.Error(), "no space") {
		t.Fatalf("err = %v", err)
	}
	if _, err := f.d.GetVM(context.Background(), "full"); !errdefs.IsNotFound(err) {
		t.Fatalf("record left: %v", err)
	}
	if ents, _ := os.ReadDir(f.cfg.VMsDir()); len(ents) != 0 {
		t.Fatalf("files left: %v", ents)
	}
}

func TestCreateValidation(t *testing.T) {
	f := newFixture(t)
	for _, tc := range []struct {
		req  api.CreateVMRequest
		want string
	}{
		{api.CreateVMRequest{Name: "Bad"}, "invalid vm name"},
		{api.CreateVMRequest{CPUs: 500}, "invalid cpus"},
		{api.CreateVMRequest{Memory: "12Q"}, "invalid size"},
		{api.CreateVMRequest{Memory: "1M"}, "too small"},
		{api.CreateVMRequest{Disk: "1K"}, "too small"},
		{api.CreateVMRequest{Image: "nope"}, `image "nope" not found`},
		{api.CreateVMRequest{Kernel: "nope"}, `kernel "nope" not found`},
		{api.CreateVMRequest{VMM: "xen"}, `unknown vmm "xen"`},
	} {
		_, err := f.d.CreateVM(context.Background(), tc.req, nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: err %v, want %q", tc.req, err, tc.want)
		}
	}
}

func TestReconcile(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	for _, n := range []string{"keep", "dead", "torn"} {
		if _, err := f.d.CreateVM(ctx, api.CreateVMRequest{Name: n, Disk: "64M", Start: true}, nil); err != nil {
			t.Fatal(err)
		}
	}
	keep, _ := f.d.GetVM(ctx, "keep")
	dead, _ := f.d.GetVM(ctx, "dead")
	torn, _ := f.d.GetVM(ctx, "torn")
	// The "daemon" dies: the cache is lost; dead's VMM dies too; torn's
	// scratch file is corrupt.
	f.d.handles = newHandleCache()
	deadHandles, _ := readHandlesFile(dead.Dir)
	f.drv.Kill(ctx, vmm.Handle{APISocket: dead.APISocket})
	f.drv.Kill(ctx, vmm.Handle{APISocket: torn.APISocket})
	os.WriteFile(filepath.Join(torn.Dir, handlesFile), []byte("{garbage"), 0o600)
	orphan := filepath.Join(f.cfg.VMsDir(), "0123456789abcdef0123456789abcdef")
	os.MkdirAll(orphan, 0o700)

	f.d.reconcile(ctx)

	keep, _ = f.d.GetVM(ctx, "keep")
	if keep.State != model.VMRunning || !f.d.vmAlive(keep) {
		t.Fatalf("live vm not kept: %+v", keep)
	}
	dead, _ = f.d.GetVM(ctx, "dead")
	if dead.State != model.VMStopped || dead.LastError == "" {
		t.Fatalf("dead vm: %+v", dead)
	}
	if f.taps.taps[deadHandles.Tap] {
		t.Fatalf("dead vm's tap %s left", deadHandles.Tap)
	}
	torn, _ = f.d.GetVM(ctx, "torn")
	if torn.State != model.VMStopped {
		t.Fatalf("vm with corrupt handles: %+v", torn)
	}
	if f.taps.taps[hostnet.TapName(torn.ID)] {
		t.Fatalf("torn vm's derived tap left")
	}
	if _, err := os.Stat(orphan); !os.IsNotExist(err) {
		t.Fatalf("orphan vm dir kept")
	}
	if len(f.taps.taps) != 1 {
		t.Fatalf("taps after reconcile: %v", f.taps.taps)
	}
}

func TestWatcherReapsDeadVMM(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	vm, err := f.d.CreateVM(ctx, api.CreateVMRequest{Name: "w", Disk: "64M", Start: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	f.drv.Kill(ctx, vmm.Handle{APISocket: vm.APISocket})
	f.d.reapDead(ctx, vm.ID)
	vm, _ = f.d.GetVM(ctx, "w")
	if vm.State != model.VMStopped || vm.LastError == "" || len(f.taps.taps) != 0 {
		t.Fatalf("after reap: %+v taps %v", vm, f.taps.taps)
	}
}

func TestRemoveImageAndKernelInUse(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	vm, err := f.d.CreateVM(ctx, api.CreateVMRequest{Name: "user", Disk: "64M"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.d.RemoveImage(ctx, "default"); errdefs.CodeOf(err) != errdefs.CodeConflict || !strings.Contains(err.Error(), "user") {
		t.Fatalf("image rm while used: %v", err)
	}
	if err := f.d.RemoveKernel(ctx, f.cfg.DefaultKernel); errdefs.CodeOf(err) != errdefs.CodeConflict || !strings.Contains(err.Error(), "user") {
		t.Fatalf("kernel rm while used: %v", err)
	}
	if err := f.d.RemoveImage(ctx, "nope"); !errdefs.IsNotFound(err) {
		t.Fatalf("rm unknown image: %v", err)
	}
	if err := f.d.DeleteVM(ctx, vm.ID, false); err != nil {
		t.Fatal(err)
	}
	im, _ := f.d.GetImage(ctx, "default")
	if err := f.d.RemoveImage(ctx, "default"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(im.Path); !os.IsNotExist(err) {
		t.Fatalf("image file left after rm: %v", err)
	}
	if err := f.d.RemoveKernel(ctx, f.cfg.DefaultKernel); err != nil {
		t.Fatal(err)
	}
}
