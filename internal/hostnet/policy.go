package hostnet

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Mode is what a VM reaches when its Policy says nothing more.
type Mode string

const (
	// ModeInternet (the default): DNS on the gateway and public addresses
	// through NAT; not the host, not private, shared, link-local or
	// special ranges, not other VMs.
	ModeInternet Mode = "internet"
	// ModeOpen: everything the host can reach, the host itself included;
	// other VMs still only by AllowVMs.
	ModeOpen Mode = "open"
	// ModeNone: nothing, not even DNS on the gateway. Replies to
	// connections the host opens (SSH, the data channel) still pass.
	ModeNone Mode = "none"
)

// ParseMode reads a --net value; "" is ModeInternet.
func ParseMode(s string) (Mode, error) {
	switch m := Mode(strings.ToLower(strings.TrimSpace(s))); m {
	case "":
		return ModeInternet, nil
	case ModeInternet, ModeOpen, ModeNone:
		return m, nil
	}
	return "", fmt.Errorf("invalid network mode %q: use none, internet or open", s)
}

// nonPublic are the IPv4 ranges ModeInternet keeps a VM from: "this"
// network, RFC 1918, shared (CGNAT), loopback, link-local (cloud metadata
// at 169.254.169.254), IETF protocol assignments, benchmarking, multicast,
// reserved and broadcast. What they hold is the host's LAN, VPNs,
// container networks and metadata services, not the internet.
var nonPublic = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),
	netip.MustParsePrefix("10.0.0.0/8"),
	netip.MustParsePrefix("100.64.0.0/10"),
	netip.MustParsePrefix("127.0.0.0/8"),
	netip.MustParsePrefix("169.254.0.0/16"),
	netip.MustParsePrefix("172.16.0.0/12"),
	netip.MustParsePrefix("192.0.0.0/24"),
	netip.MustParsePrefix("192.168.0.0/16"),
	netip.MustParsePrefix("198.18.0.0/15"),
	netip.MustParsePrefix("224.0.0.0/4"),
	netip.MustParsePrefix("240.0.0.0/4"),
}

// NonPublic returns the ranges ModeInternet drops, for docs and doctor.
func NonPublic() []netip.Prefix { return slices.Clone(nonPublic) }

// Rule is one --allow entry: a destination prefix and, optionally, a port.
// Port 0 means every protocol and port. With a port, Proto "tcp" or "udp"
// narrows it to that protocol, "" means both.
type Rule struct {
	Prefix netip.Prefix
	Port   uint16
	Proto  string
}

// ParseRule reads "CIDR[:PORT[/PROTO]]": 10.0.0.5, 192.168.1.0/24,
// 10.0.0.5:5432, 10.0.0.5:53/udp. A bare address is a /32.
func ParseRule(s string) (Rule, error) {
	in := strings.TrimSpace(s)
	addr, port, hasPort := strings.Cut(in, ":")
	if hasPort && strings.Contains(port, ":") {
		return Rule{}, fmt.Errorf("allow %q: IPv6 is not supported: guests are IPv4-only", s)
	}
	p, err := parsePrefix(addr)
	if err != nil {
		return Rule{}, fmt.Errorf("allow %q: %w", s, err)
	}
	r := Rule{Prefix: p}
	if !hasPort {
		return r, nil
	}
	num, proto, hasProto := strings.Cut(port, "/")
	n, err := strconv.ParseUint(num, 10, 16)
	if err != nil || n == 0 {
		return Rule{}, fmt.Errorf("allow %q: port %q is not a number from 1 to 65535", s, num)
	}
	r.Port = uint16(n)
	if hasProto {
		switch proto = strings.ToLower(proto); proto {
		case "tcp", "udp":
			r.Proto = proto
		default:
			return Rule{}, fmt.Errorf("allow %q: protocol %q: use tcp or udp", s, proto)
		}
	}
	return r, nil
}

// parsePrefix reads an IPv4 address (a /32) or CIDR whose host bits are
// zero; a set host bit is refused rather than masked, since masking would
// widen what was asked for.
func parsePrefix(s string) (netip.Prefix, error) {
	if s == "" {
		return netip.Prefix{}, errors.New("no address: give an IPv4 address or CIDR such as 10.0.0.5 or 192.168.1.0/24")
	}
	var p netip.Prefix
	if strings.Contains(s, "/") {
		var err error
		if p, err = netip.ParsePrefix(s); err != nil {
			return netip.Prefix{}, fmt.Errorf("%q is not a CIDR such as 192.168.1.0/24", s)
		}
	} else {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("%q is not an IPv4 address or CIDR such as 10.0.0.5 or 192.168.1.0/24", s)
		}
		p = netip.PrefixFrom(a, a.BitLen())
	}
	if !p.Addr().Is4() {
		return netip.Prefix{}, fmt.Errorf("%s is not IPv4: guests are IPv4-only", s)
	}
	if p.Masked() != p {
		return netip.Prefix{}, fmt.Errorf("%s has host bits set: did you mean %s?", s, p.Masked())
	}
	return p, nil
}

