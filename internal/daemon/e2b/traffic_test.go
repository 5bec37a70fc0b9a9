package e2b

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
)

func TestTrafficAllowed(t *testing.T) {
	h := func(vals ...string) http.Header {
		out := http.Header{}
		for _, v := range vals {
			out.Add(TrafficTokenHeader, v)
		}
		return out
	}
	for _, c := range []struct {
		name  string
		token string
		port  int
		h     http.Header
		want  bool
	}{
		{"public sandbox", "", 8000, h(), true},
		{"public sandbox, any header", "", 8000, h("x"), true},
		{"no header", "tok", 8000, h(), false},
		{"wrong token", "tok", 8000, h("tox"), false},
		{"prefix of the token", "tok", 8000, h("to"), false},
		{"empty header", "tok", 8000, h(""), false},
		{"twice", "tok", 8000, h("tok", "tok"), false},
		{"right token", "tok", 8000, h("tok"), true},
		{"envd's port checks its own token", "tok", EnvdPort, h(), true},
	} {
		if got := TrafficAllowed(c.token, c.port, c.h); got != c.want {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
}

// TestTrafficToken: a sandbox made with allowPublicTraffic false gets a
// traffic token (in the create, connect and fork answers, a fork its
// own); requests to its ports, by Host or by header, need it (403
// otherwise, before a paused autoResume sandbox is woken), envd's port
// excepted; the guest never sees it; getInfo says allowPublicTraffic
// false.
func TestTrafficToken(t *testing.T) {
	fx := newFixture(t)
	code, body, _ := fx.do(t, "POST", "/v2/sandboxes", `{"autoPause":true,"autoResume":{"enabled":true},"network":{"allowPublicTraffic":false}}`)
	var sb sandboxJSON
	if code != 201 || json.Unmarshal([]byte(body), &sb) != nil || sb.TrafficAccessToken == "" || sb.TrafficAccessToken == sb.EnvdAccessToken {
		t.Fatalf("create = %d %s", code, body)
	}
	fx.servePort(t, 8000, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte("guest saw token " + r.Header.Get(TrafficTokenHeader) + "."))
	}), false)
	host := "8000-" + sb.SandboxID + ".localhost:" + fx.port()
	for _, hdr := range [][]string{
		{"Host", host},
		{"Host", host, TrafficTokenHeader, "wrong"},
		{"Host", host, TrafficTokenHeader, sb.EnvdAccessToken},
		{"E2b-Sandbox-Id", sb.SandboxID, "E2b-Sandbox-Port", "8000"},
	} {
		if code, body, _ := fx.do(t, "GET", "/", "", append([]string{"X-API-Key", ""}, hdr...)...); code != http.StatusForbidden || !strings.Contains(body, "traffic access token") {
			t.Errorf("request with %q = %d %s, want 403", hdr, code, body)
		}
	}
	if code, body, _ := fx.do(t, "GET", "/", "", "X-API-Key", "", "Host", host, TrafficTokenHeader, sb.TrafficAccessToken); code != 200 || body != "guest saw token ." {
		t.Fatalf("with the token = %d %q", code, body)
	}
	if code, body, _ := fx.do(t, "GET", "/", "", "X-API-Key", "", "E2b-Sandbox-Id", sb.SandboxID, "E2b-Sandbox-Port", "8000", TrafficTokenHeader, sb.TrafficAccessToken); code != 200 {
		t.Fatalf("by header with the token = %d %s", code, body)
	}
	// envd's port: its own token, as the SDK sends it.
	if code, body, _ := fx.do(t, "POST", "/process.Process/List", "{}", "X-API-Key", "", "E2b-Sandbox-Id", sb.SandboxID,
		"Connect-Protocol-Version", "1", "X-Access-Token", sb.EnvdAccessToken); code != 200 {
		t.Fatalf("envd without the traffic token = %d %s", code, body)
	}

	var info detailJSON
	if code, body, _ := fx.do(t, "GET", "/sandboxes/"+sb.SandboxID, ""); code != 200 || json.Unmarshal([]byte(body), &info) != nil ||
		info.Network == nil || info.Network.AllowPublicTraffic == nil || *info.Network.AllowPublicTraffic {
		t.Fatalf("info = %d %s", code, body)
	}
	var again sandboxJSON
	if code, body, _ := fx.do(t, "POST", "/v2/sandboxes/"+sb.SandboxID+"/connect", `{"timeout":60}`); code != 200 || json.Unmarshal([]byte(body), &again) != nil || again.TrafficAccessToken != sb.TrafficAccessToken {
		t.Fatalf("connect = %d %s", code, body)
	}

	// A paused autoResume sandbox is not woken by a request without it.
	if code, body, _ := fx.do(t, "POST", "/sandboxes/"+sb.SandboxID+"/pause", ""); code != 204 {
		t.Fatalf("pause = %d %s", code, body)
	}
	if code, _, _ := fx.do(t, "GET", "/", "", "X-API-Key", "", "Host", host); code != http.StatusForbidden {
		t.Fatalf("request to a paused sandbox without the token = %d, want 403", code)
	}
	if sbx, err := fx.svc.lookup(t.Context(), sb.SandboxID); err != nil || sbx.vm.State != "paused" {
		t.Fatalf("after a request without the token: %+v %v, want still paused", sbx.vm.State, err)
	}
	if code, body, _ := fx.do(t, "GET", "/", "", "X-API-Key", "", "Host", host, TrafficTokenHeader, sb.TrafficAccessToken); code != 200 {
		t.Fatalf("request with the token to a paused autoResume sandbox = %d %s, want it woken", code, body)
	}

	// A fork needs a token of its own; the source's does not open it.
	code, body, _ = fx.do(t, "POST", "/sandboxes/"+sb.SandboxID+"/fork", `{"count":1}`)
	var res []forkResult
	if code != 201 || json.Unmarshal([]byte(body), &res) != nil || len(res) != 1 || res[0].Sandbox == nil {
		t.Fatalf("fork = %d %s", code, body)
	}
	f := res[0].Sandbox
	if f.TrafficAccessToken == "" || f.TrafficAccessToken == sb.TrafficAccessToken {
		t.Fatalf("fork's traffic token %q (source's %q)", f.TrafficAccessToken, sb.TrafficAccessToken)
	}
	fhost := "8000-" + f.SandboxID + ".localhost:" + fx.port()
	if code, _, _ := fx.do(t, "GET", "/", "", "X-API-Key", "", "Host", fhost, TrafficTokenHeader, sb.TrafficAccessToken); code != http.StatusForbidden {
		t.Fatalf("fork with the source's token = %d, want 403", code)
	}
	if code, _, _ := fx.do(t, "GET", "/", "", "X-API-Key", "", "Host", fhost, TrafficTokenHeader, f.TrafficAccessToken); code != 200 {
		t.Fatalf("fork with its own token = %d", code)
	}

	// A public sandbox has none.
	code, body, _ = fx.do(t, "POST", "/v2/sandboxes", `{"network":{"allowPublicTraffic":true}}`)
	var pub sandboxJSON
	if code != 201 || json.Unmarshal([]byte(body), &pub) != nil || pub.TrafficAccessToken != "" {
		t.Fatalf("public create = %d %s", code, body)
	}
}

