// Package e2b is banger's E2B-compatible control plane: an HTTP listener
// (off by default; `banger e2b serve` or the e2b_listen setting; HTTPS
// with certificates of its own CA with --tls; with --dns, a DNS responder
// giving the listener's address for every name under its domain) that
// answers the E2B SDK's sandbox calls with banger VMs, checks API keys
// (stored hashed, each with an optional cap on its sandboxes), and
// proxies requests meant for a sandbox — by the E2b-Sandbox-Id header or
// a "<port>-<id>.<domain>" Host — to the guest port they name, over the
// VM's link or its pooled SSH connection, until the VM stops or goes
// (VMGone).
//
// A sandbox is a VM named by its sandbox id, created with the TTL the SDK
// asks for (action delete, or pause for autoPause) and its metadata as
// labels (model.E2BMetaPrefix + key); its record (template, default
// environment, envd's access token, autoPause) lives in the store next to
// the VM and goes with it. At create it writes the token into the guest
// and starts `banger-init envd` there (internal/envd). Pause and resume
// are the VM's (envd and its processes live on in the saved memory), and
// so are snapshots and forks (snapshot.go).
//
// It asks the VM manager to create, delete, pause, resume, time,
// snapshot and fork VMs; it must not touch VM lifecycle, VMMs or the VM
// network itself.
package e2b

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/banger/banger/internal/api"
	"github.com/banger/banger/internal/envd"
	"github.com/banger/banger/internal/errdefs"
	"github.com/banger/banger/internal/guestctl"
	"github.com/banger/banger/internal/guestinit"
	"github.com/banger/banger/internal/hostnet"
	"github.com/banger/banger/internal/model"
	"github.com/banger/banger/internal/progress"
	"github.com/banger/banger/internal/shell"
	"github.com/banger/banger/internal/store"
)

// DefaultListen is where the control plane listens unless told otherwise.
const DefaultListen = "127.0.0.1:3000"

// DefaultTemplate is the template id that means banger's default image.
const DefaultTemplate = "base"

// clientID is the clientID of every answer (E2B's cluster node).
const clientID = "banger"

// envdStartTimeout bounds waiting for envd to listen after it was started.
const envdStartTimeout = 30 * time.Second

// VMs is what the control plane asks of the VM manager (*vms.Manager).
type VMs interface {
	// Create makes (and with Start, boots) a VM, or with FromSnapshot
	// restores one from a snapshot; see vms.Manager.Create.
	Create(ctx context.Context, req api.CreateVMRequest, report progress.Func) (model.VM, error)
	// Delete removes a VM; force stops it first.
	Delete(ctx context.Context, ref string, force bool) error
	// Get is the VM named ref (name, id or id prefix).
	Get(ctx context.Context, ref string) (model.VM, error)
	// List is every VM.
	List(ctx context.Context) ([]model.VM, error)
	// SetTTL sets a VM's deadline from now.
	SetTTL(ctx context.Context, ref string, req api.VMTTLRequest) (model.VM, error)
	// Pause saves a running VM's whole state and ends its VMM; a
	// conflict when it is already paused or does not run.
	Pause(ctx context.Context, ref string) (model.VM, error)
	// Resume restores a paused VM; a conflict when it is not paused.
	Resume(ctx context.Context, ref string, report progress.Func) (model.VM, error)
	// CreateSnapshot snapshots a running VM (name "" picks one); see
	// vms.Manager.CreateSnapshot.
	CreateSnapshot(ctx context.Context, ref, name string) (model.Snapshot, error)
	// ListSnapshots is every snapshot, with the VMs made from each.
	ListSnapshots(ctx context.Context) ([]model.Snapshot, error)
	// GetSnapshot is the snapshot named ref (name, id or id prefix).
	GetSnapshot(ctx context.Context, ref string) (model.Snapshot, error)
	// RemoveSnapshot deletes a snapshot no VM is made from (a conflict
	// otherwise).
	RemoveSnapshot(ctx context.Context, ref string) error
	// SetNet changes a VM's network policy; see vms.Manager.SetNet.
	SetNet(ctx context.Context, ref string, req api.VMNetRequest) (model.VM, error)
	// Alive says whether the VM runs (state and VMM process).
	Alive(vm model.VM) bool
	// GuestControl asks a running VM's guest over its control channel;
	// unavailable (errdefs.CodeUnavailable) when it has none. See
	// vms.Manager.GuestControl.
	GuestControl(ctx context.Context, vm model.VM, req guestctl.Request) (guestctl.Reply, error)
}

