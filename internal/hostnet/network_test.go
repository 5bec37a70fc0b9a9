package hostnet

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

const testBridge = "bangertest0"

var testSubnet = netip.MustParsePrefix("172.16.0.0/24")

var testGuest = Guest{MAC: net.HardwareAddr{0x02, 0xba, 0xac, 0x10, 0x00, 0x05}, IP: netip.MustParseAddr("172.16.0.5")}

func newTestNetwork(t *testing.T, firewall string) *Network {
	t.Helper()
	n, err := New(Config{Bridge: testBridge, Subnet: testSubnet, DNSSuffix: "vm", Firewall: firewall})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// assertClean fails unless the bridge and every banger rule are gone.
func assertClean(t *testing.T, n *Network) {
	t.Helper()
	if _, err := netlink.LinkByName(testBridge); !isNotFound(err) {
		t.Errorf("bridge %s still present after Teardown (err %v)", testBridge, err)
	}
	rules, err := n.NATRules()
	if err != nil {
		t.Fatal(err)
	}
	if len(rules) != 0 {
		t.Errorf("rules left after Teardown: %q", rules)
	}
}

func testEnsureTeardown(t *testing.T, firewall string) {
	ctx := context.Background()
	n := newTestNetwork(t, firewall)
	for i := 0; i < 2; i++ { // the second call must change nothing
		if err := n.Ensure(ctx); err != nil {
			t.Fatalf("Ensure #%d: %v", i+1, err)
		}
		br, err := netlink.LinkByName(testBridge)
		if err != nil {
			t.Fatal(err)
		}
		if br.Attrs().Flags&net.FlagUp == 0 {
			t.Errorf("bridge is not up")
		}
		as, err := netlink.AddrList(br, netlink.FAMILY_V4)
		if err != nil {
			t.Fatal(err)
		}
		if len(as) != 1 || as[0].IPNet.String() != "172.16.0.1/24" {
			t.Errorf("bridge addresses after Ensure #%d = %v, want [172.16.0.1/24]", i+1, as)
		}
		rules, err := n.NATRules()
		if err != nil {
			t.Fatal(err)
		}
		// The iptables backend's policy chains live in mangle.
		nat := slices.DeleteFunc(slices.Clone(rules), func(r string) bool { return strings.HasPrefix(r, "-t mangle ") })
		if len(nat) != 3 {
			t.Errorf("rules after Ensure #%d = %q, want 3 (masquerade, 2 forward)", i+1, nat)
		}
		if firewall == "iptables" {
			for _, want := range []string{
				"-t mangle -A INPUT -i bangertest0 -m comment --comment banger -j banger-input",
				"-t mangle -A FORWARD -i bangertest0 -m comment --comment banger -j banger-forward",
			} {
				if !slices.Contains(rules, want) {
					t.Errorf("no %q in %q", want, rules)
				}
			}
			if len(rules) != 3+2+18 {
				t.Errorf("%d rules after Ensure #%d, want 23 (3 NAT, 2 jumps, 18 policy): %q", len(rules), i+1, rules)
			}
		}
		if !slices.ContainsFunc(rules, func(r string) bool { return strings.Contains(strings.ToLower(r), "masquerade") }) {
			t.Errorf("no masquerade rule in %q", rules)
		}
	}
	// Rules of others survive Teardown.
	if firewall == "iptables" {
		sh(t, "iptables", "-t", "nat", "-A", "POSTROUTING", "-o", "lo", "-j", "MASQUERADE")
	} else {
		sh(t, "nft", "add", "table", "ip", "other")
	}
	if err := n.Teardown(ctx); err != nil {
		t.Fatalf("Teardown: %v", err)
	}
	assertClean(t, n)
	if firewall == "iptables" {
		if out := sh(t, "iptables", "-t", "nat", "-S", "POSTROUTING"); !strings.Contains(out, "-o lo -j MASQUERADE") {
			t.Errorf("Teardown removed a rule that was not banger's:\n%s", out)
		}
	} else if out := sh(t, "nft", "list", "tables"); !strings.Contains(out, "table ip other") {
		t.Errorf("Teardown removed a table that was not banger's:\n%s", out)
	}
	if err := n.Teardown(ctx); err != nil {
		t.Fatalf("second Teardown: %v", err)
	}
}

func TestEnsureTeardownNft(t *testing.T) {
	if insideTestNetns(t, "nft") {
		testEnsureTeardown(t, "nft")
	}
}

func TestEnsureTeardownIptables(t *testing.T) {
	if insideTestNetns(t, "iptables") {
		testEnsureTeardown(t, "iptables")
	}
}

func TestTaps(t *testing.T) {
	if !insideTestNetns(t, "nft") {
		return
	}
	ctx := context.Background()
	n := newTestNetwork(t, "")
	if err := n.CreateTap(ctx, "bt000000000001", testGuest); err == nil {
		t.Fatal("CreateTap without a bridge succeeded")
	}
	if err := n.Ensure(ctx); err != nil {
		t.Fatal(err)
	}
	defer n.Teardown(ctx)
	name := TapName("0123456789abcdef0123456789abcdef")
	if err := n.CreateTap(ctx, name, Guest{IP: testGuest.IP}); err == nil {
		t.Fatal("CreateTap without a guest MAC succeeded")
	}
	for i := 0; i < 2; i++ {
		if err := n.CreateTap(ctx, name, testGuest); err != nil {
			t.Fatalf("CreateTap #%d: %v", i+1, err)
		}
	}
	if guards, err := n.Guards(); err != nil || !slices.Equal(guards, []string{guardTable(name)}) {
		t.Errorf("guards = %v, %v; want the tap's", guards, err)
	}
	if ps, err := n.Policies(); err != nil || !slices.Equal(ps, []string{policyTable(name)}) {
		t.Errorf("policies = %v, %v; want the tap's", ps, err)
	}
	// A policy that cannot be applied changes nothing.
	bad := testGuest
	bad.Policy = Policy{AllowVMs: []netip.Addr{netip.MustParseAddr("10.1.2.3")}}
	if err := n.CreateTap(ctx, name, bad); err == nil || !strings.Contains(err.Error(), "allow-vm 10.1.2.3") {
		t.Errorf("CreateTap with a VM outside the subnet: %v", err)
	}
	if err := n.ApplyPolicy(ctx, name, bad); err == nil {
		t.Error("ApplyPolicy with a VM outside the subnet succeeded")
	}
	if err := n.ApplyPolicy(ctx, "bt0000000000ee", testGuest); err == nil {
		t.Error("ApplyPolicy to a missing tap succeeded")
	}
	if out := sh(t, "nft", "list", "table", "ip", policyTable(name)); !strings.Contains(out, "udp dport 53 accept") {
		t.Errorf("policy table after refused changes:\n%s", out)
	}
	tap, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	br, _ := netlink.LinkByName(testBridge)
	// The bridge keeps its own MAC whatever taps come and go (guests'
	// ARP caches hold it).
	want := BridgeMAC(n.Gateway()).String()
	for i := 0; i < 4; i++ {
		other := TapName(fmt.Sprintf("%032x", i+1))
		if err := n.CreateTap(ctx, other, Guest{IP: netip.MustParseAddr(fmt.Sprintf("172.16.0.%d", 20+i)), MAC: net.HardwareAddr{2, 0, 0, 0, 0, byte(i)}}); err != nil {
			t.Fatal(err)
		}
		if b, _ := netlink.LinkByName(testBridge); b.Attrs().HardwareAddr.String() != want {
			t.Fatalf("bridge MAC %s after a tap came, want %s", b.Attrs().HardwareAddr, want)
		}
		if err := n.DeleteTap(ctx, other); err != nil {
			t.Fatal(err)
		}
		if b, _ := netlink.LinkByName(testBridge); b.Attrs().HardwareAddr.String() != want {
			t.Fatalf("bridge MAC %s after a tap went, want %s", b.Attrs().HardwareAddr, want)
		}
	}
	if tap.Attrs().MasterIndex != br.Attrs().Index {
		t.Errorf("tap master index = %d, want bridge %d", tap.Attrs().MasterIndex, br.Attrs().Index)
	}
	if tap.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("tap is not up")
	}
	if p, err := netlink.LinkGetProtinfo(tap); err != nil || p.Flood || !p.Isolated {
		t.Errorf("the tap floods unknown unicast or is not isolated (%+v, %v)", p, err)
	}
	fdb, err := netlink.NeighList(tap.Attrs().Index, unix.AF_BRIDGE)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(fdb, func(e netlink.Neigh) bool {
		return e.HardwareAddr.String() == testGuest.MAC.String() && e.State&netlink.NUD_NOARP != 0
	}) {
		t.Errorf("no static bridge entry for %s on the tap: %+v", testGuest.MAC, fdb)
	}
	// A device that is not banger's tap is neither listed nor deleted.
	sh(t, "ip", "link", "add", "other0", "type", "veth", "peer", "name", "other1")
	if err := n.DeleteTap(ctx, "other0"); err == nil {
		t.Error("DeleteTap deleted a veth device")
	}
	if err := n.CreateTap(ctx, "other0", testGuest); err == nil {
		t.Error("CreateTap accepted an existing veth device")
	}
	taps, err := n.Taps()
	if err != nil || !slices.Equal(taps, []string{name}) {
		t.Fatalf("Taps = %v, %v; want [%s]", taps, err, name)
	}
	for i := 0; i < 2; i++ {
		if err := n.DeleteTap(ctx, name); err != nil {
			t.Fatalf("DeleteTap #%d: %v", i+1, err)
		}
	}
	if taps, err := n.Taps(); err != nil || len(taps) != 0 {
		t.Fatalf("Taps after delete = %v, %v", taps, err)
	}
	if guards, err := n.Guards(); err != nil || len(guards) != 0 {
		t.Fatalf("guards after delete = %v, %v", guards, err)
	}
	if ps, err := n.Policies(); err != nil || len(ps) != 0 {
		t.Fatalf("policies after delete = %v, %v", ps, err)
	}
}

