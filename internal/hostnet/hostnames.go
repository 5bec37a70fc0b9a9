package hostnet

// Host names in a policy's allow list, and which addresses of a DNS
// answer they open. Pure: no I/O.

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// Bounds on names in one policy and on what they open.
const (
	// MaxNames is how many host names one policy may allow.
	MaxNames = 64
	// MaxResolved is how many addresses a VM's allowed names may hold
	// open at once; answers past it still reach the guest but open
	// nothing more.
	MaxResolved = 1024
	// minResolvedTTL and maxResolvedTTL clamp how long one answer holds
	// an address open: long enough for the guest's connect after its
	// lookup, short enough that a name moved elsewhere stops opening
	// its old address.
	minResolvedTTL = 30 * time.Second
	maxResolvedTTL = time.Hour
	// maxCNAMEs bounds the chain followed from the question to its A
	// records.
	maxCNAMEs = 16
)

// HostPattern is a host name an allow list admits: exact
// ("api.example.com"), or "*." and a name, which matches every name
// below it ("*.example.com": a.example.com, a.b.example.com) but not the
// name itself. Lower case, without the final dot.
type HostPattern string

// ParseHostPattern reads an allow entry that is a host name: a DNS name
// of at most 253 characters whose labels are 1 to 63 letters, digits,
// '-' or '_' not starting or ending with '-', optionally behind "*.",
// with at least two labels. A name with a port is refused: a name opens
// every port of the addresses it resolves to.
func ParseHostPattern(s string) (HostPattern, error) {
	in := strings.ToLower(strings.TrimSuffix(strings.TrimSpace(s), "."))
	if _, _, ok := strings.Cut(in, ":"); ok {
		return "", fmt.Errorf("allow %q: a host name opens every port of its addresses: give it without :PORT", s)
	}
	name, wild := strings.CutPrefix(in, "*.")
	if len(in) > 253 {
		return "", fmt.Errorf("allow %q: a host name has at most 253 characters", s)
	}
	labels := strings.Split(name, ".")
	if len(labels) < 2 {
		return "", fmt.Errorf("allow %q: not a host name such as example.com or *.example.com", s)
	}
	for _, l := range labels {
		if err := checkLabel(l); err != nil {
			return "", fmt.Errorf("allow %q: %w", s, err)
		}
	}
	if _, err := netip.ParseAddr(name); err == nil {
		return "", fmt.Errorf("allow %q: not a host name", s)
	}
	if wild {
		return HostPattern("*." + name), nil
	}
	return HostPattern(name), nil
}

func checkLabel(l string) error {
	switch {
	case l == "":
		return fmt.Errorf("empty label")
	case len(l) > 63:
		return fmt.Errorf("label %q is longer than 63 characters", l)
	case l[0] == '-' || l[len(l)-1] == '-':
		return fmt.Errorf("label %q starts or ends with '-'", l)
	}
	for _, c := range l {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			if c == '*' {
				return fmt.Errorf("'*' is allowed only as the whole first label (*.example.com)")
			}
			return fmt.Errorf("label %q: use letters, digits, '-' or '_'", l)
		}
	}
	return nil
}

// looksLikeName says whether an allow entry is meant as a host name
// rather than an address: it has a letter or '*' before any '/'.
func looksLikeName(s string) bool {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "/")
	if strings.Count(s, ":") > 1 { // IPv6, refused by ParseRule
		return false
	}
	return strings.ContainsAny(strings.ToLower(s), "abcdefghijklmnopqrstuvwxyz*_")
}

// Match says whether the DNS name (any case, final dot or not) is one
// p admits.
func (p HostPattern) Match(name string) bool {
	name = strings.ToLower(strings.TrimSuffix(name, "."))
	if base, ok := strings.CutPrefix(string(p), "*."); ok {
		return strings.HasSuffix(name, "."+base) && len(name) > len(base)+1
	}
	return name == string(p)
}

func (p HostPattern) check() error {
	q, err := ParseHostPattern(string(p))
	if err != nil {
		return err
	}
	if q != p {
		return fmt.Errorf("allow %s: not in canonical form %s", p, q)
	}
	return nil
}

// AllowsName says whether name matches one of p's host patterns.
func (p Policy) AllowsName(name string) bool {
	return slices.ContainsFunc(p.Names, func(h HostPattern) bool { return h.Match(name) })
}

// Resolved is one address an answer opens, and for how long.
type Resolved struct {
	Addr netip.Addr
	TTL  time.Duration
}

// answerAddrs returns the A records of ans that answer qname: those
// owned by qname or by a name the answer's CNAME chain from qname leads
// to (at most maxCNAMEs links). The TTL is the record's, clamped to
// minResolvedTTL..maxResolvedTTL; an address given twice keeps its
// longest.
func answerAddrs(qname string, ans *dns.Msg) []Resolved {
	if ans == nil || ans.Rcode != dns.RcodeSuccess {
		return nil
	}
	chain := map[string]bool{strings.ToLower(dns.Fqdn(qname)): true}
	for range maxCNAMEs {
		grew := false
		for _, rr := range ans.Answer {
			if c, ok := rr.(*dns.CNAME); ok && chain[strings.ToLower(c.Hdr.Name)] {
				if t := strings.ToLower(dns.Fqdn(c.Target)); !chain[t] {
					chain[t], grew = true, true
				}
			}
		}
		if !grew {
			break
		}
	}
	var out []Resolved
	for _, rr := range ans.Answer {
		a, ok := rr.(*dns.A)
		if !ok || !chain[strings.ToLower(a.Hdr.Name)] {
			continue
		}
		addr, ok := netip.AddrFromSlice(a.A)
		if !ok {
			continue
		}
		addr = addr.Unmap()
		ttl := min(max(time.Duration(a.Hdr.Ttl)*time.Second, minResolvedTTL), maxResolvedTTL)
		if i := slices.IndexFunc(out, func(r Resolved) bool { return r.Addr == addr }); i >= 0 {
			out[i].TTL = max(out[i].TTL, ttl)
			continue
		}
		out = append(out, Resolved{Addr: addr, TTL: ttl})
	}
	return out
}

// admissible says whether an answer may open addr for a guest with
// policy p on subnet, on a host whose own addresses are local: a public
// unicast IPv4 address (none of NonPublic, not the guest subnet, not
// the host's), or one p's own allow entries already open on every
// port. An allowed name may be the attacker's, and its answers anything.
func admissible(addr netip.Addr, p Policy, subnet netip.Prefix, local []netip.Addr) bool {
	if !addr.Is4() {
		return false
	}
	for _, r := range p.Allow {
		if r.Port == 0 && r.Prefix.Contains(addr) && !subnet.Contains(addr) {
			return true
		}
	}
	if !addr.IsGlobalUnicast() || subnet.Contains(addr) || slices.Contains(local, addr) {
		return false
	}
	return !slices.ContainsFunc(nonPublic, func(n netip.Prefix) bool { return n.Contains(addr) })
}