// Deps are what a Service is made of.
type Deps struct {
	Store *store.Store
	Log   *slog.Logger
	VMs   VMs
	// RunGuest runs a shell command as root in a running VM's guest with
	// stdin, answering its combined output and exit code.
	RunGuest func(ctx context.Context, vm model.VM, cmd string, stdin io.Reader) (out string, exit int, err error)
	// DialGuest connects to port on a running VM's guest loopback.
	DialGuest func(ctx context.Context, vm model.VM, port int) (net.Conn, error)
	// Listen opens the listener where the daemon's users are
	// (hostnet.ListenHost); ListenPacket the DNS responder's UDP socket
	// there (hostnet.ListenPacketHost). Nil: net.Listen and
	// net.ListenPacket, in the daemon's own namespace (tests).
	Listen       func(network, addr string) (net.Listener, error)
	ListenPacket func(network, addr string) (net.PacketConn, error)
	// Dir is the control plane's own directory (its CA).
	Dir string
	Now func() time.Time
}

// Service is the control plane; Serve starts its listener.
type Service struct {
	Deps
	mu     sync.Mutex
	srv    *http.Server
	ln     net.Listener
	addr   string
	domain string
	tls    bool
	// dns answers for the domain's names when the listener was asked
	// to (Listener.DNS), at dnsAddr.
	dns     *hostnet.DNS
	dnsAddr string
	proxy   *proxy
	caMu    sync.Mutex
	ca      *CA
	// quotaMu guards pending: sandboxes being made, by API key id, not
	// yet in the store (reserve).
	quotaMu sync.Mutex
	pending map[string]int
}

// New makes a Service; it listens only after Serve.
func New(d Deps) *Service {
	if d.Listen == nil {
		d.Listen = net.Listen
	}
	if d.ListenPacket == nil {
		d.ListenPacket = net.ListenPacket
	}
	s := &Service{Deps: d}
	s.proxy = newProxy(s)
	return s
}

// Status says where the control plane listens ("" when it does not),
// the domain of its sandbox host names, whether it speaks TLS and where
// it answers DNS for the domain's names ("" for nowhere).
type Status struct {
	Listen string `json:"listen"`
	Domain string `json:"domain"`
	TLS    bool   `json:"tls,omitempty"`
	DNS    string `json:"dns,omitempty"`
}

// Listener is where and how the control plane serves.
type Listener struct {
	// Addr is HOST:PORT; DefaultListen when empty.
	Addr string
	// Domain is the suffix of sandbox host names ("<port>-<id>.<domain>",
	// and the SDK's "api.<domain>"); "localhost:<port>" when empty.
	Domain string
	// TLS speaks HTTPS with certificates of the CA (made on first use).
	TLS bool
	// DNS, when set, is an "IP:port" where the control plane also
	// answers DNS, over UDP and TCP: A queries for every name under the
	// domain (without its port) get the listener's IPv4 address, so a
	// client whose resolver asks there needs no wildcard record of its
	// own. Other names are refused (NXDOMAIN): it is no resolver.
	DNS string
}

func (s *Service) statusLocked() Status {
	return Status{Listen: s.addr, Domain: s.domain, TLS: s.tls, DNS: s.dnsAddr}
}

// URL is the listener's base URL ("" when it does not listen).
func (st Status) URL() string {
	if st.Listen == "" {
		return ""
	}
	if st.TLS {
		return "https://" + st.Listen
	}
	return "http://" + st.Listen
}

// Serve starts listening as l says. A second Serve on the same address,
// scheme and DNS address (or none asked for) is a no-op; on another, a
// conflict.
func (s *Service) Serve(l Listener) (Status, error) {
	addr, domain, useTLS := l.Addr, l.Domain, l.TLS
	if addr == "" {
		addr = DefaultListen
	}
	var ca *CA
	if useTLS {
		var err error
		if ca, err = s.CA(); err != nil {
			return Status{}, err
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.srv != nil {
		if (addr == s.addr || addr == DefaultListen) && useTLS == s.tls && (l.DNS == "" || l.DNS == s.dnsAddr) {
			return s.statusLocked(), nil
		}
		return Status{}, errdefs.Errorf(errdefs.CodeConflict, "the e2b control plane already listens on %s (tls %v, dns %q): banger e2b stop first", s.addr, s.tls, s.dnsAddr)
	}
	ln, err := s.Listen("tcp", addr)
	if err != nil {
		return Status{}, errdefs.Errorf(errdefs.CodeInvalid, "e2b listen %s: %v", addr, err)
	}
	bound := ln.Addr().String()
	if domain == "" {
		_, port, _ := net.SplitHostPort(bound)
		domain = "localhost:" + port
	}
	srv := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 30 * time.Second}
	if useTLS {
		iss, err := newIssuer(ca, domain, s.Now)
		if err != nil {
			ln.Close()
			return Status{}, err
		}
		srv.TLSConfig = iss.tlsConfig()
	}
	var resp *hostnet.DNS
	dnsAddr := ""
	if l.DNS != "" {
		if resp, dnsAddr, err = s.serveDNS(l.DNS, bound, domain); err != nil {
			ln.Close()
			return Status{}, err
		}
	}
	s.addr, s.domain, s.tls, s.srv, s.ln = bound, domain, useTLS, srv, ln
	s.dns, s.dnsAddr = resp, dnsAddr
	go func() {
		var err error
		if useTLS {
			err = srv.ServeTLS(ln, "", "")
		} else {
			err = srv.Serve(ln)
		}
		if err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.Log.Error("e2b listener stopped", "err", err)
		}
	}()
	s.Log.Info("e2b control plane listening", "addr", bound, "domain", domain, "tls", useTLS, "dns", dnsAddr)
	return s.statusLocked(), nil
}

