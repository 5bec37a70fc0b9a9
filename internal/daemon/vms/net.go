package vms

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/banger/banger/internal/api"
	"github.com/banger/banger/internal/errdefs"
	"github.com/banger/banger/internal/hostnet"
	"github.com/banger/banger/internal/model"
	"github.com/banger/banger/internal/store"
)

// netPolicy reads the user's --net, --allow, --deny and --allow-vm for
// the VM self (its name, and its id once it has one) into the canonical
// policy a record stores. --allow-vm takes names or ids of existing VMs
// and keeps their names. Each error is invalid and names the bad value.
func (m *Manager) netPolicy(ctx context.Context, self model.VM, mode string, allow, deny, allowVMs []string) (model.NetPolicy, error) {
	p, err := hostnet.ParsePolicy(mode, nonEmpty(allow), nonEmpty(deny), nil)
	if err != nil {
		return model.NetPolicy{}, errdefs.Invalid(err)
	}
	out := model.NetPolicy{Mode: string(p.Mode)}
	for _, r := range p.Allow {
		out.Allow = append(out.Allow, r.String())
	}
	for _, h := range p.Names {
		out.Allow = append(out.Allow, string(h))
	}
	for _, d := range p.Deny {
		out.Deny = append(out.Deny, d.String())
	}
	for _, ref := range nonEmpty(allowVMs) {
		if ref == self.Name || (self.ID != "" && ref == self.ID) {
			return model.NetPolicy{}, errdefs.Errorf(errdefs.CodeInvalid, "allow-vm %q: that is this VM itself", ref)
		}
		o, err := m.store.GetVM(ctx, ref)
		if errors.Is(err, store.ErrNotFound) {
			return model.NetPolicy{}, errdefs.Errorf(errdefs.CodeInvalid, "allow-vm %q: no such VM (see banger vm list)", ref)
		}
		if err != nil {
			return model.NetPolicy{}, errdefs.Errorf(errdefs.CodeInvalid, "allow-vm %q: %v", ref, store.Describe("vm", ref, err))
		}
		if o.ID == self.ID {
			return model.NetPolicy{}, errdefs.Errorf(errdefs.CodeInvalid, "allow-vm %q: that is this VM itself", ref)
		}
		out.AllowVMs = append(out.AllowVMs, o.Name)
	}
	slices.Sort(out.AllowVMs)
	out.AllowVMs = slices.Compact(out.AllowVMs)
	return out, nil
}

// nonEmpty drops blank entries: an empty --allow value clears the list.
func nonEmpty(ss []string) []string {
	var out []string
	for _, s := range ss {
		if strings.TrimSpace(s) != "" {
			out = append(out, s)
		}
	}
	return out
}

// guest is who vm's tap belongs to, with its policy resolved: allow-vm
// names become the addresses those VMs have now. A name no VM has any
// more (deleted while this VM's record was being written) is left out, so
// it allows nothing.
func (m *Manager) guest(ctx context.Context, vm model.VM) (hostnet.Guest, error) {
	g, err := guestOf(vm)
	if err != nil {
		return g, err
	}
	var addrs []string
	if len(vm.Net.AllowVMs) > 0 {
		all, err := m.store.ListVMs(ctx)
		if err != nil {
			return g, err
		}
		byName := map[string]string{}
		for _, o := range all {
			byName[o.Name] = o.GuestIP
		}
		for _, name := range vm.Net.AllowVMs {
			if ip, ok := byName[name]; ok {
				addrs = append(addrs, ip)
			} else {
				m.log.Warn("network policy names a vm that no longer exists; ignored", "vm", vm.Name, "allow_vm", name)
			}
		}
	}
	if g.Policy, err = hostnet.ParsePolicy(vm.Net.Mode, vm.Net.Allow, vm.Net.Deny, addrs); err != nil {
		return g, errdefs.Errorf(errdefs.CodeInvalid, "vm %s: stored network policy: %v", vm.Name, err)
	}
	return g, nil
}

// checkNet says why vm's policy could not be applied on this host: the
// backend cannot enforce it (unavailable) or it does not fit the guest
// subnet (invalid). Nothing is touched.
func (m *Manager) checkNet(ctx context.Context, vm model.VM) error {
	g, err := m.guest(ctx, vm)
	if err != nil {
		return err
	}
	if m.taps == nil {
		return nil
	}
	return netErr(vm, m.taps.CheckPolicy(hostnet.TapName(vm.ID), g))
}

// netErr gives a policy error its kind.
func netErr(vm model.VM, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, hostnet.ErrPolicyNeedsNft):
		return errdefs.Errorf(errdefs.CodeUnavailable, "vm %s: network policy %q: %v", vm.Name, vm.Net.String(), hostnet.ErrPolicyNeedsNft)
	default:
		return errdefs.Errorf(errdefs.CodeInvalid, "vm %s: network policy %q: %v", vm.Name, vm.Net.String(), err)
	}
}

