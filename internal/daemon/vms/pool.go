package vms

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/banger/banger/internal/errdefs"
	"github.com/banger/banger/internal/guestctl"
	"github.com/banger/banger/internal/model"
	"github.com/banger/banger/internal/progress"
	"github.com/banger/banger/internal/store"
)

// The warm pool (config warm_pool): with N > 0 the daemon keeps up to N
// spare VMs per fresh warm-start template, restored from it ahead of
// time through forkOne (each its own ID, address, MAC, tap, host key and
// machine id, its guest ready). A booting create of the template's
// shape takes a ready spare instead of restoring (claimSpare): it is
// renamed, given the create's labels, deadlines, network policy and
// hostname, and from then on is an ordinary VM. Spares are the daemon's
// own, marked by spareLabel in their record (a label, not a new column:
// it is what a VM's record already carries for the daemon's own marks,
// like warmBuildLabel, and it needs no migration); they are hidden from
// List and Resolve, as templates are from the snapshot list.

// spareLabel marks a spare VM; its value names the template it was
// restored from. A create may not set it.
const spareLabel = "banger.dev/spare"

// spareRetryMax bounds the wait between failed refills of a template.
const spareRetryMax = time.Minute

// claimRefillDelay is how long a refill waits after a claim before it
// restores the next spare: a restore takes the host's CPU (much of it
// under TCG) just when the claimed VM runs its first commands, whose
// code its guest has not run since its restore.
const claimRefillDelay = 2 * time.Second

// isSpare says whether vm is a spare of the warm pool. Pure.
func isSpare(vm model.VM) bool { return vm.Labels[spareLabel] != "" }

// pool is the warm pool's momentary truth: which spares are ready and
// which templates are being refilled. The records are in the store.
type pool struct {
	mu sync.Mutex
	// ctx lives as long as the daemon (StartPool); nil before: no refill.
	ctx context.Context
	// ready are the ids of the ready spares of each template (by name),
	// oldest first. A spare is taken out of it under mu, so no two
	// creates get the same one.
	ready map[string][]string
	fill  map[string]*filler
	// delay is claimRefillDelay (tests shorten it).
	delay time.Duration
	// draining are the templates whose spares are being deleted (their
	// removal is under way): no refill starts for them.
	draining map[string]bool
	// warming is set while a template is made on first use
	// (warmOnFirstUse): one at a time, as each costs a boot.
	warming bool
	wg      sync.WaitGroup
}

// filler is a template's refill, running.
type filler struct {
	cancel context.CancelFunc
	done   chan struct{}
}

func newPool() pool {
	return pool{ready: map[string][]string{}, fill: map[string]*filler{}, draining: map[string]bool{}, delay: claimRefillDelay}
}

// StartPool starts the warm pool, at daemon start after Reconcile: the
// spares a previous daemon left are kept when they run and their
// template is fresh (up to warm_pool of each), else deleted; then every
// fresh template is refilled in the background until ctx ends.
func (m *Manager) StartPool(ctx context.Context) {
	m.pool.mu.Lock()
	m.pool.ctx = ctx
	m.pool.mu.Unlock()
	vms, err := m.store.ListVMs(ctx)
	if err != nil {
		m.log.Warn("warm pool: list vms", "err", err)
		return
	}
	guest := m.guestSide()
	kept := map[string]int{}
	for _, vm := range vms {
		if !isSpare(vm) {
			continue
		}
		tn := vm.Labels[spareLabel]
		why := ""
		t, err := m.store.GetSnapshot(ctx, tn)
		switch {
		case err != nil || t.Template == "" || t.State != model.SnapshotReady:
			why = "its template is gone"
		case m.staleness(ctx, t, guest) != "":
			why = "its template is stale"
		case !m.Alive(vm):
			why = "it does not run"
		case kept[tn] >= m.cfg.WarmPool:
			why = "the pool is full (warm_pool lowered)"
		}
		if why != "" {
			m.log.Info("warm pool: deleting a spare", "vm", vm.Name, "why", why)
			m.deleteSpare(ctx, vm.ID)
			continue
		}
		kept[tn]++
		m.pool.mu.Lock()
		m.pool.ready[tn] = append(m.pool.ready[tn], vm.ID)
		m.pool.mu.Unlock()
	}
	if m.cfg.WarmPool <= 0 {
		return
	}
	ts, err := m.ListTemplates(ctx)
	if err != nil {
		return
	}
	for _, t := range ts {
		if t.Stale == "" && t.State == model.SnapshotReady {
			m.refill(t.Name)
		}
	}
}

// StopPool waits for the refills under way, and a template being made
// on first use, which end with StartPool's context (a spare or a
// template half made is undone).
func (m *Manager) StopPool() { m.pool.wg.Wait() }