// serveDNS starts the responder for the names under domain at addr,
// answering with the listener's address (bound); it returns the
// responder and the address it listens on.
func (s *Service) serveDNS(addr, bound, domain string) (*hostnet.DNS, string, error) {
	ip, zone, err := dnsAnswer(bound, addr, domain)
	if err != nil {
		return nil, "", errdefs.Invalid(err)
	}
	pc, err := s.ListenPacket("udp", addr)
	if err != nil {
		return nil, "", errdefs.Errorf(errdefs.CodeInvalid, "e2b dns listen udp %s: %v", addr, err)
	}
	// TCP on the port UDP got, when port 0 was asked for.
	dl, err := s.Listen("tcp", pc.LocalAddr().String())
	if err != nil {
		pc.Close()
		return nil, "", errdefs.Errorf(errdefs.CodeInvalid, "e2b dns listen tcp %s: %v", addr, err)
	}
	resp := hostnet.NewDNS(zone, func(string) (netip.Addr, bool) { return ip, true }, s.Log)
	if err := resp.Serve(pc, dl); err != nil {
		return nil, "", err
	}
	return resp, dl.Addr().String(), nil
}

// dnsAnswer is the address the DNS responder gives for the names under
// domain, and the zone it answers for (domain without its port): the
// listener's IPv4 address, or, when the listener is on every address,
// the DNS responder's own, which must then be a specific IPv4 address.
// It answers IPv4 only, so a listener on one IPv6 address is refused.
func dnsAnswer(listen, dnsAddr, domain string) (netip.Addr, string, error) {
	zone := domain
	if h, _, err := net.SplitHostPort(domain); err == nil {
		zone = h
	}
	zone = strings.Trim(zone, ".")
	if zone == "" {
		return netip.Addr{}, "", fmt.Errorf("e2b dns: domain %q has no name to answer for", domain)
	}
	dh, _, err := net.SplitHostPort(dnsAddr)
	if err != nil {
		return netip.Addr{}, "", fmt.Errorf("e2b dns address %q: want IP:PORT (e.g. 127.0.0.1:53)", dnsAddr)
	}
	dip, err := netip.ParseAddr(dh)
	if err != nil {
		return netip.Addr{}, "", fmt.Errorf("e2b dns address %q: want IP:PORT (e.g. 127.0.0.1:53)", dnsAddr)
	}
	lh, _, err := net.SplitHostPort(listen)
	if err != nil {
		return netip.Addr{}, "", fmt.Errorf("e2b dns: listener address %q: %v", listen, err)
	}
	lip, err := netip.ParseAddr(lh)
	if err != nil {
		return netip.Addr{}, "", fmt.Errorf("e2b dns: listener address %q is not an IP address", listen)
	}
	switch {
	case lip.Is4() && !lip.IsUnspecified():
		return lip, strings.ToLower(zone), nil
	case !lip.IsUnspecified():
		return netip.Addr{}, "", fmt.Errorf("e2b dns: the listener (%s) is on an IPv6 address; the responder answers IPv4 only", listen)
	case dip.Is4() && !dip.IsUnspecified():
		// The listener is on every address, the responder's among them.
		return dip, strings.ToLower(zone), nil
	}
	return netip.Addr{}, "", fmt.Errorf("e2b dns: neither the listener (%s) nor the dns address (%s) is a specific IPv4 address to answer with", listen, dnsAddr)
}

// CA is the control plane's certificate authority, made (in Dir) the
// first time it is asked for.
func (s *Service) CA() (*CA, error) {
	s.caMu.Lock()
	defer s.caMu.Unlock()
	if s.ca != nil {
		return s.ca, nil
	}
	if s.Dir == "" {
		return nil, errdefs.Errorf(errdefs.CodeUnavailable, "the e2b control plane has no directory for its CA")
	}
	ca, err := LoadOrCreateCA(s.Dir, s.Now())
	if err != nil {
		return nil, err
	}
	s.ca = ca
	return ca, nil
}

// Start serves at daemon start: the configured address when there is
// one (the e2b_listen setting), else the one `banger e2b serve` recorded.
func (s *Service) Start(ctx context.Context, l Listener) error {
	if l.Addr == "" {
		r, ok, err := s.Store.E2BListener(ctx)
		if err != nil || !ok {
			return err
		}
		l = Listener{Addr: r.Listen, Domain: r.Domain, TLS: r.TLS, DNS: r.DNS}
	}
	// Snapshots of forks whose sandboxes timed out while bangerd was away.
	s.dropForkSnapshots(ctx)
	_, err := s.Serve(l)
	return err
}

