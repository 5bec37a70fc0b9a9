package vms

import (
	"context"
	"testing"
	"time"

	"github.com/banger/banger/internal/api"
	"github.com/banger/banger/internal/errdefs"
	"github.com/banger/banger/internal/model"
)

func TestDueAndNextWake(t *testing.T) {
	now := time.Date(2030, 1, 1, 12, 0, 0, 0, time.UTC)
	at := func(d time.Duration) *time.Time { t := now.Add(d); return &t }
	vms := []model.VM{
		{Name: "none"},
		{Name: "later", ExpiresAt: at(10 * time.Minute)},
		{Name: "now", ExpiresAt: at(0)},
		{Name: "past", ExpiresAt: at(-time.Hour)},
		{Name: "soon", ExpiresAt: at(5 * time.Second)},
	}
	var names []string
	for _, vm := range DueVMs(vms, now) {
		names = append(names, vm.Name)
	}
	if len(names) != 2 || names[0] != "past" || names[1] != "now" {
		t.Fatalf("due = %v, want [past now]", names)
	}
	// The earliest deadline, but never less than the floor nor more than the ceiling.
	for _, tc := range []struct {
		vms  []model.VM
		now  time.Time
		want time.Duration
	}{
		{nil, now, 30 * time.Second},
		{vms[:1], now, 30 * time.Second},
		{vms[:2], now, 30 * time.Second},
		{vms[:2], now.Add(590 * time.Second), 10 * time.Second},
		{vms, now, time.Second},
		{[]model.VM{vms[4]}, now, 5 * time.Second},
		{[]model.VM{vms[4]}, now.Add(4500 * time.Millisecond), time.Second},
	} {
		if got := NextWake(tc.vms, tc.now, time.Second, 30*time.Second); got != tc.want {
			t.Errorf("NextWake(%d vms, +%v) = %v, want %v", len(tc.vms), tc.now.Sub(now), got, tc.want)
		}
	}
}

// clock is a fake clock for the manager.
type clock struct{ t time.Time }

