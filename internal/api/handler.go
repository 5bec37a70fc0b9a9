package api

import (
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/banger/banger/internal/errdefs"
	"github.com/banger/banger/internal/model"
	"github.com/banger/banger/internal/progress"
)

// NewHandler serves the /v1/ API over svc. Errors are JSON
// {"error": "...", "code": "..."} with the status of (*errdefs.Error).HTTPStatus;
// errors that are not *errdefs.Error are "internal". Each request is logged.
func NewHandler(svc Service, log *slog.Logger) http.Handler {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	h := &handler{svc: svc, log: log}
	mux := http.NewServeMux()
	for _, rt := range append(h.routes(), h.fileRoutes()...) {
		mux.HandleFunc(rt.pattern, rt.fn)
	}
	return h.logged(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, pattern := mux.Handler(r); pattern == "" {
			noRoute(mux, w, r)
			return
		}
		mux.ServeHTTP(w, r)
	}))
}

// noRoute answers an unknown path (404) or method (405, with the Allow
// header the mux sets) as a JSON error.
func noRoute(mux *http.ServeMux, w http.ResponseWriter, r *http.Request) {
	rec := &headerOnly{h: http.Header{}}
	mux.ServeHTTP(rec, r)
	if allow := rec.h.Get("Allow"); allow != "" {
		w.Header().Set("Allow", allow)
	}
	e := errdefs.Errorf(errdefs.CodeNotFound, "no route %s %s: see the /v1/ routes of this bangerd", r.Method, r.URL.Path)
	if rec.status == http.StatusMethodNotAllowed {
		e = errdefs.Errorf(errdefs.CodeInvalid, "method %s is not allowed on %s: use %s", r.Method, r.URL.Path, rec.h.Get("Allow"))
		writeJSON(w, http.StatusMethodNotAllowed, e)
		return
	}
	writeError(w, e)
}

// headerOnly records the status and headers the mux's own 404/405 sets.
type headerOnly struct {
	h      http.Header
	status int
}

func (r *headerOnly) Header() http.Header         { return r.h }
func (r *headerOnly) WriteHeader(code int)        { r.status = code }
func (r *headerOnly) Write(p []byte) (int, error) { return len(p), nil }

type handler struct {
	svc Service
	log *slog.Logger
}

type route struct {
	pattern string
	fn      http.HandlerFunc
}

