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
	"time"

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
}

type vmKey struct{}

func newProxy(s *Service) *proxy {
	p := &proxy{s: s}
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
		if sb, _, err = p.s.resume(r.Context(), t.SandboxID, sb.rec.TimeoutSecs); err == nil {
			// Connections pooled before the pause rode the SSH
			// connection it dropped.
			p.close()
			p.s.Log.Info("e2b: sandbox resumed by traffic", "sandbox", t.SandboxID)
		}
	}
	if err != nil {
		replyError(w, http.StatusBadGateway, "sandbox "+t.SandboxID+" is not running: "+err.Error())
		return
	}
	r = r.WithContext(context.WithValue(r.Context(), vmKey{}, sb.vm))
	r.URL.Host = strconv.Itoa(t.Port) + "." + sb.vm.ID + proxyHostSuffix
	p.rp.ServeHTTP(w, r)
}

func (p *proxy) close() { p.transport.CloseIdleConnections() }