func (c *clock) now() time.Time          { return c.t }
func (c *clock) advance(d time.Duration) { c.t = c.t.Add(d) }
func fakeClock(f *fixture) *clock        { c := &clock{t: time.Now().UTC()}; f.m.now = c.now; return c }
func exists(f *fixture, name string) bool {
	_, err := f.st.GetVM(context.Background(), name)
	return err == nil
}
func get(t *testing.T, f *fixture, name string) model.VM {
	t.Helper()
	vm, err := f.st.GetVM(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	return vm
}

func TestDeadlineDeletesRunningVM(t *testing.T) {
	f := newFixture(t)
	c := fakeClock(f)
	ctx := context.Background()
	vm, err := f.m.Create(ctx, api.CreateVMRequest{Name: "brief", Disk: "64M", TTL: "90s", Start: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if vm.ExpiresAt == nil || !vm.ExpiresAt.Equal(c.t.Add(90*time.Second)) || vm.ExpireAction != model.TTLDelete {
		t.Fatalf("deadline = %v %q", vm.ExpiresAt, vm.ExpireAction)
	}
	// A boot's whole-record saves keep the deadline.
	if got := get(t, f, "brief"); got.ExpiresAt == nil || !got.ExpiresAt.Equal(*vm.ExpiresAt) {
		t.Fatalf("stored deadline = %v", got.ExpiresAt)
	}
	keep, err := f.m.Create(ctx, api.CreateVMRequest{Name: "keep", Disk: "64M"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	c.advance(89 * time.Second)
	if wait := f.m.expireDue(ctx); wait != time.Second || !exists(f, "brief") {
		t.Fatalf("before the deadline: wait %v, exists %v", wait, exists(f, "brief"))
	}
	c.advance(time.Second)
	if wait := f.m.expireDue(ctx); wait != expiryIdle {
		t.Fatalf("after the deadline: wait %v", wait)
	}
	if exists(f, "brief") || !exists(f, keep.Name) {
		t.Fatalf("after the deadline: brief exists %v, keep exists %v", exists(f, "brief"), exists(f, keep.Name))
	}
	if len(f.drv.Procs) != 0 || len(f.taps.Made) != 0 {
		t.Fatalf("left behind: %d vmm, taps %v", len(f.drv.Procs), f.taps.Made)
	}
}

func TestDeadlineStopsVM(t *testing.T) {
	f := newFixture(t)
	c := fakeClock(f)
	ctx := context.Background()
	if _, err := f.m.Create(ctx, api.CreateVMRequest{Name: "nap", Disk: "64M", TTL: "10m", TTLAction: "stop", Start: true}, nil); err != nil {
		t.Fatal(err)
	}
	c.advance(11 * time.Minute)
	f.m.expireDue(ctx)
	vm := get(t, f, "nap")
	if vm.State != model.VMStopped || vm.ExpiresAt != nil || vm.ExpireAction != "" || f.m.Alive(vm) {
		t.Fatalf("after the deadline: %s alive=%v deadline %v %q", vm.State, f.m.Alive(vm), vm.ExpiresAt, vm.ExpireAction)
	}
}

// TestDeadlinePausesVM: action pause saves the VM at its deadline, which
// is then done with; a resume brings it back. An idle timeout pauses too.
func TestDeadlinePausesVM(t *testing.T) {
	f, _, _ := snapFixture(t)
	c := fakeClock(f)
	ctx := context.Background()
	if _, err := f.m.Create(ctx, api.CreateVMRequest{Name: "nap", Disk: "64M", TTL: "10m", TTLAction: "pause", Start: true}, nil); err != nil {
		t.Fatal(err)
	}
	c.advance(11 * time.Minute)
	f.m.expireDue(ctx)
	vm := assertPaused(t, f, "nap")
	if vm.ExpiresAt != nil || vm.ExpireAction != "" {
		t.Fatalf("deadline after the pause: %v %q", vm.ExpiresAt, vm.ExpireAction)
	}
	if vm, err := f.m.Resume(ctx, "nap", nil); err != nil || !f.m.Alive(vm) {
		t.Fatalf("resume after the deadline: %v", err)
	}
	// Idle for its idle timeout: paused again.
	if _, err := f.m.SetTTL(ctx, "nap", api.VMTTLRequest{Idle: "1m", Action: "pause"}); err != nil {
		t.Fatal(err)
	}
	c.advance(2 * time.Minute)
	f.m.expireDue(ctx)
	assertPaused(t, f, "nap")
	// A resume is activity: the VM is not paused again at once.
	if _, err := f.m.Resume(ctx, "nap", nil); err != nil {
		t.Fatal(err)
	}
	f.m.expireDue(ctx)
	if vm := get(t, f, "nap"); vm.State != model.VMRunning {
		t.Fatalf("right after the resume: %s", vm.State)
	}
	c.advance(2 * time.Minute)
	f.m.expireDue(ctx)
	assertPaused(t, f, "nap")
}

// TestDeadlinePauseWithoutSnapshots: a VMM that cannot pause stops the VM.
func TestDeadlinePauseWithoutSnapshots(t *testing.T) {
	f := newFixture(t)
	c := fakeClock(f)
	ctx := context.Background()
	if _, err := f.m.Create(ctx, api.CreateVMRequest{Name: "nap", Disk: "64M", TTL: "10m", TTLAction: "pause", Start: true}, nil); err != nil {
		t.Fatal(err)
	}
	c.advance(11 * time.Minute)
	f.m.expireDue(ctx)
	if vm := get(t, f, "nap"); vm.State != model.VMStopped || vm.ExpiresAt != nil || f.m.Alive(vm) {
		t.Fatalf("after the deadline: %s alive=%v deadline %v", vm.State, f.m.Alive(vm), vm.ExpiresAt)
	}
}

// A VM busy with other work is left for a later look, not waited for.
func TestDeadlineWaitsForBusyVM(t *testing.T) {
	f := newFixture(t)
	c := fakeClock(f)
	ctx := context.Background()
	vm, err := f.m.Create(ctx, api.CreateVMRequest{Name: "busy", Disk: "64M", TTL: "1m"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	c.advance(2 * time.Minute)
	_, unlock, err := f.m.Lock(ctx, vm.ID)
	if err != nil {
		t.Fatal(err)
	}
	if wait := f.m.expireDue(ctx); wait != expiryRetry || !exists(f, "busy") {
		t.Fatalf("while locked: wait %v, exists %v", wait, exists(f, "busy"))
	}
	unlock()
	f.m.expireDue(ctx)
	if exists(f, "busy") {
		t.Fatal("not deleted once free")
	}
}

// A deadline that passed while the daemon was down is enforced at
// start-up, before the VM can be used.
func TestReconcileEnforcesPassedDeadline(t *testing.T) {
	f := newFixture(t)
	c := fakeClock(f)
	ctx := context.Background()
	if _, err := f.m.Create(ctx, api.CreateVMRequest{Name: "stale", Disk: "64M", TTL: "20s", Start: true}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := f.m.Create(ctx, api.CreateVMRequest{Name: "fresh", Disk: "64M", TTL: "1h"}, nil); err != nil {
		t.Fatal(err)
	}
	c.advance(time.Minute)
	// A new daemon: nothing cached.
	m2 := New(Deps{Config: f.cfg, Store: f.st, Log: f.m.log, Now: c.now, Drivers: f.m.drivers,
		Strategies: f.m.strategies, Taps: f.taps, Subnet: f.m.subnet, Artifacts: f.art, WaitGuest: f.m.waitGuest})
	m2.Reconcile(ctx)
	if exists(f, "stale") || !exists(f, "fresh") {
		t.Fatalf("after reconcile: stale exists %v, fresh exists %v", exists(f, "stale"), exists(f, "fresh"))
	}
	if len(f.drv.Procs) != 0 {
		t.Fatalf("%d vmm left running", len(f.drv.Procs))
	}
}

func TestSetTTL(t *testing.T) {
	f := newFixture(t)
	c := fakeClock(f)
	ctx := context.Background()
	if _, err := f.m.Create(ctx, api.CreateVMRequest{Name: "v", Disk: "64M", TTL: "1m", TTLAction: "stop"}, nil); err != nil {
		t.Fatal(err)
	}
	// A new TTL counts from now and keeps the action.
	c.advance(30 * time.Second)
	vm, err := f.m.SetTTL(ctx, "v", api.VMTTLRequest{TTL: "2h"})
	if err != nil || vm.ExpiresAt == nil || !vm.ExpiresAt.Equal(c.t.Add(2*time.Hour)) || vm.ExpireAction != model.TTLStop {
		t.Fatalf("SetTTL 2h = %v %q, %v", vm.ExpiresAt, vm.ExpireAction, err)
	}
	if got := get(t, f, "v"); !got.ExpiresAt.Equal(*vm.ExpiresAt) || got.ExpireAction != model.TTLStop {
		t.Fatalf("stored: %v %q", got.ExpiresAt, got.ExpireAction)
	}
	if vm, err = f.m.SetTTL(ctx, "v", api.VMTTLRequest{TTL: "none"}); err != nil || vm.ExpiresAt != nil || vm.ExpireAction != "" {
		t.Fatalf("SetTTL none = %v %q, %v", vm.ExpiresAt, vm.ExpireAction, err)
	}
	if got := get(t, f, "v"); got.ExpiresAt != nil {
		t.Fatalf("cleared deadline stored as %v", got.ExpiresAt)
	}
	// After none, a new TTL without an action deletes.
	if vm, err = f.m.SetTTL(ctx, "v", api.VMTTLRequest{TTL: "5m"}); err != nil || vm.ExpireAction != model.TTLDelete {
		t.Fatalf("SetTTL 5m = %q, %v", vm.ExpireAction, err)
	}
	for _, req := range []api.VMTTLRequest{{TTL: ""}, {TTL: "soon"}, {TTL: "-1m"}, {TTL: "9999h"}, {TTL: "1m", Action: "nap"}} {
		if _, err := f.m.SetTTL(ctx, "v", req); errdefs.CodeOf(err) != errdefs.CodeInvalid {
			t.Errorf("SetTTL(%+v) = %v, want invalid", req, err)
		}
	}
	if _, err := f.m.SetTTL(ctx, "nope", api.VMTTLRequest{TTL: "1m"}); errdefs.CodeOf(err) != errdefs.CodeNotFound {
		t.Errorf("SetTTL of no vm = %v", err)
	}
	for _, req := range []api.CreateVMRequest{{Name: "a", TTL: "0s"}, {Name: "b", TTL: "40d"}, {Name: "c", TTLAction: "stop"}, {Name: "d", TTL: "1m", TTLAction: "nap"}} {
		if _, err := f.m.Create(ctx, req, nil); errdefs.CodeOf(err) != errdefs.CodeInvalid {
			t.Errorf("Create(%+v) = %v, want invalid", req, err)
		}
	}
}