func (h *handler) routes() []route {
	return append([]route{
		{"GET /v1/version", h.version},
		{"GET /v1/health", h.health},
		{"GET /v1/info", h.info},
		{"GET /v1/doctor", h.doctor},

		{"GET /v1/images", h.listImages},
		{"GET /v1/images/{ref}", h.getImage},
		{"POST /v1/images/build", h.buildImage},
		{"POST /v1/images/import", h.importImage},
		{"DELETE /v1/images/{ref}", h.removeImage},

		{"GET /v1/kernels", h.listKernels},
		{"GET /v1/kernels/{ref}", h.getKernel},
		{"POST /v1/kernels/{name}/pull", h.pullKernel},
		{"POST /v1/kernels/import", h.importKernel},
		{"DELETE /v1/kernels/{ref}", h.removeKernel},

		{"GET /v1/vms", h.listVMs},
		{"POST /v1/vms", h.createVM},
		{"GET /v1/vms/{ref}", h.getVM},
		{"POST /v1/vms/{ref}/start", h.startVM},
		{"POST /v1/vms/{ref}/stop", h.stopVM},
		{"POST /v1/vms/{ref}/restart", h.restartVM},
		{"POST /v1/vms/{ref}/pause", h.pauseVM},
		{"POST /v1/vms/{ref}/resume", h.resumeVM},
		{"POST /v1/vms/{ref}/snapshots", h.createSnapshot},
		{"GET /v1/snapshots", h.listSnapshots},
		{"GET /v1/snapshots/{ref}", h.getSnapshot},
		{"DELETE /v1/snapshots/{ref}", h.removeSnapshot},
		{"POST /v1/fork", h.fork},
		{"POST /v1/templates", h.warmImage},
		{"GET /v1/templates", h.listTemplates},
		{"DELETE /v1/templates/{ref}", h.removeTemplate},
		{"DELETE /v1/vms/{ref}", h.deleteVM},
		{"PUT /v1/vms/{ref}/net", h.setVMNet},
		{"GET /v1/vms/{ref}/logs", h.vmLogs},
		{"POST /v1/vms/{ref}/exec", h.execVM},
		{"GET /v1/vms/{ref}/ssh", h.sshInfo},
		{"GET /v1/hosts", h.hosts},

		{"POST /v1/vms/{ref}/workspace/prepare", h.prepareWorkspace},
		{"POST /v1/vms/{ref}/workspace/export", h.exportWorkspace},

		{"GET /v1/vms/{ref}/sessions", h.listSessions},
		{"POST /v1/vms/{ref}/sessions", h.startSession},
		{"GET /v1/vms/{ref}/sessions/{s}", h.getSession},
		{"GET /v1/vms/{ref}/sessions/{s}/logs", h.sessionLogs},
		{"POST /v1/vms/{ref}/sessions/{s}/send", h.sendSession},
		{"POST /v1/vms/{ref}/sessions/{s}/attach", h.attachSession},
		{"POST /v1/vms/{ref}/sessions/{s}/stop", h.stopSession},
		{"POST /v1/vms/{ref}/sessions/{s}/kill", h.killSession},
		{"DELETE /v1/vms/{ref}/sessions/{s}", h.removeSession},

		{"PUT /v1/vms/{ref}/ttl", h.setVMTTL},
		{"GET /v1/vms/{ref}/ports", h.listPorts},
		{"POST /v1/vms/{ref}/ports", h.addPort},
		{"DELETE /v1/vms/{ref}/ports/{port}", h.removePort},
		{"POST /v1/vms/{ref}/dial", h.dialVM},
	}, h.e2bRoutes()...)
}

// ---- plumbing ----

// statusWriter records the status for the request log. Unwrap lets
// http.ResponseController reach the real writer's Flush and Hijack.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (s *statusWriter) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusWriter) Write(p []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.ResponseWriter.Write(p)
}

func (s *statusWriter) Unwrap() http.ResponseWriter { return s.ResponseWriter }

func (h *handler) logged(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		next.ServeHTTP(sw, r)
		level := slog.LevelInfo
		if r.URL.Path == "/v1/health" {
			// The CLI polls health while it starts the daemon.
			level = slog.LevelDebug
		}
		h.log.Log(r.Context(), level, "request", "method", r.Method, "path", r.URL.Path,
			"status", sw.status, "duration", time.Since(start))
	})
}

// asError makes any error an *errdefs.Error; unknown errors are internal.
func asError(err error) *errdefs.Error {
	var e *errdefs.Error
	if errors.As(err, &e) {
		return e
	}
	return &errdefs.Error{Code: errdefs.CodeInternal, Message: err.Error()}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, err error) {
	e := asError(err)
	writeJSON(w, HTTPStatus(e.Code), e)
}

// reply writes v, or the error.
func reply(w http.ResponseWriter, v any, err error) {
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, v)
}

func replyEmpty(w http.ResponseWriter, err error) {
	if err != nil {
		writeError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// nonNil keeps empty lists "[]" rather than "null" on the wire.
func nonNil[T any](s []T, err error) ([]T, error) {
	if s == nil {
		s = []T{}
	}
	return s, err
}

// MaxRequestBody bounds a JSON request body. Every JSON request is a few
// fields; the bound keeps a client from making the daemon buffer without
// end. Streamed bodies (a workspace's tar, a session's input) are not JSON
// and are not bounded here: the guest disk bounds the one, the session the
// other.
const MaxRequestBody = 1 << 20

// decodeBody reads a JSON request body of at most MaxRequestBody bytes
// into v; an empty body leaves v as it is. Errors name the field that was
// wrong, or the limit; the status is 413 for a body over the limit, else
// the error code's.
func decodeBody(w http.ResponseWriter, r *http.Request, v any) (int, error) {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, MaxRequestBody))
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == io.EOF {
		return 0, nil
	}
	if err == nil && dec.More() {
		err = errors.New("extra data after the JSON object")
	}
	var mb *http.MaxBytesError
	if errors.As(err, &mb) {
		return http.StatusRequestEntityTooLarge, errdefs.Errorf(errdefs.CodeInvalid,
			"invalid request body: larger than the limit of %d bytes for a JSON request", mb.Limit)
	}
	if err = jsonError("request body", err); err != nil {
		return HTTPStatus(errdefs.CodeInvalid), err
	}
	return 0, nil
}

