package e2b

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/banger/banger/internal/api"
	"github.com/banger/banger/internal/envd"
	"github.com/banger/banger/internal/errdefs"
	"github.com/banger/banger/internal/model"
)

// maxBody bounds a control-plane request body.
const maxBody = 1 << 20

// maxListLimit is the most sandboxes one list page holds.
const maxListLimit = 100

// Handler routes a request: to a sandbox's guest port when RouteOf says
// so, else to the control plane, which needs an API key.
func (s *Service) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /sandboxes", s.handleCreate)
	mux.HandleFunc("POST /v2/sandboxes", s.handleCreate)
	mux.HandleFunc("GET /sandboxes", s.handleList)
	mux.HandleFunc("GET /v2/sandboxes", s.handleList)
	mux.HandleFunc("GET /sandboxes/{id}", s.handleInfo)
	mux.HandleFunc("DELETE /sandboxes/{id}", s.handleKill)
	mux.HandleFunc("POST /sandboxes/{id}/timeout", s.handleTimeout)
	mux.HandleFunc("PUT /sandboxes/{id}/network", s.handleNetwork)
	mux.HandleFunc("POST /sandboxes/{id}/connect", s.handleConnect)
	mux.HandleFunc("POST /v2/sandboxes/{id}/connect", s.handleConnect)
	mux.HandleFunc("POST /sandboxes/{id}/refreshes", s.handleRefresh)
	mux.HandleFunc("POST /sandboxes/{id}/pause", s.handlePause)
	mux.HandleFunc("POST /sandboxes/{id}/resume", s.handleResume)
	mux.HandleFunc("POST /sandboxes/{id}/snapshots", s.handleCreateSnapshot)
	mux.HandleFunc("POST /sandboxes/{id}/fork", s.handleFork)
	mux.HandleFunc("GET /snapshots", s.handleListSnapshots)
	mux.HandleFunc("DELETE /templates/{id}", s.handleDeleteTemplate)
	mux.HandleFunc("GET /sandboxes/{id}/metrics", s.handleMetrics)
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusOK) })
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		replyError(w, http.StatusNotFound, "banger does not serve "+r.Method+" "+r.URL.Path+" of the E2B API")
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		domain := s.domain
		s.mu.Unlock()
		target, routed, err := RouteOf(r.Header, r.Host, domain)
		if err != nil {
			replyError(w, http.StatusBadRequest, err.Error())
			return
		}
		if routed {
			s.proxy.serve(w, r, target)
			return
		}
		if r.URL.Path != "/health" {
			k, ok := s.authorize(r.Context(), r.Header)
			if !ok {
				replyError(w, http.StatusUnauthorized, "missing or invalid API key (X-API-Key or Authorization: Bearer)")
				return
			}
			r = r.WithContext(withKey(r.Context(), k))
		}
		r.Body = http.MaxBytesReader(w, r.Body, maxBody)
		mux.ServeHTTP(w, r)
	})
}

// sandboxJSON is E2B's Sandbox (create and connect answers).
type sandboxJSON struct {
	TemplateID      string `json:"templateID"`
	SandboxID       string `json:"sandboxID"`
	ClientID        string `json:"clientID"`
	EnvdVersion     string `json:"envdVersion"`
	EnvdAccessToken string `json:"envdAccessToken,omitempty"`
	// TrafficAccessToken opens the sandbox's ports when it was made
	// with allowPublicTraffic false.
	TrafficAccessToken string `json:"trafficAccessToken,omitempty"`
	Domain             string `json:"domain,omitempty"`
}

// listedJSON is E2B's ListedSandbox; detailJSON adds the token and domain.
type listedJSON struct {
	TemplateID  string            `json:"templateID"`
	Alias       string            `json:"alias,omitempty"`
	SandboxID   string            `json:"sandboxID"`
	ClientID    string            `json:"clientID"`
	StartedAt   time.Time         `json:"startedAt"`
	EndAt       time.Time         `json:"endAt"`
	CPUCount    int               `json:"cpuCount"`
	MemoryMB    int               `json:"memoryMB"`
	DiskSizeMB  int64             `json:"diskSizeMB"`
	State       string            `json:"state"`
	EnvdVersion string            `json:"envdVersion"`
	Metadata    map[string]string `json:"metadata,omitempty"`
}