// ServeAndRecord is Serve that is served again after a daemon restart:
// the bound addresses (a port 0 becomes the port picked), domain and
// scheme are recorded.
func (s *Service) ServeAndRecord(ctx context.Context, l Listener) (Status, error) {
	st, err := s.Serve(l)
	if err != nil {
		return st, err
	}
	if err := s.Store.SetE2BListener(ctx, store.E2BListenerRecord{Listen: st.Listen, Domain: st.Domain, TLS: st.TLS, DNS: st.DNS}, s.Now().UTC()); err != nil {
		return st, fmt.Errorf("record the e2b listener: %w", err)
	}
	return st, nil
}

// Stop closes the listener and forgets the recorded one; sandboxes keep
// running (their VMs' deadlines still apply).
func (s *Service) Stop(ctx context.Context) error {
	s.Close()
	return s.Store.ClearE2BListener(ctx)
}

// VMGone cuts the relayed connections to the guest of a VM that stopped
// or was deleted (by the SDK's kill, a timeout, `banger vm delete`):
// with its guest gone, a stream to it (a background command's output,
// a watch) would otherwise hang until TCP gave up, and the client with
// it. A pause keeps them: the guest's end is saved with its memory.
func (s *Service) VMGone(vmID string) { s.proxy.vmGone(vmID) }

// Status answers where the control plane listens.
func (s *Service) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.statusLocked()
}

// Close stops the listener and its connections. The address is free
// when it returns: the listener is closed here, not left to the serving
// goroutine, which may not have reached Serve yet (http.Server.Close
// closes only the listeners Serve has taken up).
func (s *Service) Close() {
	s.mu.Lock()
	srv, ln, resp := s.srv, s.ln, s.dns
	s.srv, s.ln, s.addr, s.tls, s.dns, s.dnsAddr = nil, nil, "", false, nil, ""
	s.mu.Unlock()
	if srv != nil {
		_ = srv.Close()
		_ = ln.Close()
	}
	if resp != nil {
		_ = resp.Close()
	}
	s.proxy.close()
}

// CreateKey makes an API key named name and returns it: the only time the
// key itself is seen. maxSandboxes caps the sandboxes made with it that
// exist at once (0: no cap).
func (s *Service) CreateKey(ctx context.Context, name string, maxSandboxes int) (string, model.E2BKey, error) {
	if err := model.ValidateName("e2b key", name); err != nil {
		return "", model.E2BKey{}, errdefs.Invalid(err)
	}
	if maxSandboxes < 0 {
		return "", model.E2BKey{}, errdefs.Errorf(errdefs.CodeInvalid, "max sandboxes %d: want 0 (no cap) or more", maxSandboxes)
	}
	key := NewKey()
	rec := model.E2BKey{ID: model.NewID(), Name: name, Hash: HashKey(key), Prefix: key[:len(KeyPrefix)+6],
		CreatedAt: s.Now().UTC(), MaxSandboxes: maxSandboxes}
	if err := s.Store.CreateE2BKey(ctx, rec); err != nil {
		return "", rec, store.Describe("e2b key", name, err)
	}
	return key, rec, nil
}

// ListKeys lists the API keys (never the keys themselves).
func (s *Service) ListKeys(ctx context.Context) ([]model.E2BKey, error) {
	return s.Store.ListE2BKeys(ctx)
}

// RevokeKey deletes the key named ref (name or id).
func (s *Service) RevokeKey(ctx context.Context, ref string) (model.E2BKey, error) {
	k, err := s.Store.DeleteE2BKey(ctx, ref)
	if err != nil {
		return k, store.Describe("e2b key", ref, err)
	}
	return k, nil
}

// authorize checks a request's API key against the store, answering its
// record.
func (s *Service) authorize(ctx context.Context, h http.Header) (model.E2BKey, bool) {
	key := KeyOf(h)
	if key == "" {
		return model.E2BKey{}, false
	}
	k, err := s.Store.E2BKeyByHash(ctx, HashKey(key))
	if err != nil {
		return model.E2BKey{}, false
	}
	now := s.Now().UTC()
	if k.LastUsed == nil || now.Sub(*k.LastUsed) > time.Minute {
		_ = s.Store.TouchE2BKey(ctx, k.ID, now)
	}
	return k, true
}

// sandbox is a sandbox's VM and record.
type sandbox struct {
	vm  model.VM
	rec model.E2BSandbox
}

// lookup finds a sandbox by id; errdefs not-found when there is none.
func (s *Service) lookup(ctx context.Context, id string) (sandbox, error) {
	if err := model.ValidateName("sandbox", id); err != nil {
		return sandbox{}, errdefs.Errorf(errdefs.CodeNotFound, "sandbox %q not found", id)
	}
	vm, err := s.VMs.Get(ctx, id)
	if err != nil || vm.Name != id {
		return sandbox{}, errdefs.Errorf(errdefs.CodeNotFound, "sandbox %q not found", id)
	}
	rec, err := s.Store.E2BSandbox(ctx, vm.ID)
	if err != nil {
		return sandbox{}, errdefs.Errorf(errdefs.CodeNotFound, "sandbox %q not found (vm %s was not made by the e2b control plane)", id, vm.Name)
	}
	return sandbox{vm: vm, rec: rec}, nil
}

