package vms

import (
	"context"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/banger/banger/internal/api"
	"github.com/banger/banger/internal/errdefs"
	"github.com/banger/banger/internal/model"
	"github.com/banger/banger/internal/store"
)

// Activity is how the daemon's other services tell the VM lifecycle that
// a VM is in use (an exec, session I/O, a file operation, a forwarded
// connection), for the idle timeout. *Manager implements it.
type Activity interface {
	// Active marks the VM with this id in use until done is called; a
	// VM is idle only while nothing is in use. done may be called once.
	Active(vmID string) (done func())
}

var _ Activity = (*Manager)(nil)

// Use is what the daemon knows of a VM's activity: how many operations
// are in progress and when the last one ended (zero: none since the
// daemon started).
type Use struct {
	Busy int
	Last time.Time
}

// IdleDeadline is when vm becomes idle, counting from the latest of its
// last activity, its boot and since (the daemon's start: activity is kept
// in memory only). ok is false when the VM has no idle timeout, does not
// run, or has something in progress.
func IdleDeadline(vm model.VM, u Use, since time.Time) (at time.Time, ok bool) {
	if vm.IdleTimeoutSeconds <= 0 || vm.State != model.VMRunning || u.Busy > 0 {
		return time.Time{}, false
	}
	last := since
	if vm.StartedAt != nil && vm.StartedAt.After(last) {
		last = *vm.StartedAt
	}
	if u.Last.After(last) {
		last = u.Last
	}
	return last.Add(time.Duration(vm.IdleTimeoutSeconds) * time.Second), true
}

// IdleVMs are the running VMs idle at now, longest idle first.
func IdleVMs(vms []model.VM, uses map[string]Use, since, now time.Time) []model.VM {
	type due struct {
		vm model.VM
		at time.Time
	}
	var ds []due
	for _, vm := range vms {
		if at, ok := IdleDeadline(vm, uses[vm.ID], since); ok && !at.After(now) {
			ds = append(ds, due{vm, at})
		}
	}
	slices.SortStableFunc(ds, func(a, b due) int { return a.at.Compare(b.at) })
	out := make([]model.VM, 0, len(ds))
	for _, d := range ds {
		out = append(out, d.vm)
	}
	return out
}

// NextIdleWake is how long the expiry loop sleeps after now for idle
// timeouts: until the earliest VM becomes idle, within floor and ceil.
func NextIdleWake(vms []model.VM, uses map[string]Use, since, now time.Time, floor, ceil time.Duration) time.Duration {
	wait := ceil
	for _, vm := range vms {
		if at, ok := IdleDeadline(vm, uses[vm.ID], since); ok {
			wait = min(wait, at.Sub(now))
		}
	}
	return max(wait, floor)
}

// usage is the in-memory activity of each VM.
type usage struct {
	mu   sync.Mutex
	uses map[string]Use
}

// Active marks a VM in use until done is called.
func (m *Manager) Active(vmID string) (done func()) {
	m.usage.mu.Lock()
	u := m.usage.uses[vmID]
	u.Busy++
	m.usage.uses[vmID] = u
	m.usage.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			m.usage.mu.Lock()
			u := m.usage.uses[vmID]
			u.Busy = max(u.Busy-1, 0)
			u.Last = m.now().UTC()
			m.usage.uses[vmID] = u
			idle := u.Busy == 0
			m.usage.mu.Unlock()
			if idle {
				// The idle deadline moved: the loop may sleep too long.
				m.pokeExpiry()
			}
		})
	}
}

// uses is a copy of every VM's activity.
func (m *Manager) uses() map[string]Use {
	m.usage.mu.Lock()
	defer m.usage.mu.Unlock()
	out := make(map[string]Use, len(m.usage.uses))
	for id, u := range m.usage.uses {
		out[id] = u
	}
	return out
}

// use is one VM's activity.
func (m *Manager) use(vmID string) Use {
	m.usage.mu.Lock()
	defer m.usage.mu.Unlock()
	return m.usage.uses[vmID]
}

// forgetUse drops a deleted VM's activity.
func (m *Manager) forgetUse(vmID string) {
	m.usage.mu.Lock()
	delete(m.usage.uses, vmID)
	m.usage.mu.Unlock()
}

// IdleDeadlineOf is when a VM becomes idle as the daemon counts now (for
// `vm show`); nil when it has no idle timeout, does not run or is in use.
func (m *Manager) IdleDeadlineOf(vm model.VM) *time.Time {
	at, ok := IdleDeadline(vm, m.use(vm.ID), m.since)
	if !ok {
		return nil
	}
	return &at
}

// parseIdle reads a requested idle timeout into seconds (0 for "none",
// or "" when allowEmpty).
func parseIdle(idle string, allowEmpty bool) (int, error) {
	idle = strings.TrimSpace(idle)
	if idle == model.TTLNone || (idle == "" && allowEmpty) {
		return 0, nil
	}
	d, err := model.ParseTTL(idle)
	if err != nil {
		return 0, errdefs.Errorf(errdefs.CodeInvalid, "idle timeout: %v", err)
	}
	return int((d + time.Second/2) / time.Second), nil
}

// setIdle sets or clears a VM's idle timeout (req.Idle) and its action.
func (m *Manager) setIdle(ctx context.Context, vm *model.VM, req api.VMTTLRequest) error {
	secs, err := parseIdle(req.Idle, false)
	if err != nil {
		return err
	}
	action := req.Action
	if action == "" {
		action = vm.IdleAction
	}
	if action == "" {
		action = model.TTLDelete
	}
	if secs == 0 {
		action = ""
	}
	if err := m.store.SetVMIdle(ctx, vm.ID, secs, action); err != nil {
		return store.Describe("vm", vm.Name, err)
	}
	vm.IdleTimeoutSeconds, vm.IdleAction = secs, action
	m.pokeExpiry()
	m.log.Debug("vm idle timeout set", "vm", vm.Name, "seconds", secs, "action", action)
	return nil
}

// enforceIdle deletes or stops a VM that became idle, under its lock
// (left for the next look when the VM is busy with other work).
func (m *Manager) enforceIdle(ctx context.Context, id string) {
	unlock, ok := m.locks.TryLock(id)
	if !ok {
		return
	}
	vm, err := m.store.GetVM(ctx, id)
	// Read again under the lock: the timeout may have changed, the VM
	// stopped, or work begun.
	if err != nil || !m.Alive(vm) {
		unlock()
		return
	}
	if at, ok := IdleDeadline(vm, m.use(id), m.since); !ok || at.After(m.now()) {
		unlock()
		return
	}
	idle := (time.Duration(vm.IdleTimeoutSeconds) * time.Second).String()
	if vm.IdleAction == model.TTLStop || vm.IdleAction == model.TTLPause {
		defer unlock()
		m.log.Info("vm idle; "+doing(vm.IdleAction)+" it", "vm", vm.Name, "idle_timeout", idle)
		if err := m.stopOrPause(ctx, vm, vm.IdleAction); err != nil {
			m.log.Error("idle: "+vm.IdleAction+" vm", "vm", vm.Name, "err", err)
		}
		return
	}
	m.log.Info("vm idle; deleting it", "vm", vm.Name, "idle_timeout", idle)
	err = m.remove(ctx, vm, true)
	unlock()
	if err != nil {
		m.log.Error("idle: delete vm", "vm", vm.Name, "err", err)
		return
	}
	m.forgetAllowVM(ctx, vm.Name)
}
