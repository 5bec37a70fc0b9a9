package hostnet

// The addresses a VM's allowed host names open: which guest is behind
// which tap with which names, and what each tap's "resolved" set holds
// (momentary: it goes with the tap's policy table).

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// nameGate is what Network knows of the taps whose policies have host
// names. mu also orders every write of those taps' policy tables with
// the element adds, so an add never lands in a table about to be
// replaced without the replacement carrying it.
type nameGate struct {
	mu    sync.Mutex
	byIP  map[netip.Addr]*gatedTap
	byTap map[string]netip.Addr
	// parked are the taps of paused VMs: what their sets held when the
	// tap went, for the resume's tap of the same name and guest.
	parked map[string]ParkedNames
	now    func() time.Time
}

// ParkedNames is what a paused VM's tap held for its allowed host names
// (ParkTap): the guest's address and policy then, the addresses its
// answers opened with when each expires (the world's clock: answers
// keep expiring while the VM is paused) and the addresses in use with
// the time each had left (kept: the guest sends nothing while paused,
// so its connections did not go idle). The daemon keeps it in the VM's
// scratch files so that a restart of its own puts it back (Repark).
type ParkedNames struct {
	IP     netip.Addr     `json:"ip"`
	Policy Policy         `json:"policy"`
	Open   []ParkedAnswer `json:"open,omitempty"`
	InUse  []ParkedUse    `json:"inuse,omitempty"`
}

// ParkedAnswer is an address an answer for Name opened, until Until.
type ParkedAnswer struct {
	Addr  netip.Addr `json:"addr"`
	Until time.Time  `json:"until"`
	Name  string     `json:"name,omitempty"`
}

// ParkedUse is an address the guest used, with the time it had left,
// opened for Name ("" when not known).
type ParkedUse struct {
	Addr netip.Addr    `json:"addr"`
	Left time.Duration `json:"left_ns"`
	Name string        `json:"name,omitempty"`
}

// check says why p cannot be what ParkTap parked (a damaged scratch
// file): it holds IPv4 addresses, no more answers and addresses in use
// than the sets hold, and a policy with names.
func (p ParkedNames) check() error {
	if !p.IP.Is4() {
		return fmt.Errorf("parked names: guest address %v is not IPv4", p.IP)
	}
	if len(p.Policy.Names) == 0 {
		return fmt.Errorf("parked names of %s: the policy has no host names", p.IP)
	}
	if len(p.Open) > 2*MaxResolved || len(p.InUse) > 4*MaxResolved { // the sets' sizes
		return fmt.Errorf("parked names of %s: %d answers and %d addresses in use, more than a tap holds", p.IP, len(p.Open), len(p.InUse))
	}
	for _, a := range p.Open {
		if !a.Addr.Is4() {
			return fmt.Errorf("parked names of %s: answer address %v is not IPv4", p.IP, a.Addr)
		}
	}
	for _, u := range p.InUse {
		if !u.Addr.Is4() || u.Left <= 0 || u.Left > inuseIdle {
			return fmt.Errorf("parked names of %s: address in use %v with %v left", p.IP, u.Addr, u.Left)
		}
	}
	return nil
}

// gated is p as the tap it was, and its inuse set.
func (p ParkedNames) gated(tap string) (*gatedTap, map[netip.Addr]time.Duration) {
	t := &gatedTap{tap: tap, policy: p.Policy, open: map[netip.Addr]opened{}, seen: map[netip.Addr]string{}}
	inuse := map[netip.Addr]time.Duration{}
	for _, a := range p.Open {
		t.open[a.Addr] = opened{until: a.Until, name: a.Name}
		t.seen[a.Addr] = a.Name
	}
	for _, u := range p.InUse {
		inuse[u.Addr] = u.Left
		t.seen[u.Addr] = u.Name
	}
	return t, inuse
}

// gatedTap is one tap whose policy has names, and what its set holds
// as Admit added it: address → when it expires and the name it
// answered; seen is the name each address was last opened for, kept
// while the guest may still use it (the inuse set outlives answers).
type gatedTap struct {
	tap    string
	policy Policy
	open   map[netip.Addr]opened
	seen   map[netip.Addr]string
}

// opened is one address in a resolved set: until when, and for which
// name ("" when unknown: found in the kernel after a daemon restart).
type opened struct {
	until time.Time
	name  string
}

func newNameGate() *nameGate {
	return &nameGate{byIP: map[netip.Addr]*gatedTap{}, byTap: map[string]netip.Addr{},
		parked: map[string]ParkedNames{}, now: time.Now}
}

// prune drops what has expired.
func (t *gatedTap) prune(now time.Time) {
	for a, o := range t.open {
		if !o.until.After(now) {
			delete(t.open, a)
		}
	}
}

// carry is what a rewrite of a tap's policy table puts back in its
// sets.
type carry struct {
	open  map[netip.Addr]opened        // resolved
	inuse map[netip.Addr]time.Duration // inuse, with the time left
	seen  map[netip.Addr]string
}

