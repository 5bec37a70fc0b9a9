package e2b

import (
	"encoding/json"
	"net/http"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/banger/banger/internal/model"
)

func TestSubtract(t *testing.T) {
	p := netip.MustParsePrefix
	for _, c := range []struct {
		d, a string
		want []string
	}{
		{"10.0.0.0/8", "192.168.0.0/16", []string{"10.0.0.0/8"}},
		{"10.0.0.0/8", "0.0.0.0/0", nil},
		{"10.0.0.0/8", "10.0.0.0/8", nil},
		{"10.0.0.0/30", "10.0.0.2/32", []string{"10.0.0.0/31", "10.0.0.3/32"}},
		{"10.0.0.0/8", "10.128.0.0/9", []string{"10.0.0.0/9"}},
	} {
		var got []string
		for _, r := range subtract(p(c.d), p(c.a)) {
			got = append(got, r.String())
		}
		if !reflect.DeepEqual(got, c.want) {
			t.Errorf("subtract(%s, %s) = %v, want %v", c.d, c.a, got, c.want)
		}
	}
	// What is left covers d but a, exactly: count the addresses.
	rest := subtract(p("10.0.0.0/16"), p("10.0.77.5/32"))
	if len(rest) != 16 {
		t.Fatalf("a /32 out of a /16 leaves %d blocks, want 16", len(rest))
	}
	total := 0
	for _, r := range rest {
		if r.Contains(netip.MustParseAddr("10.0.77.5")) || !p("10.0.0.0/16").Contains(r.Addr()) {
			t.Fatalf("block %s", r)
		}
		total += 1 << (32 - r.Bits())
	}
	if total != 1<<16-1 {
		t.Fatalf("the blocks cover %d addresses, want %d", total, 1<<16-1)
	}
}

func TestEgressPolicy(t *testing.T) {
	f, tr := false, true
	for _, c := range []struct {
		name    string
		inet    *bool
		n       *networkJSON
		want    egress
		set     bool
		wantErr string
	}{
		{name: "nothing", set: false},
		{name: "internet true", inet: &tr, set: false},
		{name: "no internet", inet: &f, want: egress{Mode: "none"}, set: true},
		{name: "empty network", n: &networkJSON{}, want: egress{Mode: "internet"}, set: false},
		{name: "deny all, allow one", n: &networkJSON{DenyOut: []string{"0.0.0.0/0"}, AllowOut: []string{"8.8.8.8", "1.1.1.0/24"}},
			want: egress{Mode: "none", Allow: []string{"8.8.8.8/32", "1.1.1.0/24"}}, set: true},
		{name: "no internet with allow", inet: &f, n: &networkJSON{AllowOut: []string{"8.8.8.8"}},
			want: egress{Mode: "none", Allow: []string{"8.8.8.8/32"}}, set: true},
		{name: "deny some", n: &networkJSON{DenyOut: []string{"203.0.113.0/24", "198.51.100.7"}},
			want: egress{Mode: "internet", Deny: []string{"203.0.113.0/24", "198.51.100.7/32"}}, set: true},
		{name: "allow wins inside a deny", n: &networkJSON{DenyOut: []string{"203.0.113.0/30"}, AllowOut: []string{"203.0.113.2"}},
			want: egress{Mode: "internet", Allow: []string{"203.0.113.2/32"}, Deny: []string{"203.0.113.0/31", "203.0.113.3/32"}}, set: true},
		{name: "update without internet", n: &networkJSON{AllowInternetAccess: &f}, want: egress{Mode: "none"}, set: true},
		{name: "domains with deny all", n: &networkJSON{DenyOut: []string{"0.0.0.0/0"}, AllowOut: []string{"API.OpenAI.com", "8.8.8.8", "*.github.com"}},
			want: egress{Mode: "none", Allow: []string{"8.8.8.8/32", "api.openai.com", "*.github.com"}}, set: true},
		{name: "domain without internet", inet: &f, n: &networkJSON{AllowOut: []string{"example.com"}},
			want: egress{Mode: "none", Allow: []string{"example.com"}}, set: true},
		{name: "domain without deny all", n: &networkJSON{AllowOut: []string{"example.com"}}, wantErr: `network.allowOut "example.com": a domain name needs all other traffic denied`},
		{name: "wildcard domain, some denied", n: &networkJSON{DenyOut: []string{"10.0.0.0/8"}, AllowOut: []string{"*.example.com"}}, wantErr: `"*.example.com": a domain name needs`},
		{name: "domain in denyOut", n: &networkJSON{DenyOut: []string{"0.0.0.0/0", "example.com"}}, wantErr: `network.denyOut "example.com": domain names are not supported in denyOut`},
		{name: "bad domain", n: &networkJSON{DenyOut: []string{"0.0.0.0/0"}, AllowOut: []string{"a.*.example.com"}}, wantErr: `network.allowOut "a.*.example.com": not an IPv4 address, CIDR block or domain name`},
		{name: "ipv6", n: &networkJSON{DenyOut: []string{"2001:db8::/32"}}, wantErr: "IPv4 only"},
		{name: "garbage", n: &networkJSON{DenyOut: []string{"10.0.0.0/40"}}, wantErr: "not an IPv4 address"},
		{name: "traffic tokens are not egress", n: &networkJSON{AllowPublicTraffic: &f}, want: egress{Mode: "internet"}, set: false},
		{name: "rules", n: &networkJSON{Rules: map[string]any{"a.com": []any{}}}, wantErr: "network.rules"},
		{name: "proxy", n: &networkJSON{EgressProxy: map[string]any{}}, wantErr: "egressProxy"},
		{name: "relay options are not egress", n: &networkJSON{HTTPSPorts: []int{443}, MaskRequestHost: new("localhost")}, want: egress{Mode: "internet"}, set: false},
		{name: "too many", n: &networkJSON{DenyOut: make([]string, maxEgressEntries+1)}, wantErr: "at most"},
	} {
		got, set, err := egressPolicy(c.inet, c.n)
		if c.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Errorf("%s: %v, want an error with %q", c.name, err, c.wantErr)
			}
			continue
		}
		if err != nil || set != c.set || (set && !reflect.DeepEqual(got, c.want)) {
			t.Errorf("%s: %+v %v %v, want %+v %v", c.name, got, set, err, c.want, c.set)
		}
	}
	// Many allow holes in one deny are bounded.
	many := &networkJSON{DenyOut: []string{"10.0.0.0/8"}}
	for i := range 40 {
		many.AllowOut = append(many.AllowOut, netip.AddrFrom4([4]byte{10, byte(i), 0, 1}).String())
	}
	if _, _, err := egressPolicy(nil, many); err == nil || !strings.Contains(err.Error(), "more than") {
		t.Errorf("40 holes in a /8: %v", err)
	}
}

