package hostnet

import (
	"net/netip"
	"strings"
	"testing"
)

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

func TestAllocateIP(t *testing.T) {
	tests := []struct {
		name    string
		subnet  string
		used    []netip.Addr
		want    string
		wantErr string
	}{
		{"empty", "172.16.0.0/24", nil, "172.16.0.2", ""},
		{"unmasked prefix", "172.16.0.77/24", nil, "172.16.0.2", ""},
		{"next after used", "172.16.0.0/24", addrs("172.16.0.2", "172.16.0.3"), "172.16.0.4", ""},
		{"hole", "172.16.0.0/24", addrs("172.16.0.2", "172.16.0.4"), "172.16.0.3", ""},
		{"gateway in used ignored", "172.16.0.0/24", addrs("172.16.0.1"), "172.16.0.2", ""},
		{"slash 30 has one guest", "10.9.0.0/30", nil, "10.9.0.2", ""},
		{"slash 30 full", "10.9.0.0/30", addrs("10.9.0.2"), "", "is full"},
		{"slash 29 full, no broadcast", "10.9.0.0/29", addrs("10.9.0.2", "10.9.0.3", "10.9.0.4", "10.9.0.5", "10.9.0.6"), "", "is full"},
		{"slash 31 refused", "10.9.0.0/31", nil, "", "too small"},
		{"ipv6 refused", "fd00::/64", nil, "", "not an IPv4"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := AllocateIP(netip.MustParsePrefix(tt.subnet), tt.used)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("AllocateIP = %v, %v; want error containing %q", got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got.String() != tt.want {
				t.Fatalf("AllocateIP = %v, %v; want %s", got, err, tt.want)
			}
		})
	}
}

func TestAllocateIPFillsSubnet(t *testing.T) {
	subnet := netip.MustParsePrefix("192.0.2.0/28")
	var used []netip.Addr
	seen := map[netip.Addr]bool{}
	for {
		a, err := AllocateIP(subnet, used)
		if err != nil {
			break
		}
		if seen[a] {
			t.Fatalf("address %s handed out twice", a)
		}
		seen[a] = true
		used = append(used, a)
	}
	// 16 addresses minus network, gateway and broadcast.
	if len(used) != 13 {
		t.Fatalf("allocated %d addresses from a /28, want 13", len(used))
	}
}

func TestMACForIP(t *testing.T) {
	tests := []struct{ ip, want string }{
		{"172.16.0.2", "02:ba:ac:10:00:02"},
		{"10.0.255.254", "02:ba:0a:00:ff:fe"},
		{"::ffff:172.16.0.3", "02:ba:ac:10:00:03"},
	}
	for _, tt := range tests {
		if got := MACForIP(netip.MustParseAddr(tt.ip)); got != tt.want {
			t.Errorf("MACForIP(%s) = %s, want %s", tt.ip, got, tt.want)
		}
	}
}

func TestTapName(t *testing.T) {
	tests := []struct{ id, want string }{
		{"0123456789abcdef0123456789abcdef", "bt0123456789ab"},
		{"0123456789ABCDEF0123456789ABCDEF", "bt0123456789ab"},
		{"short", ""},                            // hashed
		{"not-hex-but-very-long-identifier", ""}, // hashed
		{"", ""},
	}
	for _, tt := range tests {
		got := TapName(tt.id)
		if len(got) > 15 || !isTapName(got) {
			t.Errorf("TapName(%q) = %q: not a valid tap name", tt.id, got)
		}
		if tt.want != "" && got != tt.want {
			t.Errorf("TapName(%q) = %q, want %q", tt.id, got, tt.want)
		}
		if again := TapName(tt.id); again != got {
			t.Errorf("TapName(%q) not deterministic: %q then %q", tt.id, got, again)
		}
	}
	if TapName("a") == TapName("b") {
		t.Error("TapName gives the same name to different ids")
	}
}

func TestHostsLines(t *testing.T) {
	tests := []struct {
		suffix string
		vms    map[string]netip.Addr
		want   string
	}{
		{"vm", nil, ""},
		{"vm", map[string]netip.Addr{
			"web": netip.MustParseAddr("172.16.0.3"),
			"db":  netip.MustParseAddr("172.16.0.2"),
		}, "172.16.0.2\tdb.vm db\n172.16.0.3\tweb.vm web\n"},
		{".lab.", map[string]netip.Addr{"a": netip.MustParseAddr("10.0.0.2")}, "10.0.0.2\ta.lab a\n"},
	}
	for _, tt := range tests {
		if got := HostsLines(tt.suffix, tt.vms); got != tt.want {
			t.Errorf("HostsLines(%q, %v) = %q, want %q", tt.suffix, tt.vms, got, tt.want)
		}
	}
}

