package vms

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/banger/banger/internal/api"
	"github.com/banger/banger/internal/errdefs"
	"github.com/banger/banger/internal/hostnet"
	"github.com/banger/banger/internal/model"
	"github.com/banger/banger/internal/progress"
)

// poolFixture is fcFixture with a warm-start template "warm-x" of the
// shape poolReq makes, and the pool of size n started.
func poolFixture(t *testing.T, n int) (*fixture, *fakeGuests, model.Snapshot) {
	t.Helper()
	ctx := context.Background()
	f, _, guests := fcFixture(t)
	f.m.cfg.WarmPool = n
	f.m.pool.delay = 0
	dev, err := f.m.Create(ctx, api.CreateVMRequest{Name: "dev", Image: "fast", Disk: "64M", Kernel: "fck", VMM: "firecracker", Start: true, Cold: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	im, _ := f.st.GetImage(ctx, dev.ImageID)
	k, _ := f.st.GetKernel(ctx, dev.KernelID)
	in := inputsOf(vmShape{Image: im, Kernel: k, CPUs: dev.CPUs, MemoryMiB: dev.MemoryMiB, DiskBytes: dev.DiskBytes, VMM: dev.VMM, Strategy: dev.CowStrategy}, f.m.guestSide())
	tm, err := f.m.createSnapshot(ctx, "dev", "warm-x", &in)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.m.Delete(ctx, "dev", true); err != nil {
		t.Fatal(err)
	}
	pctx, cancel := context.WithCancel(ctx)
	t.Cleanup(func() {
		cancel()
		f.m.StopPool()
		vms, _ := f.st.ListVMs(context.Background())
		for _, vm := range vms {
			f.m.deleteSpare(context.Background(), vm.ID)
		}
	})
	f.m.StartPool(pctx)
	return f, guests, tm
}

func poolReq(name string) api.CreateVMRequest {
	return api.CreateVMRequest{Name: name, Image: "fast", Disk: "64M", Kernel: "fck", VMM: "firecracker", Start: true}
}

// waitSpares waits until n spares of the template are ready.
func waitSpares(t *testing.T, f *fixture, template string, n int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for f.m.readySpares(template) != n {
		if time.Now().After(deadline) {
			t.Fatalf("%d spares of %s ready after 20s, want %d", f.m.readySpares(template), template, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// spares lists the spare records in the store.
func spares(t *testing.T, f *fixture) []model.VM {
	t.Helper()
	vms, err := f.st.ListVMs(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return slices.DeleteFunc(vms, func(vm model.VM) bool { return !isSpare(vm) })
}

// phasesOf records the progress phases of a create.
func phasesOf(evs *[]progress.Event) progress.Func {
	var mu sync.Mutex
	return func(e progress.Event) {
		mu.Lock()
		defer mu.Unlock()
		*evs = append(*evs, e)
	}
}

func hasPhase(evs []progress.Event, phase string) bool {
	return slices.ContainsFunc(evs, func(e progress.Event) bool { return e.Phase == phase })
}

// TestWarmPoolWithFakes: the pool fills to N and no further; spares are
// hidden from List and Resolve and counted, not named, by the template
// list; a create takes a spare (renamed, its labels, deadline and
// hostname, the template's refill started) instead of restoring; a
// claim whose step fails deletes the spare and restores instead; unwarm
// deletes the spares with the template.
func TestWarmPoolWithFakes(t *testing.T) {
	ctx := context.Background()
	f, guests, tm := poolFixture(t, 2)
	waitSpares(t, f, tm.Name, 2)
	time.Sleep(200 * time.Millisecond)
	if s := spares(t, f); len(s) != 2 {
		t.Fatalf("%d spares made, want 2 (warm_pool): %+v", len(s), s)
	}
	if vms, _ := f.m.List(ctx); len(vms) != 0 {
		t.Fatalf("vm list shows spares: %+v", vms)
	}
	sp := spares(t, f)[0]
	if _, err := f.m.Resolve(ctx, sp.Name); !errdefs.IsNotFound(err) {
		t.Fatalf("a spare is resolved by name: %v", err)
	}
	if ts, _ := f.m.ListTemplates(ctx); len(ts) != 1 || ts[0].Spares != 2 || len(ts[0].UsedBy) != 0 {
		t.Fatalf("templates = %+v", ts)
	}
	if _, err := f.m.Create(ctx, api.CreateVMRequest{Name: "x", Labels: map[string]string{spareLabel: "warm-x"}}, nil); errdefs.CodeOf(err) != errdefs.CodeInvalid {
		t.Fatalf("a create marking its vm a spare: %v", err)
	}

	// Taken: the spare becomes the create's VM.
	ids := []string{spares(t, f)[0].ID, spares(t, f)[1].ID}
	var evs []progress.Event
	req := poolReq("a")
	req.Labels, req.TTL = map[string]string{"app": "web"}, "1h"
	a, err := f.m.Create(ctx, req, phasesOf(&evs))
	if err != nil {
		t.Fatal(err)
	}
	if !hasPhase(evs, "pool") || hasPhase(evs, "warm") {
		t.Fatalf("create did not take a spare: %+v", evs)
	}
	if !slices.Contains(ids, a.ID) || a.Name != "a" || a.DNSName != "a."+f.m.cfg.DNSSuffix || a.Labels["app"] != "web" || isSpare(a) || a.ExpiresAt == nil || !f.m.Alive(a) {
		t.Fatalf("vm from the pool: %+v", a)
	}
	if got, err := f.m.Resolve(ctx, "a"); err != nil || got.ID != a.ID {
		t.Fatalf("resolve a: %+v %v", got, err)
	}
	guests.mu.Lock()
	renamed := slices.Clone(guests.renamed)
	guests.mu.Unlock()
	if !slices.Equal(renamed, []string{"a"}) {
		t.Fatalf("hostnames told = %v, want [a]", renamed)
	}
	// Refilled to N again, never past it.
	waitSpares(t, f, tm.Name, 2)
	if s := spares(t, f); len(s) != 2 {
		t.Fatalf("%d spares after the refill, want 2", len(s))
	}

	// A claim step that fails: the spare goes, the create restores.
	guests.mu.Lock()
	guests.refuseRename["bad"] = true
	guests.mu.Unlock()
	before := spares(t, f)
	evs = nil
	bad, err := f.m.Create(ctx, poolReq("bad"), phasesOf(&evs))
	if err != nil {
		t.Fatal(err)
	}
	if !hasPhase(evs, "pool") || !hasPhase(evs, "warm") || slices.ContainsFunc(before, func(v model.VM) bool { return v.ID == bad.ID }) {
		t.Fatalf("a failed claim did not fall back to a restore: %+v", evs)
	}
	gone := 0
	for _, s := range before {
		if _, err := f.st.GetVM(ctx, s.ID); err != nil {
			gone++
			if _, err := os.Stat(s.Dir); !errors.Is(err, os.ErrNotExist) || f.taps.Made[hostnet.TapName(s.ID)] {
				t.Fatalf("the spare whose claim failed left its directory or tap: %v", err)
			}
		}
	}
	if gone != 1 {
		t.Fatalf("%d spares deleted by a failed claim, want 1", gone)
	}

	// Unwarm: refused while a user's VM uses it, the pool kept; then
	// the spares go first.
	waitSpares(t, f, tm.Name, 2)
	if err := f.m.RemoveTemplate(ctx, tm.Name); errdefs.CodeOf(err) != errdefs.CodeConflict {
		t.Fatalf("unwarm of a template in use: %v", err)
	}
	for _, n := range []string{"a", "bad"} {
		if err := f.m.Delete(ctx, n, true); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.m.RemoveTemplate(ctx, tm.Name); err != nil {
		t.Fatalf("unwarm: %v", err)
	}
	if s := spares(t, f); len(s) != 0 || f.m.readySpares(tm.Name) != 0 {
		t.Fatalf("spares left after unwarm: %+v", s)
	}
	if len(f.taps.Made) != 0 {
		t.Fatalf("taps left: %v", f.taps.Made)
	}
}

// TestTakeSpareConcurrently: creates taking spares at once never get
// the same one; those left without one get none.
func TestTakeSpareConcurrently(t *testing.T) {
	m := &Manager{pool: newPool()}
	for i := range 5 {
		m.pool.ready["t"] = append(m.pool.ready["t"], fmt.Sprint("spare", i))
	}
	var mu sync.Mutex
	got := map[string]int{}
	none := 0
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id, ok := m.takeSpare("t")
			mu.Lock()
			defer mu.Unlock()
			if !ok {
				none++
				return
			}
			got[id]++
		}()
	}
	wg.Wait()
	if len(got) != 5 || none != 11 {
		t.Fatalf("taken %v, none %d", got, none)
	}
	for id, n := range got {
		if n != 1 {
			t.Fatalf("spare %s taken %d times", id, n)
		}
	}
}

// TestWarmPoolConcurrentClaims: two creates at once with one spare
// ready both succeed, with different VMs: one takes the spare, the
// other restores (or takes a refilled one).
func TestWarmPoolConcurrentClaims(t *testing.T) {
	ctx := context.Background()
	f, _, tm := poolFixture(t, 1)
	waitSpares(t, f, tm.Name, 1)
	var wg sync.WaitGroup
	vms := make([]model.VM, 2)
	errs := make([]error, 2)
	for i, n := range []string{"c1", "c2"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			vms[i], errs[i] = f.m.Create(ctx, poolReq(n), nil)
		}()
	}
	wg.Wait()
	if errs[0] != nil || errs[1] != nil {
		t.Fatal(errs)
	}
	if vms[0].ID == vms[1].ID || vms[0].GuestIP == vms[1].GuestIP || !f.m.Alive(vms[0]) || !f.m.Alive(vms[1]) {
		t.Fatalf("concurrent claims: %+v", vms)
	}
	for _, vm := range vms {
		if err := f.m.Delete(ctx, vm.Name, true); err != nil {
			t.Fatal(err)
		}
	}
	waitSpares(t, f, tm.Name, 1)
	if err := f.m.RemoveTemplate(ctx, tm.Name); err != nil {
		t.Fatal(err)
	}
	if s := spares(t, f); len(s) != 0 {
		t.Fatalf("spares left after unwarm: %+v", s)
	}
}

// TestStartPoolDeletesLeftSpares: at daemon start a spare that does not
// run, or past warm_pool, is deleted; with warm_pool 0 every spare goes.
func TestStartPoolDeletesLeftSpares(t *testing.T) {
	ctx := context.Background()
	f, _, tm := poolFixture(t, 2)
	waitSpares(t, f, tm.Name, 2)
	f.m.StopPool() // full: its refill has ended
	// A new daemon, the pool lowered to 1.
	m := New(Deps{Config: f.m.cfg, Store: f.m.store, Log: f.m.log, Now: time.Now, Drivers: f.m.drivers, Strategies: f.m.strategies,
		Taps: f.taps, Subnet: f.m.subnet, AuthorizedKey: f.m.authorizedKey, Artifacts: f.art, WaitGuest: f.m.waitGuest})
	m.handles = f.m.handles
	m.cfg.WarmPool = 1
	m.StartPool(ctx)
	m.StopPool()
	if s := spares(t, f); len(s) != 1 || m.readySpares(tm.Name) != 1 {
		t.Fatalf("after a start with warm_pool 1: %d spares, %d ready", len(s), m.readySpares(tm.Name))
	}
	m.cfg.WarmPool = 0
	m2 := New(Deps{Config: m.cfg, Store: f.m.store, Log: f.m.log, Now: time.Now, Drivers: f.m.drivers, Strategies: f.m.strategies,
		Taps: f.taps, Subnet: f.m.subnet, AuthorizedKey: f.m.authorizedKey, Artifacts: f.art, WaitGuest: f.m.waitGuest})
	m2.handles = f.m.handles
	m2.StartPool(ctx)
	if s := spares(t, f); len(s) != 0 {
		t.Fatalf("after a start with warm_pool 0: %d spares", len(s))
	}
}

// TestWarmOnFirstUse: with warm_on_first_use, a create that boots for
// want of a template has the template of its shape made in the
// background, and the next create of that shape is restored from it; a
// cold create, or the option off, makes none.
func TestWarmOnFirstUse(t *testing.T) {
	ctx := context.Background()
	f, _, _ := fcFixture(t)
	pctx, cancel := context.WithCancel(ctx)
	t.Cleanup(func() {
		cancel()
		f.m.StopPool()
	})
	f.m.StartPool(pctx)
	templates := func() []model.Snapshot {
		t.Helper()
		ts, err := f.m.ListTemplates(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return ts
	}
	settle := func() {
		t.Helper()
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			f.m.pool.mu.Lock()
			busy := f.m.pool.warming
			f.m.pool.mu.Unlock()
			if !busy {
				return
			}
			if time.Now().After(deadline) {
				t.Fatal("a template was still being made after 20s")
			}
		}
	}

	// Off: a booting create makes none.
	if _, err := f.m.Create(ctx, poolReq("off"), nil); err != nil {
		t.Fatal(err)
	}
	settle()
	if ts := templates(); len(ts) != 0 {
		t.Fatalf("templates with warm_on_first_use off: %+v", ts)
	}
	f.m.cfg.WarmOnFirstUse = true
	cold := poolReq("cold")
	cold.Cold = true
	if _, err := f.m.Create(ctx, cold, nil); err != nil {
		t.Fatal(err)
	}
	settle()
	if ts := templates(); len(ts) != 0 {
		t.Fatalf("templates after a cold create: %+v", ts)
	}

	var evs []progress.Event
	if _, err := f.m.Create(ctx, poolReq("first"), phasesOf(&evs)); err != nil {
		t.Fatal(err)
	}
	if hasPhase(evs, "warm") || !hasPhase(evs, "boot") {
		t.Fatalf("the first create's progress: %+v; want a boot", evs)
	}
	settle()
	ts := templates()
	if len(ts) != 1 || ts[0].State != model.SnapshotReady || ts[0].Stale != "" {
		t.Fatalf("templates after the first create: %+v", ts)
	}
	if _, err := f.m.Get(ctx, "warm-build-"+ts[0].Template[:8]); !errdefs.IsNotFound(err) {
		t.Fatalf("the vm the template was made from: %v", err)
	}

	evs = nil
	vm, err := f.m.Create(ctx, poolReq("second"), phasesOf(&evs))
	if err != nil {
		t.Fatal(err)
	}
	if !hasPhase(evs, "warm") || hasPhase(evs, "boot") {
		t.Fatalf("the second create's progress: %+v; want a restore from the template", evs)
	}
	if origin, err := f.st.SnapshotOf(ctx, vm.ID); err != nil || origin != ts[0].ID {
		t.Fatalf("the second vm was made from %q (%v), want the template %s", origin, err, ts[0].ID)
	}
	settle()
	if ts := templates(); len(ts) != 1 {
		t.Fatalf("templates after the second create: %+v", ts)
	}

	// Off again, and the template went stale (banger's guest side
	// changed): the next create of the shape boots and has it rebuilt,
	// as its shape was warmed; a create of another shape has none made.
	f.m.cfg.WarmOnFirstUse = false
	f.m.guestInit = func() string { return "sha256:another-banger-init" }
	other := poolReq("other")
	other.CPUs = 1 // poolReq's shape has the default 2
	if _, err := f.m.Create(ctx, other, nil); err != nil {
		t.Fatal(err)
	}
	settle()
	if ts := templates(); len(ts) != 1 || ts[0].Stale == "" {
		t.Fatalf("templates after a create of another shape: %+v", ts)
	}
	evs = nil
	if _, err := f.m.Create(ctx, poolReq("third"), phasesOf(&evs)); err != nil {
		t.Fatal(err)
	}
	if hasPhase(evs, "warm") {
		t.Fatalf("the third create was restored from a stale template: %+v", evs)
	}
	settle()
	ts = templates()
	fresh := slices.IndexFunc(ts, func(t model.Snapshot) bool { return t.Stale == "" && t.State == model.SnapshotReady })
	if len(ts) != 2 || fresh < 0 {
		t.Fatalf("templates after the stale one's shape was asked for: %+v (the stale one stays: vm second uses it)", ts)
	}
	for _, name := range []string{"off", "cold", "first", "second", "other", "third"} {
		if err := f.m.Delete(ctx, name, true); err != nil {
			t.Fatal(err)
		}
	}
}