// testNAT builds, inside the test namespace (the "host"), an "internet"
// namespace on 198.51.100.0/24 and a "guest" namespace behind banger's
// bridge, and shows a guest's TCP connection arriving from the host's
// uplink address.
func testNAT(t *testing.T, firewall string) {
	ctx := context.Background()
	n := newTestNetwork(t, firewall)
	if err := n.Ensure(ctx); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := n.Teardown(ctx); err != nil {
			t.Error(err)
		}
		assertClean(t, n)
	}()
	inet := addNetns(t, "banger-test-inet-")
	guest := addNetns(t, "banger-test-guest-")
	sh(t, "ip", "link", "add", "up0", "type", "veth", "peer", "name", "eth0", "netns", inet)
	sh(t, "ip", "addr", "add", "198.51.100.1/24", "dev", "up0")
	sh(t, "ip", "link", "set", "up0", "up")
	sh(t, "ip", "-n", inet, "addr", "add", "198.51.100.2/24", "dev", "eth0")
	sh(t, "ip", "-n", inet, "link", "set", "eth0", "up")
	sh(t, "ip", "link", "add", "gp0", "type", "veth", "peer", "name", "eth0", "netns", guest)
	sh(t, "ip", "link", "set", "gp0", "master", testBridge, "up")
	sh(t, "ip", "-n", guest, "addr", "add", "172.16.0.2/24", "dev", "eth0")
	sh(t, "ip", "-n", guest, "link", "set", "eth0", "up")
	sh(t, "ip", "-n", guest, "route", "add", "default", "via", n.Gateway().String())

	var ln net.Listener
	inNamedNetns(t, inet, func() {
		var err error
		if ln, err = net.Listen("tcp", "198.51.100.2:0"); err != nil {
			t.Fatal(err)
		}
	})
	defer ln.Close()
	peer := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			peer <- err.Error()
			return
		}
		peer <- c.RemoteAddr().(*net.TCPAddr).IP.String()
		c.Close()
	}()
	var conn net.Conn
	inNamedNetns(t, guest, func() {
		var err error
		if conn, err = net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second); err != nil {
			t.Fatalf("guest connect to %s: %v", ln.Addr(), err)
		}
	})
	defer conn.Close()
	if got := <-peer; got != "198.51.100.1" {
		t.Fatalf("guest connection arrived from %s, want the uplink address 198.51.100.1 (masqueraded)", got)
	}
}

