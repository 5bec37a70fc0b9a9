package e2b

import (
	"context"
	"net/netip"
	"slices"
	"strings"

	"github.com/banger/banger/internal/api"
	"github.com/banger/banger/internal/errdefs"
	"github.com/banger/banger/internal/hostnet"
)

// networkJSON is E2B's SandboxNetworkConfig (create) and
// SandboxNetworkUpdateConfig (PUT /sandboxes/{id}/network).
type networkJSON struct {
	AllowOut            []string       `json:"allowOut"`
	DenyOut             []string       `json:"denyOut"`
	AllowPublicTraffic  *bool          `json:"allowPublicTraffic"`
	AllowInternetAccess *bool          `json:"allow_internet_access"` // update only
	EgressProxy         any            `json:"egressProxy"`
	Rules               map[string]any `json:"rules"`
	MaskRequestHost     *string        `json:"maskRequestHost"`
	HTTPSPorts          []int          `json:"httpsPorts"`
}

// egress is a banger network policy (vm net's mode, --allow, --deny).
type egress struct {
	Mode        string
	Allow, Deny []string
}

// Bounds on what one sandbox's egress rules may ask: every entry becomes
// a firewall rule on the host.
const (
	maxEgressEntries = 64
	maxEgressRules   = 256
)

// egressPolicy maps E2B's egress controls onto banger's network policy;
// set is false when they ask nothing (the default, or a snapshot's, stays).
//
// E2B: allow_internet_access false is denyOut 0.0.0.0/0; an allowOut
// entry wins over every denyOut entry. banger: mode none reaches only
// Allow; mode internet reaches the public internet and Allow, never Deny
// (deny wins). So a denyOut of 0.0.0.0/0 is mode none with allowOut as
// Allow; other denyOut blocks become Deny less the allowOut blocks inside
// them (split into the CIDR blocks that remain). Domain names in
// allowOut (exact, or "*." and a name for the names below it) become
// host names of the allow list; as in E2B they need a denyOut of
// 0.0.0.0/0 (mode none). E2B filters them by Host header or SNI on ports
// 80 and 443; banger opens every port of the addresses they resolve to
// through its DNS responder. IPv6, domain names in denyOut, request
// transforms and egress proxies have no banger counterpart and are
// refused by name.
// allowPublicTraffic, maskRequestHost and httpsPorts are not egress
// (privateTraffic, relayOptions).
func egressPolicy(allowInternet *bool, n *networkJSON) (egress, bool, error) {
	none := allowInternet != nil && !*allowInternet
	if n == nil {
		if none {
			return egress{Mode: "none"}, true, nil
		}
		return egress{}, false, nil
	}
	switch {
	case n.EgressProxy != nil:
		return egress{}, false, errdefs.Errorf(errdefs.CodeInvalid, "network.egressProxy is not supported by banger")
	case len(n.Rules) > 0:
		return egress{}, false, errdefs.Errorf(errdefs.CodeInvalid, "network.rules (request transforms) are not supported by banger")
	case len(n.AllowOut) > maxEgressEntries || len(n.DenyOut) > maxEgressEntries:
		return egress{}, false, errdefs.Errorf(errdefs.CodeInvalid, "network: at most %d allowOut and %d denyOut entries", maxEgressEntries, maxEgressEntries)
	}
	allow, names, err := egressBlocks("allowOut", n.AllowOut)
	if err != nil {
		return egress{}, false, err
	}
	deny, denyNames, err := egressBlocks("denyOut", n.DenyOut)
	if err != nil {
		return egress{}, false, err
	}
	if len(denyNames) > 0 {
		return egress{}, false, errdefs.Errorf(errdefs.CodeInvalid, "network.denyOut %q: domain names are not supported in denyOut, only IPv4 addresses and CIDR blocks", denyNames[0])
	}
	if n.AllowInternetAccess != nil && !*n.AllowInternetAccess {
		none = true
	}
	for _, d := range deny {
		if d.Bits() == 0 {
			none = true
		}
	}
	out := egress{Mode: "internet"}
	if none {
		out.Mode = "none"
		deny = nil // everything but Allow is denied already
	}
	for _, a := range allow {
		out.Allow = append(out.Allow, a.String())
	}
	if len(names) > 0 && !none {
		return egress{}, false, errdefs.Errorf(errdefs.CodeInvalid, "network.allowOut %q: a domain name needs all other traffic denied: add 0.0.0.0/0 (ALL_TRAFFIC) to denyOut", names[0])
	}
	out.Allow = append(out.Allow, names...)
	for _, d := range deny {
		rest := []netip.Prefix{d}
		for _, a := range allow {
			var next []netip.Prefix
			for _, r := range rest {
				next = append(next, subtract(r, a)...)
			}
			rest = next
		}
		for _, r := range rest {
			out.Deny = append(out.Deny, r.String())
		}
		if len(out.Deny) > maxEgressRules {
			return egress{}, false, errdefs.Errorf(errdefs.CodeInvalid, "network: allowOut carves denyOut into more than %d blocks", maxEgressRules)
		}
	}
	set := none || len(out.Allow)+len(out.Deny) > 0 || n.AllowOut != nil || n.DenyOut != nil
	return out, set, nil
}

// privateTraffic says whether a create asks for a traffic access token
// (network.allowPublicTraffic false): requests to the sandbox's ports
// must then carry it.
func privateTraffic(n *networkJSON) bool {
	return n != nil && n.AllowPublicTraffic != nil && !*n.AllowPublicTraffic
}