// readySpares is how many spares of the template are ready.
func (m *Manager) readySpares(template string) int {
	m.pool.mu.Lock()
	defer m.pool.mu.Unlock()
	return len(m.pool.ready[template])
}

// refill makes spares of the template in the background, one at a time,
// until warm_pool are ready; nothing when one is under way, the pool is
// off or not started. After a claim it begins after the pool's delay.
func (m *Manager) refill(template string) { m.refillAfter(template, 0) }

func (m *Manager) refillAfter(template string, delay time.Duration) {
	p := &m.pool
	p.mu.Lock()
	defer p.mu.Unlock()
	if m.cfg.WarmPool <= 0 || p.ctx == nil || p.ctx.Err() != nil || p.fill[template] != nil || p.draining[template] {
		return
	}
	ctx, cancel := context.WithCancel(p.ctx)
	f := &filler{cancel: cancel, done: make(chan struct{})}
	p.fill[template] = f
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		defer close(f.done)
		defer cancel()
		select {
		case <-ctx.Done():
		case <-time.After(delay):
		}
		m.fillLoop(ctx, template, f)
	}()
}

// fillLoop is a template's refill: a failed spare is logged and tried
// again after a wait that doubles up to spareRetryMax.
func (m *Manager) fillLoop(ctx context.Context, template string, f *filler) {
	p := &m.pool
	end := func() {
		p.mu.Lock()
		if p.fill[template] == f {
			delete(p.fill, template)
		}
		p.mu.Unlock()
	}
	wait := time.Second
	for {
		// The check that the pool is full and the end of the refill are
		// one step: a claim meanwhile finds no refill and starts one.
		p.mu.Lock()
		if len(p.ready[template]) >= m.cfg.WarmPool || ctx.Err() != nil {
			if p.fill[template] == f {
				delete(p.fill, template)
			}
			p.mu.Unlock()
			return
		}
		p.mu.Unlock()
		t, err := m.store.GetSnapshot(ctx, template)
		if err != nil || t.Template == "" || t.State != model.SnapshotReady || m.staleness(ctx, t, m.guestSide()) != "" {
			end()
			return
		}
		if err := m.makeSpare(ctx, t); err != nil {
			if ctx.Err() != nil {
				end()
				return
			}
			m.log.Warn("warm pool: spare not made; trying again later", "template", template, "in", wait.String(), "err", err)
			select {
			case <-ctx.Done():
			case <-time.After(wait):
			}
			wait = min(2*wait, spareRetryMax)
			continue
		}
		wait = time.Second
	}
}

// makeSpare restores one spare from the template and adds it to the
// ready ones; on failure nothing of it is left (forkOne).
func (m *Manager) makeSpare(ctx context.Context, t model.Snapshot) error {
	start := time.Now()
	id := model.NewID()
	in := vmIntent{ID: id, Name: "spare-" + model.ShortID(id), Net: snapshotNet(t), Labels: map[string]string{spareLabel: t.Name}}
	vm, err := m.forkOne(ctx, t, in, progress.OrNop(nil))
	if err != nil {
		return err
	}
	m.pool.mu.Lock()
	m.pool.ready[t.Name] = append(m.pool.ready[t.Name], vm.ID)
	n := len(m.pool.ready[t.Name])
	m.pool.mu.Unlock()
	m.log.Info("warm pool: spare ready", "template", t.Name, "vm", vm.Name, "ready", n, "seconds", time.Since(start).Seconds())
	return nil
}

// takeSpare takes a ready spare of the template out of the pool; no two
// callers get the same one.
func (m *Manager) takeSpare(template string) (string, bool) {
	m.pool.mu.Lock()
	defer m.pool.mu.Unlock()
	ids := m.pool.ready[template]
	if len(ids) == 0 {
		return "", false
	}
	m.pool.ready[template] = slices.Clone(ids[1:])
	return ids[0], true
}

// claimSpare makes a booting create's VM out of a ready spare of the
// template (ok), and starts the pool's refill. A claim that fails
// deletes the spare and answers !ok, so the create restores instead.
func (m *Manager) claimSpare(ctx context.Context, t model.Snapshot, in vmIntent, report progress.Func) (model.VM, bool) {
	if m.cfg.WarmPool <= 0 {
		return model.VM{}, false
	}
	defer m.refillAfter(t.Name, m.pool.delay)
	id, ok := m.takeSpare(t.Name)
	if !ok {
		return model.VM{}, false
	}
	vm, err := m.claim(ctx, id, t, in, report)
	if err != nil {
		m.log.Warn("warm pool: claim failed; deleting the spare and restoring instead", "vm", in.Name, "template", t.Name, "err", err)
		report(progress.Event{Phase: "pool", Message: fmt.Sprintf("spare not taken (%v): restoring", err)})
		m.deleteSpare(context.WithoutCancel(ctx), id)
		return model.VM{}, false
	}
	return vm, true
}

