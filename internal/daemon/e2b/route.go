package e2b

import (
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
)

// EnvdPort is the guest port of envd, the SDK's default sandbox port.
const EnvdPort = 49983

// Target is the guest port of a sandbox a proxied request goes to.
type Target struct {
	SandboxID string
	Port      int
}

// RouteOf says whether a request is for a sandbox rather than the control
// plane, and which: by the E2b-Sandbox-Id / E2b-Sandbox-Port headers (the
// SDK with E2B_SANDBOX_URL set), else by a Host of
// "<port>-<sandboxID>.<domain>" (getHost URLs); "api.<domain>" is the
// control plane's. domain may carry a port, which is ignored. An error means the request names a sandbox badly.
func RouteOf(h http.Header, host, domain string) (Target, bool, error) {
	if id := h.Get("E2b-Sandbox-Id"); id != "" {
		port := EnvdPort
		if p := h.Get("E2b-Sandbox-Port"); p != "" {
			n, err := parsePort(p)
			if err != nil {
				return Target{}, true, fmt.Errorf("E2b-Sandbox-Port: %w", err)
			}
			port = n
		}
		return Target{SandboxID: id, Port: port}, true, nil
	}
	name := stripPort(host)
	suffix := "." + strings.ToLower(stripPort(domain))
	name = strings.ToLower(name)
	if suffix == "." || !strings.HasSuffix(name, suffix) {
		return Target{}, false, nil
	}
	label := strings.TrimSuffix(name, suffix)
	// api.<domain> is where the SDK finds the control plane when it is
	// given only E2B_DOMAIN.
	if strings.Contains(label, ".") || label == "api" {
		return Target{}, false, nil
	}
	p, id, ok := strings.Cut(label, "-")
	if !ok || id == "" {
		return Target{}, true, fmt.Errorf("host %q: want <port>-<sandboxID>.%s", host, stripPort(domain))
	}
	port, err := parsePort(p)
	if err != nil {
		return Target{}, true, fmt.Errorf("host %q: %w", host, err)
	}
	return Target{SandboxID: id, Port: port}, true, nil
}

func stripPort(host string) string {
	if h, _, err := net.SplitHostPort(host); err == nil {
		return h
	}
	return host
}

func parsePort(s string) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > 65535 || strings.TrimLeft(s, "0123456789") != "" {
		return 0, fmt.Errorf("port %q is not a number from 1 to 65535", s)
	}
	return n, nil
}
