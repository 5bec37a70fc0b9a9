package hostnet

import (
	"encoding/json"
	"errors"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
)

func TestParseRule(t *testing.T) {
	good := []struct{ in, want string }{
		{"10.0.0.5", "10.0.0.5"},
		{"10.0.0.5/32", "10.0.0.5"},
		{" 192.168.1.0/24 ", "192.168.1.0/24"},
		{"10.0.0.5:5432", "10.0.0.5:5432"},
		{"10.0.0.5:53/UDP", "10.0.0.5:53/udp"},
		{"192.168.1.0/24:443/tcp", "192.168.1.0/24:443/tcp"},
		{"0.0.0.0/0", "0.0.0.0/0"},
	}
	for _, tt := range good {
		r, err := ParseRule(tt.in)
		if err != nil || r.String() != tt.want {
			t.Errorf("ParseRule(%q) = %v, %v; want %s", tt.in, r, err, tt.want)
			continue
		}
		if back, err := ParseRule(r.String()); err != nil || back != r {
			t.Errorf("ParseRule(%q) does not read back: %v, %v", r, back, err)
		}
	}
	bad := []struct{ in, want string }{
		{"", "no address"},
		{"example.com", `"example.com" is not an IPv4 address`},
		{"10.0.0.300", "not an IPv4 address"},
		{"10.0.0.0/33", "not a CIDR"},
		{"192.168.1.5/24", "host bits set: did you mean 192.168.1.0/24"},
		{"fd00::1", "IPv6"},
		{"::/0", "IPv6"},
		{"10.0.0.5:", `port "" is not a number`},
		{"10.0.0.5:0", `port "0"`},
		{"10.0.0.5:65536", `port "65536"`},
		{"10.0.0.5:http", `port "http"`},
		{"10.0.0.5:53/icmp", `protocol "icmp": use tcp or udp`},
		{"10.0.0.0/8/tcp", "not a CIDR"},
	}
	for _, tt := range bad {
		_, err := ParseRule(tt.in)
		if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "allow") {
			t.Errorf("ParseRule(%q) error = %v, want one naming the entry and saying %q", tt.in, err, tt.want)
		}
	}
}

func TestParsePolicy(t *testing.T) {
	p, err := ParsePolicy("", []string{"192.168.1.0/24", "10.0.0.5:5432", "10.0.0.5:5432"},
		[]string{"203.0.113.0/24", "198.51.100.7"}, []string{"172.16.0.9", "172.16.0.7"})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := p.String(), "internet allow=10.0.0.5:5432,192.168.1.0/24 deny=198.51.100.7/32,203.0.113.0/24 vm=172.16.0.7,172.16.0.9"; got != want {
		t.Errorf("String = %q, want %q", got, want)
	}
	if (Policy{}).String() != "internet" || !(Policy{}).IsDefault() || p.IsDefault() {
		t.Errorf("zero policy is not the default, or p is")
	}
	for _, m := range []string{"none", "Internet", "OPEN"} {
		if _, err := ParsePolicy(m, nil, nil, nil); err != nil {
			t.Errorf("mode %q: %v", m, err)
		}
	}
	bad := []struct {
		mode             string
		allow, deny, vms []string
		want             string
	}{
		{mode: "closed", want: `invalid network mode "closed": use none, internet or open`},
		{allow: []string{"10.0.0.5:99999"}, want: `allow "10.0.0.5:99999"`},
		{deny: []string{"10.0.0.5:80"}, want: `deny "10.0.0.5:80": deny takes an address or CIDR, without a port`},
		{deny: []string{"10.0.0.1/8"}, want: `deny "10.0.0.1/8": 10.0.0.1/8 has host bits set`},
		{deny: []string{"fd00::/8"}, want: "not IPv4"},
		{vms: []string{"vb"}, want: `allow-vm "vb": not a VM's IPv4 address`},
	}
	for _, tt := range bad {
		_, err := ParsePolicy(tt.mode, tt.allow, tt.deny, tt.vms)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("ParsePolicy(%+v) error = %v, want %q", tt, err, tt.want)
		}
	}
}

