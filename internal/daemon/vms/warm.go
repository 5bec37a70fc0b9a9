package vms

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/banger/banger/internal/api"
	"github.com/banger/banger/internal/errdefs"
	"github.com/banger/banger/internal/model"
	"github.com/banger/banger/internal/progress"
	"github.com/banger/banger/internal/store"
	"github.com/banger/banger/internal/vmm"
)

// guestSide is the daemon's current guest side (guestSideKey).
func (m *Manager) guestSide() string {
	sum := ""
	if m.guestInit != nil {
		sum = m.guestInit()
	}
	return guestSideKey(sum, m.authorizedKey, m.subnet)
}

// canRestore says why VMs of this driver, strategy and image cannot be
// made by restoring a snapshot, or nil.
func canRestore(drv vmm.Driver, strategy string, im model.Image) error {
	if _, err := snapshotter(drv); err != nil {
		return err
	}
	if _, ok := drv.(vmm.Controller); !ok {
		return errdefs.Errorf(errdefs.CodeUnavailable, "vmm %s has no control channel to tell a restored vm who it is", drv.Name())
	}
	if !snapshotStrategies[strategy] {
		return errdefs.Errorf(errdefs.CodeUnavailable, "a %s system disk cannot be captured yet (qcow2 and reflink can)", strategy)
	}
	if im.Init != "fast" {
		return errdefs.Errorf(errdefs.CodeUnavailable, "image %s does not run banger-init as PID 1 (init %q), which serves the control channel a restored vm is told its identity on: build it with --init fast", im.Name, im.Init)
	}
	return nil
}

// createFromSnapshot is a create with req.FromSnapshot: a fork of that
// snapshot with the create's own name, deadlines and labels, and its
// network policy when it names one (else the snapshot's).
func (m *Manager) createFromSnapshot(ctx context.Context, req api.CreateVMRequest, in vmIntent, report progress.Func) (model.VM, error) {
	for _, f := range []struct{ flag, v string }{
		{"image", req.Image}, {"kernel", req.Kernel}, {"memory", req.Memory}, {"disk", req.Disk}, {"vmm", req.VMM},
		{"cpus", map[bool]string{true: strconv.Itoa(req.CPUs)}[req.CPUs != 0]},
	} {
		if f.v != "" {
			return model.VM{}, errdefs.Errorf(errdefs.CodeInvalid, "--%s does not go with --from-snapshot: the vm has the snapshot's image, kernel, sizes and vmm", f.flag)
		}
	}
	if req.Cold {
		return model.VM{}, errdefs.Errorf(errdefs.CodeInvalid, "--cold does not go with --from-snapshot: the vm is restored from it")
	}
	sn, err := m.store.GetSnapshot(ctx, req.FromSnapshot)
	if err != nil || sn.Template != "" {
		if err == nil || errdefs.IsNotFound(store.Describe("snapshot", req.FromSnapshot, err)) {
			return model.VM{}, errdefs.Errorf(errdefs.CodeNotFound, "no snapshot named %q (banger vm snapshot list shows them)", req.FromSnapshot)
		}
		return model.VM{}, store.Describe("snapshot", req.FromSnapshot, err)
	}
	if sn.State != model.SnapshotReady {
		return model.VM{}, errdefs.Errorf(errdefs.CodeConflict, "snapshot %s is %s: make vms from it once it is ready", sn.Name, sn.State)
	}
	drv, err := m.driver(sn.VMM)
	if err != nil {
		return model.VM{}, err
	}
	im, err := m.store.GetImage(ctx, sn.ImageID)
	if err != nil {
		return model.VM{}, store.Describe("image", sn.ImageID, err)
	}
	if err := canRestore(drv, sn.CowStrategy, im); err != nil {
		return model.VM{}, err
	}
	if !asksNet(req) {
		in.Net = snapshotNet(sn)
	}
	return m.forkOne(ctx, sn, in, report)
}

