package vms

import (
	"context"
	"slices"
	"strings"
	"time"

	"github.com/banger/banger/internal/api"
	"github.com/banger/banger/internal/errdefs"
	"github.com/banger/banger/internal/model"
	"github.com/banger/banger/internal/store"
)

// Bounds of the expiry loop's sleep: a due VM that was busy (mid-boot,
// mid-stop) is tried again after expiryRetry; expiryIdle bounds a sleep
// in case a change of deadline was not signalled (another process).
const (
	expiryRetry = time.Second
	expiryIdle  = 30 * time.Second
)

// DueVMs are the VMs whose deadline is at or before now, earliest first.
func DueVMs(vms []model.VM, now time.Time) []model.VM {
	var due []model.VM
	for _, vm := range vms {
		if vm.ExpiresAt != nil && !vm.ExpiresAt.After(now) {
			due = append(due, vm)
		}
	}
	slices.SortStableFunc(due, func(a, b model.VM) int { return a.ExpiresAt.Compare(*b.ExpiresAt) })
	return due
}

// NextWake is how long the expiry loop sleeps after now: until the
// earliest deadline, but at least floor (a deadline already past is one
// that could not be enforced yet) and at most ceil.
func NextWake(vms []model.VM, now time.Time, floor, ceil time.Duration) time.Duration {
	wait := ceil
	for _, vm := range vms {
		if vm.ExpiresAt != nil {
			wait = min(wait, vm.ExpiresAt.Sub(now))
		}
	}
	return max(wait, floor)
}

// parseTTL reads a requested time to live and action into a deadline
// counted from now (nil for TTL "none", or "" when allowEmpty).
func parseTTL(now time.Time, ttl, action string, allowEmpty bool) (*time.Time, error) {
	if err := model.ValidateTTLAction(action); err != nil {
		return nil, errdefs.Invalid(err)
	}
	ttl = strings.TrimSpace(ttl)
	if ttl == model.TTLNone || (ttl == "" && allowEmpty) {
		return nil, nil
	}
	d, err := model.ParseTTL(ttl)
	if err != nil {
		return nil, errdefs.Invalid(err)
	}
	at := now.UTC().Add(d)
	return &at, nil
}

// SetTTL sets a VM's deadline to req.TTL from now, or clears it, and its
// idle timeout to req.Idle (each left alone when empty). It takes no VM
// lock: both have their own store writers, which whole-record saves
// leave alone, so that renewing a lease never waits minutes for a boot
// (and cannot be undone by one).
func (m *Manager) SetTTL(ctx context.Context, ref string, req api.VMTTLRequest) (model.VM, error) {
	vm, err := m.Resolve(ctx, ref)
	if err != nil {
		return vm, err
	}
	if strings.TrimSpace(req.TTL) == "" && strings.TrimSpace(req.Idle) == "" {
		return vm, errdefs.Errorf(errdefs.CodeInvalid, "give a ttl, an idle timeout, or both (each a duration such as 90s, 10m, 2h, 7d, or none)")
	}
	if strings.TrimSpace(req.Idle) != "" {
		if _, err := parseIdle(req.Idle, false); err != nil {
			return vm, err
		}
		if err := model.ValidateTTLAction(req.Action); err != nil {
			return vm, errdefs.Invalid(err)
		}
	}
	if strings.TrimSpace(req.TTL) != "" {
		if vm, err = m.setTTL(ctx, vm, req); err != nil {
			return vm, err
		}
	}
	if strings.TrimSpace(req.Idle) != "" {
		err = m.setIdle(ctx, &vm, req)
	}
	return vm, err
}

// setTTL sets or clears vm's deadline.
func (m *Manager) setTTL(ctx context.Context, vm model.VM, req api.VMTTLRequest) (model.VM, error) {
	at, err := parseTTL(m.now(), req.TTL, req.Action, false)
	if err != nil {
		return vm, err
	}
	action := req.Action
	if action == "" {
		action = vm.ExpireAction
	}
	if action == "" || at == nil {
		action = model.TTLDelete
	}
	if at == nil {
		action = ""
	}
	if err := m.store.SetVMExpiry(ctx, vm.ID, at, action); err != nil {
		return vm, store.Describe("vm", vm.Name, err)
	}
	vm.ExpiresAt, vm.ExpireAction = at, action
	m.pokeExpiry()
	m.log.Debug("vm deadline set", "vm", vm.Name, "expires_at", at, "action", action)
	return vm, nil
}