// String is the canonical form ParseRule reads back: the prefix (a bare
// address for a /32), then ":PORT" and "/PROTO" when set.
func (r Rule) String() string {
	s := r.Prefix.String()
	if r.Prefix.IsSingleIP() {
		s = r.Prefix.Addr().String()
	}
	if r.Port != 0 {
		s += ":" + strconv.Itoa(int(r.Port))
		if r.Proto != "" {
			s += "/" + r.Proto
		}
	}
	return s
}

// MarshalText stores a Rule as its String.
func (r Rule) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

// UnmarshalText reads a Rule with ParseRule.
func (r *Rule) UnmarshalText(b []byte) error {
	v, err := ParseRule(string(b))
	if err != nil {
		return err
	}
	*r = v
	return nil
}

func (r Rule) check() error {
	if !r.Prefix.IsValid() || !r.Prefix.Addr().Is4() || r.Prefix.Masked() != r.Prefix {
		return fmt.Errorf("allow %s: not a masked IPv4 prefix", r)
	}
	if r.Proto != "" && (r.Port == 0 || (r.Proto != "tcp" && r.Proto != "udp")) {
		return fmt.Errorf("allow %s: protocol %q needs a port and must be tcp or udp", r, r.Proto)
	}
	return nil
}

// Policy is what one VM may reach. The zero Policy is ModeInternet with
// no exceptions. Allow entries open holes in what Mode drops, Deny entries
// drop on top of it and win over Allow, and AllowVMs are the addresses of
// other VMs this VM may open connections to (replies come back by
// connection tracking; the other VM's policy is not consulted). Other VMs
// are reachable only through AllowVMs, never through Allow or ModeOpen.
//
// Names are host names (HostPattern) whose resolved addresses the VM may
// reach, on every port, while banger's DNS responder has seen them
// resolve (see Network.Admit); only ModeNone may have them, since a
// name allowance means something only where everything else is denied.
//
// Its JSON form, {"mode":"internet","allow":["10.0.0.5:5432"],
// "deny":["203.0.113.0/24"],"allow_vms":["172.16.0.7"]}, is what a VM
// record stores; decoding validates it.
type Policy struct {
	Mode     Mode           `json:"mode"`
	Allow    []Rule         `json:"allow,omitempty"`
	Names    []HostPattern  `json:"names,omitempty"`
	Deny     []netip.Prefix `json:"deny,omitempty"`
	AllowVMs []netip.Addr   `json:"allow_vms,omitempty"`
}

// ParsePolicy reads the user's --net, --allow, --deny and VM addresses
// (the daemon resolves --allow-vm names to addresses), checks them, and
// returns the canonical Policy. An allow entry with a letter or '*' in
// it is a host name (ParseHostPattern), accepted with mode none only.
// Each error names the value at fault.
func ParsePolicy(mode string, allow, deny, allowVMs []string) (Policy, error) {
	m, err := ParseMode(mode)
	if err != nil {
		return Policy{}, err
	}
	p := Policy{Mode: m}
	for _, s := range allow {
		if looksLikeName(s) {
			h, err := ParseHostPattern(s)
			if err != nil {
				return Policy{}, err
			}
			if m != ModeNone {
				return Policy{}, fmt.Errorf("allow %q: host names are allowed only with network mode none (everything else denied), not %s", s, m)
			}
			p.Names = append(p.Names, h)
			continue
		}
		r, err := ParseRule(s)
		if err != nil {
			return Policy{}, err
		}
		p.Allow = append(p.Allow, r)
	}
	if n := len(slices.Compact(slices.Sorted(slices.Values(p.Names)))); n > MaxNames {
		return Policy{}, fmt.Errorf("allow: %d host names, at most %d", n, MaxNames)
	}
	for _, s := range deny {
		if strings.Count(s, ":") == 1 {
			return Policy{}, fmt.Errorf("deny %q: deny takes an address or CIDR, without a port", s)
		}
		d, err := parsePrefix(strings.TrimSpace(s))
		if err != nil {
			return Policy{}, fmt.Errorf("deny %q: %w", s, err)
		}
		p.Deny = append(p.Deny, d)
	}
	for _, s := range allowVMs {
		a, err := netip.ParseAddr(strings.TrimSpace(s))
		if err != nil || !a.Is4() {
			return Policy{}, fmt.Errorf("allow-vm %q: not a VM's IPv4 address", s)
		}
		p.AllowVMs = append(p.AllowVMs, a)
	}
	return p.Canonical(), nil
}