type detailJSON struct {
	listedJSON
	EnvdAccessToken     string        `json:"envdAccessToken,omitempty"`
	Domain              string        `json:"domain,omitempty"`
	Lifecycle           lifecycleJSON `json:"lifecycle"`
	AllowInternetAccess bool          `json:"allowInternetAccess"`
	Network             *egressJSON   `json:"network,omitempty"`
}

// egressJSON is the part of E2B's SandboxNetworkConfig banger has: the
// VM's policy in E2B's terms (mode none is a denyOut of 0.0.0.0/0).
type egressJSON struct {
	AllowOut           []string `json:"allowOut,omitempty"`
	DenyOut            []string `json:"denyOut,omitempty"`
	AllowPublicTraffic *bool    `json:"allowPublicTraffic,omitempty"`
	MaskRequestHost    string   `json:"maskRequestHost,omitempty"`
	HTTPSPorts         []int    `json:"httpsPorts,omitempty"`
}

// networkOf is a sandbox's network settings as E2B reports them (its
// VM's policy, how requests reach its ports); nil for the default.
func networkOf(p model.NetPolicy, rec model.E2BSandbox) *egressJSON {
	e := &egressJSON{AllowOut: p.Allow, DenyOut: p.Deny}
	if p.Mode == "none" {
		e.DenyOut = []string{"0.0.0.0/0"}
	}
	if rec.TrafficToken != "" {
		public := false
		e.AllowPublicTraffic = &public
	}
	e.MaskRequestHost, e.HTTPSPorts = rec.MaskHost, rec.HTTPSPorts
	if len(e.AllowOut)+len(e.DenyOut)+len(e.HTTPSPorts) == 0 && e.AllowPublicTraffic == nil && e.MaskRequestHost == "" {
		return nil
	}
	return e
}

// lifecycleJSON is E2B's SandboxLifecycle: what the timeout does.
type lifecycleJSON struct {
	OnTimeout  string `json:"onTimeout"` // "kill" or "pause"
	AutoResume bool   `json:"autoResume"`
}

func (s *Service) short(sb sandbox) sandboxJSON {
	return sandboxJSON{TemplateID: sb.rec.TemplateID, SandboxID: sb.vm.Name, ClientID: clientID,
		EnvdVersion: envd.Version, EnvdAccessToken: sb.rec.Token, TrafficAccessToken: sb.rec.TrafficToken, Domain: s.Status().Domain}
}

func (s *Service) listed(sb sandbox) listedJSON {
	started := sb.rec.CreatedAt
	if sb.vm.StartedAt != nil {
		started = *sb.vm.StartedAt
	}
	var end time.Time
	if sb.vm.ExpiresAt != nil {
		end = *sb.vm.ExpiresAt
	}
	state := "running"
	switch {
	case sb.vm.State == model.VMPaused:
		state = "paused"
	case !s.VMs.Alive(sb.vm):
		state = "stopped"
	}
	return listedJSON{TemplateID: sb.rec.TemplateID, SandboxID: sb.vm.Name, ClientID: clientID,
		StartedAt: started.UTC(), EndAt: end.UTC(), CPUCount: sb.vm.CPUs, MemoryMB: sb.vm.MemoryMiB,
		DiskSizeMB: sb.vm.DiskBytes >> 20, State: state, EnvdVersion: envd.Version, Metadata: Metadata(sb.vm.Labels)}
}

func (s *Service) handleCreate(w http.ResponseWriter, r *http.Request) {
	var req createRequest
	if !readJSON(w, r, &req) {
		return
	}
	sb, err := s.create(r.Context(), req)
	if err != nil {
		fail(w, err)
		return
	}
	reply(w, http.StatusCreated, s.short(sb))
}

func (s *Service) handleInfo(w http.ResponseWriter, r *http.Request) {
	sb, err := s.lookup(r.Context(), r.PathValue("id"))
	if err != nil {
		fail(w, err)
		return
	}
	onTimeout := "kill"
	if sb.rec.AutoPause {
		onTimeout = "pause"
	}
	reply(w, http.StatusOK, detailJSON{listedJSON: s.listed(sb), EnvdAccessToken: sb.rec.Token, Domain: s.Status().Domain,
		Lifecycle:           lifecycleJSON{OnTimeout: onTimeout, AutoResume: sb.rec.AutoResume},
		AllowInternetAccess: sb.vm.Net.Mode != "none", Network: networkOf(sb.vm.Net, sb.rec)})
}