// readBody decodes the request body into a T; when that fails it writes
// the error and reports false.
func readBody[T any](w http.ResponseWriter, r *http.Request) (T, bool) {
	var v T
	if status, err := decodeBody(w, r, &v); err != nil {
		writeJSON(w, status, asError(err))
		return v, false
	}
	return v, true
}

// checkTimeout refuses a negative timeout_seconds (0 is the default).
func checkTimeout(seconds int) error {
	if seconds < 0 {
		return errdefs.Errorf(errdefs.CodeInvalid, "invalid timeout_seconds %d: use 0 (default) or more", seconds)
	}
	return nil
}

// parseLogsQuery reads the tail and follow query parameters of a logs request.
func parseLogsQuery(r *http.Request) (tail int, follow bool, err error) {
	if tail, err = queryInt(r, "tail"); err != nil {
		return 0, false, err
	}
	follow, err = queryBool(r, "follow")
	return tail, follow, err
}

func jsonError(where string, err error) error {
	if err == nil {
		return nil
	}
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return errdefs.Errorf(errdefs.CodeInvalid, "invalid %s: field %q must be %s, not JSON %s", where, te.Field, te.Type, te.Value)
	}
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return errdefs.Errorf(errdefs.CodeInvalid, "invalid %s: malformed JSON at byte %d: %v", where, se.Offset, err)
	}
	return errdefs.Errorf(errdefs.CodeInvalid, "invalid %s: %v", where, err)
}

func queryBool(r *http.Request, name string) (bool, error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return false, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, errdefs.Errorf(errdefs.CodeInvalid, "invalid query parameter %s=%q: use true or false", name, v)
	}
	return b, nil
}

func queryInt(r *http.Request, name string) (int, error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		return 0, errdefs.Errorf(errdefs.CodeInvalid, "invalid query parameter %s=%q: use a whole number >= 0", name, v)
	}
	return n, nil
}

func flush(w http.ResponseWriter) {
	_ = http.NewResponseController(w).Flush()
}

// stream writes NDJSON frames. The response starts lazily, with the first
// frame: work that fails before reporting anything gets a plain JSON error
// with its proper status instead of a 200 stream.
type stream struct {
	w       http.ResponseWriter
	mu      sync.Mutex
	started bool
	done    bool
}

func (s *stream) frame(f Frame) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.done {
		return
	}
	if !s.started {
		s.started = true
		s.w.Header().Set("Content-Type", ContentTypeNDJSON)
		s.w.Header().Set("X-Content-Type-Options", "nosniff")
		s.w.WriteHeader(http.StatusOK)
	}
	_ = json.NewEncoder(s.w).Encode(f)
	flush(s.w)
}

func (s *stream) progress(p progress.Event) { s.frame(Frame{Type: FrameProgress, Progress: &p}) }

// finish writes the last frame: the result, or the error (as a JSON error
// response when nothing was streamed yet).
func (s *stream) finish(result any, err error) {
	s.mu.Lock()
	started := s.started
	s.mu.Unlock()
	if err != nil && !started {
		s.mu.Lock()
		s.done = true
		s.mu.Unlock()
		writeError(s.w, err)
		return
	}
	if err != nil {
		s.frame(Frame{Type: FrameError, Error: asError(err)})
	} else {
		s.frame(Frame{Type: FrameResult, Result: result})
	}
	s.mu.Lock()
	s.done = true
	s.mu.Unlock()
}