func TestRelayOptions(t *testing.T) {
	str := func(s string) *string { return &s }
	for _, c := range []struct {
		name    string
		n       *networkJSON
		mask    string
		https   []int
		wantErr string
	}{
		{name: "none", n: nil},
		{name: "empty", n: &networkJSON{}},
		{name: "mask with the port", n: &networkJSON{MaskRequestHost: str("localhost:${PORT}")}, mask: "localhost:${PORT}"},
		{name: "plain mask", n: &networkJSON{MaskRequestHost: str("app.internal")}, mask: "app.internal"},
		{name: "mask with a space", n: &networkJSON{MaskRequestHost: str("a b")}, wantErr: "maskRequestHost"},
		{name: "mask with a header in it", n: &networkJSON{MaskRequestHost: str("a\r\nX-Evil: 1")}, wantErr: "maskRequestHost"},
		{name: "mask with another variable", n: &networkJSON{MaskRequestHost: str("${HOST}")}, wantErr: "maskRequestHost"},
		{name: "long mask", n: &networkJSON{MaskRequestHost: str(strings.Repeat("a", maxMaskHost+1))}, wantErr: "at most"},
		{name: "https ports sorted once each", n: &networkJSON{HTTPSPorts: []int{8443, 443, 8443}}, https: []int{443, 8443}},
		{name: "envd's port", n: &networkJSON{HTTPSPorts: []int{EnvdPort}}, wantErr: "envd"},
		{name: "port 0", n: &networkJSON{HTTPSPorts: []int{0}}, wantErr: "not a port"},
		{name: "port too big", n: &networkJSON{HTTPSPorts: []int{70000}}, wantErr: "not a port"},
		{name: "too many", n: &networkJSON{HTTPSPorts: make([]int, maxHTTPSPorts+1)}, wantErr: "at most"},
	} {
		mask, https, err := relayOptions(c.n)
		if c.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Errorf("%s: %v, want an error with %q", c.name, err, c.wantErr)
			}
			continue
		}
		if err != nil || mask != c.mask || !slices.Equal(https, c.https) {
			t.Errorf("%s: %q %v %v, want %q %v", c.name, mask, https, err, c.mask, c.https)
		}
	}
}