// createWarm restores a booting create from the fresh template of its
// shape, if there is one (ok). A restore that fails is undone and
// answers !ok with no error, so the create boots instead; only a
// cancelled request fails it. When there is none, rebuild says whether
// the create, once booted, should have one made (warmOnFirstUse): with
// config warm_on_first_use always, else when the shape has a stale
// template (staleOfShape: it was warmed, so it is rebuilt rather than
// left stale).
func (m *Manager) createWarm(ctx context.Context, s vmShape, in vmIntent, report progress.Func) (vm model.VM, ok, rebuild bool, err error) {
	all, err := m.store.ListSnapshots(ctx)
	if err != nil {
		return model.VM{}, false, false, nil
	}
	want := inputsOf(s, m.guestSide())
	tmpl, ok := pickTemplate(all, want)
	if !ok {
		return model.VM{}, false, m.cfg.WarmOnFirstUse || staleOfShape(all, want), nil
	}
	if vm, ok := m.claimSpare(ctx, tmpl, in, report); ok {
		return vm, true, false, nil
	}
	report(progress.Event{Phase: "warm", Message: "restoring from template " + tmpl.Name})
	vm, err = m.forkOne(ctx, tmpl, in, report)
	if err == nil {
		return vm, true, false, nil
	}
	if ctx.Err() != nil {
		return model.VM{}, false, false, err
	}
	m.log.Warn("warm start failed; booting instead", "vm", in.Name, "template", tmpl.Name, "err", err)
	report(progress.Event{Phase: "warm", Message: fmt.Sprintf("restore from template %s failed (%v): booting", tmpl.Name, err)})
	return model.VM{}, false, false, nil
}

// warmOnFirstUse makes the template of shape s in the background, once
// a create of that shape booted for want of one (createWarm's rebuild;
// the create has answered by then: the template's boot does not slow
// it). One is made at a time, each costing a boot; a shape asked for
// while another is being made is made on a later create. Nothing for a
// shape that cannot be restored (canRestore), or before StartPool or
// after its context ended.
func (m *Manager) warmOnFirstUse(s vmShape, drv vmm.Driver) {
	if canRestore(drv, s.Strategy, s.Image) != nil {
		return
	}
	p := &m.pool
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ctx == nil || p.ctx.Err() != nil || p.warming {
		return
	}
	p.warming = true
	p.wg.Add(1)
	go func(ctx context.Context) {
		defer p.wg.Done()
		defer func() {
			p.mu.Lock()
			p.warming = false
			p.mu.Unlock()
		}()
		start := time.Now()
		r := s.request()
		t, err := m.WarmImage(ctx, api.WarmRequest{Image: r.Image, Kernel: r.Kernel, CPUs: r.CPUs, Memory: r.Memory, Disk: r.Disk, VMM: r.VMM}, nil)
		if err != nil {
			m.log.Warn("template not made on first use", "image", s.Image.Name, "err", err)
			return
		}
		m.log.Info("template made on first use", "template", t.Name, "image", s.Image.Name, "seconds", time.Since(start).Seconds())
	}(p.ctx)
}

