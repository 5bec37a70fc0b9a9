package hostnet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// dnsTTL is short because VMs come and go.
const dnsTTL = 5

// DNS answers A queries for <vm>.<suffix> from a lookup function. Other
// names go to the upstream resolvers when it has some (Forward), so that
// guests resolve the internet's names as the host does; without, they
// get NXDOMAIN. It serves UDP and TCP on one address.
type DNS struct {
	suffix string // "vm." form: lower case, fully qualified
	lookup func(host string) (netip.Addr, bool)
	log    *slog.Logger

	// upstreams ("IP:port") answer the names outside suffix; slots
	// bounds the queries in flight to them, across all guests, so that
	// a guest's flood costs the host a bounded share (the rest get
	// SERVFAIL at once).
	upstreams []string
	slots     chan struct{}
	// gate, when set, sees each upstream answer before the guest does
	// (Gate).
	gate Admitter

	mu      sync.Mutex
	servers []*dns.Server
}

// Bounds on forwarding: queries in flight, and the wait for each
// upstream's answer.
const (
	maxForwards    = 64
	forwardTimeout = 2 * time.Second
)

// Forward sends the queries for names outside the VM suffix to
// upstreams ("IP" or "IP:port", tried in order); none turns forwarding
// off. Call it before Start.
func (d *DNS) Forward(upstreams []string) {
	d.upstreams = nil
	for _, u := range upstreams {
		if _, _, err := net.SplitHostPort(u); err != nil {
			u = net.JoinHostPort(u, "53")
		}
		d.upstreams = append(d.upstreams, u)
	}
	d.slots = make(chan struct{}, maxForwards)
}

// Admitter opens a guest's network policy to what an allowed host name
// resolves to; *Network is one.
type Admitter interface {
	// Admit is given, before the guest at src gets it, the upstream's
	// answer to its query for qname; it returns once what the answer
	// opens is open. It must not change ans.
	Admit(ctx context.Context, src netip.Addr, qname string, ans *dns.Msg) (Admission, error)
}

// Gate makes every forwarded answer pass through a before it is sent to
// the guest that asked, within the bound on queries in flight. Call it
// before Start.
func (d *DNS) Gate(a Admitter) { d.gate = a }

// HostResolvers are the nameservers of the resolv.conf file at path, in
// order ("IP:port"); an unreadable file gives none.
func HostResolvers(path string) []string {
	cc, err := dns.ClientConfigFromFile(path)
	if err != nil {
		return nil
	}
	out := make([]string, 0, len(cc.Servers))
	for _, s := range cc.Servers {
		out = append(out, net.JoinHostPort(s, cc.Port))
	}
	return out
}

// NewDNS returns a responder for names under suffix. lookup gets the VM
// name (the labels before the suffix, lower case) and returns its IPv4
// address when it is known and running.
func NewDNS(suffix string, lookup func(host string) (netip.Addr, bool), log *slog.Logger) *DNS {
	if log == nil {
		log = slog.Default()
	}
	return &DNS{suffix: dns.Fqdn(strings.ToLower(strings.Trim(suffix, "."))), lookup: lookup, log: log}
}

// Start listens on addr ("IP:port") over UDP and TCP and serves in the
// background. Both sockets are bound before it returns, so a busy port is
// reported here. Start on a started DNS is an error.
func (d *DNS) Start(addr string) error {
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		return fmt.Errorf("dns listen udp %s: %w", addr, err)
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		pc.Close()
		return fmt.Errorf("dns listen tcp %s: %w", addr, err)
	}
	return d.Serve(pc, l)
}

// Serve is Start on sockets the caller bound (a UDP pc and a TCP l on
// one address, e.g. in another network namespace); Close closes them.
// On an error it closes them itself.
func (d *DNS) Serve(pc net.PacketConn, l net.Listener) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.servers != nil {
		pc.Close()
		l.Close()
		return errors.New("dns responder already started")
	}
	addr := l.Addr().String()
	// An upstream that is this responder would ask itself forever.
	d.upstreams = slices.DeleteFunc(d.upstreams, func(u string) bool { return u == addr })
	d.servers = []*dns.Server{
		{PacketConn: pc, Handler: d},
		{Listener: l, Handler: d},
	}
	// Served before returning: a Shutdown of a server not yet started
	// fails and leaves its socket open, so a Close right after would
	// leave the address taken.
	for _, s := range d.servers {
		started, stopped := make(chan struct{}), make(chan struct{})
		s.NotifyStartedFunc = func() { close(started) }
		go func() {
			defer close(stopped)
			if err := s.ActivateAndServe(); err != nil {
				d.log.Warn("dns responder stopped", "addr", addr, "err", err)
			}
		}()
		select {
		case <-started:
		case <-stopped:
		}
	}
	d.log.Info("dns responder listening", "addr", addr, "suffix", d.suffix, "upstreams", d.upstreams)
	return nil
}

