package e2b

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
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

// fork snapshots a running or paused sandbox and makes count sandboxes from it.
func (s *Service) fork(ctx context.Context, id string, count, timeout int) ([]forkResult, error) {
	if count < 1 || count > maxFork {
		return nil, errdefs.Errorf(errdefs.CodeInvalid, "count %d: fork 1 to %d sandboxes at once", count, maxFork)
	}
	if err := checkTimeout(timeout); err != nil {
		return nil, err
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
	// Each fork is a sandbox of its own: the source's metadata,
	// environment, template, timeout action and network policy (the
	// snapshot's), its relay settings, tokens of its own (a traffic
	// token when the source has one).
	spec := snapshotSpec{timeout: timeout, autoPause: src.rec.AutoPause, autoResume: src.rec.AutoResume, env: src.rec.Env,
		labels: onlyMetadata(src.vm.Labels), relay: relayOf(src.rec)}
	results := make([]forkResult, 0, count)
	for range count {
		sb, err := s.createFromSnapshot(ctx, sn, spec, held)
		if err != nil {
			results = append(results, forkResult{Error: &errorJSON{Code: StatusOf(err), Message: err.Error()}})
			if ctx.Err() != nil {
				break
			}
			continue
		}
		short := s.short(sb)
		results = append(results, forkResult{Sandbox: &short})
	}
	for len(results) < count {
		results = append(results, forkResult{Error: &errorJSON{Code: StatusOf(context.Cause(ctx)), Message: fmt.Sprintf("fork not made: %v", context.Cause(ctx))}})
	}
	s.dropForkSnapshots(context.WithoutCancel(ctx))
	return results, nil
}

// onlyMetadata is the sandbox metadata among a VM's labels (not the
// labels others gave it).
func onlyMetadata(labels map[string]string) map[string]string {
	var out map[string]string
	for k, v := range labels {
		if strings.HasPrefix(k, model.E2BMetaPrefix) {
			if out == nil {
				out = map[string]string{}
			}
			out[k] = v
		}
	}
	return out
}

// snapshottable is a running or paused sandbox whose snapshot may become new
// sandboxes (which keep its network policy: the snapshot holds it).
func (s *Service) snapshottable(ctx context.Context, id string) (sandbox, error) {
	sb, err := s.lookup(ctx, id)
	if err != nil {
		return sb, err
	}
	if sb.vm.State != model.VMPaused && !s.VMs.Alive(sb.vm) {
		return sb, errdefs.Errorf(errdefs.CodeConflict, "sandbox %s is neither running nor paused (vm state %s)", id, sb.vm.State)
	}
	return sb, nil
}

// maxFork bounds one fork request (vms.MaxFork).
const maxFork = 16

// snapshotSpec is what a sandbox made from a snapshot is given: its
// timeout, timeout action (and whether it wakes on traffic), environment
// (over the source sandbox's), metadata labels, network policy (else
// the snapshot's) and how requests reach its ports.
type snapshotSpec struct {
	timeout    int
	autoPause  bool
	autoResume bool
	env        map[string]string
	labels     map[string]string
	net        *egress // nil: the snapshot's policy
	relay      relaySpec
}

// createFromSnapshot makes one sandbox from snapshot sn: a VM restored
// from it with spec's deadline, labels and policy, its record, and envd
// (restored with the snapshot's processes) given a token and
// environment of its own. A VM it cannot finish is deleted.
func (s *Service) createFromSnapshot(ctx context.Context, sn model.Snapshot, spec snapshotSpec, held *hold) (sandbox, error) {
	req := api.CreateVMRequest{Name: newSandboxID(), FromSnapshot: sn.ID, Ready: api.ReadyListening,
		TTL: makingTTL(spec.timeout), TTLAction: model.TTLDelete, Labels: spec.labels}
	if spec.net != nil {
		req.Net, req.Allow, req.Deny = spec.net.Mode, spec.net.Allow, spec.net.Deny
	}
	vm, err := s.VMs.Create(ctx, req, nil)
	if err != nil {
		return sandbox{}, err
	}
	rec := model.E2BSandbox{VMID: vm.ID, TemplateID: sn.Name, Token: newToken(), AutoPause: spec.autoPause,
		AutoResume: spec.autoResume, TimeoutSecs: spec.timeout, CreatedAt: s.Now().UTC(), KeyID: keyOf(ctx).ID}
	spec.relay.apply(&rec)
	env := map[string]string{}
	if src, err := s.Store.E2BSandbox(ctx, sn.VMID); err == nil {
		rec.TemplateID = src.TemplateID
		maps.Copy(env, src.Env)
	}
	maps.Copy(env, spec.env)
	if len(env) > 0 {
		rec.Env = env
	}
	undo := func(err error) (sandbox, error) {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
		defer cancel()
		if derr := s.VMs.Delete(dctx, vm.ID, true); derr != nil {
			s.Log.Error("e2b: delete a sandbox made from a snapshot that could not be finished", "vm", vm.Name, "err", derr)
		}
		return sandbox{}, err
	}
	if err := held.record(func() error { return s.Store.CreateE2BSandbox(ctx, rec) }); err != nil {
		return undo(err)
	}
	if err := s.rekeyEnvd(ctx, vm, rec); err != nil {
		return undo(err)
	}
	if vm, err = s.armTimeout(ctx, vm.ID, spec.timeout, spec.autoPause); err != nil {
		return undo(err)
	}
	return sandbox{vm: vm, rec: rec}, nil
}

// rekeyEnvd gives the envd a VM was restored with the sandbox's own
// token and environment (envdRekeyScript); an envd that cannot take them
// (gone, or one that predates rekeying) is replaced by a fresh one, which
// loses the snapshot's processes.
func (s *Service) rekeyEnvd(ctx context.Context, vm model.VM, rec model.E2BSandbox) error {
	// banger-init does both over the control channel: rekey, else start.
	if s.tellEnvd(ctx, vm, rec) == nil {
		return s.waitEnvd(ctx, vm)
	}
	out, code, err := s.RunGuest(ctx, vm, envdRekeyScript(), strings.NewReader(envdInput(rec.Token, rec.Env)))
	if err != nil {
		return fmt.Errorf("give envd in %s its token: %w", vm.Name, err)
	}
	switch code {
	case 0:
		return nil
	case envdRekeyGone:
		s.Log.Info("e2b: envd of a restored sandbox could not be rekeyed; starting a new one", "sandbox", vm.Name)
		return s.startEnvd(ctx, vm, rec)
	default:
		return errdefs.Errorf(errdefs.CodeInternal, "give envd in %s its token: exit %d: %s", vm.Name, code, strings.TrimSpace(out))
	}
}

// envdRekeyGone is envdRekeyScript's exit when no envd took the new token.
const envdRekeyGone = 3

// envdRekeyScript writes a new token and environment (envdInput on
// stdin) as token.new and env.new beside envd's files, sends envd
// SIGHUP and waits (up to 5 s) for envd to move them over its files,
// the sign that the new token is in force; it exits envdRekeyGone when
// no envd runs or it dies or does not answer.
func envdRekeyScript() string {
	d := envdDir
	return `set -e
umask 077
[ -d ` + d + ` ] || mkdir -m 700 ` + d + `
IFS= read -r token
while IFS= read -r line; do printf '%s\n' "$line"; done > ` + d + `/env.new
printf '%s\n' "$token" > ` + d + `/token.new
pid=
if [ -f ` + d + `/pid ]; then read -r pid < ` + d + `/pid || pid=; fi
if [ -z "$pid" ] || ! kill -HUP "$pid" 2>/dev/null; then exit ` + strconv.Itoa(envdRekeyGone) + `; fi
i=0
while [ -f ` + d + `/token.new ]; do
  i=$((i+1))
  if [ "$i" -gt 250 ] || ! kill -0 "$pid" 2>/dev/null; then exit ` + strconv.Itoa(envdRekeyGone) + `; fi
  sleep 0.02
done
`
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