// WarmImage makes the warm-start template of a VM shape (the image,
// kernel, sizes and VMM a create with the same fields would have): it
// boots a VM of that shape, takes a snapshot of it once its guest
// answers, and deletes the VM. A fresh template of the shape is answered
// as it is. Stale templates no VM uses are removed first.
func (m *Manager) WarmImage(ctx context.Context, req api.WarmRequest, report progress.Func) (model.Snapshot, error) {
	report = progress.OrNop(report)
	s, drv, _, err := m.resolveShape(ctx, api.CreateVMRequest{
		Image: req.Image, Kernel: req.Kernel, CPUs: req.CPUs, Memory: req.Memory, Disk: req.Disk, VMM: req.VMM,
	}, report)
	if err != nil {
		return model.Snapshot{}, err
	}
	if err := canRestore(drv, s.Strategy, s.Image); err != nil {
		return model.Snapshot{}, fmt.Errorf("cannot warm image %s: %w", s.Image.Name, err)
	}
	in := inputsOf(s, m.guestSide())
	key := in.Key()
	unlock := m.locks.Lock("template:" + key)
	defer unlock()
	m.removeStaleTemplates(ctx)
	all, err := m.store.ListSnapshots(ctx)
	if err != nil {
		return model.Snapshot{}, err
	}
	if t, ok := pickTemplate(all, in); ok {
		report(progress.Event{Phase: "ready", Message: "template " + t.Name + " is fresh already"})
		m.refill(t.Name)
		return m.withUsers(ctx, t)
	}
	name := "warm-" + key[:12]
	build := "warm-build-" + key[:8]
	if old, err := m.store.GetVM(ctx, build); err == nil {
		if err := m.Delete(ctx, old.ID, true); err != nil {
			return model.Snapshot{}, err
		}
	}
	report(progress.Event{Phase: "boot", Message: fmt.Sprintf("booting %s (%s, %d vcpu, %s memory, %s disk) to take the template", build, s.Image.Name, s.CPUs, model.FormatSize(int64(s.MemoryMiB)<<20), model.FormatSize(s.DiskBytes))})
	r := s.request()
	r.Name, r.Start, r.Cold, r.Labels = build, true, true, map[string]string{warmBuildLabel: key[:12]}
	vm, err := m.Create(ctx, r, report)
	// The build VM goes whatever happens; the template outlives it.
	defer func() {
		if vm.ID != "" {
			if err := m.Delete(context.WithoutCancel(ctx), vm.ID, true); err != nil && !errdefs.IsNotFound(err) {
				m.log.Warn("delete the vm a template was made from", "vm", build, "err", err)
			}
		}
	}()
	if err != nil {
		return model.Snapshot{}, fmt.Errorf("warm image %s: %w", s.Image.Name, err)
	}
	if vm.CowStrategy != s.Strategy || vm.VMM != s.VMM {
		return model.Snapshot{}, fmt.Errorf("warm image %s: the vm was made with %s/%s, not %s/%s", s.Image.Name, vm.VMM, vm.CowStrategy, s.VMM, s.Strategy)
	}
	// Its pooled SSH connection ends first, so restored guests do not
	// carry its session.
	m.dropGuest(vm.ID, false)
	report(progress.Event{Phase: "snapshot", Message: "taking the template " + name})
	sn, err := m.createSnapshot(ctx, vm.ID, name, &in)
	if err != nil {
		return model.Snapshot{}, fmt.Errorf("warm image %s: %w", s.Image.Name, err)
	}
	m.log.Info("template made", "template", name, "image", s.Image.Name, "bytes", sn.SizeBytes)
	report(progress.Event{Phase: "ready", Message: "template " + name + " made"})
	m.refill(name)
	return sn, nil
}

// withUsers fills in the VMs made from a snapshot.
func (m *Manager) withUsers(ctx context.Context, sn model.Snapshot) (model.Snapshot, error) {
	var err error
	sn.UsedBy, err = m.store.SnapshotUsers(ctx, sn.ID)
	if sn.UsedBy == nil {
		sn.UsedBy = []string{}
	}
	return sn, err
}

// staleness says why a template is stale ("" when fresh), from its
// image and kernel as now recorded.
func (m *Manager) staleness(ctx context.Context, t model.Snapshot, guest string) string {
	var im *model.Image
	var k *model.Kernel
	if v, err := m.store.GetImage(ctx, t.ImageID); err == nil {
		im = &v
	}
	if v, err := m.store.GetKernel(ctx, t.KernelID); err == nil {
		k = &v
	}
	return templateStale(t.TemplateInputs, im, k, guest)
}

