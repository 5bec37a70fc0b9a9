package hostnet

import (
	"encoding/json"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

func TestParseHostPattern(t *testing.T) {
	for _, tt := range []struct {
		in, want, err string
	}{
		{in: "example.com", want: "example.com"},
		{in: " API.OpenAI.com. ", want: "api.openai.com"},
		{in: "*.GitHub.com", want: "*.github.com"},
		{in: "_srv.x-y.example", want: "_srv.x-y.example"},
		{in: "example.test", want: "example.test"},
		{in: "localhost", err: "not a host name such as"},
		{in: "*.com", err: "not a host name such as"},
		{in: "*", err: "not a host name such as"},
		{in: "a.*.example.com", err: "'*' is allowed only as the whole first label"},
		{in: "*example.com", err: "'*' is allowed only"},
		{in: "**.example.com", err: "'*' is allowed only"},
		{in: "a..example.com", err: "empty label"},
		{in: "-a.example.com", err: "starts or ends with '-'"},
		{in: "a b.example.com", err: "use letters, digits"},
		{in: "example.com:443", err: "give it without :PORT"},
		{in: strings.Repeat("a", 64) + ".com", err: "longer than 63"},
		{in: strings.Repeat(strings.Repeat("a", 60)+".", 5) + "com", err: "at most 253"},
	} {
		got, err := ParseHostPattern(tt.in)
		switch {
		case tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)):
			t.Errorf("ParseHostPattern(%q) = %q, %v; want error %q", tt.in, got, err, tt.err)
		case tt.err == "" && (err != nil || string(got) != tt.want):
			t.Errorf("ParseHostPattern(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		case err != nil && !strings.Contains(err.Error(), tt.in):
			t.Errorf("ParseHostPattern(%q): error %q does not name the entry", tt.in, err)
		}
	}
}

func TestHostPatternMatch(t *testing.T) {
	for _, tt := range []struct {
		p    HostPattern
		name string
		want bool
	}{
		{"example.com", "example.com.", true},
		{"example.com", "EXAMPLE.com", true},
		{"example.com", "www.example.com.", false},
		{"example.com", "notexample.com.", false},
		{"*.example.com", "www.example.com.", true},
		{"*.example.com", "a.b.Example.com", true},
		{"*.example.com", "example.com.", false},
		{"*.example.com", "badexample.com.", false},
		{"*.example.com", ".example.com", false},
		{"*.example.com", "example.com.evil.net.", false},
	} {
		if got := tt.p.Match(tt.name); got != tt.want {
			t.Errorf("%s.Match(%q) = %v, want %v", tt.p, tt.name, got, tt.want)
		}
	}
}

func TestParsePolicyNames(t *testing.T) {
	p, err := ParsePolicy("none", []string{"*.github.com", "203.0.113.0/24", "API.openai.com", "api.openai.com."}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if want := []HostPattern{"*.github.com", "api.openai.com"}; !slices.Equal(p.Names, want) {
		t.Errorf("Names = %q, want %q", p.Names, want)
	}
	if len(p.Allow) != 1 || p.Allow[0].String() != "203.0.113.0/24" {
		t.Errorf("Allow = %v", p.Allow)
	}
	if got, want := p.String(), "none allow=203.0.113.0/24,*.github.com,api.openai.com"; got != want {
		t.Errorf("String = %q, want %q", got, want)
	}
	if p.IsDefault() {
		t.Error("a policy with names is the default")
	}
	// JSON round trip, and a stored policy with a name outside none is refused.
	b, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	var back Policy
	if err := json.Unmarshal(b, &back); err != nil || back.String() != p.String() {
		t.Errorf("round trip of %s: %s, %v", b, back, err)
	}
	if err := json.Unmarshal([]byte(`{"mode":"internet","names":["example.com"]}`), &back); err == nil {
		t.Error("stored names under internet were accepted")
	}
	if err := json.Unmarshal([]byte(`{"mode":"none","names":["Example.com"]}`), &back); err == nil {
		t.Error("a stored name not in canonical form was accepted")
	}

	for _, tt := range []struct {
		mode  string
		allow []string
		want  string
	}{
		{"", []string{"example.com"}, `allow "example.com": host names are allowed only with network mode none`},
		{"open", []string{"*.example.com"}, `allow "*.example.com": host names are allowed only with network mode none`},
		{"none", []string{"example.com:443"}, `allow "example.com:443": a host name opens every port`},
		{"none", []string{"exa mple.com"}, `allow "exa mple.com"`},
		{"none", []string{"fe80::1"}, "IPv6 is not supported"},
	} {
		if _, err := ParsePolicy(tt.mode, tt.allow, nil, nil); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("ParsePolicy(%q, %q) = %v, want %q", tt.mode, tt.allow, err, tt.want)
		}
	}
	var many []string
	for i := range MaxNames + 1 {
		many = append(many, "h"+strings.Repeat("x", i%3)+string(rune('a'+i%26))+"-"+string(rune('a'+i/26))+".example.com")
	}
	if _, err := ParsePolicy("none", many, nil, nil); err == nil || !strings.Contains(err.Error(), "at most 64") {
		t.Errorf("%d names: %v, want refused", len(many), err)
	}
	if _, err := ParsePolicy("none", many[:MaxNames], nil, nil); err != nil {
		t.Errorf("%d names: %v", MaxNames, err)
	}
}

