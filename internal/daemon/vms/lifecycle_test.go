package vms

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/banger/banger/internal/api"
	"github.com/banger/banger/internal/config"
	"github.com/banger/banger/internal/daemon/artifacts"
	"github.com/banger/banger/internal/daemon/vms/vmstest"
	"github.com/banger/banger/internal/errdefs"
	"github.com/banger/banger/internal/guest"
	"github.com/banger/banger/internal/hostnet"
	"github.com/banger/banger/internal/model"
	"github.com/banger/banger/internal/storage"
	"github.com/banger/banger/internal/store"
	"github.com/banger/banger/internal/vmm"
)

type fixture struct {
	m     *Manager
	art   *artifacts.Service
	drv   *vmstest.Driver
	strat *vmstest.Strategy
	taps  *vmstest.Taps
	st    *store.Store
	cfg   config.Config
	// started counts Deps.Started calls by VM name (snapFixture's).
	started map[string]int
	// waitGuest stands in for the guest's readiness at boot, and
	// waitListening for it when a create asks only for sshd to listen.
	waitGuest     func(ctx context.Context, vm model.VM, vmmAlive func() bool) error
	waitListening func(ctx context.Context, vm model.VM, vmmAlive func() bool) error
}

// newFixture is a Manager over a real store in a temp dir with a fake VMM,
// strategy and taps, holding an image and a kernel.
func newFixture(t testing.TB) *fixture {
	t.Helper()
	cfg, st := vmstest.State(t)
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	f := &fixture{drv: vmstest.NewDriver(), strat: &vmstest.Strategy{}, taps: vmstest.NewTaps(), st: st, cfg: cfg}
	f.waitGuest = func(context.Context, model.VM, func() bool) error { return nil }
	f.waitListening = func(context.Context, model.VM, func() bool) error { return nil }
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	f.art = artifacts.New(artifacts.Deps{Config: cfg, Store: st, Log: log, Now: time.Now})
	f.m = New(Deps{
		Config: cfg, Store: st, Log: log, Now: time.Now,
		Drivers: vmm.NewRegistry(f.drv), Strategies: []storage.Strategy{f.strat},
		Taps: f.taps, Subnet: netip.MustParsePrefix("172.16.0.0/24"),
		AuthorizedKey: guest.AuthorizedKey(signer), Artifacts: f.art,
		WaitGuest: func(ctx context.Context, vm model.VM, vmmAlive func() bool) error {
			return f.waitGuest(ctx, vm, vmmAlive)
		},
		WaitListening: func(ctx context.Context, vm model.VM, vmmAlive func() bool) error {
			return f.waitListening(ctx, vm, vmmAlive)
		},
	})
	return f
}

// recordReadiness makes the fixture's readiness waits record, by VM
// name, which one proved each guest up ("ssh" or "listening").
func (f *fixture) recordReadiness() map[string]string {
	var mu sync.Mutex
	got := map[string]string{}
	f.waitGuest = func(_ context.Context, vm model.VM, _ func() bool) error {
		mu.Lock()
		defer mu.Unlock()
		got[vm.Name] = "ssh"
		return nil
	}
	f.waitListening = func(_ context.Context, vm model.VM, _ func() bool) error {
		mu.Lock()
		defer mu.Unlock()
		got[vm.Name] = "listening"
		return nil
	}
	return got
}

