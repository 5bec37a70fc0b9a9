package api

import (
	"context"
	"net/http"

	"github.com/banger/banger/internal/model"
)

// E2B is the daemon's side of the E2B-compatible control plane
// (docs/e2b.md): its listener and its API keys.
type E2B interface {
	// E2BServe starts the control plane's listener (idempotent for the
	// address it already serves); it is served again after a restart.
	E2BServe(ctx context.Context, req E2BServeRequest) (E2BStatus, error)
	// E2BStop closes the listener (sandboxes keep running) and forgets it.
	E2BStop(ctx context.Context) error
	// E2BStatus says where it listens ("" when off).
	E2BStatus(ctx context.Context) (E2BStatus, error)
	// CreateE2BKey makes an API key; the answer is the only time the key
	// itself is shown.
	CreateE2BKey(ctx context.Context, req E2BKeyRequest) (E2BKeyCreated, error)
	ListE2BKeys(ctx context.Context) ([]model.E2BKey, error)
	// RevokeE2BKey deletes a key by name or id.
	RevokeE2BKey(ctx context.Context, ref string) error
	// E2BCA is the certificate authority of the TLS listener (made when
	// missing), for clients to trust.
	E2BCA(ctx context.Context) (E2BCA, error)
}

// E2BServeRequest starts the listener: Listen is HOST:PORT (default
// 127.0.0.1:3000), Domain the suffix of sandbox host names (default
// localhost:PORT).
type E2BServeRequest struct {
	Listen string `json:"listen,omitempty"`
	Domain string `json:"domain,omitempty"`
	// TLS serves HTTPS with certificates of banger's own CA (E2BCA).
	TLS bool `json:"tls,omitempty"`
	// DNS, an IP:PORT, also answers DNS there for the names under the
	// domain, with the listener's address.
	DNS string `json:"dns,omitempty"`
}

// E2BStatus is where the control plane listens.
type E2BStatus struct {
	Listen string `json:"listen"`
	Domain string `json:"domain"`
	TLS    bool   `json:"tls,omitempty"`
	DNS    string `json:"dns,omitempty"`
}

// E2BCA is the E2B listener's certificate authority: where its
// certificate is on the daemon's host, and the certificate itself.
type E2BCA struct {
	Path string `json:"path"`
	PEM  string `json:"pem"`
}

// E2BKeyRequest names a new API key.
type E2BKeyRequest struct {
	Name string `json:"name"`
	// MaxSandboxes caps the sandboxes made with the key that exist at
	// once (0: no cap).
	MaxSandboxes int `json:"max_sandboxes,omitempty"`
}

// E2BKeyCreated is a new API key and its record.
type E2BKeyCreated struct {
	Key    string       `json:"key"`
	Record model.E2BKey `json:"record"`
}

func (h *handler) e2bRoutes() []route {
	return []route{
		{"GET /v1/e2b", h.e2bStatus},
		{"POST /v1/e2b/serve", h.e2bServe},
		{"POST /v1/e2b/stop", h.e2bStop},
		{"GET /v1/e2b/keys", h.listE2BKeys},
		{"POST /v1/e2b/keys", h.createE2BKey},
		{"DELETE /v1/e2b/keys/{ref}", h.revokeE2BKey},
		{"GET /v1/e2b/ca", h.e2bCA},
	}
}

func (h *handler) e2bStatus(w http.ResponseWriter, r *http.Request) {
	v, err := h.svc.E2BStatus(r.Context())
	reply(w, v, err)
}

func (h *handler) e2bCA(w http.ResponseWriter, r *http.Request) {
	v, err := h.svc.E2BCA(r.Context())
	reply(w, v, err)
}

func (h *handler) e2bServe(w http.ResponseWriter, r *http.Request) {
	req, ok := readBody[E2BServeRequest](w, r)
	if !ok {
		return
	}
	v, err := h.svc.E2BServe(r.Context(), req)
	reply(w, v, err)
}

func (h *handler) e2bStop(w http.ResponseWriter, r *http.Request) {
	replyEmpty(w, h.svc.E2BStop(r.Context()))
}

func (h *handler) listE2BKeys(w http.ResponseWriter, r *http.Request) {
	v, err := h.svc.ListE2BKeys(r.Context())
	reply(w, v, err)
}

func (h *handler) createE2BKey(w http.ResponseWriter, r *http.Request) {
	req, ok := readBody[E2BKeyRequest](w, r)
	if !ok {
		return
	}
	v, err := h.svc.CreateE2BKey(r.Context(), req)
	reply(w, v, err)
}

func (h *handler) revokeE2BKey(w http.ResponseWriter, r *http.Request) {
	replyEmpty(w, h.svc.RevokeE2BKey(r.Context(), r.PathValue("ref")))
}

// E2BStatus says where the E2B control plane listens.
func (c *Client) E2BStatus(ctx context.Context) (E2BStatus, error) {
	return callFor[E2BStatus](ctx, c, "GET", "/v1/e2b", nil)
}

// E2BServe starts the E2B control plane's listener.
func (c *Client) E2BServe(ctx context.Context, req E2BServeRequest) (E2BStatus, error) {
	return callFor[E2BStatus](ctx, c, "POST", "/v1/e2b/serve", req)
}

// E2BCA is the E2B listener's certificate authority.
func (c *Client) E2BCA(ctx context.Context) (E2BCA, error) {
	return callFor[E2BCA](ctx, c, "GET", "/v1/e2b/ca", nil)
}

// E2BStop closes the E2B control plane's listener.
func (c *Client) E2BStop(ctx context.Context) error {
	return c.call(ctx, "POST", "/v1/e2b/stop", nil, nil, nil)
}

// ListE2BKeys lists the API keys.
func (c *Client) ListE2BKeys(ctx context.Context) ([]model.E2BKey, error) {
	return callFor[[]model.E2BKey](ctx, c, "GET", "/v1/e2b/keys", nil)
}

// CreateE2BKey makes an API key.
func (c *Client) CreateE2BKey(ctx context.Context, req E2BKeyRequest) (E2BKeyCreated, error) {
	return callFor[E2BKeyCreated](ctx, c, "POST", "/v1/e2b/keys", req)
}

// RevokeE2BKey deletes an API key.
func (c *Client) RevokeE2BKey(ctx context.Context, ref string) error {
	return c.call(ctx, "DELETE", "/v1/e2b/keys/"+esc(ref), nil, nil, nil)
}
