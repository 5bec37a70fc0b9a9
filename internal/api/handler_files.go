package api

import (
	"net/http"
	"strconv"

	"github.com/banger/banger/internal/errdefs"
)

// Routes of guest file operations (files.go). Paths are query parameters
// so any bytes a name holds arrive as they are.
func (h *handler) fileRoutes() []route {
	return []route{
		{"GET /v1/vms/{ref}/files/content", h.readFile},
		{"PUT /v1/vms/{ref}/files/content", h.writeFile},
		{"GET /v1/vms/{ref}/files/stat", h.statFile},
		{"GET /v1/vms/{ref}/files/list", h.listFiles},
		{"POST /v1/vms/{ref}/files/mkdir", h.makeDir},
		{"POST /v1/vms/{ref}/files/move", h.moveFile},
		{"DELETE /v1/vms/{ref}/files", h.removeFile},
		{"GET /v1/vms/{ref}/files/archive", h.readArchive},
		{"PUT /v1/vms/{ref}/files/archive", h.writeArchive},
	}
}

// queryInt64 reads a whole number >= 0 (0 when absent).
func queryInt64(r *http.Request, name string) (int64, error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return 0, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		return 0, errdefs.Errorf(errdefs.CodeInvalid, "invalid query parameter %s=%q: use a whole number >= 0", name, v)
	}
	return n, nil
}

func (h *handler) readFile(w http.ResponseWriter, r *http.Request) {
	req := FileReadRequest{Path: r.URL.Query().Get("path")}
	var err error
	if req.Offset, err = queryInt64(r, "offset"); err == nil {
		req.Length, err = queryInt64(r, "length")
	}
	if err != nil {
		writeError(w, err)
		return
	}
	rw := &rawWriter{w: w, contentType: "application/octet-stream"}
	rw.finish(h.svc.ReadFile(r.Context(), r.PathValue("ref"), req, rw))
}

func (h *handler) writeFile(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	req := FileWriteRequest{Path: q.Get("path")}
	if v := q.Get("mode"); v != "" {
		m, err := strconv.ParseUint(v, 8, 32)
		if err != nil {
			writeError(w, errdefs.Errorf(errdefs.CodeInvalid, "invalid query parameter mode=%q: use octal permission bits, e.g. 0644", v))
			return
		}
		mode := uint32(m)
		req.Mode = &mode
	}
	var err error
	if req.Parents, err = queryBool(r, "parents"); err != nil {
		writeError(w, err)
		return
	}
	v, err := h.svc.WriteFile(r.Context(), r.PathValue("ref"), req, r.Body)
	reply(w, v, err)
}

func (h *handler) statFile(w http.ResponseWriter, r *http.Request) {
	v, err := h.svc.StatFile(r.Context(), r.PathValue("ref"), r.URL.Query().Get("path"))
	reply(w, v, err)
}

func (h *handler) listFiles(w http.ResponseWriter, r *http.Request) {
	depth, err := queryInt(r, "depth")
	if err != nil {
		writeError(w, err)
		return
	}
	v, err := nonNil(h.svc.ListFiles(r.Context(), r.PathValue("ref"), r.URL.Query().Get("path"), depth))
	reply(w, v, err)
}

func (h *handler) makeDir(w http.ResponseWriter, r *http.Request) {
	v, err := h.svc.MakeDir(r.Context(), r.PathValue("ref"), r.URL.Query().Get("path"))
	reply(w, v, err)
}

func (h *handler) moveFile(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	v, err := h.svc.MoveFile(r.Context(), r.PathValue("ref"), q.Get("from"), q.Get("to"))
	reply(w, v, err)
}

func (h *handler) removeFile(w http.ResponseWriter, r *http.Request) {
	recursive, err := queryBool(r, "recursive")
	if err != nil {
		writeError(w, err)
		return
	}
	replyEmpty(w, h.svc.RemoveFile(r.Context(), r.PathValue("ref"), r.URL.Query().Get("path"), recursive))
}

func (h *handler) readArchive(w http.ResponseWriter, r *http.Request) {
	rw := &rawWriter{w: w, contentType: "application/x-tar"}
	rw.finish(h.svc.ReadArchive(r.Context(), r.PathValue("ref"), r.URL.Query().Get("path"), rw))
}

func (h *handler) writeArchive(w http.ResponseWriter, r *http.Request) {
	v, err := h.svc.WriteArchive(r.Context(), r.PathValue("ref"), r.URL.Query().Get("path"), r.Body)
	reply(w, v, err)
}