// TestMaskAndHTTPSPorts: maskRequestHost is the Host header the guest
// sees (the port put in), httpsPorts are reached over TLS (the guest's
// own certificate accepted), both reported by getInfo, kept by forks,
// fixed at create.
func TestMaskAndHTTPSPorts(t *testing.T) {
	fx := newFixture(t)
	code, body, _ := fx.do(t, "POST", "/v2/sandboxes", `{"network":{"maskRequestHost":"localhost:${PORT}","httpsPorts":[8443]}}`)
	var sb sandboxJSON
	if code != 201 || json.Unmarshal([]byte(body), &sb) != nil {
		t.Fatalf("create = %d %s", code, body)
	}
	echo := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tls := "plain"
		if r.TLS != nil {
			tls = "tls"
		}
		_, _ = w.Write([]byte(tls + " " + r.Host))
	})
	fx.servePort(t, 8000, echo, false)
	fx.servePort(t, 8443, echo, true)
	get := func(id string, port int) string {
		t.Helper()
		code, body, _ := fx.do(t, "GET", "/", "", "X-API-Key", "", "Host", fmt.Sprintf("%d-%s.localhost:%s", port, id, fx.port()))
		if code != 200 {
			t.Fatalf("port %d of %s = %d %s", port, id, code, body)
		}
		return body
	}
	if got := get(sb.SandboxID, 8000); got != "plain localhost:8000" {
		t.Errorf("port 8000: %q", got)
	}
	if got := get(sb.SandboxID, 8443); got != "tls localhost:8443" {
		t.Errorf("port 8443: %q", got)
	}
	var info detailJSON
	if code, body, _ := fx.do(t, "GET", "/sandboxes/"+sb.SandboxID, ""); code != 200 || json.Unmarshal([]byte(body), &info) != nil ||
		info.Network == nil || info.Network.MaskRequestHost != "localhost:${PORT}" || !slices.Equal(info.Network.HTTPSPorts, []int{8443}) || info.Network.AllowPublicTraffic != nil {
		t.Fatalf("info = %d %s", code, body)
	}
	if code, body, _ := fx.do(t, "PUT", "/sandboxes/"+sb.SandboxID+"/network", `{"maskRequestHost":"x"}`); code != http.StatusBadRequest {
		t.Errorf("updateNetwork of maskRequestHost = %d %s, want 400", code, body)
	}
	code, body, _ = fx.do(t, "POST", "/sandboxes/"+sb.SandboxID+"/fork", `{"count":1}`)
	var res []forkResult
	if code != 201 || json.Unmarshal([]byte(body), &res) != nil || len(res) != 1 || res[0].Sandbox == nil {
		t.Fatalf("fork = %d %s", code, body)
	}
	if got := get(res[0].Sandbox.SandboxID, 8443); got != "tls localhost:8443" {
		t.Errorf("fork's port 8443: %q", got)
	}
	for _, bad := range []string{`{"maskRequestHost":"a b"}`, `{"httpsPorts":[49983]}`} {
		if code, body, _ := fx.do(t, "POST", "/v2/sandboxes", `{"network":`+bad+`}`); code != http.StatusBadRequest {
			t.Errorf("create with %s = %d %s, want 400", bad, code, body)
		}
	}
}