// Bounds on the relay options of one sandbox.
const (
	maxMaskHost   = 253
	maxHTTPSPorts = 32
)

// portVar stands for the guest port in a Host mask.
const portVar = "${PORT}"

// relayOptions are E2B's settings for how requests reach a sandbox's
// ports: the Host header the guest sees (maskRequestHost, portVar
// standing for the port; "" keeps the client's) and the ports whose
// service speaks TLS (httpsPorts; envd's cannot be one), sorted.
func relayOptions(n *networkJSON) (mask string, https []int, err error) {
	if n == nil {
		return "", nil, nil
	}
	if n.MaskRequestHost != nil {
		mask = *n.MaskRequestHost
		host := strings.ReplaceAll(mask, portVar, "1")
		if len(mask) > maxMaskHost || strings.TrimLeft(host, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_:[]") != "" {
			return "", nil, errdefs.Errorf(errdefs.CodeInvalid, "network.maskRequestHost %q: want a host name or address, with an optional :port, at most %d bytes (%s stands for the port)", mask, maxMaskHost, portVar)
		}
	}
	if len(n.HTTPSPorts) > maxHTTPSPorts {
		return "", nil, errdefs.Errorf(errdefs.CodeInvalid, "network.httpsPorts: at most %d ports", maxHTTPSPorts)
	}
	for _, p := range n.HTTPSPorts {
		switch {
		case p < 1 || p > 65535:
			return "", nil, errdefs.Errorf(errdefs.CodeInvalid, "network.httpsPorts: %d is not a port from 1 to 65535", p)
		case p == EnvdPort:
			return "", nil, errdefs.Errorf(errdefs.CodeInvalid, "network.httpsPorts: envd's port %d cannot be one", p)
		case !slices.Contains(https, p):
			https = append(https, p)
		}
	}
	slices.Sort(https)
	return mask, https, nil
}

// egressBlocks parses E2B's entries: IPv4 CIDR blocks or bare
// addresses (a /32), and domain names (names, in canonical form).
func egressBlocks(field string, entries []string) ([]netip.Prefix, []string, error) {
	var out []netip.Prefix
	var names []string
	for _, e := range entries {
		s := strings.TrimSpace(e)
		p, err := netip.ParsePrefix(s)
		if err != nil {
			a, aerr := netip.ParseAddr(s)
			if aerr != nil {
				if strings.ContainsAny(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ*") && !strings.Contains(s, ":") {
					h, herr := hostnet.ParseHostPattern(s)
					if herr != nil {
						return nil, nil, errdefs.Errorf(errdefs.CodeInvalid, "network.%s %q: not an IPv4 address, CIDR block or domain name: %v", field, e, herr)
					}
					names = append(names, string(h))
					continue
				}
				return nil, nil, errdefs.Errorf(errdefs.CodeInvalid, "network.%s %q: not an IPv4 address or CIDR block", field, e)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		if !p.Addr().Is4() {
			return nil, nil, errdefs.Errorf(errdefs.CodeInvalid, "network.%s %q: banger's network policy is IPv4 only", field, e)
		}
		out = append(out, p.Masked())
	}
	return out, names, nil
}

// subtract is the CIDR blocks of d that are not in a: d itself when they
// do not overlap, nothing when a covers d, else the sibling blocks on
// the way from d down to a.
func subtract(d, a netip.Prefix) []netip.Prefix {
	if !d.Overlaps(a) {
		return []netip.Prefix{d}
	}
	if a.Bits() <= d.Bits() {
		return nil
	}
	var out []netip.Prefix
	cur := d
	for cur.Bits() < a.Bits() {
		lo, hi := halves(cur)
		if lo.Overlaps(a) {
			out, cur = append(out, hi), lo
		} else {
			out, cur = append(out, lo), hi
		}
	}
	return out
}

// halves splits an IPv4 block into its two halves.
func halves(p netip.Prefix) (netip.Prefix, netip.Prefix) {
	bits := p.Bits() + 1
	lo := netip.PrefixFrom(p.Addr(), bits)
	b := p.Addr().As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	v |= 1 << (32 - bits)
	hi := netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), bits)
	return lo, hi
}

// setNetwork replaces a sandbox's network policy with what n asks (the
// default when it asks nothing), at once for connections already open.
func (s *Service) setNetwork(ctx context.Context, id string, n networkJSON) error {
	sb, err := s.lookup(ctx, id)
	if err != nil {
		return err
	}
	if n.AllowPublicTraffic != nil || n.MaskRequestHost != nil || n.HTTPSPorts != nil {
		return errdefs.Errorf(errdefs.CodeInvalid, "network.allowPublicTraffic, maskRequestHost and httpsPorts are set when a sandbox is made, not by updateNetwork")
	}
	e, set, err := egressPolicy(nil, &n)
	if err != nil {
		return err
	}
	if !set {
		e = egress{Mode: "internet"}
	}
	allow, deny, none := nonNilList(e.Allow), nonNilList(e.Deny), []string{}
	_, err = s.VMs.SetNet(ctx, sb.vm.ID, api.VMNetRequest{Reset: true, Net: &e.Mode, Allow: &allow, Deny: &deny, AllowVMs: &none})
	return err
}

func nonNilList(ss []string) []string {
	if ss == nil {
		return []string{}
	}
	return ss
}