// running is a sandbox whose VM runs.
func (s *Service) running(ctx context.Context, id string) (sandbox, error) {
	sb, err := s.lookup(ctx, id)
	if err != nil {
		return sb, err
	}
	if !s.VMs.Alive(sb.vm) {
		return sb, errdefs.Errorf(errdefs.CodeConflict, "sandbox %s is not running (vm state %s)", id, sb.vm.State)
	}
	return sb, nil
}

// createRequest is the body of POST /sandboxes and /v2/sandboxes.
type createRequest struct {
	TemplateID string            `json:"templateID"`
	Timeout    *int              `json:"timeout"`
	Metadata   map[string]string `json:"metadata"`
	EnvVars    map[string]string `json:"envVars"`
	AutoPause  *bool             `json:"autoPause"`
	AutoResume *struct {
		Enabled bool `json:"enabled"`
	} `json:"autoResume"`
	AllowInternetAccess *bool          `json:"allow_internet_access"`
	Secure              *bool          `json:"secure"`
	VolumeMounts        []any          `json:"volumeMounts"`
	MCP                 map[string]any `json:"mcp"`
	Network             *networkJSON   `json:"network"`
}

// defaultTimeout is E2B's default sandbox lifetime, in seconds.
const defaultTimeout = 300

// create makes a sandbox: a VM booted with the TTL, its record, envd
// started in the guest. Nothing is left behind when a step fails.
func (s *Service) create(ctx context.Context, req createRequest) (sandbox, error) {
	autoResume := req.AutoResume != nil && req.AutoResume.Enabled
	if autoResume && (req.AutoPause == nil || !*req.AutoPause) {
		return sandbox{}, errdefs.Errorf(errdefs.CodeInvalid, "autoResume needs autoPause (onTimeout: 'pause'): only a paused sandbox can wake on traffic")
	}
	labels, err := MetadataLabels(req.Metadata)
	if err != nil {
		return sandbox{}, err
	}
	if len(req.VolumeMounts) > 0 {
		return sandbox{}, errdefs.Errorf(errdefs.CodeInvalid, "volume mounts are not supported by banger")
	}
	if len(req.MCP) > 0 {
		return sandbox{}, errdefs.Errorf(errdefs.CodeInvalid, "MCP gateways are not supported by banger")
	}
	net, netSet, err := egressPolicy(req.AllowInternetAccess, req.Network)
	if err != nil {
		return sandbox{}, err
	}
	relay := relaySpec{private: privateTraffic(req.Network)}
	if relay.mask, relay.https, err = relayOptions(req.Network); err != nil {
		return sandbox{}, err
	}
	for k, v := range req.EnvVars {
		if !shell.ValidEnvKey(k) || strings.ContainsAny(v, "\n\x00") {
			return sandbox{}, errdefs.Errorf(errdefs.CodeInvalid, "envVars: %q is not a valid variable (name [A-Za-z_][A-Za-z0-9_]*, value without newlines)", k)
		}
	}
	timeout := defaultTimeout
	if req.Timeout != nil {
		timeout = *req.Timeout
	}
	if err := checkTimeout(timeout); err != nil {
		return sandbox{}, err
	}
	image := req.TemplateID
	if image == DefaultTemplate {
		image = ""
	}
	autoPause := req.AutoPause != nil && *req.AutoPause
	sn, fromSnapshot, err := s.snapshotTemplate(ctx, req.TemplateID)
	if err != nil {
		return sandbox{}, err
	}
	key := keyOf(ctx)
	held, err := s.reserve(ctx, key, 1)
	if err != nil {
		return sandbox{}, err
	}
	defer held.release()
	if fromSnapshot {
		spec := snapshotSpec{timeout: timeout, autoPause: autoPause, autoResume: autoResume, env: req.EnvVars, labels: labels, relay: relay}
		if netSet {
			spec.net = &net
		}
		return s.createFromSnapshot(ctx, sn, spec, held)
	}
	// Ready once its sshd listens: the sandbox is reached through envd,
	// given its token over the control channel, so no SSH session is
	// waited for. envd starts with the boot, while the guest sets
	// itself up, rather than after it.
	vmReq := api.CreateVMRequest{Name: newSandboxID(), Image: image, Start: true, Ready: api.ReadyListening, Envd: true,
		TTL: makingTTL(timeout), TTLAction: model.TTLDelete, Labels: labels}
	if netSet {
		vmReq.Net, vmReq.Allow, vmReq.Deny = net.Mode, net.Allow, net.Deny
	}
	start := s.Now()
	vm, err := s.VMs.Create(ctx, vmReq, nil)
	if err != nil {
		return sandbox{}, err
	}
	booted := s.Now()
	template := req.TemplateID
	if template == "" {
		template = DefaultTemplate
	}
	rec := model.E2BSandbox{VMID: vm.ID, TemplateID: template, Token: newToken(),
		Env: req.EnvVars, AutoPause: autoPause, AutoResume: autoResume, TimeoutSecs: timeout, CreatedAt: s.Now().UTC(), KeyID: key.ID}
	relay.apply(&rec)
	undo := func(err error) (sandbox, error) {
		// A fresh context: the request's may be what ended.
		dctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if derr := s.VMs.Delete(dctx, vm.ID, true); derr != nil {
			s.Log.Error("e2b: delete the vm of a failed create", "vm", vm.Name, "err", derr)
		}
		return sandbox{}, err
	}
	if err := held.record(func() error { return s.Store.CreateE2BSandbox(ctx, rec) }); err != nil {
		return undo(err)
	}
	if err := s.startEnvd(ctx, vm, rec); err != nil {
		return undo(err)
	}
	if vm, err = s.armTimeout(ctx, vm.ID, timeout, autoPause); err != nil {
		return undo(err)
	}
	s.Log.Info("e2b sandbox created", "sandbox", vm.Name, "vm_s", booted.Sub(start).Seconds(), "envd_s", s.Now().Sub(booted).Seconds())
	return sandbox{vm: vm, rec: rec}, nil
}

