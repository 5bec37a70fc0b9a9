package e2b

import (
	"net/http"
	"testing"
)

func TestRouteOf(t *testing.T) {
	hdr := func(kv ...string) http.Header {
		h := http.Header{}
		for i := 0; i < len(kv); i += 2 {
			h.Set(kv[i], kv[i+1])
		}
		return h
	}
	for _, tc := range []struct {
		name    string
		h       http.Header
		host    string
		domain  string
		want    Target
		routed  bool
		wantErr bool
	}{
		{"headers", hdr("E2b-Sandbox-Id", "e2babc", "E2b-Sandbox-Port", "49983"), "localhost:3000", "localhost:3000", Target{"e2babc", 49983}, true, false},
		{"header without port", hdr("E2b-Sandbox-Id", "e2babc"), "x", "d", Target{"e2babc", EnvdPort}, true, false},
		{"header bad port", hdr("E2b-Sandbox-Id", "e2babc", "E2b-Sandbox-Port", "0"), "x", "d", Target{}, true, true},
		{"host", nil, "8000-e2babc.localhost:3000", "localhost:3000", Target{"e2babc", 8000}, true, false},
		{"host case", nil, "8000-E2BABC.LocalHost", "localhost", Target{"e2babc", 8000}, true, false},
		{"host id with dash", nil, "80-my-vm.sb.example", "sb.example", Target{"my-vm", 80}, true, false},
		{"control plane", nil, "localhost:3000", "localhost:3000", Target{}, false, false},
		{"control plane by the SDK's name", nil, "api.sb.test:3000", "sb.test:3000", Target{}, false, false},
		{"other domain", nil, "8000-e2babc.example.com", "localhost", Target{}, false, false},
		{"nested label", nil, "a.8000-e2babc.localhost", "localhost", Target{}, false, false},
		{"no port", nil, "e2babc.localhost", "localhost", Target{}, true, true},
		{"bad port", nil, "99999-e2babc.localhost", "localhost", Target{}, true, true},
		{"no domain", nil, "8000-e2babc.localhost", "", Target{}, false, false},
	} {
		h := tc.h
		if h == nil {
			h = http.Header{}
		}
		got, routed, err := RouteOf(h, tc.host, tc.domain)
		if routed != tc.routed || (err != nil) != tc.wantErr || (err == nil && got != tc.want) {
			t.Errorf("%s: RouteOf = %+v, %v, %v; want %+v, %v, err %v", tc.name, got, routed, err, tc.want, tc.routed, tc.wantErr)
		}
	}
}

func TestKeys(t *testing.T) {
	k := NewKey()
	if len(k) != len(KeyPrefix)+40 || k[:4] != KeyPrefix || NewKey() == k {
		t.Fatalf("NewKey = %q", k)
	}
	if HashKey(k) == HashKey(k+"x") || len(HashKey(k)) != 64 {
		t.Fatal("HashKey")
	}
	for _, tc := range []struct {
		h    http.Header
		want string
	}{
		{http.Header{"X-Api-Key": {"a"}}, "a"},
		{http.Header{"Authorization": {"Bearer b"}}, "b"},
		{http.Header{"Authorization": {"bearer  c "}}, "c"},
		{http.Header{"X-Api-Key": {"a"}, "Authorization": {"Bearer b"}}, "a"},
		{http.Header{"Authorization": {"Basic dXNlcjo="}}, ""},
		{http.Header{}, ""},
	} {
		if got := KeyOf(tc.h); got != tc.want {
			t.Errorf("KeyOf(%v) = %q, want %q", tc.h, got, tc.want)
		}
	}
	if id := newSandboxID(); len(id) != 15 || id[:3] != "e2b" {
		t.Errorf("newSandboxID = %q", id)
	}
}