// ListTemplates lists the warm-start templates with the VMs made from
// each, its image's name and why it is stale, if it is.
func (m *Manager) ListTemplates(ctx context.Context) ([]model.Snapshot, error) {
	all, err := m.store.ListSnapshots(ctx)
	if err != nil {
		return nil, err
	}
	guest := m.guestSide()
	spares := map[string]bool{}
	if vms, err := m.store.ListVMs(ctx); err == nil {
		for _, vm := range vms {
			if isSpare(vm) {
				spares[vm.Name] = true
			}
		}
	}
	out := []model.Snapshot{}
	for _, t := range all {
		if t.Template == "" {
			continue
		}
		if t, err = m.withUsers(ctx, t); err != nil {
			return nil, err
		}
		// The pool's spares are counted, not named: they are the daemon's.
		t.UsedBy = slices.DeleteFunc(t.UsedBy, func(n string) bool { return spares[n] })
		t.Spares = m.readySpares(t.Name)
		t.Stale = m.staleness(ctx, t, guest)
		if im, err := m.store.GetImage(ctx, t.ImageID); err == nil {
			t.ImageName = im.Name
		}
		out = append(out, t)
	}
	return out, nil
}

// RemoveTemplate deletes a template no VM was made from.
func (m *Manager) RemoveTemplate(ctx context.Context, ref string) error {
	if ref == "" {
		return errdefs.Errorf(errdefs.CodeInvalid, "template name or id is empty")
	}
	t, err := m.store.GetSnapshot(ctx, ref)
	if err == nil && t.Template == "" {
		return errdefs.Errorf(errdefs.CodeNotFound, "%s is a snapshot, not a template: banger vm snapshot rm %s", t.Name, t.Name)
	}
	if err != nil {
		return store.Describe("template", ref, err)
	}
	return m.removeTemplate(ctx, t)
}

// removeTemplate deletes the template's spares, then the template; if
// that fails (a VM uses it) its pool is refilled.
func (m *Manager) removeTemplate(ctx context.Context, t model.Snapshot) error {
	done := m.drainPool(ctx, t.Name)
	defer done()
	err := m.removeSnapshot(ctx, t, "template")
	if err != nil {
		defer m.refill(t.Name)
	}
	return err
}

// DropTemplates removes the templates made from the image or kernel
// with this id (it is being removed); refused while a VM made from one
// exists.
func (m *Manager) DropTemplates(ctx context.Context, artifactID string) error {
	all, err := m.store.ListSnapshots(ctx)
	if err != nil {
		return err
	}
	for _, t := range all {
		if t.Template != "" && (t.ImageID == artifactID || t.KernelID == artifactID) {
			if err := m.removeTemplate(ctx, t); err != nil {
				return err
			}
		}
	}
	return nil
}

// removeStaleTemplates removes the stale templates no VM uses.
func (m *Manager) removeStaleTemplates(ctx context.Context) {
	ts, err := m.ListTemplates(ctx)
	if err != nil {
		return
	}
	for _, t := range ts {
		if t.Stale != "" && len(t.UsedBy) == 0 && t.State == model.SnapshotReady {
			m.log.Info("removing a stale template", "template", t.Name, "why", t.Stale)
			if err := m.removeTemplate(ctx, t); err != nil {
				m.log.Warn("remove stale template", "template", t.Name, "err", err)
			}
		}
	}
}

// reconcileLeftovers deletes, at start-up, the VMs a daemon that stopped
// left half made (leftover): forks that never took their identity and
// template builds. It answers the ids it deleted.
func (m *Manager) reconcileLeftovers(ctx context.Context, vms []model.VM) map[string]bool {
	pending := map[string]bool{}
	ids, err := m.store.PendingSnapshotUsers(ctx)
	if err != nil {
		m.log.Warn("reconcile: pending snapshot users", "err", err)
	}
	for _, id := range ids {
		pending[id] = true
	}
	gone := map[string]bool{}
	for _, vm := range vms {
		del, why := leftover(vm, pending[vm.ID])
		if !del {
			continue
		}
		if err := m.remove(ctx, vm, true); err != nil {
			m.log.Error("reconcile: could not delete a vm left half made", "vm", vm.Name, "why", why, "err", err)
			continue
		}
		gone[vm.ID] = true
		m.log.Warn("reconcile: deleted a vm left half made", "vm", vm.Name, "why", why)
	}
	return gone
}
