package e2b

import (
	"context"
	"crypto/subtle"
	"crypto/tls"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/banger/banger/internal/keyed"
	"github.com/banger/banger/internal/model"
)

// proxyHostSuffix names the upstream of a proxied request in the
// transport's pool: "<port>.<vmID>.guest.invalid", one pool per guest port.
const proxyHostSuffix = ".guest.invalid"

// proxy relays requests to a sandbox's guest port over its VM's SSH
// connection, streaming both ways (no buffering: flush at once).
type proxy struct {
	s         *Service
	transport *http.Transport
	rp        *httputil.ReverseProxy
	// wakes serialises the autoResume wakes of one sandbox, so requests
	// arriving together share one resume; failed holds the last failed
	// wake per sandbox, answered without another attempt for wakeRetry
	// (a restore is costly, and requests are the client's to repeat).
	wakes  keyed.Mutex
	mu     sync.Mutex
	failed map[string]wakeFailure
	// conns are the open connections to each VM's guest, by VM id, so
	// that a VM that stopped or went takes its relayed streams with it
	// (VMGone) rather than leave them hanging until TCP gives up.
	conns map[string]map[*guestConn]struct{}
}

// guestConn is a relay connection to a guest port, known to its proxy
// until closed.
type guestConn struct {
	net.Conn
	once sync.Once
	p    *proxy
	vmID string
}

func (c *guestConn) Close() error {
	c.once.Do(func() {
		c.p.mu.Lock()
		delete(c.p.conns[c.vmID], c)
		if len(c.p.conns[c.vmID]) == 0 {
			delete(c.p.conns, c.vmID)
		}
		c.p.mu.Unlock()
	})
	return c.Conn.Close()
}

// track makes nc known as a connection to vmID's guest.
func (p *proxy) track(vmID string, nc net.Conn) net.Conn {
	c := &guestConn{Conn: nc, p: p, vmID: vmID}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conns[vmID] == nil {
		p.conns[vmID] = map[*guestConn]struct{}{}
	}
	p.conns[vmID][c] = struct{}{}
	return c
}

// vmGone closes every relay connection to vmID's guest.
func (p *proxy) vmGone(vmID string) {
	p.mu.Lock()
	conns := p.conns[vmID]
	delete(p.conns, vmID)
	p.mu.Unlock()
	for c := range conns {
		_ = c.Conn.Close()
	}
}

type wakeFailure struct {
	at  time.Time
	err error
}

// wakeRetry is how long a failed wake is answered from memory.
const wakeRetry = 10 * time.Second

// Bounds on connecting to a guest port. net/http goes on dialing for its
// pool after the request that asked has gone, so nothing else ends a
// dial or a TLS handshake the guest never answers.
const (
	relayDialTimeout      = 30 * time.Second
	relayHandshakeTimeout = 10 * time.Second
)

// upstreamKey carries a relayed request's upstream in its context.
type upstreamKey struct{}

// upstream is where a relayed request goes: the sandbox's VM, and the
// scheme and Host header it reaches the guest port with.
type upstream struct {
	vm     model.VM
	scheme string
	host   string
}

func newProxy(s *Service) *proxy {
	p := &proxy{s: s, failed: map[string]wakeFailure{}, conns: map[string]map[*guestConn]struct{}{}}
	p.transport = &http.Transport{
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			up, ok := ctx.Value(upstreamKey{}).(upstream)
			if !ok {
				return nil, fmt.Errorf("proxy: no sandbox for %s", addr)
			}
			host, _, _ := net.SplitHostPort(addr)
			port, err := strconv.Atoi(strings.SplitN(host, ".", 2)[0])
			if err != nil {
				return nil, fmt.Errorf("proxy: upstream %s: %w", addr, err)
			}
			ctx, cancel := context.WithTimeout(ctx, relayDialTimeout)
			defer cancel()
			nc, err := s.DialGuest(ctx, up.vm, port)
			if err != nil {
				return nil, err
			}
			return p.track(up.vm.ID, nc), nil
		},
		// httpsPorts: the guest's service speaks TLS. Its certificate is
		// not checked, as on E2B: it is the guest's own, and the hop is
		// the VM's isolated link or its SSH connection.
		TLSClientConfig:       &tls.Config{InsecureSkipVerify: true},
		TLSHandshakeTimeout:   relayHandshakeTimeout,
		MaxIdleConnsPerHost:   16,
		IdleConnTimeout:       90 * time.Second,
		ResponseHeaderTimeout: 0, // long polls and streams are the point
	}
	p.rp = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			up, _ := pr.In.Context().Value(upstreamKey{}).(upstream)
			pr.Out.URL.Scheme = up.scheme
			pr.Out.URL.Host = pr.In.URL.Host
			pr.Out.Host = up.host
			pr.SetXForwarded()
		},
		Transport:     p.transport,
		FlushInterval: -1,
		// An upgraded stream ends when its client's end does. Over TLS,
		// net/http would only half close the guest's side and wait for
		// the guest to close its own, which a guest need never do; a
		// plain port's connection (a guestConn) has no half close.
		ModifyResponse: func(res *http.Response) error {
			if rwc, ok := res.Body.(io.ReadWriteCloser); ok && res.StatusCode == http.StatusSwitchingProtocols {
				res.Body = struct{ io.ReadWriteCloser }{rwc}
			}
			return nil
		},
		// A client that leaves mid-stream is ordinary here.
		ErrorLog: log.New(io.Discard, "", 0),
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			replyError(w, http.StatusBadGateway, "sandbox port unreachable: "+err.Error())
		},
	}
	return p
}