// rawWriter streams raw bytes (logs, exports), flushing each write. The
// response starts with the first byte; an error after that is reported in
// the TrailerError trailer.
type rawWriter struct {
	w           http.ResponseWriter
	contentType string
	started     bool
}

func (rw *rawWriter) start() {
	if rw.started {
		return
	}
	rw.started = true
	rw.w.Header().Set("Content-Type", rw.contentType)
	rw.w.Header().Set("X-Content-Type-Options", "nosniff")
	rw.w.Header().Set("Trailer", TrailerError)
	rw.w.WriteHeader(http.StatusOK)
}

func (rw *rawWriter) Write(p []byte) (int, error) {
	rw.start()
	n, err := rw.w.Write(p)
	flush(rw.w)
	return n, err
}

func (rw *rawWriter) finish(err error) {
	if err != nil && !rw.started {
		writeError(rw.w, err)
		return
	}
	rw.start()
	if err != nil {
		rw.w.Header().Set(TrailerError, asError(err).Code+": "+asError(err).Message)
	}
}

// ---- daemon ----

func (h *handler) version(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, h.svc.Info(r.Context()).Version)
}

func (h *handler) health(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, Health{Status: "ok"})
}

func (h *handler) info(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, h.svc.Info(r.Context()))
}

func (h *handler) doctor(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, h.svc.Doctor(r.Context()))
}

// ---- images ----

func (h *handler) listImages(w http.ResponseWriter, r *http.Request) {
	v, err := nonNil(h.svc.ListImages(r.Context()))
	reply(w, v, err)
}

func (h *handler) getImage(w http.ResponseWriter, r *http.Request) {
	v, err := h.svc.GetImage(r.Context(), r.PathValue("ref"))
	reply(w, v, err)
}

func (h *handler) buildImage(w http.ResponseWriter, r *http.Request) {
	req, ok := readBody[BuildImageRequest](w, r)
	if !ok {
		return
	}
	s := &stream{w: w}
	s.finish(h.svc.BuildImage(r.Context(), req, s.progress))
}

func (h *handler) importImage(w http.ResponseWriter, r *http.Request) {
	req, ok := readBody[ImportImageRequest](w, r)
	if !ok {
		return
	}
	s := &stream{w: w}
	s.finish(h.svc.ImportImage(r.Context(), req, s.progress))
}

func (h *handler) removeImage(w http.ResponseWriter, r *http.Request) {
	replyEmpty(w, h.svc.RemoveImage(r.Context(), r.PathValue("ref")))
}

// ---- kernels ----

func (h *handler) listKernels(w http.ResponseWriter, r *http.Request) {
	v, err := nonNil(h.svc.ListKernels(r.Context()))
	reply(w, v, err)
}

func (h *handler) getKernel(w http.ResponseWriter, r *http.Request) {
	v, err := h.svc.GetKernel(r.Context(), r.PathValue("ref"))
	reply(w, v, err)
}

func (h *handler) pullKernel(w http.ResponseWriter, r *http.Request) {
	s := &stream{w: w}
	s.finish(h.svc.PullKernel(r.Context(), r.PathValue("name"), s.progress))
}

func (h *handler) importKernel(w http.ResponseWriter, r *http.Request) {
	req, ok := readBody[ImportKernelRequest](w, r)
	if !ok {
		return
	}
	v, err := h.svc.ImportKernel(r.Context(), req)
	reply(w, v, err)
}

func (h *handler) removeKernel(w http.ResponseWriter, r *http.Request) {
	replyEmpty(w, h.svc.RemoveKernel(r.Context(), r.PathValue("ref")))
}

// ---- VMs ----

