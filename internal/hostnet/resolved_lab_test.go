package hostnet

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/vishvananda/netlink"
)

// labResolver is where the lab's DNS responder forwards other names: an
// address of the "internet" namespace.
const labResolver = "198.51.100.2:53"

// serveLabResolver answers, in the lab's "internet" namespace, the names
// in zone with their addresses (TTL 300), and NXDOMAIN for the rest.
func (l *policyLab) serveLabResolver(zone map[string][]string) {
	t := l.t
	h := dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(req)
		addrs, ok := zone[strings.ToLower(req.Question[0].Name)]
		if !ok {
			m.Rcode = dns.RcodeNameError
		}
		for _, a := range addrs {
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: req.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 300},
				A: netip.MustParseAddr(a).AsSlice()})
		}
		_ = w.WriteMsg(m)
	})
	var pc net.PacketConn
	var ln net.Listener
	if err := inNetnsErr(l.inet, func() error {
		var err error
		if pc, err = net.ListenPacket("udp", labResolver); err != nil {
			return err
		}
		ln, err = net.Listen("tcp", labResolver)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	for _, s := range []*dns.Server{{PacketConn: pc, Handler: h}, {Listener: ln, Handler: h}} {
		go func() { _ = s.ActivateAndServe() }()
		t.Cleanup(func() { _ = s.Shutdown() })
	}
}

// lookup asks the gateway's responder for name from lg, over UDP, and
// returns the addresses answered.
func (l *policyLab) lookup(lg *labGuest, name string) []string {
	l.t.Helper()
	var out []string
	if err := inNetnsErr(lg.ns, func() error {
		m := new(dns.Msg)
		m.SetQuestion(dns.Fqdn(name), dns.TypeA)
		r, _, err := (&dns.Client{Timeout: 5 * time.Second}).Exchange(m, net.JoinHostPort(l.n.Gateway().String(), "53"))
		if err != nil {
			return err
		}
		for _, rr := range r.Answer {
			if a, ok := rr.(*dns.A); ok {
				out = append(out, a.A.String())
			}
		}
		return nil
	}); err != nil {
		l.t.Fatalf("lookup %s from %s: %v", name, lg.g.IP, err)
	}
	return out
}

// resolvedSetOf lists the addresses in lg's resolved set.
func (l *policyLab) resolvedSetOf(lg *labGuest) []string {
	l.t.Helper()
	out := sh(l.t, "nft", "-j", "list", "set", "ip", policyTable(lg.port), resolvedSet)
	var addrs []string
	// Elements show as {"elem": {"val": "203.0.113.10", "timeout": ...}}.
	for _, part := range strings.Split(out, `"val": "`)[1:] {
		a, _, _ := strings.Cut(part, `"`)
		addrs = append(addrs, a)
	}
	slices.Sort(addrs)
	return addrs
}

// pauseResume takes lg's port away as a pause (park) or a stop does,
// twice as a resume's teardown of what a crash left would, then makes
// it again as the resume's CreateTap does, with n, or with a Network
// that knows nothing (a daemon restart) given what the pause parked
// back through JSON (restart). A veth stands in for the tap, so the
// delete leaves the device (not a tap) and the test takes it off the
// bridge.
func (l *policyLab) pauseResume(lg *labGuest, park, restart bool) {
	t := l.t
	t.Helper()
	ctx := context.Background()
	var parked *ParkedNames
	for range 2 {
		var err error
		if park {
			parked, err = l.n.ParkTap(ctx, lg.port)
		} else {
			err = l.n.DeleteTap(ctx, lg.port)
		}
		if err == nil || !strings.Contains(err.Error(), "not a tap") {
			t.Fatalf("taking port %s away: %v, want the veth left alone", lg.port, err)
		}
	}
	sh(t, "ip", "link", "set", lg.port, "nomaster")
	if ps, err := l.n.Policies(); err != nil || slices.Contains(ps, policyTable(lg.port)) {
		t.Fatalf("policy tables with the port gone: %v, %v", ps, err)
	}
	n := l.n
	if restart {
		if parked == nil {
			t.Fatal("ParkTap answered nothing parked")
		}
		b, err := json.Marshal(parked)
		if err != nil {
			t.Fatal(err)
		}
		var back ParkedNames
		if err := json.Unmarshal(b, &back); err != nil {
			t.Fatal(err)
		}
		n = newTestNetwork(t, "nft")
		if err := n.Repark(lg.port, back); err != nil {
			t.Fatal(err)
		}
	}
	link, err := netlink.LinkByName(lg.port)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.attachPort(ctx, link, lg.g); err != nil {
		t.Fatal(err)
	}
}

// TestPolicyNames: a guest under none with allowed host names reaches
// an allowed name's address once it has looked the name up through the
// gateway's responder, and only then; the address is in its set by the
// time the answer arrives; a name no pattern matches, an answer of a
// private address or the host's own opens nothing; a policy rewrite
// keeps what the names still allowed open; an open connection outlives
// its address's answer; a pause and resume keeps both, a stop neither;
// and no guest holds more than MaxResolved.
func TestPolicyNames(t *testing.T) {
	if !insideTestNetns(t, "nft") {
		return
	}
	l := newPolicyLab(t, newTestNetwork(t, "nft"))
	l.serveLabResolver(map[string][]string{
		"public.example.test.":  {"203.0.113.10"},
		"private.example.test.": {"10.99.0.5", "169.254.169.254"},
		"host.example.test.":    {"192.0.2.1", "172.16.0.1"},
		"other.test.":           {"203.0.113.10"},
		"b.example.test.":       {"198.51.100.2"},
	})
	a := l.guest("172.16.0.2", Policy{})
	b := l.guest("172.16.0.3", Policy{})
	l.setPolicy(a, mustPolicy(t, "none", []string{"*.example.test"}, nil, nil))
	l.setPolicy(b, mustPolicy(t, "none", []string{"b.example.test"}, nil, nil))

	l.expect("names, nothing looked up", a, []string{tDNS}, nil)
	if got := l.lookup(a, "other.test"); !slices.Equal(got, []string{"203.0.113.10"}) {
		t.Fatalf("other.test = %v", got)
	}
	if s := l.resolvedSetOf(a); len(s) != 0 {
		t.Errorf("a name no pattern matches opened %v", s)
	}
	l.expect("a name not allowed looked up", a, []string{tDNS}, nil)

	if got := l.lookup(a, "public.example.test"); !slices.Equal(got, []string{"203.0.113.10"}) {
		t.Fatalf("public.example.test = %v", got)
	}
	// At once, as a guest connects right after its lookup.
	if s := l.resolvedSetOf(a); !slices.Equal(s, []string{"203.0.113.10"}) {
		t.Errorf("set after the answer = %v, want the answer's address", s)
	}
	l.expect("an allowed name looked up", a, []string{tDNS, tPublic}, nil)
	l.expect("the other guest, its own name not looked up", b, []string{tDNS}, nil)

	for _, name := range []string{"private.example.test", "host.example.test"} {
		if got := l.lookup(a, name); len(got) != 2 {
			t.Errorf("%s = %v: the guest gets the whole answer", name, got)
		}
	}
	if s := l.resolvedSetOf(a); !slices.Equal(s, []string{"203.0.113.10"}) {
		t.Errorf("set after private and host answers = %v, want only the public address", s)
	}
	l.expect("private and host answers looked up", a, []string{tDNS, tPublic}, nil)

	// A rewrite with the name still allowed keeps it open; one without
	// closes it.
	l.setPolicy(a, mustPolicy(t, "none", []string{"public.example.test", "198.51.100.2:80/tcp"}, nil, nil))
	l.expect("rewritten, name still allowed", a, []string{tDNS, tPublic, tUplink}, nil)
	l.setPolicy(a, mustPolicy(t, "none", []string{"*.other.test"}, nil, nil))
	if s := l.resolvedSetOf(a); len(s) != 0 {
		t.Errorf("set after the name was dropped = %v", s)
	}
	l.expect("rewritten without the name", a, []string{tDNS}, nil)

	// An open connection lives on without its answer; a new one does not.
	l.setPolicy(a, mustPolicy(t, "none", []string{"*.example.test"}, nil, nil))
	l.lookup(a, "public.example.test")
	echo := dialEcho(t, a.ns)
	if err := echo(); err != nil {
		t.Fatalf("echo: %v", err)
	}

	// A daemon restart re-applies the stored policy with a Network that
	// knows nothing: what the sets hold stays, open connections too.
	restarted := newTestNetwork(t, "nft")
	if err := restarted.ApplyPolicy(context.Background(), a.port, a.g); err != nil {
		t.Fatal(err)
	}
	if s := l.resolvedSetOf(a); !slices.Equal(s, []string{"203.0.113.10"}) {
		t.Errorf("set after a restart's re-apply = %v", s)
	}
	if err := echo(); err != nil {
		t.Errorf("an open connection died with a restart's re-apply: %v", err)
	}
	l.expect("after a restart's re-apply", a, []string{tDNS, tPublic}, nil)

	sh(t, "nft", "flush", "set", "ip", policyTable(a.port), resolvedSet) // as when its TTL ends
	if err := echo(); err != nil {
		t.Errorf("an open connection died with its answer: %v", err)
	}
	l.expect("the answer expired", a, []string{tDNS}, nil)

	// A rewrite puts back what is open by the daemon's count (the
	// flush above was behind its back).
	l.setPolicy(a, mustPolicy(t, "none", []string{"*.example.test"}, nil, nil))
	if s := l.resolvedSetOf(a); !slices.Equal(s, []string{"203.0.113.10"}) {
		t.Errorf("set after a rewrite = %v", s)
	}
	if err := echo(); err != nil {
		t.Errorf("an open connection died with a rewrite keeping its name: %v", err)
	}
	// A rewrite dropping the name cuts the connection at once.
	l.setPolicy(a, mustPolicy(t, "none", []string{"public.example.test.other"}, nil, nil))
	if err := echo(); err == nil {
		t.Error("an open connection outlived a rewrite that dropped its name")
	}
	l.setPolicy(a, mustPolicy(t, "none", []string{"*.example.test"}, nil, nil))
	l.lookup(a, "public.example.test")

	// A pause parks the sets with its tap and the resume's tap gets
	// them back: the cached answer still opens, the open connection
	// lives on once the answer has expired.
	echo = dialEcho(t, a.ns)
	if err := echo(); err != nil {
		t.Fatalf("echo: %v", err)
	}
	for _, restart := range []bool{false, true} {
		l.pauseResume(a, true, restart)
		if s := l.resolvedSetOf(a); !slices.Equal(s, []string{"203.0.113.10"}) {
			t.Errorf("set after a pause and resume (daemon restarted %v) = %v, want the answer's address", restart, s)
		}
		l.expect(fmt.Sprintf("after a pause and resume (daemon restarted %v)", restart), a, []string{tDNS, tPublic}, nil)
		sh(t, "nft", "flush", "set", "ip", policyTable(a.port), resolvedSet)
		if err := echo(); err != nil {
			t.Errorf("an open connection died with a pause and resume (daemon restarted %v): %v", restart, err)
		}
		// Open again, as the next pause finds it.
		l.setPolicy(a, mustPolicy(t, "none", []string{"*.example.test"}, nil, nil))
	}
	// A stop forgets them.
	l.pauseResume(a, false, false)
	if s := l.resolvedSetOf(a); len(s) != 0 {
		t.Errorf("set after a stop and start = %v, want it empty", s)
	}
	if err := echo(); err == nil {
		t.Error("an open connection outlived a stop and start")
	}
	l.lookup(a, "public.example.test")

	// The bound: one answer of more addresses than a guest may hold,
	// beside the one it holds.
	var big dns.Msg
	big.SetQuestion("big.example.test.", dns.TypeA)
	for i := range MaxResolved + 10 {
		big.Answer = append(big.Answer, &dns.A{Hdr: dns.RR_Header{Name: "big.example.test.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60},
			A: netip.AddrFrom4([4]byte{44, 0, byte(i / 256), byte(i % 256)}).AsSlice()})
	}
	ad, err := l.n.Admit(context.Background(), a.g.IP, "big.example.test.", &big)
	if err != nil {
		t.Fatal(err)
	}
	if len(ad.Opened) != MaxResolved-1 || len(ad.Full) != 11 {
		t.Errorf("opened %d, left out %d; want %d and 11", len(ad.Opened), len(ad.Full), MaxResolved-1)
	}
	if s := l.resolvedSetOf(a); len(s) != MaxResolved {
		t.Errorf("set holds %d, want %d", len(s), MaxResolved)
	}
	// Still answered, and what is open stays open.
	if got := l.lookup(a, "public.example.test"); !slices.Equal(got, []string{"203.0.113.10"}) {
		t.Errorf("lookup with the set full = %v", got)
	}
}
