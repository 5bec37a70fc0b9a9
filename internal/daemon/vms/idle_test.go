package vms

import (
	"context"
	"testing"
	"time"

	"github.com/banger/banger/internal/api"
	"github.com/banger/banger/internal/errdefs"
	"github.com/banger/banger/internal/model"
)

func TestIdleDeadline(t *testing.T) {
	since := time.Date(2030, 1, 1, 12, 0, 0, 0, time.UTC)
	at := func(d time.Duration) *time.Time { t := since.Add(d); return &t }
	run := func(name string, idle int, started *time.Time) model.VM {
		return model.VM{ID: name, Name: name, State: model.VMRunning, IdleTimeoutSeconds: idle, StartedAt: started}
	}
	for _, tc := range []struct {
		name   string
		vm     model.VM
		use    Use
		want   time.Time
		wantOK bool
	}{
		{"no timeout", run("a", 0, at(0)), Use{}, time.Time{}, false},
		{"stopped", model.VM{State: model.VMStopped, IdleTimeoutSeconds: 10}, Use{}, time.Time{}, false},
		{"busy", run("a", 10, at(0)), Use{Busy: 1, Last: *at(time.Hour)}, time.Time{}, false},
		{"booted before the daemon: counts from its start", run("a", 10, at(-time.Hour)), Use{}, *at(10 * time.Second), true},
		{"booted after", run("a", 10, at(time.Minute)), Use{}, *at(time.Minute + 10*time.Second), true},
		{"last activity", run("a", 10, at(time.Minute)), Use{Last: *at(time.Hour)}, *at(time.Hour + 10*time.Second), true},
		{"activity before the boot", run("a", 10, at(time.Hour)), Use{Last: *at(time.Minute)}, *at(time.Hour + 10*time.Second), true},
	} {
		got, ok := IdleDeadline(tc.vm, tc.use, since)
		if ok != tc.wantOK || !got.Equal(tc.want) {
			t.Errorf("%s: IdleDeadline = %v %v, want %v %v", tc.name, got, ok, tc.want, tc.wantOK)
		}
	}
	vms := []model.VM{run("late", 60, at(0)), run("early", 5, at(0)), run("busy", 1, at(0)), run("none", 0, at(0))}
	uses := map[string]Use{"busy": {Busy: 2}}
	if got := IdleVMs(vms, uses, since, since.Add(4*time.Second)); len(got) != 0 {
		t.Fatalf("idle at +4s = %v", got)
	}
	if got := IdleVMs(vms, uses, since, since.Add(61*time.Second)); len(got) != 2 || got[0].Name != "early" || got[1].Name != "late" {
		t.Fatalf("idle at +61s = %v, want [early late]", got)
	}
	for _, tc := range []struct {
		now  time.Duration
		want time.Duration
	}{{0, 5 * time.Second}, {4500 * time.Millisecond, time.Second}, {10 * time.Second, time.Second}} {
		if got := NextIdleWake(vms, uses, since, since.Add(tc.now), time.Second, 30*time.Second); got != tc.want {
			t.Errorf("NextIdleWake(+%v) = %v, want %v", tc.now, got, tc.want)
		}
	}
	if got := NextIdleWake(vms[2:], uses, since, since, time.Second, 30*time.Second); got != 30*time.Second {
		t.Errorf("NextIdleWake without idle VMs = %v", got)
	}
}