// relaySpec is how requests are relayed to a new sandbox's ports:
// whether they need a traffic token (made per sandbox), the Host mask,
// the ports reached over TLS.
type relaySpec struct {
	private bool
	mask    string
	https   []int
}

// relayOf is what a copy of the sandbox rec is relayed with: the same,
// with a traffic token of its own.
func relayOf(rec model.E2BSandbox) relaySpec {
	return relaySpec{private: rec.TrafficToken != "", mask: rec.MaskHost, https: rec.HTTPSPorts}
}

// apply puts the relay settings in a new sandbox's record.
func (r relaySpec) apply(rec *model.E2BSandbox) {
	if r.private {
		rec.TrafficToken = newToken()
	}
	rec.MaskHost, rec.HTTPSPorts = r.mask, r.https
}

// envdDir is where the guest keeps envd's token, environment and log.
const envdDir = envd.RunDir

// envdScript makes the default user (for images built before it was part
// of the image), writes the token and environment read from stdin (first
// line the token, then KEY=VALUE lines) and starts envd detached, for
// guests without the control channel's envd request (tellEnvd). It uses
// shell builtins where a program would cost a slow guest CPU an exec
// (setsid and envd itself are the only ones on the usual path).
func envdScript() string {
	return `set -e
known=
while IFS=: read -r name _; do
  if [ "$name" = user ]; then known=1; fi
done < /etc/passwd
if [ -z "$known" ]; then
  useradd -m -u 1000 -U -s /bin/bash user 2>/dev/null || useradd -m -U -s /bin/bash user
fi
umask 077
[ -d ` + envdDir + ` ] || mkdir -m 700 ` + envdDir + `
IFS= read -r token
printf '%s\n' "$token" > ` + envdDir + `/token
while IFS= read -r line; do printf '%s\n' "$line"; done > ` + envdDir + `/env
old=
if [ -f ` + envdDir + `/pid ]; then read -r old < ` + envdDir + `/pid || old=; fi
if [ -n "$old" ] && kill -0 "$old" 2>/dev/null; then
  kill "$old"; sleep 0.2
fi
setsid ` + guestinit.InitPath + ` envd --listen 0.0.0.0:` + strconv.Itoa(envd.Port) + ` --token-file ` + envdDir + `/token --env-file ` + envdDir + `/env </dev/null >` + envdDir + `/log 2>&1 &
echo $! > ` + envdDir + `/pid
`
}

// envdInput is the stdin of envdScript.
func envdInput(token string, env map[string]string) string {
	var b strings.Builder
	b.WriteString(token + "\n")
	for _, k := range sortedKeys(env) {
		b.WriteString(k + "=" + env[k] + "\n")
	}
	return b.String()
}

// startEnvd starts envd in the guest and waits until it accepts
// connections: over the control channel (tellEnvd) when the guest has
// it, else with envdScript over SSH.
func (s *Service) startEnvd(ctx context.Context, vm model.VM, rec model.E2BSandbox) error {
	if err := s.tellEnvd(ctx, vm, rec); err != nil {
		out, code, err := s.RunGuest(ctx, vm, envdScript(), strings.NewReader(envdInput(rec.Token, rec.Env)))
		if err != nil {
			return fmt.Errorf("start envd in %s: %w", vm.Name, err)
		}
		if code != 0 {
			return errdefs.Errorf(errdefs.CodeInternal, "start envd in %s: exit %d: %s", vm.Name, code, strings.TrimSpace(out))
		}
	}
	return s.waitEnvd(ctx, vm)
}

// envdOverSSH is logged when envd is reached through SSH instead.
const envdOverSSH = "e2b: envd started or rekeyed over SSH, not over the control channel"

// tellEnvdWait bounds the control channel's envd request: a running
// envd has 5 s to take a new token before the guest replaces it.
const tellEnvdWait = 15 * time.Second