func TestNATNft(t *testing.T) {
	if insideTestNetns(t, "nft") {
		testNAT(t, "nft")
	}
}

// TestNATNftForwardDrop: with iptables' FORWARD policy at DROP (a Docker
// host), nft's accept alone would not let guests out.
func TestNATNftForwardDrop(t *testing.T) {
	if !insideTestNetns(t, "nft", "iptables") {
		return
	}
	sh(t, "iptables", "-w", "-P", "FORWARD", "DROP")
	testNAT(t, "nft")
	if out := sh(t, "iptables", "-w", "-S", "FORWARD"); strings.Contains(out, "banger") {
		t.Errorf("tagged iptables rules left after Teardown:\n%s", out)
	}
}

func TestNATIptables(t *testing.T) {
	if insideTestNetns(t, "iptables") {
		testNAT(t, "iptables")
	}
}

func TestDNS(t *testing.T) {
	if !insideTestNetns(t) {
		return
	}
	sh(t, "ip", "link", "set", "lo", "up")
	vms := map[string]netip.Addr{"web": netip.MustParseAddr("172.16.0.5")}
	d := NewDNS("vm", func(h string) (netip.Addr, bool) { a, ok := vms[h]; return a, ok },
		slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err := d.Start("127.0.0.53:53"); err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := d.Start("127.0.0.53:53"); err == nil {
		t.Error("second Start succeeded")
	}
	tests := []struct {
		name  string
		qtype uint16
		rcode int
		want  string
	}{
		{"web.vm.", dns.TypeA, dns.RcodeSuccess, "172.16.0.5"},
		{"WEB.Vm.", dns.TypeA, dns.RcodeSuccess, "172.16.0.5"},
		{"web.vm.", dns.TypeAAAA, dns.RcodeSuccess, ""},
		{"db.vm.", dns.TypeA, dns.RcodeNameError, ""},
		{"vm.", dns.TypeA, dns.RcodeNameError, ""},
		{"example.com.", dns.TypeA, dns.RcodeNameError, ""},
	}
	for _, proto := range []string{"udp", "tcp"} {
		c := &dns.Client{Net: proto, Timeout: 2 * time.Second}
		for _, tt := range tests {
			m := new(dns.Msg)
			m.SetQuestion(tt.name, tt.qtype)
			r, _, err := c.Exchange(m, "127.0.0.53:53")
			if err != nil {
				t.Fatalf("%s query %s: %v", proto, tt.name, err)
			}
			if r.Rcode != tt.rcode {
				t.Errorf("%s %s %s: rcode %s, want %s", proto, tt.name, dns.TypeToString[tt.qtype], dns.RcodeToString[r.Rcode], dns.RcodeToString[tt.rcode])
			}
			var got string
			if len(r.Answer) == 1 {
				if a, ok := r.Answer[0].(*dns.A); ok {
					got = a.A.String()
				}
			} else if len(r.Answer) > 1 {
				got = "many"
			}
			if got != tt.want {
				t.Errorf("%s %s %s: answer %q, want %q", proto, tt.name, dns.TypeToString[tt.qtype], got, tt.want)
			}
		}
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	c := &dns.Client{Net: "tcp", Timeout: time.Second}
	m := new(dns.Msg)
	m.SetQuestion("web.vm.", dns.TypeA)
	if _, _, err := c.Exchange(m, "127.0.0.53:53"); err == nil {
		t.Error("DNS still answers after Close")
	}
}

// TestHeldTap: a tap made with Guest.Held is on the bridge, guarded, but
// down: a frame its VMM writes (an ARP request from the guest) never
// reaches the bridge; once RaiseTap brings it up, the same frame does.
func TestHeldTap(t *testing.T) {
	if !insideTestNetns(t, "nft") {
		return
	}
	ctx := context.Background()
	n := newTestNetwork(t, "")
	if err := n.Ensure(ctx); err != nil {
		t.Fatal(err)
	}
	defer n.Teardown(ctx)
	name := TapName("0123456789abcdef0123456789abcd0e")
	held := testGuest
	held.Held = true
	if err := n.CreateTap(ctx, name, testGuest); err != nil {
		t.Fatal(err)
	}
	// An existing, up tap made again held goes down.
	if err := n.CreateTap(ctx, name, held); err != nil {
		t.Fatal(err)
	}
	defer n.DeleteTap(ctx, name)
	tap, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	br, _ := netlink.LinkByName(testBridge)
	if tap.Attrs().Flags&net.FlagUp != 0 || tap.Attrs().MasterIndex != br.Attrs().Index {
		t.Fatalf("held tap: flags %v, master %d (bridge %d)", tap.Attrs().Flags, tap.Attrs().MasterIndex, br.Attrs().Index)
	}
	// Open it as a VMM does.
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		t.Fatal(err)
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		t.Fatal(err)
	}
	gw := n.Gateway().As4()
	ip := testGuest.IP.As4()
	frame := append([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, testGuest.MAC...)
	frame = append(frame, 0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1)
	frame = append(frame, testGuest.MAC...)
	frame = append(frame, ip[:]...)
	frame = append(frame, 0, 0, 0, 0, 0, 0)
	frame = append(frame, gw[:]...)
	frame = append(frame, make([]byte, 18)...) // padding to 60 bytes
	rx := func() string {
		b, _ := os.ReadFile("/sys/class/net/" + testBridge + "/statistics/rx_packets")
		return strings.TrimSpace(string(b))
	}
	before := rx()
	_, _ = unix.Write(fd, frame) // a down tap may refuse it outright
	time.Sleep(100 * time.Millisecond)
	if got := rx(); got != before {
		t.Fatalf("a frame from a held tap reached the bridge (rx %s → %s)", before, got)
	}
	if err := n.RaiseTap(ctx, name); err != nil {
		t.Fatal(err)
	}
	if err := n.RaiseTap(ctx, name); err != nil {
		t.Fatalf("raising an up tap: %v", err)
	}
	for deadline := time.Now().Add(3 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err := unix.Write(fd, frame); err != nil {
			t.Fatalf("write to the raised tap: %v", err)
		}
		if rx() != before {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a frame from the raised tap never reached the bridge")
		}
	}
	if err := n.RaiseTap(ctx, "bt0000000000ff"); err == nil {
		t.Fatal("RaiseTap of a missing tap succeeded")
	}
}