// Check says what is wrong with p, if anything, without knowing the
// network; PolicyScript also checks it against the guest subnet.
func (p Policy) Check() error {
	if _, err := ParseMode(string(p.Mode)); err != nil {
		return err
	}
	for _, r := range p.Allow {
		if err := r.check(); err != nil {
			return err
		}
	}
	for _, h := range p.Names {
		if err := h.check(); err != nil {
			return err
		}
		if p.Mode != ModeNone {
			return fmt.Errorf("allow %s: host names are allowed only with network mode none", h)
		}
	}
	if len(p.Names) > MaxNames {
		return fmt.Errorf("allow: %d host names, at most %d", len(p.Names), MaxNames)
	}
	for _, d := range p.Deny {
		if !d.IsValid() || !d.Addr().Is4() || d.Masked() != d {
			return fmt.Errorf("deny %s: not a masked IPv4 prefix", d)
		}
	}
	for _, a := range p.AllowVMs {
		if !a.Is4() {
			return fmt.Errorf("allow-vm %s: not an IPv4 address", a)
		}
	}
	return nil
}

// Canonical returns p with its mode spelled out and its lists sorted and
// without duplicates, so equal policies compare and store equal.
func (p Policy) Canonical() Policy {
	if m, err := ParseMode(string(p.Mode)); err == nil {
		p.Mode = m
	}
	p.Allow = slices.Clone(p.Allow)
	slices.SortFunc(p.Allow, func(a, b Rule) int {
		if c := a.Prefix.Addr().Compare(b.Prefix.Addr()); c != 0 {
			return c
		}
		if a.Prefix.Bits() != b.Prefix.Bits() {
			return a.Prefix.Bits() - b.Prefix.Bits()
		}
		if a.Port != b.Port {
			return int(a.Port) - int(b.Port)
		}
		return strings.Compare(a.Proto, b.Proto)
	})
	p.Allow = slices.Compact(p.Allow)
	p.Names = slices.Compact(slices.Sorted(slices.Values(p.Names)))
	p.Deny = slices.Clone(p.Deny)
	slices.SortFunc(p.Deny, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	p.Deny = slices.Compact(p.Deny)
	p.AllowVMs = slices.Clone(p.AllowVMs)
	slices.SortFunc(p.AllowVMs, netip.Addr.Compare)
	p.AllowVMs = slices.Compact(p.AllowVMs)
	if len(p.Allow) == 0 {
		p.Allow = nil
	}
	if len(p.Names) == 0 {
		p.Names = nil
	}
	if len(p.Deny) == 0 {
		p.Deny = nil
	}
	if len(p.AllowVMs) == 0 {
		p.AllowVMs = nil
	}
	return p
}

// IsDefault reports whether p is ModeInternet with no exceptions: the one
// policy the iptables backend enforces.
func (p Policy) IsDefault() bool {
	c := p.Canonical()
	return c.Mode == ModeInternet && c.Allow == nil && c.Names == nil && c.Deny == nil && c.AllowVMs == nil
}

// String is a one-line summary for listings and logs, e.g.
// "internet allow=10.0.0.5:5432 deny=203.0.113.0/24 vm=172.16.0.7";
// host names follow the addresses in allow.
func (p Policy) String() string {
	c := p.Canonical()
	parts := []string{string(c.Mode)}
	if c.Mode == "" {
		parts[0] = "invalid"
	}
	join := func(key string, items []string) {
		if len(items) > 0 {
			parts = append(parts, key+"="+strings.Join(items, ","))
		}
	}
	var allow, deny, vms []string
	for _, r := range c.Allow {
		allow = append(allow, r.String())
	}
	for _, h := range c.Names {
		allow = append(allow, string(h))
	}
	for _, d := range c.Deny {
		deny = append(deny, d.String())
	}
	for _, a := range c.AllowVMs {
		vms = append(vms, a.String())
	}
	join("allow", allow)
	join("deny", deny)
	join("vm", vms)
	return strings.Join(parts, " ")
}

// MarshalJSON stores the canonical form.
func (p Policy) MarshalJSON() ([]byte, error) {
	type plain Policy
	return json.Marshal(plain(p.Canonical()))
}

// UnmarshalJSON reads a stored policy and refuses an invalid one; a
// missing mode is ModeInternet.
func (p *Policy) UnmarshalJSON(b []byte) error {
	type plain Policy
	var v plain
	if err := json.Unmarshal(b, &v); err != nil {
		return fmt.Errorf("network policy: %w", err)
	}
	if err := Policy(v).Check(); err != nil {
		return fmt.Errorf("network policy: %w", err)
	}
	*p = Policy(v).Canonical()
	return nil
}

// ifnameRE is what banger quotes into nft scripts as a device name; it
// keeps a name from ending the quoted string.
var ifnameRE = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,15}$`)

func checkIfname(kind, name string) error {
	if !ifnameRE.MatchString(name) {
		return fmt.Errorf("invalid %s name %q: use 1-15 letters, digits, '.', '_' or '-'", kind, name)
	}
	return nil
}

// checkIn says what in p cannot be right on the guest subnet for guest
// self: a VM address outside the subnet, the gateway or self, and an allow
// entry that names only guest addresses (those are reachable only through
// AllowVMs, so it would silently do nothing). The gateway itself may be
// allowed: it is the host.
func (p Policy) checkIn(subnet netip.Prefix, self netip.Addr) error {
	gw := subnet.Addr().Next()
	for _, a := range p.AllowVMs {
		switch {
		case !subnet.Contains(a):
			return fmt.Errorf("allow-vm %s: not a VM address: outside the guest subnet %s", a, subnet)
		case a == gw:
			return fmt.Errorf("allow-vm %s: that is the gateway (the host), not a VM: use allow %s:PORT", a, a)
		case a == self:
			return fmt.Errorf("allow-vm %s: that is this VM itself", a)
		}
	}
	for _, r := range p.Allow {
		if r.Prefix.Bits() >= subnet.Bits() && subnet.Contains(r.Prefix.Addr()) && r.Prefix != netip.PrefixFrom(gw, 32) {
			return fmt.Errorf("allow %s: inside the guest subnet %s: other VMs are reached with allow-vm, not allow", r, subnet)
		}
	}
	return nil
}

// policyTable is the nft table, in the ip family, that holds one tap's
// policy; it shares its name with the tap's guard table in the bridge
// family.
func policyTable(tap string) string { return guardPrefix + tap }

// PolicyScript returns the nft script that (re)makes the policy table of
// tap for guest g on bridge and subnet: "ip banger-<tap>", with a chain on
// the input hook (what reaches any address of the host) and one on the
// forward hook (everything routed: the internet, the LAN, other VMs). Both
// look only at packets arriving from the bridge with g's source address,
// which the tap's guard pins to that tap; what they do not accept they
// drop. A drop in any table is final, so no accept elsewhere (the NAT
// table's, Docker's) can undo it.
//
// Order in both chains: the guest's replies on connections opened to it
// (the host's SSH and data channel, an allowed VM's), then Deny, then
// what the mode and Allow let through, then drop. What the guest sends on
// connections it opened itself is judged packet by packet, not let
// through as established, so a policy change holds at once for
// connections already open, with no conntrack flush. Forwarding also accepts
// AllowVMs and then drops the rest of the guest subnet before anything
// else is allowed, so other VMs are never reached by mode or Allow.
//
// A policy with Names also accepts DNS on the gateway, and the table
// holds two sets: "resolved", the addresses Admit opened for the names,
// each with the timeout of its answer, and "inuse", the addresses the
// guest has sent to lately (refreshed by each packet, forgotten after
// inuseIdle). Forwarding, last before the drop, accepts a packet to a
// resolved address that is not in NonPublic (whatever Admit let in),
// and a packet on a connection the guest opened to an address in use:
// a connection outlives its answer's TTL while it carries traffic, but
// a new one needs a live answer. The sets start empty whenever the
// script runs; Network re-adds what its names still open.
func PolicyScript(bridge string, subnet netip.Prefix, tap string, g Guest) (string, error) {
	if err := checkIfname("bridge", bridge); err != nil {
		return "", err
	}
	if err := checkIfname("tap", tap); err != nil {
		return "", err
	}
	if err := g.check(); err != nil {
		return "", err
	}
	p := g.Policy.Canonical()
	if err := p.Check(); err != nil {
		return "", err
	}
	subnet = subnet.Masked()
	if !subnet.Contains(g.IP) {
		return "", fmt.Errorf("guest address %s is outside the guest subnet %s", g.IP, subnet)
	}
	if err := p.checkIn(subnet, g.IP); err != nil {
		return "", err
	}
	gw := subnet.Addr().Next()
	tag := ` comment "` + ruleTag + `"`
	var head, deny, allow strings.Builder
	fmt.Fprintf(&head, "\t\tiifname != %q accept\n\t\tip saddr != %s accept\n\t\tct state established,related ct direction reply accept\n", bridge, g.IP)
	if len(p.Deny) > 0 {
		fmt.Fprintf(&deny, "\t\tip daddr %s drop%s\n", prefixSet(p.Deny), tag)
	}
	for _, r := range p.Allow {
		fmt.Fprintf(&allow, "\t\tip daddr %s%s accept%s\n", r.Prefix, portMatch(r), tag)
	}

	var in, fwd strings.Builder
	in.WriteString(head.String() + deny.String())
	if p.Mode != ModeNone || len(p.Names) > 0 {
		fmt.Fprintf(&in, "\t\tip daddr %s udp dport 53 accept%s\n\t\tip daddr %s tcp dport 53 accept%s\n", gw, tag, gw, tag)
	}
	if p.Mode == ModeOpen {
		in.WriteString("\t\taccept" + tag + "\n")
	} else {
		in.WriteString(allow.String() + "\t\tdrop" + tag + "\n")
	}

	fwd.WriteString(head.String() + deny.String())
	if len(p.AllowVMs) > 0 {
		fmt.Fprintf(&fwd, "\t\tip daddr %s accept%s\n", addrSet(p.AllowVMs), tag)
	}
	fmt.Fprintf(&fwd, "\t\tip daddr %s drop%s\n", subnet, tag)
	switch p.Mode {
	case ModeOpen:
		fwd.WriteString("\t\taccept" + tag + "\n")
	case ModeInternet:
		fwd.WriteString(allow.String())
		fmt.Fprintf(&fwd, "\t\tip daddr %s drop%s\n\t\taccept%s\n", prefixSet(nonPublic), tag, tag)
	default:
		fwd.WriteString(allow.String())
		if len(p.Names) > 0 {
			fmt.Fprintf(&fwd, "\t\tip daddr != %s ip daddr @%s update @%s { ip daddr } accept%s\n", prefixSet(nonPublic), resolvedSet, inuseSet, tag)
			fmt.Fprintf(&fwd, "\t\tct state established ct direction original ip daddr @%s update @%s { ip daddr } accept%s\n", inuseSet, inuseSet, tag)
		}
		fwd.WriteString("\t\tdrop" + tag + "\n")
	}
	var sets string
	if len(p.Names) > 0 {
		// The kernel's bounds sit above Admit's own (MaxResolved), so
		// elements expired but not yet collected never make an add fail.
		sets = fmt.Sprintf(`	set %s {
		type ipv4_addr
		flags timeout
		size %d
	}
	set %s {
		type ipv4_addr
		flags dynamic,timeout
		timeout %ds
		size %d
	}