// Close stops serving and closes the sockets. Closing a DNS that is not
// started is a no-op.
func (d *DNS) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	var errs []error
	for _, s := range d.servers {
		if err := s.Shutdown(); err != nil {
			errs = append(errs, err)
		}
	}
	d.servers = nil
	return errors.Join(errs...)
}

// ServeDNS answers one query.
func (d *DNS) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	if d.forwarded(req) {
		w.WriteMsg(d.forward(req, w.LocalAddr().Network(), remoteAddr(w.RemoteAddr())))
		return
	}
	w.WriteMsg(d.answer(req))
}

// forwarded says whether req goes upstream: a plain query for one name
// outside the VM suffix, with upstreams to ask.
func (d *DNS) forwarded(req *dns.Msg) bool {
	if len(d.upstreams) == 0 || req.Opcode != dns.OpcodeQuery || len(req.Question) != 1 {
		return false
	}
	name := strings.ToLower(dns.Fqdn(req.Question[0].Name))
	return name != d.suffix && !strings.HasSuffix(name, "."+d.suffix)
}

// remoteAddr is the IPv4 address a query came from, or the zero Addr.
func remoteAddr(a net.Addr) netip.Addr {
	if ap, err := netip.ParseAddrPort(a.String()); err == nil {
		return ap.Addr().Unmap()
	}
	return netip.Addr{}
}

// forward asks the upstreams in turn, over the protocol the guest used
// ("udp" or "tcp"; a truncated answer makes the guest ask again over
// TCP), and relays the first answer, after the gate saw it; SERVFAIL
// when none answers or too many queries are in flight already.
func (d *DNS) forward(req *dns.Msg, network string, src netip.Addr) *dns.Msg {
	fail := func() *dns.Msg {
		m := new(dns.Msg)
		m.SetRcode(req, dns.RcodeServerFailure)
		return m
	}
	select {
	case d.slots <- struct{}{}:
		defer func() { <-d.slots }()
	default:
		return fail()
	}
	if network != "tcp" {
		network = "udp"
	}
	c := &dns.Client{Net: network, Timeout: forwardTimeout}
	for _, up := range d.upstreams {
		in, _, err := c.Exchange(req, up)
		if err == nil && in != nil && in.Id == req.Id {
			d.admit(src, req.Question[0].Name, in)
			return in
		}
		d.log.Debug("dns upstream did not answer", "upstream", up, "err", err)
	}
	return fail()
}

// admitTimeout bounds the wait for the gate.
const admitTimeout = 2 * time.Second

// admit hands an upstream answer to the gate and logs what it refused.
func (d *DNS) admit(src netip.Addr, qname string, in *dns.Msg) {
	if d.gate == nil || !src.IsValid() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), admitTimeout)
	defer cancel()
	ad, err := d.gate.Admit(ctx, src, qname, in)
	switch {
	case err != nil:
		d.log.Warn("dns: allowed name not opened", "guest", src, "name", qname, "err", err)
	case len(ad.Full) > 0:
		d.log.Warn("dns: allowed name's addresses not opened: the guest has the most open at once already", "guest", src, "name", ad.Name, "max", MaxResolved, "addrs", ad.Full)
	}
	if len(ad.Refused) > 0 {
		d.log.Info("dns: allowed name resolved to addresses that are not public; not opened", "guest", src, "name", ad.Name, "addrs", ad.Refused)
	}
	if len(ad.Opened) > 0 {
		d.log.Debug("dns: allowed name opened", "guest", src, "name", ad.Name, "addrs", ad.Opened)
	}
}

// answer builds the reply to req: A records for known VMs, an empty answer
// for other types of a known VM's name, NXDOMAIN for anything else.
func (d *DNS) answer(req *dns.Msg) *dns.Msg {
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	if req.Opcode != dns.OpcodeQuery || len(req.Question) != 1 {
		m.Rcode = dns.RcodeNotImplemented
		return m
	}
	q := req.Question[0]
	name := strings.ToLower(q.Name)
	host, ok := strings.CutSuffix(name, "."+d.suffix)
	if !ok || host == "" || q.Qclass != dns.ClassINET {
		m.Rcode = dns.RcodeNameError
		return m
	}
	ip, found := d.lookup(host)
	if !found || !ip.Is4() {
		m.Rcode = dns.RcodeNameError
		return m
	}
	if q.Qtype == dns.TypeA || q.Qtype == dns.TypeANY {
		m.Answer = append(m.Answer, &dns.A{
			Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: dnsTTL},
			A:   ip.AsSlice(),
		})
	}
	return m
}