// listVMs answers every VM, or with label=KEY=VALUE or label=KEY
// parameters (model.ParseLabelSelector) those whose labels match.
func (h *handler) listVMs(w http.ResponseWriter, r *http.Request) {
	sel, err := model.ParseLabelSelector(r.URL.Query()["label"])
	if err != nil {
		writeError(w, errdefs.Invalid(err))
		return
	}
	v, err := nonNil(h.svc.ListVMs(r.Context()))
	if err == nil && !sel.Empty() {
		v = slices.DeleteFunc(v, func(vm model.VM) bool { return !sel.Matches(vm.Labels) })
	}
	reply(w, v, err)
}

func (h *handler) getVM(w http.ResponseWriter, r *http.Request) {
	v, err := h.svc.GetVM(r.Context(), r.PathValue("ref"))
	reply(w, v, err)
}

func (h *handler) createVM(w http.ResponseWriter, r *http.Request) {
	req, ok := readBody[CreateVMRequest](w, r)
	if !ok {
		return
	}
	s := &stream{w: w}
	s.finish(h.svc.CreateVM(r.Context(), req, s.progress))
}

func (h *handler) startVM(w http.ResponseWriter, r *http.Request) {
	s := &stream{w: w}
	s.finish(h.svc.StartVM(r.Context(), r.PathValue("ref"), s.progress))
}

func (h *handler) stopVM(w http.ResponseWriter, r *http.Request) {
	req, ok := readBody[StopVMRequest](w, r)
	if !ok {
		return
	}
	if err := checkTimeout(req.TimeoutSeconds); err != nil {
		writeError(w, err)
		return
	}
	v, err := h.svc.StopVM(r.Context(), r.PathValue("ref"), req)
	reply(w, v, err)
}

func (h *handler) restartVM(w http.ResponseWriter, r *http.Request) {
	s := &stream{w: w}
	s.finish(h.svc.RestartVM(r.Context(), r.PathValue("ref"), s.progress))
}

func (h *handler) pauseVM(w http.ResponseWriter, r *http.Request) {
	v, err := h.svc.PauseVM(r.Context(), r.PathValue("ref"))
	reply(w, v, err)
}

func (h *handler) resumeVM(w http.ResponseWriter, r *http.Request) {
	s := &stream{w: w}
	s.finish(h.svc.ResumeVM(r.Context(), r.PathValue("ref"), s.progress))
}

func (h *handler) createSnapshot(w http.ResponseWriter, r *http.Request) {
	req, ok := readBody[CreateSnapshotRequest](w, r)
	if !ok {
		return
	}
	v, err := h.svc.CreateSnapshot(r.Context(), r.PathValue("ref"), req)
	reply(w, v, err)
}

func (h *handler) listSnapshots(w http.ResponseWriter, r *http.Request) {
	v, err := nonNil(h.svc.ListSnapshots(r.Context()))
	reply(w, v, err)
}

func (h *handler) getSnapshot(w http.ResponseWriter, r *http.Request) {
	v, err := h.svc.GetSnapshot(r.Context(), r.PathValue("ref"))
	reply(w, v, err)
}

func (h *handler) removeSnapshot(w http.ResponseWriter, r *http.Request) {
	replyEmpty(w, h.svc.RemoveSnapshot(r.Context(), r.PathValue("ref")))
}

func (h *handler) fork(w http.ResponseWriter, r *http.Request) {
	req, ok := readBody[ForkRequest](w, r)
	if !ok {
		return
	}
	s := &stream{w: w}
	s.finish(h.svc.Fork(r.Context(), req, s.progress))
}

func (h *handler) warmImage(w http.ResponseWriter, r *http.Request) {
	req, ok := readBody[WarmRequest](w, r)
	if !ok {
		return
	}
	s := &stream{w: w}
	s.finish(h.svc.WarmImage(r.Context(), req, s.progress))
}

func (h *handler) listTemplates(w http.ResponseWriter, r *http.Request) {
	v, err := nonNil(h.svc.ListTemplates(r.Context()))
	reply(w, v, err)
}

func (h *handler) removeTemplate(w http.ResponseWriter, r *http.Request) {
	replyEmpty(w, h.svc.RemoveTemplate(r.Context(), r.PathValue("ref")))
}