`, resolvedSet, 2*MaxResolved, inuseSet, int(inuseIdle.Seconds()), 4*MaxResolved)
	}

	return fmt.Sprintf(`table ip %[1]s {}
delete table ip %[1]s
table ip %[1]s {
%[4]s	chain input {
		type filter hook input priority filter; policy accept;
%[2]s	}
	chain forward {
		type filter hook forward priority filter; policy accept;
%[3]s	}
}
`, policyTable(tap), in.String(), fwd.String(), sets), nil
}

// The sets of a policy table with host names (see PolicyScript), and
// how long an address the guest stops sending to stays in use.
const (
	resolvedSet = "resolved"
	inuseSet    = "inuse"
	inuseIdle   = 5 * time.Minute
)

// portMatch is the nft match for r's port, "" for any.
func portMatch(r Rule) string {
	switch {
	case r.Port == 0:
		return ""
	case r.Proto == "":
		return fmt.Sprintf(" meta l4proto { tcp, udp } th dport %d", r.Port)
	default:
		return fmt.Sprintf(" %s dport %d", r.Proto, r.Port)
	}
}

func prefixSet(ps []netip.Prefix) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return "{ " + strings.Join(s, ", ") + " }"
}

func addrSet(as []netip.Addr) string {
	s := make([]string, len(as))
	for i, a := range as {
		s[i] = a.String()
	}
	return "{ " + strings.Join(s, ", ") + " }"
}