func TestIdleDeletesVMAfterLastActivity(t *testing.T) {
	f := newFixture(t)
	c := fakeClock(f)
	ctx := context.Background()
	vm, err := f.m.Create(ctx, api.CreateVMRequest{Name: "idler", Disk: "64M", IdleTimeout: "15s", Start: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if vm.IdleTimeoutSeconds != 15 || vm.IdleAction != model.TTLDelete {
		t.Fatalf("idle = %d %q", vm.IdleTimeoutSeconds, vm.IdleAction)
	}
	// A boot's whole-record saves keep it.
	if got := get(t, f, "idler"); got.IdleTimeoutSeconds != 15 || got.IdleAction != model.TTLDelete {
		t.Fatalf("stored idle = %d %q", got.IdleTimeoutSeconds, got.IdleAction)
	}
	c.advance(10 * time.Second)
	if wait := f.m.expireDue(ctx); wait != 5*time.Second || !exists(f, "idler") {
		t.Fatalf("10s after boot: wait %v, exists %v", wait, exists(f, "idler"))
	}
	// Work in progress keeps it however long it takes.
	done := f.m.Active(vm.ID)
	c.advance(time.Minute)
	if wait := f.m.expireDue(ctx); wait != expiryIdle || !exists(f, "idler") {
		t.Fatalf("while busy: wait %v, exists %v", wait, exists(f, "idler"))
	}
	done()
	done() // a second call is harmless
	c.advance(14 * time.Second)
	if f.m.expireDue(ctx); !exists(f, "idler") {
		t.Fatal("deleted 14s after the last activity")
	}
	if at := f.m.IdleDeadlineOf(get(t, f, "idler")); at == nil || !at.Equal(c.t.Add(time.Second)) {
		t.Fatalf("IdleDeadlineOf = %v, want %v", at, c.t.Add(time.Second))
	}
	c.advance(time.Second)
	f.m.expireDue(ctx)
	if exists(f, "idler") {
		t.Fatal("not deleted 15s after the last activity")
	}
	if len(f.drv.Procs) != 0 || len(f.taps.Made) != 0 {
		t.Fatalf("left behind: %d vmm, taps %v", len(f.drv.Procs), f.taps.Made)
	}
}

func TestIdleStopsVMAndSetTTL(t *testing.T) {
	f := newFixture(t)
	c := fakeClock(f)
	ctx := context.Background()
	if _, err := f.m.Create(ctx, api.CreateVMRequest{Name: "nap", Disk: "64M", Start: true}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := f.m.SetTTL(ctx, "nap", api.VMTTLRequest{}); errdefs.CodeOf(err) != errdefs.CodeInvalid {
		t.Fatalf("SetTTL without ttl or idle = %v", err)
	}
	if _, err := f.m.SetTTL(ctx, "nap", api.VMTTLRequest{Idle: "soon"}); errdefs.CodeOf(err) != errdefs.CodeInvalid {
		t.Fatalf("SetTTL with a bad idle = %v", err)
	}
	vm, err := f.m.SetTTL(ctx, "nap", api.VMTTLRequest{Idle: "1m", Action: model.TTLStop})
	if err != nil || vm.IdleTimeoutSeconds != 60 || vm.IdleAction != model.TTLStop || vm.ExpiresAt != nil {
		t.Fatalf("SetTTL idle = %+v, %v", vm, err)
	}
	// Counted from the boot (or the daemon's start), not from the setting.
	c.advance(61 * time.Second)
	f.m.expireDue(ctx)
	vm = get(t, f, "nap")
	if vm.State != model.VMStopped || f.m.Alive(vm) || vm.IdleTimeoutSeconds != 60 {
		t.Fatalf("after idle: %s alive=%v idle %d", vm.State, f.m.Alive(vm), vm.IdleTimeoutSeconds)
	}
	// A stopped VM is never idle: the next look leaves it.
	c.advance(time.Hour)
	if f.m.expireDue(ctx); !exists(f, "nap") {
		t.Fatal("stopped VM deleted")
	}
	if vm, err = f.m.SetTTL(ctx, "nap", api.VMTTLRequest{Idle: "none"}); err != nil || vm.IdleTimeoutSeconds != 0 || vm.IdleAction != "" {
		t.Fatalf("SetTTL idle none = %+v, %v", vm, err)
	}
	if got := get(t, f, "nap"); got.IdleTimeoutSeconds != 0 {
		t.Fatalf("stored idle after none = %d", got.IdleTimeoutSeconds)
	}
	if _, err := f.m.Create(ctx, api.CreateVMRequest{Name: "bad", Disk: "64M", IdleTimeout: "0s"}, nil); errdefs.CodeOf(err) != errdefs.CodeInvalid {
		t.Fatalf("create with idle 0s = %v", err)
	}
}