func TestPolicyJSON(t *testing.T) {
	b, err := json.Marshal(Policy{})
	if err != nil || string(b) != `{"mode":"internet"}` {
		t.Errorf("zero policy JSON = %s, %v", b, err)
	}
	p, _ := ParsePolicy("none", []string{"10.0.0.5:53/udp"}, []string{"203.0.113.0/24"}, []string{"172.16.0.7"})
	b, err = json.Marshal(p)
	if want := `{"mode":"none","allow":["10.0.0.5:53/udp"],"deny":["203.0.113.0/24"],"allow_vms":["172.16.0.7"]}`; err != nil || string(b) != want {
		t.Errorf("JSON = %s, %v; want %s", b, err, want)
	}
	var back Policy
	if err := json.Unmarshal(b, &back); err != nil || back.String() != p.String() {
		t.Errorf("round trip = %v, %v; want %v", back, err, p)
	}
	var def Policy
	if err := json.Unmarshal([]byte(`{}`), &def); err != nil || def.Mode != ModeInternet {
		t.Errorf("{} = %+v, %v; want internet", def, err)
	}
	for _, in := range []string{
		`{"mode":"closed"}`,
		`{"allow":["10.0.0.5:0"]}`,
		`{"deny":["10.0.0.1/8"]}`,
		`{"deny":["fd00::/8"]}`,
		`{"allow_vms":["fd00::1"]}`,
	} {
		var p Policy
		if err := json.Unmarshal([]byte(in), &p); err == nil {
			t.Errorf("%s decoded as %v", in, p)
		}
	}
}

func TestPolicyScript(t *testing.T) {
	subnet := netip.MustParsePrefix("172.16.0.0/24")
	script := func(p Policy) string {
		t.Helper()
		g := testGuest
		g.Policy = p
		s, err := PolicyScript("banger0", subnet, "bt0123456789ab", g)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	// The default, whole: the rules the documentation states.
	want := `table ip banger-bt0123456789ab {}
delete table ip banger-bt0123456789ab
table ip banger-bt0123456789ab {
	chain input {
		type filter hook input priority filter; policy accept;
		iifname != "banger0" accept
		ip saddr != 172.16.0.5 accept
		ct state established,related ct direction reply accept
		ip daddr 172.16.0.1 udp dport 53 accept comment "banger"
		ip daddr 172.16.0.1 tcp dport 53 accept comment "banger"
		drop comment "banger"
	}
	chain forward {
		type filter hook forward priority filter; policy accept;
		iifname != "banger0" accept
		ip saddr != 172.16.0.5 accept
		ct state established,related ct direction reply accept
		ip daddr 172.16.0.0/24 drop comment "banger"
		ip daddr { 0.0.0.0/8, 10.0.0.0/8, 100.64.0.0/10, 127.0.0.0/8, 169.254.0.0/16, 172.16.0.0/12, 192.0.0.0/24, 192.168.0.0/16, 198.18.0.0/15, 224.0.0.0/4, 240.0.0.0/4 } drop comment "banger"
		accept comment "banger"
	}
}
`
	if got := script(Policy{}); got != want {
		t.Errorf("default policy script:\n%s\nwant:\n%s", got, want)
	}

	p, _ := ParsePolicy("none", []string{"10.0.0.5:5432", "172.16.0.1:8080/tcp"}, []string{"203.0.113.0/24"}, []string{"172.16.0.7"})
	none := script(p)
	for _, w := range []string{
		"ip daddr { 203.0.113.0/24 } drop",
		"ip daddr 10.0.0.5/32 meta l4proto { tcp, udp } th dport 5432 accept",
		"ip daddr 172.16.0.1/32 tcp dport 8080 accept",
		"ip daddr { 172.16.0.7 } accept",
	} {
		if !strings.Contains(none, w) {
			t.Errorf("none script lacks %q:\n%s", w, none)
		}
	}
	if strings.Contains(none, "dport 53") || strings.Contains(none, "\t\taccept comment") {
		t.Errorf("none script lets DNS or everything through:\n%s", none)
	}
	// Deny comes before every accept; other VMs are dropped before mode
	// and allow entries, after AllowVMs.
	_, fwd, _ := strings.Cut(none, "chain forward")
	order := []string{"ct state established", "203.0.113.0/24 } drop", "{ 172.16.0.7 } accept", "172.16.0.0/24 drop", "10.0.0.5/32", "\t\tdrop comment"}
	last := -1
	for _, w := range order {
		i := strings.Index(fwd, w)
		if i <= last {
			t.Errorf("forward chain: %q out of order:\n%s", w, fwd)
		}
		last = i
	}
	open := script(Policy{Mode: ModeOpen})
	if strings.Count(open, "\t\taccept comment") != 2 || strings.Contains(open, "0.0.0.0/8") || !strings.Contains(open, "172.16.0.0/24 drop") {
		t.Errorf("open script:\n%s", open)
	}

	bad := []struct {
		p    Policy
		tap  string
		want string
	}{
		{Policy{AllowVMs: []netip.Addr{netip.MustParseAddr("10.0.0.7")}}, "", "allow-vm 10.0.0.7: not a VM address: outside the guest subnet 172.16.0.0/24"},
		{Policy{AllowVMs: []netip.Addr{netip.MustParseAddr("172.16.0.1")}}, "", "that is the gateway"},
		{Policy{AllowVMs: []netip.Addr{netip.MustParseAddr("172.16.0.5")}}, "", "this VM itself"},
		{Policy{Allow: []Rule{{Prefix: netip.MustParsePrefix("172.16.0.7/32")}}}, "", "other VMs are reached with allow-vm"},
		{Policy{Allow: []Rule{{Prefix: netip.MustParsePrefix("172.16.0.0/30")}}}, "", "inside the guest subnet"},
		{Policy{Mode: "closed"}, "", "invalid network mode"},
		{Policy{Allow: []Rule{{Prefix: netip.MustParsePrefix("10.0.0.0/8"), Proto: "tcp"}}}, "", "needs a port"},
		{Policy{}, `bt"; flush ruleset`, "invalid tap name"},
	}
	for _, tt := range bad {
		g := testGuest
		g.Policy = tt.p
		tap := tt.tap
		if tap == "" {
			tap = "bt0123456789ab"
		}
		if _, err := PolicyScript("banger0", subnet, tap, g); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("PolicyScript(%+v, %q) error = %v, want %q", tt.p, tap, err, tt.want)
		}
	}
	// The gateway may be allowed, and a prefix wider than the subnet too
	// (other VMs stay dropped by the subnet rule before it).
	for _, a := range []string{"172.16.0.1:8080", "0.0.0.0/0", "172.16.0.0/12"} {
		p, _ := ParsePolicy("", []string{a}, nil, nil)
		g := testGuest
		g.Policy = p
		if _, err := PolicyScript("banger0", subnet, "bt0123456789ab", g); err != nil {
			t.Errorf("allow %s: %v", a, err)
		}
	}
}

