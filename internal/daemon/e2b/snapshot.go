package e2b

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/banger/banger/internal/api"
	"github.com/banger/banger/internal/errdefs"
	"github.com/banger/banger/internal/model"
	"github.com/banger/banger/internal/store"
)

// E2B's snapshots are banger's (vm snapshot): createSnapshot takes one of
// a running sandbox, listSnapshots lists them, deleteSnapshot removes one
// (DELETE /templates/{id}), and Sandbox.create with a snapshot's name as
// its template forks a sandbox from it. fork takes a snapshot of a running
// sandbox and makes count sandboxes from it (vm fork); that snapshot is
// the control plane's own (forkSnapshotPrefix) and is removed once no
// sandbox made from it is left.
//
// A fork resumes the source's memory, envd included, so it keeps the
// source's envd access token and environment when the source's record is
// still there; when it is gone (a snapshot outliving its sandbox) envd is
// started again in the fork with a new token.

// forkSnapshotPrefix names the snapshots fork takes.
const forkSnapshotPrefix = "e2b-fork-"

// defaultForkTimeout is E2B's default lifetime of a fork, in seconds.
const defaultForkTimeout = 15

// forkRequest is the body of POST /sandboxes/{id}/fork.
type forkRequest struct {
	Count   *int `json:"count"`
	Timeout *int `json:"timeout"`
}

// forkResult is E2B's SandboxForkResult: one of sandbox or error.
type forkResult struct {
	Sandbox *sandboxJSON `json:"sandbox,omitempty"`
	Error   *errorJSON   `json:"error,omitempty"`
}

type errorJSON struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
}

// snapshotJSON is E2B's SnapshotInfo.
type snapshotJSON struct {
	SnapshotID string   `json:"snapshotID"`
	Names      []string `json:"names"`
}

func snapshotInfo(sn model.Snapshot) snapshotJSON {
	return snapshotJSON{SnapshotID: sn.Name, Names: []string{sn.Name}}
}

func (s *Service) handleCreateSnapshot(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Name string `json:"name"`
	}
	if !readJSON(w, r, &req) {
		return
	}
	sb, err := s.snapshottable(r.Context(), r.PathValue("id"))
	if err != nil {
		fail(w, err)
		return
	}
	if strings.HasPrefix(req.Name, forkSnapshotPrefix) {
		fail(w, errdefs.Errorf(errdefs.CodeInvalid, "snapshot names starting %q are banger's own", forkSnapshotPrefix))
		return
	}
	sn, err := s.VMs.CreateSnapshot(r.Context(), sb.vm.ID, req.Name)
	if err != nil {
		fail(w, err)
		return
	}
	reply(w, http.StatusCreated, snapshotInfo(sn))
}

// handleListSnapshots lists snapshots by name, filtered by sandboxID (the
// sandbox they were taken of) and name, paged by limit and nextToken;
// the snapshots fork takes are its own and not listed.
func (s *Service) handleListSnapshots(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	limit := maxListLimit
	if l := q.Get("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil || n < 1 || n > maxListLimit {
			fail(w, errdefs.Errorf(errdefs.CodeInvalid, "limit %q: want 1 to %d", l, maxListLimit))
			return
		}
		limit = n
	}
	all, err := s.VMs.ListSnapshots(r.Context())
	if err != nil {
		fail(w, err)
		return
	}
	sort.Slice(all, func(i, j int) bool { return all[i].Name < all[j].Name })
	name := q.Get("name")
	if base, _, ok := strings.Cut(name, ":"); ok {
		name = base // E2B's tag; banger's snapshots have none
	}
	out := []snapshotJSON{}
	next := ""
	for _, sn := range all {
		if sn.Name <= q.Get("nextToken") || strings.HasPrefix(sn.Name, forkSnapshotPrefix) || (name != "" && sn.Name != name) ||
			(q.Get("sandboxID") != "" && sn.VMName != q.Get("sandboxID")) {
			continue
		}
		if len(out) == limit {
			next = out[len(out)-1].SnapshotID
			break
		}
		out = append(out, snapshotInfo(sn))
	}
	if next != "" {
		w.Header().Set("X-Next-Token", next)
	}
	reply(w, http.StatusOK, out)
}