// claim turns the spare id into the create's VM, under the spare's lock:
// its name (record and DNS name), labels, deadlines, network policy (its
// tap's rules rewritten when it differs) and the guest's hostname and
// /etc/hosts over the control channel; the record is written last.
func (m *Manager) claim(ctx context.Context, id string, t model.Snapshot, in vmIntent, report progress.Func) (model.VM, error) {
	start := time.Now()
	unlock := m.locks.Lock(id)
	defer unlock()
	vm, err := m.store.GetVM(ctx, id)
	if err != nil {
		return model.VM{}, err
	}
	if vm.Labels[spareLabel] != t.Name || !m.Alive(vm) {
		return model.VM{}, fmt.Errorf("spare %s is no longer a running spare of %s", vm.Name, t.Name)
	}
	report(progress.Event{Phase: "pool", Message: fmt.Sprintf("taking spare %s restored ahead of time from template %s", vm.Name, t.Name)})
	spare := vm
	now := m.now().UTC()
	vm.Name, vm.DNSName = in.Name, in.Name+"."+m.cfg.DNSSuffix
	vm.Labels, vm.Net = in.Labels, in.Net
	vm.CreatedAt, vm.StartedAt = now, &now
	vm.ExpiresAt, vm.ExpireAction, vm.IdleTimeoutSeconds, vm.IdleAction = nil, "", 0, ""
	applyDeadlines(&vm, in, now)
	if vm.Net.String() != spare.Net.String() {
		if err := m.checkNet(ctx, vm); err != nil {
			return model.VM{}, err
		}
		if err := m.applyNet(ctx, vm); err != nil {
			return model.VM{}, err
		}
	}
	if err := m.tellHostname(ctx, vm); err != nil {
		return model.VM{}, err
	}
	vm.UpdatedAt = now
	if err := store.Describe("vm", vm.Name, m.store.ReplaceVM(ctx, vm)); err != nil {
		return model.VM{}, err
	}
	if vm.ExpiresAt != nil || vm.IdleTimeoutSeconds > 0 {
		m.pokeExpiry()
	}
	report(progress.Event{Phase: "ready", Message: fmt.Sprintf("%s is running at %s", vm.Name, vm.GuestIP), Elapsed: time.Since(start).Seconds()})
	m.log.Info("vm taken from the warm pool", "vm", vm.Name, "spare", spare.Name, "template", t.Name, "seconds", time.Since(start).Seconds())
	return vm, nil
}

// tellHostname gives a claimed spare's guest its new hostname (and
// /etc/hosts) over the control channel.
func (m *Manager) tellHostname(ctx context.Context, vm model.VM) error {
	drv, err := m.driver(vm.VMM)
	if err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, err := dialControl(cctx, vm, drv)
	if err != nil {
		return err
	}
	defer c.Close()
	rep, err := c.Call(cctx, guestctl.Request{Op: guestctl.OpIdentity, Hostname: vm.Name})
	if err != nil {
		return fmt.Errorf("tell the guest its hostname: %w", err)
	}
	if rep.Identity == nil || rep.Identity.Hostname != vm.Name {
		return fmt.Errorf("the guest did not take its hostname (it answered %+v)", rep.Identity)
	}
	return nil
}

// deleteSpare deletes a spare (it is the daemon's own: no user lock
// path resolves it); a failure is logged.
func (m *Manager) deleteSpare(ctx context.Context, id string) {
	unlock := m.locks.Lock(id)
	defer unlock()
	vm, err := m.store.GetVM(ctx, id)
	if err != nil {
		return
	}
	if err := m.remove(ctx, vm, true); err != nil {
		m.log.Error("warm pool: could not delete a spare", "vm", vm.Name, "err", err)
	}
}

// drainPool stops the template's refill and deletes its spares, ready
// or not: before the template is removed (they are VMs made from it).
// No refill of it starts until the caller calls done.
func (m *Manager) drainPool(ctx context.Context, template string) (done func()) {
	p := &m.pool
	p.mu.Lock()
	p.draining[template] = true
	done = func() {
		p.mu.Lock()
		delete(p.draining, template)
		p.mu.Unlock()
	}
	f := p.fill[template]
	delete(p.fill, template)
	delete(p.ready, template)
	p.mu.Unlock()
	if f != nil {
		f.cancel()
		<-f.done
	}
	vms, err := m.store.ListVMs(ctx)
	if err != nil {
		return done
	}
	for _, vm := range vms {
		if vm.Labels[spareLabel] == template {
			m.deleteSpare(ctx, vm.ID)
		}
	}
	return done
}

// refuseSpareLabel refuses a create's labels that would mark its VM as
// a spare.
func refuseSpareLabel(labels map[string]string) error {
	if _, ok := labels[spareLabel]; ok {
		return errdefs.Errorf(errdefs.CodeInvalid, "label %s is the daemon's own", spareLabel)
	}
	return nil
}