func (s *Service) handleKill(w http.ResponseWriter, r *http.Request) {
	if err := s.kill(r.Context(), r.PathValue("id")); err != nil {
		fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

type timeoutRequest struct {
	Timeout *int `json:"timeout"`
}

func (s *Service) handleTimeout(w http.ResponseWriter, r *http.Request) {
	var req timeoutRequest
	if !readJSON(w, r, &req) {
		return
	}
	if req.Timeout == nil {
		replyError(w, http.StatusBadRequest, "timeout is required (seconds)")
		return
	}
	if err := s.setTimeout(r.Context(), r.PathValue("id"), *req.Timeout); err != nil {
		fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// handleNetwork replaces a sandbox's egress rules (the SDK's
// updateNetwork): fields left out are cleared, so an empty body gives
// the default policy back.
func (s *Service) handleNetwork(w http.ResponseWriter, r *http.Request) {
	var req networkJSON
	if !readJSON(w, r, &req) {
		return
	}
	if err := s.setNetwork(r.Context(), r.PathValue("id"), req); err != nil {
		fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// handleRefresh is the older keep-alive call: it extends by duration
// seconds (E2B's default 60).
func (s *Service) handleRefresh(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Duration *int `json:"duration"`
	}
	if !readJSON(w, r, &req) {
		return
	}
	d := 60
	if req.Duration != nil {
		d = *req.Duration
	}
	if err := s.setTimeout(r.Context(), r.PathValue("id"), d); err != nil {
		fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// handleConnect answers a running sandbox (200) or resumes a paused one
// (201), starting its envd again when it does not answer, and moves its
// deadline to now + timeout when that is later than the current one (a
// resumed sandbox gets now + timeout, E2B's default when none is given).
func (s *Service) handleConnect(w http.ResponseWriter, r *http.Request) {
	var req timeoutRequest
	if !readJSON(w, r, &req) {
		return
	}
	timeout := 0
	if req.Timeout != nil {
		timeout = *req.Timeout
	}
	sb, resumed, err := s.resume(r.Context(), r.PathValue("id"), timeout)
	if err != nil {
		fail(w, err)
		return
	}
	status := http.StatusOK
	if resumed {
		status = http.StatusCreated
	}
	reply(w, status, s.short(sb))
}

// handlePause pauses a running sandbox: 204; 409 when it is paused
// already. The body's memory (keep memory or not) is ignored: banger
// always keeps it.
func (s *Service) handlePause(w http.ResponseWriter, r *http.Request) {
	if err := s.pause(r.Context(), r.PathValue("id")); err != nil {
		fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// handleResume is the older resume call: 201 and the sandbox; 409 when
// it is not paused.
func (s *Service) handleResume(w http.ResponseWriter, r *http.Request) {
	var req timeoutRequest
	if !readJSON(w, r, &req) {
		return
	}
	id := r.PathValue("id")
	sb, err := s.lookup(r.Context(), id)
	if err != nil {
		fail(w, err)
		return
	}
	if sb.vm.State != model.VMPaused {
		replyError(w, http.StatusConflict, "sandbox "+id+" is not paused")
		return
	}
	timeout := 0
	if req.Timeout != nil {
		timeout = *req.Timeout
	}
	if sb, _, err = s.resume(r.Context(), id, timeout); err != nil {
		fail(w, err)
		return
	}
	reply(w, http.StatusCreated, s.short(sb))
}

// ListQuery is a parsed list request.
type ListQuery struct {
	Metadata  map[string]string
	States    map[string]bool // nil: running and paused
	Limit     int
	NextToken string
}

// ParseListQuery reads metadata (an encoded "k=v&k2=v2" whose keys and
// values are themselves URL-encoded, as the SDK sends it), state (comma
// list), limit (1-100, default 100) and nextToken.
func ParseListQuery(q url.Values) (ListQuery, error) {
	lq := ListQuery{Limit: maxListLimit, NextToken: q.Get("nextToken")}
	if m := q.Get("metadata"); m != "" {
		pairs, err := url.ParseQuery(m)
		if err != nil {
			return lq, errdefs.Errorf(errdefs.CodeInvalid, "metadata %q: %v", m, err)
		}
		lq.Metadata = map[string]string{}
		for k, vs := range pairs {
			key, err1 := url.QueryUnescape(k)
			val, err2 := url.QueryUnescape(vs[len(vs)-1])
			if err1 != nil || err2 != nil {
				return lq, errdefs.Errorf(errdefs.CodeInvalid, "metadata %q: bad escape", m)
			}
			lq.Metadata[key] = val
		}
	}
	if st := q["state"]; len(st) > 0 {
		lq.States = map[string]bool{}
		for _, v := range st {
			for _, one := range strings.Split(v, ",") {
				if one != "running" && one != "paused" {
					return lq, errdefs.Errorf(errdefs.CodeInvalid, "state %q: want running or paused", one)
				}
				lq.States[one] = true
			}
		}
	}
	if l := q.Get("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil || n < 1 || n > maxListLimit {
			return lq, errdefs.Errorf(errdefs.CodeInvalid, "limit %q: want 1 to %d", l, maxListLimit)
		}
		lq.Limit = n
	}
	return lq, nil
}

// MetadataSelector is the VM label selector of a metadata filter. A key
// no label can hold selects nothing (model.E2BMetaPrefix + "!" is never
// a label).
func MetadataSelector(meta map[string]string) model.LabelSelector {
	var sel model.LabelSelector
	for k, v := range meta {
		if sel.Equal == nil {
			sel.Equal = map[string]string{}
		}
		key := model.E2BMetaPrefix + k
		if model.ValidateLabel(key, v) != nil {
			key = model.E2BMetaPrefix + "!"
		}
		sel.Equal[key] = v
	}
	return sel
}

// Page picks the listed sandboxes a query's states ask for (the metadata
// filter is the label selector list applied), in sandbox id order after
// NextToken, and the token of the next page ("" when none).
func Page(all []listedJSON, q ListQuery) ([]listedJSON, string) {
	var match []listedJSON
	for _, sb := range all {
		if q.States != nil && !q.States[sb.State] {
			continue
		}
		if q.States == nil && sb.State != "running" && sb.State != "paused" {
			continue
		}
		if sb.SandboxID > q.NextToken {
			match = append(match, sb)
		}
	}
	sort.Slice(match, func(i, j int) bool { return match[i].SandboxID < match[j].SandboxID })
	if len(match) > q.Limit {
		return match[:q.Limit], match[q.Limit-1].SandboxID
	}
	return match, ""
}

func (s *Service) handleList(w http.ResponseWriter, r *http.Request) {
	q, err := ParseListQuery(r.URL.Query())
	if err != nil {
		fail(w, err)
		return
	}
	all, err := s.list(r.Context(), MetadataSelector(q.Metadata))
	if err != nil {
		fail(w, err)
		return
	}
	listed := make([]listedJSON, 0, len(all))
	for _, sb := range all {
		listed = append(listed, s.listed(sb))
	}
	page, next := Page(listed, q)
	if next != "" {
		w.Header().Set("X-Next-Token", next)
	}
	if page == nil {
		page = []listedJSON{}
	}
	reply(w, http.StatusOK, page)
}

func readJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	if r.ContentLength == 0 {
		return true
	}
	if err := json.NewDecoder(r.Body).Decode(v); err != nil {
		replyError(w, http.StatusBadRequest, "request body: "+err.Error())
		return false
	}
	return true
}

func reply(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// replyError writes E2B's error body {code, message}.
func replyError(w http.ResponseWriter, status int, msg string) {
	reply(w, status, map[string]any{"code": status, "message": msg})
}

// StatusOf maps an error kind to the HTTP status the SDK expects: the
// daemon API's mapping, 429 for a key's sandbox cap, and 499 for a
// request its client abandoned.
func StatusOf(err error) int {
	if isQuota(err) {
		return http.StatusTooManyRequests
	}
	st := api.HTTPStatus(errdefs.CodeOf(err))
	if st == http.StatusInternalServerError && errors.Is(err, context.Canceled) {
		return 499
	}
	return st
}

func fail(w http.ResponseWriter, err error) {
	replyError(w, StatusOf(err), err.Error())
}
