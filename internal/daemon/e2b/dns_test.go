package e2b

import (
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"

	"github.com/miekg/dns"

	"github.com/banger/banger/internal/testenv"
)

func TestDNSAnswer(t *testing.T) {
	for _, c := range []struct {
		listen, dns, domain string
		ip, zone, err       string
	}{
		{"127.0.0.1:3000", "127.0.0.1:53", "sb.test:3000", "127.0.0.1", "sb.test", ""},
		{"127.0.0.1:443", "127.0.0.53:53", "SB.Example.", "127.0.0.1", "sb.example", ""},
		// On every address: the responder's own is the answer.
		{"0.0.0.0:3000", "192.0.2.5:53", "sb.test", "192.0.2.5", "sb.test", ""},
		{"[::]:3000", "127.0.0.1:53", "sb.test", "127.0.0.1", "sb.test", ""},
		{"[::1]:3000", "127.0.0.1:53", "sb.test", "", "", "IPv4 only"},
		{"0.0.0.0:3000", "0.0.0.0:53", "sb.test", "", "", "neither the listener"},
		{"[::]:3000", "[::1]:53", "sb.test", "", "", "neither the listener"},
		{"127.0.0.1:3000", "127.0.0.1", "sb.test", "", "", "want IP:PORT"},
		{"127.0.0.1:3000", "ns.example:53", "sb.test", "", "", "want IP:PORT"},
		{"127.0.0.1:3000", "127.0.0.1:53", ":3000", "", "", "no name"},
	} {
		ip, zone, err := dnsAnswer(c.listen, c.dns, c.domain)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("dnsAnswer(%q, %q, %q) = %v, %q, %v; want error with %q", c.listen, c.dns, c.domain, ip, zone, err, c.err)
			}
			continue
		}
		if err != nil || ip != netip.MustParseAddr(c.ip) || zone != c.zone {
			t.Errorf("dnsAnswer(%q, %q, %q) = %v, %q, %v; want %s, %q", c.listen, c.dns, c.domain, ip, zone, err, c.ip, c.zone)
		}
	}
}

// query asks addr over network for name's records of type qtype.
func query(t *testing.T, network, addr, name string, qtype uint16) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	c := &dns.Client{Net: network}
	in, _, err := c.Exchange(m, addr)
	if err != nil {
		t.Fatalf("%s query %s at %s: %v", network, name, addr, err)
	}
	return in
}

// answerA is the single A record of in, or "" with its rcode.
func answerA(in *dns.Msg) string {
	if len(in.Answer) != 1 {
		return dns.RcodeToString[in.Rcode] + " with " + strconv.Itoa(len(in.Answer)) + " answers"
	}
	a, ok := in.Answer[0].(*dns.A)
	if !ok {
		return "not an A record"
	}
	return a.A.String()
}

// TestListenerDNS: with a DNS address the control plane answers every
// name under its domain with the listener's address, over UDP and TCP,
// and nothing else; the address is recorded and served again after a
// restart, and free once closed.
func TestListenerDNS(t *testing.T) {
	fx := newFixture(t)
	fx.svc.Close()
	dnsAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(testenv.QuietPort(t)))
	svc := New(fx.svc.Deps)
	st, err := svc.ServeAndRecord(t.Context(), Listener{Addr: "127.0.0.1:0", Domain: "sb.test:4443", DNS: dnsAddr})
	if err != nil {
		t.Fatal(err)
	}
	if st.DNS != dnsAddr || svc.Status() != st {
		t.Fatalf("status %+v, want dns %s", st, dnsAddr)
	}
	for _, network := range []string{"udp", "tcp"} {
		for _, name := range []string{"api.sb.test", "49983-e2b0123456789ab.SB.test", "a.b.sb.test"} {
			if got := answerA(query(t, network, dnsAddr, name, dns.TypeA)); got != "127.0.0.1" {
				t.Errorf("%s A %s = %s, want 127.0.0.1", network, name, got)
			}
		}
		if in := query(t, network, dnsAddr, "api.sb.test", dns.TypeAAAA); in.Rcode != dns.RcodeSuccess || len(in.Answer) != 0 {
			t.Errorf("%s AAAA api.sb.test = %v", network, in)
		}
		for _, name := range []string{"example.com", "sb.test", "notsb.test"} {
			if in := query(t, network, dnsAddr, name, dns.TypeA); in.Rcode != dns.RcodeNameError || len(in.Answer) != 0 {
				t.Errorf("%s A %s = %v, want NXDOMAIN", network, name, in)
			}
		}
	}
	svc.Close()
	again := New(fx.svc.Deps)
	defer again.Close()
	if err := again.Start(t.Context(), Listener{}); err != nil {
		t.Fatal(err)
	}
	if again.Status().DNS != dnsAddr {
		t.Fatalf("after restart: %+v", again.Status())
	}
	if got := answerA(query(t, "udp", dnsAddr, "api.sb.test", dns.TypeA)); got != "127.0.0.1" {
		t.Errorf("after restart: A api.sb.test = %s", got)
	}
	// Serving the same listener with another DNS address is a conflict.
	if _, err := again.Serve(Listener{Addr: again.Status().Listen, DNS: "127.0.0.1:0"}); err == nil || !strings.Contains(err.Error(), "already listens") {
		t.Fatalf("serve with another dns address: %v", err)
	}
	// A DNS address that is bad or taken fails the whole serve, leaving
	// no listener.
	again.Close()
	taken := testenv.ListenPacket(t, "udp", "127.0.0.1:0").LocalAddr().String()
	listen := net.JoinHostPort("127.0.0.1", strconv.Itoa(testenv.QuietPort(t)))
	for dnsBad, want := range map[string]string{"127.0.0.1": "want IP:PORT", taken: "address already in use"} {
		if _, err := again.Serve(Listener{Addr: listen, DNS: dnsBad}); err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("serve with dns %s: %v, want %q", dnsBad, err, want)
		}
		if l, err := net.Listen("tcp", listen); err != nil {
			t.Fatalf("listener left by a failed serve: %v", err)
		} else {
			l.Close()
		}
		if again.Status().Listen != "" {
			t.Fatalf("status after a failed serve: %+v", again.Status())
		}
	}
	// Closed, the DNS address is free at once.
	if _, err := again.Serve(Listener{Addr: "127.0.0.1:0", Domain: "sb.test", DNS: dnsAddr}); err != nil {
		t.Fatal(err)
	}
	again.Close()
	pc, err := net.ListenPacket("udp", dnsAddr)
	if err != nil {
		t.Fatalf("dns address held after Close: %v", err)
	}
	pc.Close()
}