// carried is what tap's next policy table, for g, must hold again, given
// what its sets hold now in the kernel (kres, kinuse: address → time
// left). When the daemon knows the tap, that is the addresses open for
// a name g's policy still allows (or, for one opened for a name it does
// not know, when g's names are the old ones), with what is left of
// their time, and the addresses in use opened for such a name. When it
// does not (the daemon started since the table was written, and
// applies the stored policy the table was written for), it is all the
// kernel holds. A tap parked for g (its VM paused, the tap made again
// for the resume) is known: what it held then stands for the kernel's
// sets, which are new. Call with mu held.
func (ng *nameGate) carried(tap string, g Guest, kres, kinuse map[netip.Addr]time.Duration) carry {
	now := ng.now()
	c := carry{open: map[netip.Addr]opened{}, inuse: map[netip.Addr]time.Duration{}, seen: map[netip.Addr]string{}}
	var old *gatedTap
	if ip, ok := ng.byTap[tap]; ok && ip == g.IP {
		old = ng.byIP[ip]
	} else if p, ok := ng.parked[tap]; ok && p.IP == g.IP {
		old, kinuse = p.gated(tap)
	}
	if old == nil {
		for a, left := range kres {
			if left >= time.Second {
				c.open[a] = opened{until: now.Add(left)}
			}
		}
		for a, left := range kinuse {
			if left >= time.Second {
				c.inuse[a] = left
			}
		}
		return c
	}
	p := g.Policy.Canonical()
	same := slices.Equal(old.policy.Names, p.Names)
	keep := func(name string) bool {
		if name == "" {
			return same
		}
		return p.AllowsName(name)
	}
	old.prune(now)
	for a, o := range old.open {
		if keep(o.name) && o.until.Sub(now) >= time.Second {
			c.open[a] = o
			c.seen[a] = o.name
		}
	}
	for a, left := range kinuse {
		if name := old.seen[a]; keep(name) && left >= time.Second {
			c.inuse[a] = left
			c.seen[a] = name
		}
	}
	return c
}

// set records tap's guest and policy after its table was written with
// c carried over. Call with mu held.
func (ng *nameGate) set(tap string, g Guest, c carry) {
	ng.drop(tap)
	if len(g.Policy.Names) == 0 {
		return
	}
	if c.open == nil {
		c.open = map[netip.Addr]opened{}
	}
	if c.seen == nil {
		c.seen = map[netip.Addr]string{}
	}
	ng.byTap[tap] = g.IP
	ng.byIP[g.IP] = &gatedTap{tap: tap, policy: g.Policy.Canonical(), open: c.open, seen: c.seen}
}

// park keeps what tap's sets hold (inuse: kinuse, read from the kernel
// before the tap goes) for the next set of tap for the same guest, and
// forgets the tap as drop does. A tap not known (its policy has no
// names, or it was parked already and not made since) keeps what was
// parked, if anything. Call with mu held.
func (ng *nameGate) park(tap string, kinuse map[netip.Addr]time.Duration) {
	ip, ok := ng.byTap[tap]
	if !ok || ng.byIP[ip] == nil {
		return
	}
	t := ng.byIP[ip]
	t.prune(ng.now())
	p := ParkedNames{IP: ip, Policy: t.policy}
	for a, o := range t.open {
		p.Open = append(p.Open, ParkedAnswer{Addr: a, Until: o.until, Name: o.name})
	}
	for a, left := range kinuse {
		if left >= time.Second {
			p.InUse = append(p.InUse, ParkedUse{Addr: a, Left: left, Name: t.seen[a]})
		}
	}
	slices.SortFunc(p.Open, func(x, y ParkedAnswer) int { return x.Addr.Compare(y.Addr) })
	slices.SortFunc(p.InUse, func(x, y ParkedUse) int { return x.Addr.Compare(y.Addr) })
	ng.drop(tap)
	ng.parked[tap] = p
}

// drop forgets tap, parked or not. Call with mu held.
func (ng *nameGate) drop(tap string) {
	delete(ng.parked, tap)
	if ip, ok := ng.byTap[tap]; ok {
		delete(ng.byTap, tap)
		if t := ng.byIP[ip]; t != nil && t.tap == tap {
			delete(ng.byIP, ip)
		}
	}
}

// elementScript adds addr to tap's resolved set for ttl, replacing an
// element already there (whose timeout an add would leave as it was):
// add (a no-op if present), delete, add again with the timeout, all in
// the transaction of the one nft run.
func elementScript(tap string, addr netip.Addr, ttl time.Duration) string {
	t, set := policyTable(tap), resolvedSet
	secs := int(ttl / time.Second)
	return fmt.Sprintf("add element ip %[1]s %[2]s { %[3]s }\ndelete element ip %[1]s %[2]s { %[3]s }\nadd element ip %[1]s %[2]s { %[3]s timeout %[4]ds }\n",
		t, set, addr, secs)
}

