package hostnet

import (
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

func TestHostResolvers(t *testing.T) {
	path := filepath.Join(t.TempDir(), "resolv.conf")
	if err := os.WriteFile(path, []byte("# comment\nsearch example\nnameserver 192.0.2.1\nnameserver 2001:db8::1\noptions ndots:2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got, want := HostResolvers(path), []string{"192.0.2.1:53", "[2001:db8::1]:53"}; !slices.Equal(got, want) {
		t.Errorf("HostResolvers = %q, want %q", got, want)
	}
	if got := HostResolvers(filepath.Join(t.TempDir(), "missing")); len(got) != 0 {
		t.Errorf("HostResolvers of a missing file = %q", got)
	}
}

// upstreamDNS is a stand-in resolver on addr (UDP and TCP): A 203.0.113.7
// for every name, counting the queries; while hold is open it answers
// nothing until release.
type upstreamDNS struct {
	queries atomic.Int32
	mu      sync.Mutex
	hold    chan struct{}
}

func serveUpstream(t *testing.T, addr string) *upstreamDNS {
	t.Helper()
	u := &upstreamDNS{}
	h := dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
		u.queries.Add(1)
		u.mu.Lock()
		hold := u.hold
		u.mu.Unlock()
		if hold != nil {
			<-hold
		}
		m := new(dns.Msg)
		m.SetReply(req)
		m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: req.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60},
			A: netip.MustParseAddr("203.0.113.7").AsSlice()})
		_ = w.WriteMsg(m)
	})
	for _, proto := range []string{"udp", "tcp"} {
		started := make(chan struct{})
		s := &dns.Server{Addr: addr, Net: proto, Handler: h, NotifyStartedFunc: func() { close(started) }}
		go func() { _ = s.ListenAndServe() }()
		select {
		case <-started:
		case <-time.After(5 * time.Second):
			t.Fatalf("upstream %s %s did not start", proto, addr)
		}
		t.Cleanup(func() { _ = s.Shutdown() })
	}
	return u
}

// TestDNSForward: names outside the VM suffix go to the upstreams in
// order (a dead one is passed over), over the guest's protocol; VM names
// never leave; no upstream answering is SERVFAIL; and at most
// maxForwards queries wait on upstreams at once, the next failing at
// once rather than queueing.
func TestDNSForward(t *testing.T) {
	if !insideTestNetns(t) {
		return
	}
	sh(t, "ip", "link", "set", "lo", "up")
	up := serveUpstream(t, "127.0.0.2:5353")
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	d := NewDNS("vm", func(h string) (netip.Addr, bool) {
		return netip.MustParseAddr("172.16.0.5"), h == "web"
	}, quiet)
	d.Forward([]string{"127.0.0.3", "127.0.0.2:5353"}) // nothing listens on the first
	if err := d.Start("127.0.0.53:53"); err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	ask := func(proto, name string) *dns.Msg {
		t.Helper()
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeA)
		r, _, err := (&dns.Client{Net: proto, Timeout: 10 * time.Second}).Exchange(m, "127.0.0.53:53")
		if err != nil {
			t.Fatalf("%s %s: %v", proto, name, err)
		}
		return r
	}
	answer := func(r *dns.Msg) string {
		if len(r.Answer) != 1 {
			return dns.RcodeToString[r.Rcode]
		}
		return r.Answer[0].(*dns.A).A.String()
	}
	for _, proto := range []string{"udp", "tcp"} {
		if got := answer(ask(proto, "example.test.")); got != "203.0.113.7" {
			t.Errorf("%s example.test: %s, want the upstream's answer", proto, got)
		}
	}
	before := up.queries.Load()
	if got := answer(ask("udp", "web.vm.")); got != "172.16.0.5" {
		t.Errorf("web.vm: %s", got)
	}
	if got := answer(ask("udp", "db.vm.")); got != "NXDOMAIN" {
		t.Errorf("db.vm: %s", got)
	}
	if n := up.queries.Load(); n != before {
		t.Errorf("VM names reached the upstream (%d queries)", n-before)
	}

	dead := NewDNS("vm", func(string) (netip.Addr, bool) { return netip.Addr{}, false }, quiet)
	dead.Forward([]string{"127.0.0.3:53"})
	if err := dead.Start("127.0.0.54:53"); err != nil {
		t.Fatal(err)
	}
	defer dead.Close()
	m := new(dns.Msg)
	m.SetQuestion("example.test.", dns.TypeA)
	if r, _, err := (&dns.Client{Timeout: 10 * time.Second}).Exchange(m, "127.0.0.54:53"); err != nil || r.Rcode != dns.RcodeServerFailure {
		t.Errorf("no upstream answering: %v %v, want SERVFAIL", r, err)
	}

	// A flood: the upstream holds its answers; maxForwards queries wait,
	// the next is refused at once.
	hold := make(chan struct{})
	up.mu.Lock()
	up.hold = hold
	up.mu.Unlock()
	base := up.queries.Load()
	var wg sync.WaitGroup
	for range maxForwards {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m := new(dns.Msg)
			m.SetQuestion("flood.test.", dns.TypeA)
			_, _, _ = (&dns.Client{Net: "tcp", Timeout: 10 * time.Second}).Exchange(m, "127.0.0.53:53")
		}()
	}
	for deadline := time.Now().Add(10 * time.Second); up.queries.Load()-base < maxForwards; {
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d queries reached the upstream", up.queries.Load()-base, maxForwards)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if r := ask("tcp", "one-more.test."); r.Rcode != dns.RcodeServerFailure {
		t.Errorf("query past the bound: %s, want SERVFAIL", dns.RcodeToString[r.Rcode])
	}
	if n := up.queries.Load() - base; n != maxForwards {
		t.Errorf("%d queries reached the upstream, want %d", n, maxForwards)
	}
	close(hold)
	wg.Wait()
	up.mu.Lock()
	up.hold = nil
	up.mu.Unlock()
	if got := answer(ask("udp", "after.test.")); got != "203.0.113.7" {
		t.Errorf("after the flood: %s", got)
	}
}