func TestAnswerAddrs(t *testing.T) {
	rr := func(s string) dns.RR {
		r, err := dns.NewRR(s)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	m := new(dns.Msg)
	m.SetQuestion("api.example.com.", dns.TypeA)
	m.Answer = []dns.RR{
		rr("api.example.com. 300 IN CNAME edge.cdn.net."),
		rr("edge.cdn.net. 5 IN CNAME e1.cdn.net."),
		rr("e1.cdn.net. 20 IN A 203.0.113.7"),
		rr("e1.cdn.net. 7200 IN A 203.0.113.8"),
		rr("e1.cdn.net. 600 IN A 203.0.113.7"),
		rr("unrelated.net. 600 IN A 198.51.100.9"),         // not on the chain
		rr("other.example.com. 600 IN CNAME x.cdn.net."),   // a chain from another name
		rr("x.cdn.net. 600 IN A 198.51.100.10"),            // so not this one's
		rr("api.example.com. 600 IN AAAA 2001:db8::1"),     // IPv4 only
		rr("API.Example.com. 600 IN TXT \"203.0.113.99\""), // not an address
	}
	got := answerAddrs("API.example.com", m)
	want := []Resolved{
		{netip.MustParseAddr("203.0.113.7"), 10 * time.Minute},
		{netip.MustParseAddr("203.0.113.8"), time.Hour},
	}
	if !slices.Equal(got, want) {
		t.Errorf("answerAddrs = %v, want %v", got, want)
	}
	short := new(dns.Msg)
	short.Answer = []dns.RR{rr("a.example.com. 1 IN A 203.0.113.1")}
	if got := answerAddrs("a.example.com.", short); len(got) != 1 || got[0].TTL != 30*time.Second {
		t.Errorf("a 1 s TTL: %v, want clamped to 30 s", got)
	}
	short.Rcode = dns.RcodeNameError
	if got := answerAddrs("a.example.com.", short); got != nil {
		t.Errorf("NXDOMAIN opened %v", got)
	}
	// A CNAME loop ends.
	loop := new(dns.Msg)
	loop.Answer = []dns.RR{rr("a.example.com. 60 IN CNAME b.example.com."), rr("b.example.com. 60 IN CNAME a.example.com."), rr("b.example.com. 60 IN A 203.0.113.2")}
	if got := answerAddrs("a.example.com.", loop); len(got) != 1 {
		t.Errorf("loop: %v", got)
	}
}

func TestAdmissible(t *testing.T) {
	subnet := netip.MustParsePrefix("100.80.0.0/24") // a guest subnet outside the private ranges
	local := []netip.Addr{netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("100.80.0.1")}
	plain := mustPolicy(t, "none", []string{"example.com"}, nil, nil)
	withCIDR := mustPolicy(t, "none", []string{"example.com", "10.1.0.0/16", "192.168.5.5:443"}, nil, nil)
	for _, tt := range []struct {
		addr string
		p    Policy
		want bool
	}{
		{"203.0.113.7", plain, true},
		{"8.8.8.8", plain, true},
		{"198.51.100.2", plain, true},
		{"10.1.2.3", plain, false},
		{"172.16.0.5", plain, false},
		{"192.168.1.1", plain, false},
		{"127.0.0.1", plain, false},
		{"169.254.169.254", plain, false},
		{"100.64.1.1", plain, false},
		{"0.0.0.0", plain, false},
		{"224.0.0.1", plain, false},
		{"255.255.255.255", plain, false},
		{"192.0.2.1", plain, false},      // the host's own
		{"100.80.0.7", plain, false},     // another VM
		{"100.80.0.1", plain, false},     // the gateway
		{"10.1.2.3", withCIDR, true},     // already open on every port
		{"192.168.5.5", withCIDR, false}, // open on one port only
		{"::1", plain, false},
	} {
		if got := admissible(netip.MustParseAddr(tt.addr), tt.p, subnet, local); got != tt.want {
			t.Errorf("admissible(%s, %s) = %v, want %v", tt.addr, tt.p, got, tt.want)
		}
	}
}

func TestPolicyScriptNames(t *testing.T) {
	g := testGuest
	g.Policy = mustPolicy(t, "none", []string{"203.0.113.10:80/tcp", "*.example.com"}, []string{"203.0.113.66"}, nil)
	s, err := PolicyScript("banger0", netip.MustParsePrefix("172.16.0.0/24"), "bt0123456789ab", g)
	if err != nil {
		t.Fatal(err)
	}
	np := prefixSet(nonPublic)
	// The sets, DNS on the gateway, and in forwarding the deny and the
	// subnet first, the names' accepts last before the drop.
	for _, w := range []string{
		"table ip banger-bt0123456789ab {\n\tset resolved {\n\t\ttype ipv4_addr\n\t\tflags timeout\n\t\tsize 2048\n\t}\n\tset inuse {\n\t\ttype ipv4_addr\n\t\tflags dynamic,timeout\n\t\ttimeout 300s\n\t\tsize 4096\n\t}\n\tchain input {",
		"\t\tip daddr 172.16.0.1 udp dport 53 accept comment \"banger\"\n\t\tip daddr 172.16.0.1 tcp dport 53 accept comment \"banger\"\n\t\tip daddr 203.0.113.10/32 tcp dport 80 accept comment \"banger\"\n\t\tdrop comment \"banger\"\n\t}\n\tchain forward",
		"\t\tip daddr { 203.0.113.66/32 } drop comment \"banger\"\n\t\tip daddr 172.16.0.0/24 drop comment \"banger\"\n\t\tip daddr 203.0.113.10/32 tcp dport 80 accept comment \"banger\"\n" +
			"\t\tip daddr != " + np + " ip daddr @resolved update @inuse { ip daddr } accept comment \"banger\"\n" +
			"\t\tct state established ct direction original ip daddr @inuse update @inuse { ip daddr } accept comment \"banger\"\n" +
			"\t\tdrop comment \"banger\"\n\t}\n}\n",
	} {
		if !strings.Contains(s, w) {
			t.Errorf("script lacks\n%s\nin\n%s", w, s)
		}
	}
	// The input chain never accepts the sets: host addresses stay closed.
	in, _, _ := strings.Cut(s, "chain forward")
	if strings.Contains(in, "@resolved") || strings.Contains(in, "@inuse") {
		t.Errorf("input chain uses the sets:\n%s", in)
	}
	// Without names, no sets.
	g.Policy = mustPolicy(t, "none", nil, nil, nil)
	if s, _ := PolicyScript("banger0", netip.MustParsePrefix("172.16.0.0/24"), "bt0123456789ab", g); strings.Contains(s, "set ") || strings.Contains(s, "dport 53") {
		t.Errorf("none without names has sets or DNS:\n%s", s)
	}
}

func TestElementScript(t *testing.T) {
	got := elementScript("bt0123456789ab", netip.MustParseAddr("203.0.113.7"), 90*time.Second)
	want := "add element ip banger-bt0123456789ab resolved { 203.0.113.7 }\n" +
		"delete element ip banger-bt0123456789ab resolved { 203.0.113.7 }\n" +
		"add element ip banger-bt0123456789ab resolved { 203.0.113.7 timeout 90s }\n"
	if got != want {
		t.Errorf("elementScript =\n%s\nwant\n%s", got, want)
	}
}

func TestSetElems(t *testing.T) {
	out := `{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"set": {"family": "ip", "name": "inuse", "table": "t", "type": "ipv4_addr", "flags": ["timeout"], "timeout": 300, ` +
		`"elem": [{"elem": {"val": "5.6.7.8", "expires": 299}}, {"elem": {"val": "5.6.7.9", "timeout": 20, "expires": 19.5}}, "9.9.9.9", {"elem": {"val": "bogus", "expires": 5}}]}}]}`
	got, err := setElems(out)
	if err != nil {
		t.Fatal(err)
	}
	want := map[netip.Addr]time.Duration{netip.MustParseAddr("5.6.7.8"): 299 * time.Second, netip.MustParseAddr("5.6.7.9"): 19500 * time.Millisecond}
	if len(got) != len(want) {
		t.Fatalf("setElems = %v, want %v", got, want)
	}
	for a, d := range want {
		if got[a] != d {
			t.Errorf("setElems[%s] = %v, want %v", a, got[a], d)
		}
	}
	if _, err := setElems("Error: No such file"); err == nil {
		t.Error("a listing that is not JSON was read")
	}
}