// pokeExpiry wakes the expiry loop to look at the deadlines again.
func (m *Manager) pokeExpiry() {
	select {
	case m.expiryChanged <- struct{}{}:
	default:
	}
}

// Expire enforces deadlines and idle timeouts until ctx ends: it sleeps
// until the earliest one (or a change), then deletes or stops every VM
// whose deadline passed or that has been idle for its idle timeout (or
// pauses it, action TTLPause).
func (m *Manager) Expire(ctx context.Context) {
	for {
		t := time.NewTimer(m.expireDue(ctx))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		case <-m.expiryChanged:
			t.Stop()
		}
	}
}

// expireDue enforces every passed deadline once and says how long to
// sleep before the next look.
func (m *Manager) expireDue(ctx context.Context) time.Duration {
	vms, err := m.store.ListVMs(ctx)
	if err != nil {
		m.log.Warn("deadlines: list vms", "err", err)
		return expiryRetry
	}
	due := DueVMs(vms, m.now())
	for _, vm := range due {
		m.enforceDeadline(ctx, vm.ID)
	}
	idle := IdleVMs(vms, m.uses(), m.since, m.now())
	for _, vm := range idle {
		m.enforceIdle(ctx, vm.ID)
	}
	if len(due)+len(idle) > 0 {
		// What is left: a VM that was busy is still due.
		if vms, err = m.store.ListVMs(ctx); err != nil {
			return expiryRetry
		}
	}
	return min(NextWake(vms, m.now(), expiryRetry, expiryIdle),
		NextIdleWake(vms, m.uses(), m.since, m.now(), expiryRetry, expiryIdle))
}

// stopOrPause stops vm (action TTLStop) or pauses it (TTLPause; stops
// it when its VMM cannot pause). Called with the VM's lock held.
func (m *Manager) stopOrPause(ctx context.Context, vm model.VM, action string) error {
	if action == model.TTLPause {
		_, err := m.pause(ctx, vm)
		if errdefs.CodeOf(err) != errdefs.CodeUnavailable {
			return err
		}
		m.log.Warn("cannot pause; stopping the vm instead", "vm", vm.Name, "err", err)
	}
	_, err := m.stop(ctx, vm, api.StopVMRequest{})
	return err
}

// doing is the log word of a stop or pause action.
func doing(action string) string {
	if action == model.TTLPause {
		return "pausing"
	}
	return "stopping"
}

// enforceDeadline deletes, stops or pauses a VM whose deadline passed, under its
// lock. A VM busy with other work (a boot, a stop) is left for the next
// look rather than waited for, so one long boot holds up no other VM.
func (m *Manager) enforceDeadline(ctx context.Context, id string) {
	unlock, ok := m.locks.TryLock(id)
	if !ok {
		return
	}
	vm, err := m.store.GetVM(ctx, id)
	// Read again under the lock: the deadline may have moved or gone.
	if err != nil || vm.ExpiresAt == nil || vm.ExpiresAt.After(m.now()) {
		unlock()
		return
	}
	if vm.ExpireAction == model.TTLStop || vm.ExpireAction == model.TTLPause {
		defer unlock()
		m.log.Info("vm deadline passed; "+doing(vm.ExpireAction)+" it", "vm", vm.Name, "expires_at", vm.ExpiresAt.Format(time.RFC3339))
		if m.Alive(vm) {
			if err := m.stopOrPause(ctx, vm, vm.ExpireAction); err != nil {
				m.log.Error("deadline: "+vm.ExpireAction+" vm", "vm", vm.Name, "err", err)
				return // tried again at the next look
			}
		}
		// Done with: a stopped VM must not be stopped again at every look.
		if err := m.store.SetVMExpiry(ctx, vm.ID, nil, ""); err != nil {
			m.log.Error("deadline: clear", "vm", vm.Name, "err", err)
		}
		return
	}
	m.log.Info("vm deadline passed; deleting it", "vm", vm.Name, "expires_at", vm.ExpiresAt.Format(time.RFC3339))
	err = m.remove(ctx, vm, true)
	unlock()
	if err != nil {
		m.log.Error("deadline: delete vm", "vm", vm.Name, "err", err)
		return
	}
	m.forgetAllowVM(ctx, vm.Name)
}