func (h *handler) deleteVM(w http.ResponseWriter, r *http.Request) {
	force, err := queryBool(r, "force")
	if err != nil {
		writeError(w, err)
		return
	}
	replyEmpty(w, h.svc.DeleteVM(r.Context(), r.PathValue("ref"), force))
}

func (h *handler) setVMNet(w http.ResponseWriter, r *http.Request) {
	req, ok := readBody[VMNetRequest](w, r)
	if !ok {
		return
	}
	v, err := h.svc.SetVMNet(r.Context(), r.PathValue("ref"), req)
	reply(w, v, err)
}

func (h *handler) setVMTTL(w http.ResponseWriter, r *http.Request) {
	req, ok := readBody[VMTTLRequest](w, r)
	if !ok {
		return
	}
	v, err := h.svc.SetVMTTL(r.Context(), r.PathValue("ref"), req)
	reply(w, v, err)
}

func (h *handler) listPorts(w http.ResponseWriter, r *http.Request) {
	v, err := h.svc.ListPorts(r.Context(), r.PathValue("ref"))
	reply(w, v, err)
}

func (h *handler) addPort(w http.ResponseWriter, r *http.Request) {
	req, ok := readBody[AddPortRequest](w, r)
	if !ok {
		return
	}
	v, err := h.svc.AddPort(r.Context(), r.PathValue("ref"), req)
	reply(w, v, err)
}

func (h *handler) removePort(w http.ResponseWriter, r *http.Request) {
	replyEmpty(w, h.svc.RemovePort(r.Context(), r.PathValue("ref"), r.PathValue("port")))
}

func (h *handler) vmLogs(w http.ResponseWriter, r *http.Request) {
	req := LogsRequest{Source: r.URL.Query().Get("source")}
	var err error
	if req.Tail, req.Follow, err = parseLogsQuery(r); err != nil {
		writeError(w, err)
		return
	}
	rw := &rawWriter{w: w, contentType: "text/plain; charset=utf-8"}
	rw.finish(h.svc.VMLogs(r.Context(), r.PathValue("ref"), req, rw))
}

// frameWriter turns writes into exec output frames.
type frameWriter struct {
	s   *stream
	typ string
}

func (f frameWriter) Write(p []byte) (int, error) {
	f.s.frame(Frame{Type: f.typ, Data: append([]byte(nil), p...)})
	return len(p), nil
}

func (h *handler) execVM(w http.ResponseWriter, r *http.Request) {
	req, ok := readBody[ExecRequest](w, r)
	if !ok {
		return
	}
	if len(req.Command) == 0 {
		writeError(w, errdefs.Errorf(errdefs.CodeInvalid, "invalid request body: field \"command\" is empty: give the command and its arguments"))
		return
	}
	if isUpgrade(r) {
		h.execAttached(w, r, req)
		return
	}
	if req.TTY {
		writeError(w, errdefs.Errorf(errdefs.CodeInvalid, "a terminal needs an attached exec: send the headers Connection: Upgrade and Upgrade: %s", AttachProtocol))
		return
	}
	s := &stream{w: w}
	code, err := h.svc.ExecVM(r.Context(), r.PathValue("ref"), req, frameWriter{s, FrameStdout}, frameWriter{s, FrameStderr})
	if err != nil {
		s.finish(nil, err)
		return
	}
	s.frame(Frame{Type: FrameExit, ExitCode: &code})
}

func (h *handler) sshInfo(w http.ResponseWriter, r *http.Request) {
	v, err := h.svc.SSHInfo(r.Context(), r.PathValue("ref"))
	reply(w, v, err)
}

