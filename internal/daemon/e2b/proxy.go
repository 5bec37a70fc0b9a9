package e2b

import (
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
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
}

type wakeFailure struct {
	at  time.Time
	err error
}

// wakeRetry is how long a failed wake is answered from memory.
const wakeRetry = 10 * time.Second

type vmKey struct{}

func newProxy(s *Service) *proxy {
	p := &proxy{s: s, failed: map[string]wakeFailure{}}
	p.transport = &http.Transport{
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			vm, ok := ctx.Value(vmKey{}).(model.VM)
			if !ok {
				return nil, fmt.Errorf("proxy: no sandbox for %s", addr)
			}
			host, _, _ := net.SplitHostPort(addr)
			port, err := strconv.Atoi(strings.SplitN(host, ".", 2)[0])
			if err != nil {
				return nil, fmt.Errorf("proxy: upstream %s: %w", addr, err)
			}
			return s.DialGuest(ctx, vm, port)
		},
		MaxIdleConnsPerHost:   16,
		IdleConnTimeout:       90 * time.Second,
		ResponseHeaderTimeout: 0, // long polls and streams are the point
	}
	p.rp = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Scheme = "http"
			pr.Out.URL.Host = pr.In.URL.Host
			pr.Out.Host = pr.In.Host
			pr.SetXForwarded()
		},
		Transport:     p.transport,
		FlushInterval: -1,
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
	if err != nil && sb.rec.AutoResume && sb.vm.State == model.VMPaused {
		sb, err = p.wake(r.Context(), t.SandboxID)
	}
	if err != nil {
		replyError(w, http.StatusBadGateway, "sandbox "+t.SandboxID+" is not running: "+err.Error())
		return
	}
	r = r.WithContext(context.WithValue(r.Context(), vmKey{}, sb.vm))
	r.URL.Host = strconv.Itoa(t.Port) + "." + sb.vm.ID + proxyHostSuffix
	// A streaming call's answer may start before its request body has
	// all arrived (a Connect stream, a process's stdin): without full
	// duplex, an HTTP/1 server closes the request body once the answer's
	// headers are flushed, and the relay's upload to the guest fails
	// mid-call. (HTTP/2 is full duplex already; the error is ignored.)
	_ = http.NewResponseController(w).EnableFullDuplex()
	p.rp.ServeHTTP(w, r)
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