// A create that asks only for sshd to listen (api.ReadyListening, what
// the E2B control plane asks) is proved up by WaitListening, not by an
// SSH session; any other value is refused with nothing made.
func TestCreateReady(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	got := f.recordReadiness()
	if _, err := f.m.Create(ctx, api.CreateVMRequest{Name: "fast", Disk: "64M", Start: true, Ready: api.ReadyListening}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := f.m.Create(ctx, api.CreateVMRequest{Name: "plain", Disk: "64M", Start: true}, nil); err != nil {
		t.Fatal(err)
	}
	// A later start (and a restart) is an ordinary one.
	if _, err := f.m.Restart(ctx, "fast", nil); err != nil {
		t.Fatal(err)
	}
	if got["fast"] != "ssh" || got["plain"] != "ssh" {
		t.Fatalf("readiness after restart: %v", got)
	}
	delete(got, "fast")
	if _, err := f.m.Create(ctx, api.CreateVMRequest{Name: "fast2", Disk: "64M", Start: true, Ready: api.ReadyListening}, nil); err != nil {
		t.Fatal(err)
	}
	if got["fast2"] != "listening" {
		t.Fatalf("readiness of a create asking for listening: %v", got)
	}
	// envd at boot: on the command line of that create's boot only.
	if _, err := f.m.Create(ctx, api.CreateVMRequest{Name: "sbx", Disk: "64M", Start: true, Envd: true}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := f.m.Restart(ctx, "sbx", nil); err != nil {
		t.Fatal(err)
	}
	var envdBoots []string
	for _, spec := range f.drv.Started {
		if strings.Contains(spec.Cmdline, "banger.envd=1") {
			envdBoots = append(envdBoots, spec.Name)
		}
	}
	if len(envdBoots) != 1 || envdBoots[0] != "sbx" {
		t.Fatalf("boots with banger.envd=1: %v; want the create of sbx alone", envdBoots)
	}
	_, err := f.m.Create(ctx, api.CreateVMRequest{Name: "bad", Disk: "64M", Start: true, Ready: "soon"}, nil)
	if errdefs.CodeOf(err) != errdefs.CodeInvalid || !strings.Contains(err.Error(), `ready "soon"`) {
		t.Fatalf("create with ready soon: %v", err)
	}
	if _, err := f.m.Get(ctx, "bad"); err == nil {
		t.Fatal("a refused create left its vm")
	}
}

func TestLifecycleWithFakes(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	vm, err := f.m.Create(ctx, api.CreateVMRequest{Name: "one", Disk: "64M"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if vm.State != model.VMCreated || vm.GuestIP != "172.16.0.2" || vm.CID != 3 || vm.VMM != "fake" {
		t.Fatalf("created vm: %+v", vm)
	}
	vm2, err := f.m.Create(ctx, api.CreateVMRequest{Name: "two", Disk: "64M"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if vm2.GuestIP == vm.GuestIP || vm2.CID == vm.CID || vm2.GuestMAC == vm.GuestMAC {
		t.Fatalf("two vms share identity: %+v %+v", vm, vm2)
	}
	if _, err := f.m.Create(ctx, api.CreateVMRequest{Name: "one"}, nil); errdefs.CodeOf(err) != errdefs.CodeConflict {
		t.Fatalf("duplicate name: %v", err)
	}

	vm, err = f.m.Start(ctx, "one", nil)
	if err != nil {
		t.Fatal(err)
	}
	if vm.State != model.VMRunning || !f.m.Alive(vm) {
		t.Fatalf("after start: %+v alive=%v", vm, f.m.Alive(vm))
	}
	h, err := readHandlesFile(vm.Dir)
	if err != nil || h.PID == 0 || h.Tap == "" || len(h.Loops) != 1 {
		t.Fatalf("handles.json = %+v, %v", h, err)
	}
	if !f.taps.Made[h.Tap] {
		t.Fatalf("tap %s not made", h.Tap)
	}
	spec := f.drv.Started[0]
	for _, want := range []string{"root=/dev/vda", "banger.ip=172.16.0.2/24", "banger.gw=172.16.0.1", "banger.hostname=one", "banger.key=", "console=ttyS0"} {
		if !strings.Contains(spec.Cmdline, want) {
			t.Errorf("cmdline %q lacks %q", spec.Cmdline, want)
		}
	}
	if len(spec.Disks) != 2 || spec.Disks[0].Format != "qcow2" || spec.Disks[1].Path != vm.WorkDisk {
		t.Errorf("disks: %+v", spec.Disks)
	}
	// Starting a running VM is a no-op.
	if _, err := f.m.Start(ctx, "one", nil); err != nil || len(f.drv.Started) != 1 {
		t.Fatalf("second start: %v, %d starts", err, len(f.drv.Started))
	}
	if err := f.m.Delete(ctx, "one", false); errdefs.CodeOf(err) != errdefs.CodeConflict {
		t.Fatalf("delete running without force: %v", err)
	}

	vm, err = f.m.Stop(ctx, "one", api.StopVMRequest{})
	if err != nil {
		t.Fatal(err)
	}
	// Every teardown detaches, with or without recorded loops, by the VM
	// directory; the one at stop names the loops recorded at start.
	n := len(f.strat.Detached)
	if vm.State != model.VMStopped || f.drv.Shutdowns != 1 || len(f.taps.Made) != 0 || n == 0 ||
		!slices.Equal(f.strat.Detached[n-1], []string{"/dev/loop-fake"}) || f.strat.DetachedDirs[n-1] != vm.Dir {
		t.Fatalf("after stop: state %s shutdowns %d taps %v detached %v in %v", vm.State, f.drv.Shutdowns, f.taps.Made, f.strat.Detached, f.strat.DetachedDirs)
	}
	if _, err := os.Stat(filepath.Join(vm.Dir, handlesFile)); !os.IsNotExist(err) {
		t.Fatalf("handles.json left after stop: %v", err)
	}
	if _, err := os.Stat(vm.WorkDisk); err != nil {
		t.Fatalf("work disk gone after stop: %v", err)
	}
	if err := f.m.Delete(ctx, "one", false); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(vm.Dir); !os.IsNotExist(err) {
		t.Fatalf("vm dir left after delete")
	}
	if _, err := f.m.Get(ctx, "one"); !errdefs.IsNotFound(err) {
		t.Fatalf("get deleted: %v", err)
	}
}

func TestStartFailureLeavesNothing(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	vm, err := f.m.Create(ctx, api.CreateVMRequest{Name: "bad", Disk: "64M"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	f.drv.StartErr = errors.New("qemu: could not load kernel")
	if _, err := f.m.Start(ctx, "bad", nil); err == nil || !strings.Contains(err.Error(), "could not load kernel") {
		t.Fatalf("start error = %v", err)
	}
	vm, _ = f.m.Get(ctx, "bad")
	if vm.State != model.VMFailed || !strings.Contains(vm.LastError, "could not load kernel") {
		t.Fatalf("record after failed start: %+v", vm)
	}
	if len(f.taps.Made) != 0 || len(f.strat.Detached) == 0 {
		t.Fatalf("failed start left taps %v (detached %v)", f.taps.Made, f.strat.Detached)
	}
	if _, err := os.Stat(filepath.Join(vm.Dir, handlesFile)); !os.IsNotExist(err) {
		t.Fatal("handles.json left after failed start")
	}
	// The guest never answering fails the start the same way.
	f.drv.StartErr = nil
	f.waitGuest = func(context.Context, model.VM, func() bool) error { return errors.New("ssh timeout") }
	if _, err := f.m.Start(ctx, "bad", nil); err == nil {
		t.Fatal("start succeeded without ssh")
	}
	if len(f.drv.Procs) != 0 || len(f.taps.Made) != 0 {
		t.Fatalf("failed wait left process %v taps %v", f.drv.Procs, f.taps.Made)
	}
}

func TestCreateFailureLeavesNothing(t *testing.T) {
	f := newFixture(t)
	f.strat.CreateErr = errors.New("no space left on device")
	_, err := f.m.Create(context.Background(), api.CreateVMRequest{Name: "full", Disk: "64M"}, nil)
	if err == nil || !strings.Contains(err.Error(), "no space") {
		t.Fatalf("err = %v", err)
	}
	if _, err := f.m.Get(context.Background(), "full"); !errdefs.IsNotFound(err) {
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
		{api.CreateVMRequest{CPUs: 17}, "use 1 to 16 (max_cpus)"},
		{api.CreateVMRequest{Memory: "17G"}, "memory 17G is too large: this host allows at most 16G (max_memory)"},
		{api.CreateVMRequest{Disk: "1T"}, "disk 1T is too large: this host allows at most 256G (max_disk)"},
		{api.CreateVMRequest{Image: "nope"}, `image "nope" not found`},
		{api.CreateVMRequest{Kernel: "nope"}, `kernel "nope" not found`},
		{api.CreateVMRequest{VMM: "xen"}, `unknown vmm "xen"`},
	} {
		_, err := f.m.Create(context.Background(), tc.req, nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: err %v, want %q", tc.req, err, tc.want)
		}
	}
}

func TestReconcile(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	for _, n := range []string{"keep", "dead", "torn"} {
		if _, err := f.m.Create(ctx, api.CreateVMRequest{Name: n, Disk: "64M", Start: true}, nil); err != nil {
			t.Fatal(err)
		}
	}
	keep, _ := f.m.Get(ctx, "keep")
	dead, _ := f.m.Get(ctx, "dead")
	torn, _ := f.m.Get(ctx, "torn")
	// The "daemon" dies: the cache is lost; dead's VMM dies too; torn's
	// scratch file is corrupt.
	f.m.handles = newHandleCache()
	deadHandles, _ := readHandlesFile(dead.Dir)
	f.drv.Kill(ctx, vmm.Handle{APISocket: dead.APISocket})
	f.drv.Kill(ctx, vmm.Handle{APISocket: torn.APISocket})
	os.WriteFile(filepath.Join(torn.Dir, handlesFile), []byte("{garbage"), 0o600)
	orphan := filepath.Join(f.cfg.VMsDir(), "0123456789abcdef0123456789abcdef")
	os.MkdirAll(orphan, 0o700)
	os.WriteFile(filepath.Join(orphan, "work.ext4"), []byte("the user's data"), 0o600)

	f.m.Reconcile(ctx)

	keep, _ = f.m.Get(ctx, "keep")
	if keep.State != model.VMRunning || !f.m.Alive(keep) {
		t.Fatalf("live vm not kept: %+v", keep)
	}
	dead, _ = f.m.Get(ctx, "dead")
	if dead.State != model.VMStopped || dead.LastError == "" {
		t.Fatalf("dead vm: %+v", dead)
	}
	if f.taps.Made[deadHandles.Tap] {
		t.Fatalf("dead vm's tap %s left", deadHandles.Tap)
	}
	torn, _ = f.m.Get(ctx, "torn")
	if torn.State != model.VMStopped {
		t.Fatalf("vm with corrupt handles: %+v", torn)
	}
	if f.taps.Made[hostnet.TapName(torn.ID)] {
		t.Fatalf("torn vm's derived tap left")
	}
	// A directory with no record is never deleted: it moves, whole, to
	// lost+found.
	if _, err := os.Stat(orphan); !os.IsNotExist(err) {
		t.Fatalf("orphan vm dir left among the VMs")
	}
	lost, _ := filepath.Glob(filepath.Join(f.cfg.LostFoundDir(), filepath.Base(orphan)+"-*", "work.ext4"))
	if len(lost) != 1 {
		t.Fatalf("orphan vm dir not in lost+found with its work disk: %v", lost)
	}
	if b, _ := os.ReadFile(lost[0]); string(b) != "the user's data" {
		t.Fatalf("orphan work disk changed: %q", b)
	}
	if len(f.taps.Made) != 1 {
		t.Fatalf("taps after reconcile: %v", f.taps.Made)
	}
}

func TestWatcherReapsDeadVMM(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	vm, err := f.m.Create(ctx, api.CreateVMRequest{Name: "w", Disk: "64M", Start: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	f.drv.Kill(ctx, vmm.Handle{APISocket: vm.APISocket})
	f.m.reapDead(ctx, vm.ID)
	vm, _ = f.m.Get(ctx, "w")
	if vm.State != model.VMStopped || vm.LastError == "" || len(f.taps.Made) != 0 {
		t.Fatalf("after reap: %+v taps %v", vm, f.taps.Made)
	}
}

func TestRemoveImageAndKernelInUse(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	vm, err := f.m.Create(ctx, api.CreateVMRequest{Name: "user", Disk: "64M"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.art.RemoveImage(ctx, "default"); errdefs.CodeOf(err) != errdefs.CodeConflict || !strings.Contains(err.Error(), "user") {
		t.Fatalf("image rm while used: %v", err)
	}
	if err := f.art.RemoveKernel(ctx, f.cfg.DefaultKernel); errdefs.CodeOf(err) != errdefs.CodeConflict || !strings.Contains(err.Error(), "user") {
		t.Fatalf("kernel rm while used: %v", err)
	}
	if err := f.art.RemoveImage(ctx, "nope"); !errdefs.IsNotFound(err) {
		t.Fatalf("rm unknown image: %v", err)
	}
	if err := f.m.Delete(ctx, vm.ID, false); err != nil {
		t.Fatal(err)
	}
	im, _ := f.art.GetImage(ctx, "default")
	if err := f.art.RemoveImage(ctx, "default"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(im.Path); !os.IsNotExist(err) {
		t.Fatalf("image file left after rm: %v", err)
	}
	if err := f.art.RemoveKernel(ctx, f.cfg.DefaultKernel); err != nil {
		t.Fatal(err)
	}
}

// The watcher keeps a running VM's console under max_console_log: a guest
// printing without end must not fill the state directory.
func TestWatcherCapsConsole(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	vm, err := f.m.Create(ctx, api.CreateVMRequest{Name: "loud", Disk: "64M", Start: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	f.m.cfg.MaxConsoleLog = "1M"
	if err := os.WriteFile(vm.ConsolePath, bytes.Repeat([]byte("spam spam spam\n"), 4<<20/15), 0o600); err != nil {
		t.Fatal(err)
	}
	f.m.capLogs(vm)
	st, err := os.Stat(vm.ConsolePath)
	if err != nil || st.Size() > 1<<20 {
		t.Fatalf("console after capping: %v, %v", st, err)
	}
	if old, err := os.Stat(vm.ConsolePath + ".1"); err != nil || old.Size() == 0 || old.Size() > 1<<20 {
		t.Fatalf("console.log.1 after capping: %v, %v", old, err)
	}
}

func TestCreateLabels(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	want := map[string]string{"app": "web", "k8s.banger.dev/pod-uid": "0f1e"}
	vm, err := f.m.Create(ctx, api.CreateVMRequest{Name: "lab", Disk: "64M", Labels: want}, nil)
	if err != nil || !reflect.DeepEqual(vm.Labels, want) {
		t.Fatalf("Create = %v, %v", vm.Labels, err)
	}
	if got := get(t, f, "lab"); !reflect.DeepEqual(got.Labels, want) {
		t.Fatalf("stored labels = %v", got.Labels)
	}
	if _, err := f.m.Create(ctx, api.CreateVMRequest{Name: "bad", Disk: "64M", Labels: map[string]string{"no spaces": "x"}}, nil); errdefs.CodeOf(err) != errdefs.CodeInvalid || exists(f, "bad") {
		t.Fatalf("Create with a bad label = %v (made: %v)", err, exists(f, "bad"))
	}
}