// handleDeleteTemplate deletes a snapshot (the SDK's deleteSnapshot);
// templates that are images are not deleted through E2B's API.
func (s *Service) handleDeleteTemplate(w http.ResponseWriter, r *http.Request) {
	ref := r.PathValue("id")
	if base, _, ok := strings.Cut(ref, ":"); ok {
		ref = base
	}
	sn, err := s.VMs.GetSnapshot(r.Context(), ref)
	if err != nil || sn.Name != ref {
		replyError(w, http.StatusNotFound, "no snapshot named "+ref+" (banger deletes only snapshots through the E2B API)")
		return
	}
	if err := s.VMs.RemoveSnapshot(r.Context(), sn.ID); err != nil {
		fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// handleFork forks a running sandbox count times (E2B's default 1) with
// a deadline timeout seconds away (default 15). Each fork succeeds or
// fails on its own; a failure before any fork is the answer's status.
func (s *Service) handleFork(w http.ResponseWriter, r *http.Request) {
	var req forkRequest
	if !readJSON(w, r, &req) {
		return
	}
	count, timeout := 1, defaultForkTimeout
	if req.Count != nil {
		count = *req.Count
	}
	if req.Timeout != nil {
		timeout = *req.Timeout
	}
	results, err := s.fork(r.Context(), r.PathValue("id"), count, timeout)
	if err != nil {
		fail(w, err)
		return
	}
	reply(w, http.StatusCreated, results)
}

// fork snapshots a running sandbox and makes count sandboxes from it.
func (s *Service) fork(ctx context.Context, id string, count, timeout int) ([]forkResult, error) {
	if count < 1 || count > maxFork {
		return nil, errdefs.Errorf(errdefs.CodeInvalid, "count %d: fork 1 to %d sandboxes at once", count, maxFork)
	}
	if timeout < 1 {
		return nil, errdefs.Errorf(errdefs.CodeInvalid, "timeout %d: want at least 1 second", timeout)
	}
	src, err := s.snapshottable(ctx, id)
	if err != nil {
		return nil, err
	}
	held, err := s.reserve(ctx, keyOf(ctx), count)
	if err != nil {
		return nil, err
	}
	defer held.release()
	sn, err := s.VMs.CreateSnapshot(ctx, src.vm.ID, forkSnapshotPrefix+src.vm.Name+"-"+randHex(3))
	if err != nil {
		return nil, err
	}
	made, ferr := s.VMs.Fork(ctx, sn.ID, count, newSandboxID(), nil)
	results := make([]forkResult, 0, count)
	for _, vm := range made {
		sb, err := s.adopt(ctx, vm, sn, timeout, held)
		if err != nil {
			results = append(results, forkResult{Error: &errorJSON{Code: StatusOf(err), Message: err.Error()}})
			continue
		}
		short := s.short(sb)
		results = append(results, forkResult{Sandbox: &short})
	}
	for len(results) < count {
		msg := "fork not made"
		if ferr != nil {
			msg = ferr.Error()
		}
		results = append(results, forkResult{Error: &errorJSON{Code: StatusOf(ferr), Message: msg}})
	}
	s.dropForkSnapshots(context.WithoutCancel(ctx))
	return results, nil
}

// snapshottable is a running sandbox whose snapshot may become new
// sandboxes: forks start with the default network policy (as vm fork's
// do), so a sandbox whose network is restricted is refused rather than
// let its copies out.
func (s *Service) snapshottable(ctx context.Context, id string) (sandbox, error) {
	sb, err := s.running(ctx, id)
	if err != nil {
		return sb, err
	}
	if n := sb.vm.Net; n.Mode != model.NetInternet || len(n.Allow)+len(n.Deny)+len(n.AllowVMs) > 0 {
		return sb, errdefs.Errorf(errdefs.CodeInvalid, "sandbox %s has network policy %q: snapshots and forks of sandboxes with a restricted network are not supported by banger yet", id, n.String())
	}
	return sb, nil
}

// maxFork bounds one fork request (vms.MaxFork).
const maxFork = 16

// adopt makes a VM forked from snapshot sn a sandbox: its record (the
// source's token, environment, template and autoPause when the source's
// record is there, else a new token and envd started again), its
// deadline. A VM it cannot adopt is deleted.
func (s *Service) adopt(ctx context.Context, vm model.VM, sn model.Snapshot, timeout int, held *hold) (sandbox, error) {
	rec := model.E2BSandbox{VMID: vm.ID, TemplateID: sn.Name, CreatedAt: s.Now().UTC(), KeyID: keyOf(ctx).ID}
	restart := false
	if src, err := s.Store.E2BSandbox(ctx, sn.VMID); err == nil {
		rec.Token, rec.Env, rec.AutoPause, rec.TemplateID = src.Token, src.Env, src.AutoPause, src.TemplateID
	} else {
		rec.Token, restart = newToken(), true
	}
	undo := func(err error) (sandbox, error) {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
		defer cancel()
		if derr := s.VMs.Delete(dctx, vm.ID, true); derr != nil {
			s.Log.Error("e2b: delete a fork that could not be adopted", "vm", vm.Name, "err", derr)
		}
		return sandbox{}, err
	}
	if _, err := s.VMs.SetTTL(ctx, vm.ID, api.VMTTLRequest{TTL: strconv.Itoa(timeout) + "s", Action: timeoutAction(rec.AutoPause)}); err != nil {
		return undo(err)
	}
	if err := held.record(func() error { return s.Store.CreateE2BSandbox(ctx, rec) }); err != nil {
		return undo(err)
	}
	if restart {
		if err := s.startEnvd(ctx, vm, rec); err != nil {
			return undo(err)
		}
	}
	vm, err := s.VMs.Get(ctx, vm.ID)
	if err != nil {
		return undo(err)
	}
	return sandbox{vm: vm, rec: rec}, nil
}

// createFromSnapshot is Sandbox.create with a snapshot's name as the
// template: one fork of it, with the create's timeout.
func (s *Service) createFromSnapshot(ctx context.Context, sn model.Snapshot, timeout int, held *hold) (sandbox, error) {
	made, err := s.VMs.Fork(ctx, sn.ID, 1, newSandboxID(), nil)
	if err != nil {
		return sandbox{}, err
	}
	if len(made) != 1 {
		return sandbox{}, errdefs.Errorf(errdefs.CodeInternal, "fork of snapshot %s made %d vms", sn.Name, len(made))
	}
	return s.adopt(ctx, made[0], sn, timeout, held)
}

// dropForkSnapshots removes the snapshots fork took that no VM uses any
// more (their forks were killed or timed out). Failures are logged: the
// next call tries again.
func (s *Service) dropForkSnapshots(ctx context.Context) {
	all, err := s.VMs.ListSnapshots(ctx)
	if err != nil {
		s.Log.Warn("e2b: list snapshots", "err", err)
		return
	}
	for _, sn := range all {
		if !strings.HasPrefix(sn.Name, forkSnapshotPrefix) || len(sn.UsedBy) > 0 || sn.State != model.SnapshotReady {
			continue
		}
		if err := s.VMs.RemoveSnapshot(ctx, sn.ID); err != nil && errdefs.CodeOf(err) != errdefs.CodeNotFound {
			s.Log.Warn("e2b: remove a fork's snapshot", "snapshot", sn.Name, "err", err)
		}
	}
}

// snapshotTemplate is the snapshot a create's template names, if any.
func (s *Service) snapshotTemplate(ctx context.Context, template string) (model.Snapshot, bool, error) {
	if template == "" || template == DefaultTemplate {
		return model.Snapshot{}, false, nil
	}
	name, _, _ := strings.Cut(template, ":")
	sn, err := s.VMs.GetSnapshot(ctx, name)
	if errdefs.CodeOf(err) == errdefs.CodeNotFound || errors.Is(err, store.ErrNotFound) {
		return model.Snapshot{}, false, nil
	}
	if err != nil {
		return model.Snapshot{}, false, err
	}
	if sn.Name != name {
		return model.Snapshot{}, false, nil // an id prefix, not a name
	}
	return sn, true, nil
}

func randHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(fmt.Sprintf("crypto/rand failed: %v", err))
	}
	return hex.EncodeToString(b)
}