// SetNet changes a VM's network policy. On a running VM the new policy is
// applied to its tap first and stored after: if applying fails, the old
// policy stays in force and the record is unchanged. On a stopped VM it is
// checked and stored, and its next start applies it.
func (m *Manager) SetNet(ctx context.Context, ref string, req api.VMNetRequest) (model.VM, error) {
	vm, unlock, err := m.Lock(ctx, ref)
	if err != nil {
		return vm, err
	}
	defer unlock()
	cur := vm.Net
	if req.Reset {
		cur = model.NetPolicy{Mode: model.NetInternet}
	}
	if req.Net != nil {
		cur.Mode = *req.Net
	}
	if req.Allow != nil {
		cur.Allow = *req.Allow
	}
	if req.Deny != nil {
		cur.Deny = *req.Deny
	}
	if req.AllowVMs != nil {
		cur.AllowVMs = *req.AllowVMs
	}
	next := vm
	if next.Net, err = m.netPolicy(ctx, vm, cur.Mode, cur.Allow, cur.Deny, cur.AllowVMs); err != nil {
		return vm, err
	}
	if err := m.checkNet(ctx, next); err != nil {
		return vm, err
	}
	live := m.Alive(vm)
	if live {
		if err := m.applyNet(ctx, next); err != nil {
			return vm, err
		}
	}
	if err := m.save(ctx, &next); err != nil {
		if live {
			// Back to what the record still says.
			if rerr := m.applyNet(context.Background(), vm); rerr != nil {
				m.log.Error("network policy: could not restore the stored policy after failing to store the new one", "vm", vm.Name, "err", rerr)
			}
		}
		return vm, err
	}
	m.log.Info("network policy changed", "vm", vm.Name, "policy", next.Net.String(), "live", live)
	return next, nil
}

// applyNet writes vm's policy to its running tap.
func (m *Manager) applyNet(ctx context.Context, vm model.VM) error {
	g, err := m.guest(ctx, vm)
	if err != nil {
		return err
	}
	if m.taps == nil {
		return nil
	}
	tap := hostnet.TapName(vm.ID)
	if h, ok := m.handles.get(vm.ID); ok && h.Tap != "" {
		tap = h.Tap
	}
	if err := m.taps.ApplyPolicy(ctx, tap, g); err != nil {
		if errors.Is(err, hostnet.ErrPolicyNeedsNft) {
			return netErr(vm, err)
		}
		return fmt.Errorf("vm %s: apply network policy %q: %w", vm.Name, vm.Net.String(), err)
	}
	return nil
}

// reapplyNet (re)writes a running VM's policy at daemon start: taps made
// by a banger older than policies have none, and the addresses its
// allow-vm names stand for may have changed while no daemon ran. If the
// stored policy cannot be applied the VM gets none: no new connections
// out rather than whatever its tap allowed before.
func (m *Manager) reapplyNet(ctx context.Context, vm model.VM) {
	err := m.applyNet(ctx, vm)
	if err == nil {
		return
	}
	if errdefs.CodeOf(err) == errdefs.CodeUnavailable {
		// ErrPolicyNeedsNft: the iptables backend enforces the default for every VM.
		m.log.Warn("reconcile: this host enforces only the default network policy (internet); install nftables", "vm", vm.Name, "policy", vm.Net.String())
		return
	}
	m.log.Error("reconcile: network policy not applied; cutting the vm off until it is changed", "vm", vm.Name, "policy", vm.Net.String(), "err", err)
	g, gerr := guestOf(vm)
	if gerr == nil {
		g.Policy = hostnet.Policy{Mode: hostnet.ModeNone}
		gerr = m.taps.ApplyPolicy(ctx, hostnet.TapName(vm.ID), g)
	}
	if gerr != nil && !errors.Is(gerr, hostnet.ErrPolicyNeedsNft) {
		m.log.Error("reconcile: could not cut the vm off either", "vm", vm.Name, "err", gerr)
	}
}

// forgetAllowVM removes a deleted VM's name from the policies of the other
// VMs and re-applies those that run: its address is free again, and the
// next VM made would get it, so it must not stay allowed. Each VM is
// re-read under its own lock, so a policy stored while the deleted VM
// still existed is caught too.
func (m *Manager) forgetAllowVM(ctx context.Context, name string) {
	vms, err := m.store.ListVMs(ctx)
	if err != nil {
		m.log.Error("network policy: list vms to forget a deleted one", "vm", name, "err", err)
		return
	}
	for _, o := range vms {
		// Every VM, not only those naming it in this read: the check is
		// made again under each VM's lock.
		m.forgetAllowVMIn(ctx, o.ID, name)
	}
}

func (m *Manager) forgetAllowVMIn(ctx context.Context, id, name string) {
	unlock := m.locks.Lock(id)
	defer unlock()
	vm, err := m.store.GetVM(ctx, id)
	if err != nil || !slices.Contains(vm.Net.AllowVMs, name) {
		return
	}
	vm.Net.AllowVMs = slices.DeleteFunc(slices.Clone(vm.Net.AllowVMs), func(s string) bool { return s == name })
	if len(vm.Net.AllowVMs) == 0 {
		vm.Net.AllowVMs = nil
	}
	if err := m.save(ctx, &vm); err != nil {
		m.log.Error("network policy: forget a deleted vm", "vm", vm.Name, "allow_vm", name, "err", err)
	}
	if m.Alive(vm) {
		if err := m.applyNet(ctx, vm); err != nil {
			m.log.Error("network policy: re-apply after a vm it allowed was deleted", "vm", vm.Name, "allow_vm", name, "err", err)
		}
	}
	m.log.Info("network policy: deleted vm removed from allow-vm", "vm", vm.Name, "allow_vm", name)
}