func TestIptablesPolicyScript(t *testing.T) {
	s := IptablesPolicyScript("banger0", netip.MustParsePrefix("172.16.0.0/24"))
	for _, w := range []string{
		"*mangle\n:banger-input - [0:0]\n:banger-forward - [0:0]\n",
		"-A banger-input -d 172.16.0.1/32 -p udp --dport 53 -m comment --comment banger -j RETURN\n",
		"-A banger-input -m comment --comment banger -j DROP\n",
		"-A banger-forward -d 172.16.0.0/24 -m comment --comment banger -j DROP\n",
		"-A banger-forward -d 169.254.0.0/16 -m comment --comment banger -j DROP\n",
		"-A banger-forward -m comment --comment banger -j RETURN\nCOMMIT\n",
	} {
		if !strings.Contains(s, w) {
			t.Errorf("iptables policy lacks %q:\n%s", w, s)
		}
	}
	if j := iptablesPolicyJumps("banger0"); strings.Join(j[0], " ") != "INPUT -i banger0 -j banger-input -m comment --comment banger" {
		t.Errorf("jumps = %q", j)
	}
}

// CheckPolicy refuses what CreateTap and ApplyPolicy would, touching
// nothing: so it runs without root.
func TestCheckPolicy(t *testing.T) {
	g := Guest{MAC: net.HardwareAddr{2, 0xba, 172, 16, 0, 5}, IP: netip.MustParseAddr("172.16.0.5")}
	open := g
	open.Policy = Policy{Mode: ModeOpen}
	for _, fw := range []string{"nft", "iptables"} {
		if _, err := exec.LookPath(fw); err != nil {
			t.Logf("%s not installed: skipped", fw)
			continue
		}
		n, err := New(Config{Bridge: "banger0", Subnet: netip.MustParsePrefix("172.16.0.0/24"), Firewall: fw})
		if err != nil {
			t.Fatal(err)
		}
		if err := n.CheckPolicy("bt0123", g); err != nil {
			t.Errorf("%s: default policy: %v", fw, err)
		}
		err = n.CheckPolicy("bt0123", open)
		if fw == "iptables" != errors.Is(err, ErrPolicyNeedsNft) {
			t.Errorf("%s: open policy: %v", fw, err)
		}
		self := g
		self.Policy = Policy{AllowVMs: []netip.Addr{g.IP}}
		if fw == "nft" {
			if err := n.CheckPolicy("bt0123", self); err == nil || !strings.Contains(err.Error(), "this VM itself") {
				t.Errorf("nft: allow-vm self: %v", err)
			}
		}
		if err := n.CheckPolicy("bad name!", g); err == nil {
			t.Errorf("%s: bad tap name accepted", fw)
		}
	}
}