func (h *handler) hosts(w http.ResponseWriter, r *http.Request) {
	v, err := h.svc.Hosts(r.Context())
	if err != nil {
		writeError(w, err)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = io.WriteString(w, v)
}

// ---- workspaces ----

func (h *handler) prepareWorkspace(w http.ResponseWriter, r *http.Request) {
	var req WorkspaceRequest
	if opt := r.Header.Get(HeaderOptions); opt != "" {
		dec := json.NewDecoder(strings.NewReader(opt))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			writeError(w, jsonError(HeaderOptions+" header", err))
			return
		}
	}
	q := r.URL.Query()
	if v := q.Get("guest_path"); v != "" {
		req.GuestPath = v
	}
	if v := q.Get("mode"); v != "" {
		req.Mode = v
	}
	for name, dst := range map[string]*bool{"readonly": &req.ReadOnly, "force": &req.Force} {
		if q.Has(name) {
			b, err := queryBool(r, name)
			if err != nil {
				writeError(w, err)
				return
			}
			*dst = b
		}
	}
	v, err := h.svc.PrepareWorkspace(r.Context(), r.PathValue("ref"), req, r.Body)
	reply(w, v, err)
}

func (h *handler) exportWorkspace(w http.ResponseWriter, r *http.Request) {
	req, ok := readBody[ExportRequest](w, r)
	if !ok {
		return
	}
	rw := &rawWriter{w: w, contentType: "application/octet-stream"}
	rw.finish(h.svc.ExportWorkspace(r.Context(), r.PathValue("ref"), req, rw))
}

// ---- sessions ----

func (h *handler) listSessions(w http.ResponseWriter, r *http.Request) {
	v, err := nonNil(h.svc.ListSessions(r.Context(), r.PathValue("ref")))
	reply(w, v, err)
}

func (h *handler) startSession(w http.ResponseWriter, r *http.Request) {
	req, ok := readBody[StartSessionRequest](w, r)
	if !ok {
		return
	}
	if req.Command == "" {
		writeError(w, errdefs.Errorf(errdefs.CodeInvalid, "invalid request body: field \"command\" is empty: give the command to run"))
		return
	}
	v, err := h.svc.StartSession(r.Context(), r.PathValue("ref"), req)
	reply(w, v, err)
}

func (h *handler) getSession(w http.ResponseWriter, r *http.Request) {
	v, err := h.svc.GetSession(r.Context(), r.PathValue("ref"), r.PathValue("s"))
	reply(w, v, err)
}

func (h *handler) sessionLogs(w http.ResponseWriter, r *http.Request) {
	var req SessionLogsRequest
	var err error
	if req.Stderr, err = queryBool(r, "stderr"); err == nil {
		req.Tail, req.Follow, err = parseLogsQuery(r)
	}
	if err != nil {
		writeError(w, err)
		return
	}
	rw := &rawWriter{w: w, contentType: "application/octet-stream"}
	rw.finish(h.svc.SessionLogs(r.Context(), r.PathValue("ref"), r.PathValue("s"), req, rw))
}

func (h *handler) sendSession(w http.ResponseWriter, r *http.Request) {
	n, err := h.svc.SendSession(r.Context(), r.PathValue("ref"), r.PathValue("s"), r.Body)
	reply(w, SendResult{Bytes: n}, err)
}

func (h *handler) stopSession(w http.ResponseWriter, r *http.Request) {
	req, ok := readBody[StopSessionRequest](w, r)
	if !ok {
		return
	}
	if err := checkTimeout(req.TimeoutSeconds); err != nil {
		writeError(w, err)
		return
	}
	v, err := h.svc.StopSession(r.Context(), r.PathValue("ref"), r.PathValue("s"), req)
	reply(w, v, err)
}

func (h *handler) killSession(w http.ResponseWriter, r *http.Request) {
	req, ok := readBody[KillSessionRequest](w, r)
	if !ok {
		return
	}
	v, err := h.svc.KillSession(r.Context(), r.PathValue("ref"), r.PathValue("s"), req.Signal)
	reply(w, v, err)
}

func (h *handler) removeSession(w http.ResponseWriter, r *http.Request) {
	replyEmpty(w, h.svc.RemoveSession(r.Context(), r.PathValue("ref"), r.PathValue("s")))
}