// tellEnvd gives the guest's envd the sandbox's token and environment
// over the control channel (guestctl.OpEnvd): banger-init starts envd
// with them, or has a running one (restored from a snapshot) take them
// over SIGHUP, with no shell or SSH session. An error (no control
// channel, an image whose banger-init predates the request, an
// environment the request cannot carry) is logged: the caller falls
// back to SSH.
func (s *Service) tellEnvd(ctx context.Context, vm model.VM, rec model.E2BSandbox) error {
	req := guestctl.Request{Op: guestctl.OpEnvd, EnvdToken: rec.Token}
	for _, k := range sortedKeys(rec.Env) {
		req.EnvdEnv = append(req.EnvdEnv, k+"="+rec.Env[k])
	}
	cctx, cancel := context.WithTimeout(ctx, tellEnvdWait)
	defer cancel()
	_, err := s.VMs.GuestControl(cctx, vm, req)
	if err != nil {
		s.Log.Info(envdOverSSH, "sandbox", vm.Name, "err", err)
	}
	return err
}

// waitEnvd waits until the guest's envd accepts connections.
func (s *Service) waitEnvd(ctx context.Context, vm model.VM) error {
	deadline := s.Now().Add(envdStartTimeout)
	for {
		c, err := s.DialGuest(ctx, vm, envd.Port)
		if err == nil {
			c.Close()
			return nil
		}
		if !s.VMs.Alive(vm) {
			return errdefs.Errorf(errdefs.CodeConflict, "vm %s stopped while envd was starting", vm.Name)
		}
		if s.Now().After(deadline) {
			// envd's own words say why, when it wrote any.
			log, _, _ := s.RunGuest(ctx, vm, "tail -c 2000 "+envdDir+"/log", nil)
			return errdefs.Errorf(errdefs.CodeInternal, "envd in %s did not listen within %s: %v; its log: %s", vm.Name, envdStartTimeout, err, strings.TrimSpace(log))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// makingAllowance is how long a sandbox being made or resumed may take
// before the deadline it is given meanwhile (makingTTL) acts. A
// sandbox's timeout counts from when it is ready (armTimeout), as a
// client counts it from the answer: a deadline counted from the request
// could pass during a slow boot or restore, pausing or deleting the VM
// while envd is being started in it.
const makingAllowance = 10 * time.Minute

// makingTTL is the deadline of a sandbox while it is made or resumed:
// its timeout plus makingAllowance (at most the longest deadline a VM
// takes), so a daemon that dies meanwhile leaves no VM without one.
func makingTTL(timeout int) string {
	return min(time.Duration(timeout)*time.Second+makingAllowance, model.MaxTTL).String()
}

// armTimeout sets a sandbox's VM, now ready, its deadline timeout
// seconds from now with its timeout action, and returns the VM.
func (s *Service) armTimeout(ctx context.Context, vmID string, timeout int, autoPause bool) (model.VM, error) {
	return s.VMs.SetTTL(ctx, vmID, api.VMTTLRequest{TTL: strconv.Itoa(timeout) + "s", Action: timeoutAction(autoPause)})
}

// checkTimeout refuses a sandbox timeout (seconds) that is not one a VM's
// deadline can be: under 1 second or over model.MaxTTL.
func checkTimeout(seconds int) error {
	if seconds < 1 || int64(seconds) > int64(model.MaxTTL/time.Second) {
		return errdefs.Errorf(errdefs.CodeInvalid, "timeout %d: want 1 to %d seconds", seconds, int64(model.MaxTTL/time.Second))
	}
	return nil
}

// setTimeout moves a sandbox's deadline to now + seconds.
func (s *Service) setTimeout(ctx context.Context, id string, seconds int) error {
	if err := checkTimeout(seconds); err != nil {
		return err
	}
	sb, err := s.lookup(ctx, id)
	if err != nil {
		return err
	}
	_, err = s.VMs.SetTTL(ctx, sb.vm.ID, api.VMTTLRequest{TTL: strconv.Itoa(seconds) + "s", Action: timeoutAction(sb.rec.AutoPause)})
	return err
}

// timeoutAction is what a sandbox's deadline does to its VM.
func timeoutAction(autoPause bool) string {
	if autoPause {
		return model.TTLPause
	}
	return model.TTLDelete
}

// MetadataLabels are the VM labels of a sandbox's metadata: key k becomes
// model.E2BMetaPrefix + k. A key or value labels cannot hold is refused.
func MetadataLabels(meta map[string]string) (map[string]string, error) {
	if len(meta) == 0 {
		return nil, nil
	}
	labels := make(map[string]string, len(meta))
	for k, v := range meta {
		labels[model.E2BMetaPrefix+k] = v
	}
	if err := model.ValidateLabels(labels); err != nil {
		return nil, errdefs.Errorf(errdefs.CodeInvalid, "metadata: banger keeps it as vm labels %q+key: %v", model.E2BMetaPrefix, err)
	}
	return labels, nil
}

// Metadata is a sandbox's metadata: its VM's labels under
// model.E2BMetaPrefix, the prefix taken off.
func Metadata(labels map[string]string) map[string]string {
	var meta map[string]string
	for k, v := range labels {
		if key, ok := strings.CutPrefix(k, model.E2BMetaPrefix); ok {
			if meta == nil {
				meta = map[string]string{}
			}
			meta[key] = v
		}
	}
	return meta
}

// pause pauses a running sandbox's VM and clears its deadline, as E2B
// keeps a paused sandbox until it is resumed or killed; a conflict when
// it is paused already.
func (s *Service) pause(ctx context.Context, id string) error {
	sb, err := s.lookup(ctx, id)
	if err != nil {
		return err
	}
	if sb.vm.State == model.VMPaused {
		return errdefs.Errorf(errdefs.CodeConflict, "sandbox %s is already paused", id)
	}
	if _, err = s.VMs.Pause(ctx, sb.vm.ID); err != nil {
		return err
	}
	// Idle relay connections rode the SSH connection the pause dropped.
	s.proxy.close()
	if _, err := s.VMs.SetTTL(context.WithoutCancel(ctx), sb.vm.ID, api.VMTTLRequest{TTL: model.TTLNone}); err != nil {
		return fmt.Errorf("sandbox %s is paused but its deadline stays: %w", id, err)
	}
	return nil
}

// resume restores a paused sandbox's VM, with a new deadline timeout
// seconds from now (defaultTimeout when 0), and checks that envd
// answers; resumed says whether it was paused (a running one is left as
// it is but for the deadline, which only ever grows).
func (s *Service) resume(ctx context.Context, id string, timeout int) (sb sandbox, resumed bool, err error) {
	sb, err = s.lookup(ctx, id)
	if err != nil {
		return sb, false, err
	}
	if sb.vm.State == model.VMPaused {
		if timeout <= 0 {
			timeout = defaultTimeout
		}
		// A deadline first, one the resume cannot outlast: the one that
		// paused it has passed or gone. The timeout counts once envd
		// answers.
		if _, err := s.VMs.SetTTL(ctx, sb.vm.ID, api.VMTTLRequest{TTL: makingTTL(timeout), Action: timeoutAction(sb.rec.AutoPause)}); err != nil {
			return sb, false, err
		}
		vm, err := s.VMs.Resume(ctx, sb.vm.ID, nil)
		if err != nil {
			// Another connect may have resumed it meanwhile.
			now, gerr := s.VMs.Get(ctx, sb.vm.ID)
			if errdefs.CodeOf(err) != errdefs.CodeConflict || gerr != nil || !s.VMs.Alive(now) {
				return sb, false, err
			}
			vm = now
		}
		sb.vm, resumed = vm, true
	} else if !s.VMs.Alive(sb.vm) {
		return sb, false, errdefs.Errorf(errdefs.CodeConflict, "sandbox %s is not running (vm state %s)", id, sb.vm.State)
	} else if timeout > 0 {
		want := s.Now().Add(time.Duration(timeout) * time.Second)
		if sb.vm.ExpiresAt == nil || sb.vm.ExpiresAt.Before(want) {
			if err := s.setTimeout(ctx, id, timeout); err != nil {
				return sb, false, err
			}
		}
	}
	// A VM restarted by hand (`banger vm restart`) comes back without
	// envd: start it again with the sandbox's token and environment.
	if c, err := s.DialGuest(ctx, sb.vm, envd.Port); err == nil {
		c.Close()
	} else if err := s.startEnvd(ctx, sb.vm, sb.rec); err != nil {
		return sb, resumed, err
	}
	if resumed {
		sb.vm, err = s.armTimeout(ctx, sb.vm.ID, timeout, sb.rec.AutoPause)
		return sb, resumed, err
	}
	sb.vm, err = s.VMs.Get(ctx, sb.vm.ID)
	return sb, resumed, err
}

// kill deletes a sandbox's VM.
func (s *Service) kill(ctx context.Context, id string) error {
	sb, err := s.lookup(ctx, id)
	if err != nil {
		return err
	}
	if err := s.VMs.Delete(ctx, sb.vm.ID, true); err != nil {
		return err
	}
	s.dropForkSnapshots(context.WithoutCancel(ctx))
	return nil
}

// list is every sandbox whose VM's labels sel matches, by creation.
func (s *Service) list(ctx context.Context, sel model.LabelSelector) ([]sandbox, error) {
	recs, err := s.Store.ListE2BSandboxes(ctx)
	if err != nil {
		return nil, err
	}
	vms, err := s.VMs.List(ctx)
	if err != nil {
		return nil, err
	}
	byID := map[string]model.VM{}
	for _, vm := range vms {
		byID[vm.ID] = vm
	}
	var out []sandbox
	for _, r := range recs {
		if vm, ok := byID[r.VMID]; ok && sel.Matches(vm.Labels) {
			out = append(out, sandbox{vm: vm, rec: r})
		}
	}
	return out, nil
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
