package hostnet

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"

	"github.com/miekg/dns"
)

// dnsTTL is short because VMs come and go.
const dnsTTL = 5

// DNS answers A queries for <vm>.<suffix> from a lookup function, and
// NXDOMAIN for every other name. It serves UDP and TCP on one address.
type DNS struct {
	suffix string // "vm." form: lower case, fully qualified
	lookup func(host string) (netip.Addr, bool)
	log    *slog.Logger

	mu      sync.Mutex
	servers []*dns.Server
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
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.servers != nil {
		return errors.New("dns responder already started")
	}
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		return fmt.Errorf("dns listen udp %s: %w", addr, err)
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		pc.Close()
		return fmt.Errorf("dns listen tcp %s: %w", addr, err)
	}
	d.servers = []*dns.Server{
		{PacketConn: pc, Handler: d},
		{Listener: l, Handler: d},
	}
	for _, s := range d.servers {
		go func() {
			if err := s.ActivateAndServe(); err != nil {
				d.log.Warn("dns responder stopped", "addr", addr, "err", err)
			}
		}()
	}
	d.log.Info("dns responder listening", "addr", addr, "suffix", d.suffix)
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
	w.WriteMsg(d.answer(req))
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