// carryScript re-adds, after a table write, what c carries.
func carryScript(tap string, c carry, now time.Time) string {
	var b strings.Builder
	for a, o := range c.open {
		fmt.Fprintf(&b, "add element ip %s %s { %s timeout %ds }\n", policyTable(tap), resolvedSet, a, int(o.until.Sub(now)/time.Second))
	}
	for a, left := range c.inuse {
		fmt.Fprintf(&b, "add element ip %s %s { %s timeout %ds }\n", policyTable(tap), inuseSet, a, int(left/time.Second))
	}
	return b.String()
}

// setElems reads `nft -j list set` output: each element's address and
// the time it has left. Elements without a timeout are left out.
func setElems(out string) (map[netip.Addr]time.Duration, error) {
	var doc struct {
		Nftables []struct {
			Set *struct {
				Elem []json.RawMessage `json:"elem"`
			} `json:"set"`
		} `json:"nftables"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		return nil, fmt.Errorf("read nft set listing: %w", err)
	}
	res := map[netip.Addr]time.Duration{}
	for _, o := range doc.Nftables {
		if o.Set == nil {
			continue
		}
		for _, raw := range o.Set.Elem {
			var e struct {
				Elem struct {
					Val     string  `json:"val"`
					Expires float64 `json:"expires"`
				} `json:"elem"`
			}
			if json.Unmarshal(raw, &e) != nil || e.Elem.Expires <= 0 {
				continue
			}
			if a, err := netip.ParseAddr(e.Elem.Val); err == nil {
				res[a] = time.Duration(e.Elem.Expires * float64(time.Second))
			}
		}
	}
	return res, nil
}

// Admission is what Admit did with one answer.
type Admission struct {
	Name    string       // the question, when a pattern of the guest's policy matched it
	Opened  []netip.Addr // added to (or renewed in) the guest's set
	Refused []netip.Addr // not public, the host's own, or the guest subnet's
	Full    []netip.Addr // left out: the set holds MaxResolved already
}

// Admit opens, for the guest at src, the addresses of ans (an upstream's
// answer to its query for qname) when qname matches one of the host
// names of the guest's policy: each public A record of the answer
// (CNAME chains followed; see admissible for which addresses are
// public) goes into the guest's resolved set with the record's TTL
// clamped to 30 s .. 1 h, at most MaxResolved at once per guest. It
// returns once the set holds them, so the guest's connection right
// after it reads the answer passes. A guest without names, a name no
// pattern matches, or an answer without addresses changes nothing.
// ans is not changed: the guest gets the whole answer either way.
func (n *Network) Admit(ctx context.Context, src netip.Addr, qname string, ans *dns.Msg) (Admission, error) {
	var ad Admission
	ng := n.names
	ng.mu.Lock()
	defer ng.mu.Unlock()
	t := ng.byIP[src]
	if t == nil || !t.policy.AllowsName(qname) {
		return ad, nil
	}
	ad.Name = strings.ToLower(strings.TrimSuffix(qname, "."))
	rs := answerAddrs(qname, ans)
	if len(rs) == 0 {
		return ad, nil
	}
	gd, ok := n.fw.(guarder)
	if !ok {
		return ad, nil
	}
	local := localAddrs()
	now := ng.now()
	t.prune(now)
	var script strings.Builder
	next := map[netip.Addr]opened{}
	for _, r := range rs {
		if !admissible(r.Addr, t.policy, n.cfg.Subnet, local) {
			ad.Refused = append(ad.Refused, r.Addr)
			continue
		}
		until := now.Add(r.TTL)
		cur, present := t.open[r.Addr]
		if present && !cur.until.Before(until) {
			ad.Opened = append(ad.Opened, r.Addr) // open long enough already
			continue
		}
		if !present && len(t.open)+len(next) >= MaxResolved {
			ad.Full = append(ad.Full, r.Addr)
			continue
		}
		script.WriteString(elementScript(t.tap, r.Addr, r.TTL))
		next[r.Addr] = opened{until: until, name: ad.Name}
	}
	if len(t.seen) > 4*MaxResolved {
		for a := range t.seen {
			if _, ok := t.open[a]; !ok {
				delete(t.seen, a)
			}
		}
	}
	if script.Len() > 0 {
		if err := gd.exec(ctx, script.String()); err != nil {
			return ad, fmt.Errorf("open %s for %s on tap %s: %w", ad.Name, src, t.tap, err)
		}
	}
	for a, o := range next {
		t.open[a] = o
		t.seen[a] = o.name
		ad.Opened = append(ad.Opened, a)
	}
	return ad, nil
}

// localAddrs are the host's own IPv4 addresses in this namespace.
func localAddrs() []netip.Addr {
	as, err := net.InterfaceAddrs()
	if err != nil {
		return nil
	}
	var out []netip.Addr
	for _, a := range as {
		if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr().Is4() {
			out = append(out, p.Addr())
		}
	}
	return out
}