func TestNew(t *testing.T) {
	tests := []struct {
		cfg     Config
		wantErr string
	}{
		{Config{Bridge: "banger0", Subnet: netip.MustParsePrefix("172.16.0.0/24")}, ""},
		{Config{Bridge: "", Subnet: netip.MustParsePrefix("172.16.0.0/24")}, "invalid bridge name"},
		{Config{Bridge: "a-very-long-bridge", Subnet: netip.MustParsePrefix("172.16.0.0/24")}, "invalid bridge name"},
		{Config{Bridge: "banger0", Subnet: netip.MustParsePrefix("172.16.0.0/31")}, "too small"},
		{Config{Bridge: "banger0", Subnet: netip.MustParsePrefix("fd00::/64")}, "invalid subnet"},
		{Config{Bridge: "banger0"}, "invalid subnet"},
		{Config{Bridge: "banger0", Subnet: netip.MustParsePrefix("172.16.0.0/24"), Firewall: "pf"}, "invalid firewall"},
	}
	for _, tt := range tests {
		n, err := New(tt.cfg)
		if tt.wantErr == "" {
			if err != nil {
				t.Errorf("New(%+v): %v", tt.cfg, err)
			} else if got := n.Gateway().String(); got != "172.16.0.1" {
				t.Errorf("Gateway = %s, want 172.16.0.1", got)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("New(%+v) error = %v, want %q", tt.cfg, err, tt.wantErr)
		}
	}
}

func TestNftScript(t *testing.T) {
	s := NftScript("banger0", netip.MustParsePrefix("172.16.0.9/24"))
	for _, want := range []string{
		"table ip banger {}\ndelete table ip banger\n",
		`ip saddr 172.16.0.0/24 oifname != "banger0" masquerade comment "banger"`,
		`iifname "banger0" accept`,
		`oifname "banger0" ct state related,established accept`,
	} {
		if !strings.Contains(s, want) {
			t.Errorf("NftScript lacks %q:\n%s", want, s)
		}
	}
}

func TestNftRules(t *testing.T) {
	listing := `table ip banger {
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		ip saddr 172.16.0.0/24 oifname != "banger0" masquerade comment "banger"
	}
	chain forward {
		type filter hook forward priority filter; policy accept;
		iifname "banger0" accept comment "banger"
	}
}
`
	got := nftRules(listing)
	want := []string{`ip saddr 172.16.0.0/24 oifname != "banger0" masquerade comment "banger"`, `iifname "banger0" accept comment "banger"`}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("nftRules = %q, want %q", got, want)
	}
	if got := nftRules("table ip banger {\n}\n"); len(got) != 0 {
		t.Fatalf("nftRules(empty table) = %q", got)
	}
}

func TestTaggedIptablesRules(t *testing.T) {
	listing := `-P POSTROUTING ACCEPT
-A POSTROUTING -s 172.16.0.0/24 ! -o banger0 -m comment --comment banger -j MASQUERADE
-A POSTROUTING -s 10.0.0.0/8 -m comment --comment bangerish -j MASQUERADE
-A POSTROUTING -o eth0 -j MASQUERADE
-A FORWARD -i banger0 -m comment --comment banger -j ACCEPT
`
	got := taggedIptablesRules(listing)
	if len(got) != 2 || !strings.Contains(got[0], "172.16.0.0/24") || !strings.Contains(got[1], "FORWARD") {
		t.Fatalf("taggedIptablesRules = %q", got)
	}
	args := IptablesArgs("-C", "banger0", netip.MustParsePrefix("172.16.0.0/24"))
	if len(args) != 3 || strings.Join(args[0], " ") != "-w -t nat -C POSTROUTING -s 172.16.0.0/24 ! -o banger0 -j MASQUERADE -m comment --comment banger" {
		t.Fatalf("IptablesArgs = %q", args)
	}
}

func TestForwardPolicyDrops(t *testing.T) {
	tests := []struct {
		listing string
		want    bool
	}{
		{"-P FORWARD ACCEPT\n", false},
		{"-P FORWARD DROP\n-A FORWARD -j DOCKER-USER\n", true},
		{"-P FORWARD ACCEPT\n-A FORWARD -j DROP\n", false},
		{"", false},
	}
	for _, tt := range tests {
		if got := forwardPolicyDrops(tt.listing); got != tt.want {
			t.Errorf("forwardPolicyDrops(%q) = %v, want %v", tt.listing, got, tt.want)
		}
	}
}