// serve proxies r to the target's guest port; 502 when the sandbox is
// unknown or not running. A paused sandbox made with autoResume is
// resumed first (with the timeout it was made with), as E2B wakes one on
// traffic.
func (p *proxy) serve(w http.ResponseWriter, r *http.Request, t Target) {
	sb, err := p.s.running(r.Context(), t.SandboxID)
	// Before anything else, so that a request without the sandbox's
	// traffic token learns nothing of it and wakes nothing.
	if !TrafficAllowed(sb.rec.TrafficToken, t.Port, r.Header) {
		replyError(w, http.StatusForbidden, "sandbox "+t.SandboxID+" accepts requests to its ports only with its traffic access token (header "+TrafficTokenHeader+")")
		return
	}
	// The guest never sees the token.
	r.Header.Del(TrafficTokenHeader)
	if err != nil && sb.rec.AutoResume && sb.vm.State == model.VMPaused {
		sb, err = p.wake(r.Context(), t.SandboxID)
	}
	if err != nil {
		replyError(w, http.StatusBadGateway, "sandbox "+t.SandboxID+" is not running: "+err.Error())
		return
	}
	up := upstreamOf(sb.vm, sb.rec, t.Port, r.Host)
	r = r.WithContext(context.WithValue(r.Context(), upstreamKey{}, up))
	r.URL.Host = strconv.Itoa(t.Port) + "." + sb.vm.ID + proxyHostSuffix
	// A streaming call's answer may start before its request body has
	// all arrived (a Connect stream, a process's stdin): without full
	// duplex, an HTTP/1 server closes the request body once the answer's
	// headers are flushed, and the relay's upload to the guest fails
	// mid-call. (HTTP/2 is full duplex already; the error is ignored.)
	_ = http.NewResponseController(w).EnableFullDuplex()
	p.rp.ServeHTTP(w, r)
}

// upstreamOf is how a request for port of the sandbox (vm, rec) that
// came with Host host is relayed: over TLS to the ports rec lists in
// HTTPSPorts, with rec's Host mask when it has one (the port put in).
func upstreamOf(vm model.VM, rec model.E2BSandbox, port int, host string) upstream {
	up := upstream{vm: vm, scheme: "http", host: host}
	if slices.Contains(rec.HTTPSPorts, port) {
		up.scheme = "https"
	}
	if rec.MaskHost != "" {
		up.host = strings.ReplaceAll(rec.MaskHost, portVar, strconv.Itoa(port))
	}
	return up
}

// TrafficTokenHeader carries a sandbox's traffic access token.
const TrafficTokenHeader = "E2b-Traffic-Access-Token"

// TrafficAllowed says whether a request to guest port may be relayed to
// a sandbox whose traffic token is token: always when it has none
// (allowPublicTraffic), else only with that token in TrafficTokenHeader.
// envd's port is exempt, as on E2B: envd checks its own access token.
func TrafficAllowed(token string, port int, h http.Header) bool {
	if token == "" || port == EnvdPort {
		return true
	}
	got := h.Values(TrafficTokenHeader)
	return len(got) == 1 && subtle.ConstantTimeCompare([]byte(got[0]), []byte(token)) == 1
}

// wake resumes a paused autoResume sandbox for a request relayed to it:
// one resume at a time per sandbox (a request that waited finds it
// running), and none within wakeRetry of a failed one.
func (p *proxy) wake(ctx context.Context, id string) (sandbox, error) {
	unlock := p.wakes.Lock(id)
	defer unlock()
	if sb, err := p.s.running(ctx, id); err == nil {
		return sb, nil
	}
	p.mu.Lock()
	f, ok := p.failed[id]
	p.mu.Unlock()
	if ok && p.s.Now().Sub(f.at) < wakeRetry {
		return sandbox{}, fmt.Errorf("resuming it failed %s ago: %w", p.s.Now().Sub(f.at).Round(time.Second), f.err)
	}
	sb, err := p.s.lookup(ctx, id)
	if err != nil {
		return sb, err
	}
	sb, _, err = p.s.resume(ctx, id, sb.rec.TimeoutSecs)
	p.mu.Lock()
	if err != nil {
		for k, f := range p.failed {
			if p.s.Now().Sub(f.at) >= wakeRetry {
				delete(p.failed, k)
			}
		}
		p.failed[id] = wakeFailure{at: p.s.Now(), err: err}
	} else {
		delete(p.failed, id)
	}
	p.mu.Unlock()
	if err != nil {
		p.s.Log.Warn("e2b: resuming a sandbox for traffic failed", "sandbox", id, "err", err)
		return sb, err
	}
	// Connections pooled before the pause rode the SSH connection it
	// dropped.
	p.close()
	p.s.Log.Info("e2b: sandbox resumed by traffic", "sandbox", id)
	return sb, nil
}

func (p *proxy) close() { p.transport.CloseIdleConnections() }