// TestSandboxNetwork: create's network and updateNetwork become the
// VM's policy; what banger cannot do is refused by name with 400.
func TestSandboxNetwork(t *testing.T) {
	fx := newFixture(t)
	sb := fx.createSandbox(t, `{"network":{"denyOut":["0.0.0.0/0"],"allowOut":["8.8.8.8"]}}`)
	policy := func(id string) string {
		vm, err := fx.vms.Get(t.Context(), id)
		if err != nil {
			t.Fatal(err)
		}
		return vm.Net.String()
	}
	if got := policy(sb.SandboxID); got != "none allow=8.8.8.8/32" {
		t.Fatalf("create's network gave %q", got)
	}
	var info detailJSON
	if code, body, _ := fx.do(t, "GET", "/sandboxes/"+sb.SandboxID, ""); code != 200 || json.Unmarshal([]byte(body), &info) != nil ||
		info.AllowInternetAccess || info.Network == nil || !reflect.DeepEqual(*info.Network, egressJSON{AllowOut: []string{"8.8.8.8/32"}, DenyOut: []string{"0.0.0.0/0"}}) {
		t.Fatalf("info = %d %s", code, body)
	}
	// Domain names with everything else denied, as E2B's SDKs send them.
	if code, body, _ := fx.do(t, "PUT", "/sandboxes/"+sb.SandboxID+"/network", `{"denyOut":["0.0.0.0/0"],"allowOut":["api.openai.com","*.GitHub.com","1.1.1.1"]}`); code != http.StatusNoContent {
		t.Fatalf("updateNetwork with domains = %d %s", code, body)
	}
	if got := policy(sb.SandboxID); got != "none allow=1.1.1.1/32,api.openai.com,*.github.com" {
		t.Fatalf("after updateNetwork with domains: %q", got)
	}
	if code, body, _ := fx.do(t, "GET", "/sandboxes/"+sb.SandboxID, ""); code != 200 || json.Unmarshal([]byte(body), &info) != nil || info.Network == nil ||
		!reflect.DeepEqual(*info.Network, egressJSON{AllowOut: []string{"1.1.1.1/32", "api.openai.com", "*.github.com"}, DenyOut: []string{"0.0.0.0/0"}}) {
		t.Fatalf("info with domains = %d %s", code, body)
	}
	withNames := fx.createSandbox(t, `{"allow_internet_access":false,"network":{"allowOut":["example.com"]}}`)
	if got := policy(withNames.SandboxID); got != "none allow=example.com" {
		t.Fatalf("create with a domain and no internet: %q", got)
	}
	if code, body, _ := fx.do(t, "PUT", "/sandboxes/"+sb.SandboxID+"/network", `{"denyOut":["203.0.113.0/24"]}`); code != http.StatusNoContent {
		t.Fatalf("updateNetwork = %d %s", code, body)
	}
	if got := policy(sb.SandboxID); got != "internet deny=203.0.113.0/24" {
		t.Fatalf("after updateNetwork: %q", got)
	}
	if code, body, _ := fx.do(t, "PUT", "/sandboxes/"+sb.SandboxID+"/network", `{}`); code != http.StatusNoContent || policy(sb.SandboxID) != model.NetInternet {
		t.Fatalf("an empty update = %d %s, policy %q (want the default)", code, body, policy(sb.SandboxID))
	}
	if code, body, _ := fx.do(t, "PUT", "/sandboxes/"+sb.SandboxID+"/network", `{"allowPublicTraffic":false}`); code != http.StatusBadRequest || !strings.Contains(body, "allowPublicTraffic") {
		t.Errorf("updateNetwork of allowPublicTraffic = %d %s, want 400 naming it", code, body)
	}
	for _, bad := range []string{`{"allowOut":["example.com"]}`, `{"denyOut":["0.0.0.0/0","example.com"]}`, `{"denyOut":"x"}`} {
		if code, body, _ := fx.do(t, "PUT", "/sandboxes/"+sb.SandboxID+"/network", bad); code != http.StatusBadRequest || (strings.Contains(bad, "example") && !strings.Contains(body, "example.com")) {
			t.Errorf("updateNetwork %s = %d %s, want 400", bad, code, body)
		}
		if code, body, _ := fx.do(t, "POST", "/v2/sandboxes", `{"network":`+bad+`}`); code != http.StatusBadRequest {
			t.Errorf("create with network %s = %d %s, want 400", bad, code, body)
		}
	}
	if code, _, _ := fx.do(t, "PUT", "/sandboxes/e2bmissing/network", `{}`); code != http.StatusNotFound {
		t.Errorf("updateNetwork of a missing sandbox: %d, want 404", code)
	}
}
