// Package hostnet owns banger's host networking: the bridge, one tap per VM
// with the guard that lets that VM send only as itself and the policy that
// says what it may reach, guest IP and MAC allocation helpers, the NAT and
// forwarding rules that give guests egress, the DNS responder for
// <vm>.<suffix> names (gated so that a VM's allowed host names open the
// addresses they resolve to: Admit), and entering the network namespace
// the daemon runs in.
//
// It works in the network namespace of the calling process. It must not
// touch VM records or VMM processes, and it removes exactly what it made:
// rules live in banger's own nftables tables "ip banger",
// "bridge banger-<tap>" and "ip banger-<tap>" (or, with iptables, carry
// the comment "banger", in mangle chains banger-input and banger-forward
// of banger's own), and taps are named by TapName.
package hostnet

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"sort"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Config says which bridge and subnet banger uses.
type Config struct {
	Bridge    string       // bridge device name, at most 15 characters
	Subnet    netip.Prefix // IPv4, /30 or larger; the gateway is its first host address
	DNSSuffix string       // guests are named <vm>.<suffix>
	// Firewall picks the rule backend: "nft", "iptables", or "" for nft
	// when the nft binary is found, else iptables.
	Firewall string
}

// Network manages banger's bridge, taps and rules in the current network
// namespace.
type Network struct {
	cfg   Config
	fw    firewall
	names *nameGate // what the taps' allowed host names opened (Admit)
}

// New validates cfg and picks the firewall backend. It makes nothing.
func New(cfg Config) (*Network, error) {
	// The name is quoted into nft scripts; checkIfname keeps it from
	// ending the quote.
	if err := checkIfname("bridge", cfg.Bridge); err != nil {
		return nil, err
	}
	if !cfg.Subnet.IsValid() || !cfg.Subnet.Addr().Is4() {
		return nil, fmt.Errorf("invalid subnet %q: use an IPv4 prefix such as 172.16.0.0/24", cfg.Subnet)
	}
	if cfg.Subnet.Bits() > 30 {
		return nil, fmt.Errorf("subnet %s is too small: use a prefix of /30 or larger", cfg.Subnet)
	}
	cfg.Subnet = cfg.Subnet.Masked()
	n := &Network{cfg: cfg, names: newNameGate()}
	switch cfg.Firewall {
	case "", "nft":
		if bin, err := exec.LookPath("nft"); err == nil {
			ipt, _ := exec.LookPath("iptables") // optional, see nftFirewall
			n.fw = nftFirewall{bin: bin, iptables: ipt}
			break
		} else if cfg.Firewall == "nft" {
			return nil, fmt.Errorf("firewall nft: nft not found on PATH: install nftables")
		}
		fallthrough
	case "iptables":
		bin, err := exec.LookPath("iptables")
		if err != nil {
			return nil, fmt.Errorf("no firewall tool: neither nft nor iptables found on PATH: install nftables")
		}
		n.fw = iptablesFirewall{bin: bin}
	default:
		return nil, fmt.Errorf("invalid firewall %q: use nft, iptables or empty for automatic", cfg.Firewall)
	}
	return n, nil
}

// Gateway returns the bridge's address: the subnet's first host address.
func (n *Network) Gateway() netip.Addr { return n.cfg.Subnet.Addr().Next() }

// Subnet returns the guest subnet.
func (n *Network) Subnet() netip.Prefix { return n.cfg.Subnet }

// Bridge returns the bridge device name.
func (n *Network) Bridge() string { return n.cfg.Bridge }

// Ensure makes the bridge exist and be up with the gateway address, turns
// on IPv4 forwarding, and (re)writes banger's NAT and forward rules. It is
// idempotent: calling it again changes nothing that is already right.
func (n *Network) Ensure(ctx context.Context) error {
	br, err := n.ensureBridge()
	if err != nil {
		return err
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{
		IP:   n.Gateway().AsSlice(),
		Mask: net.CIDRMask(n.cfg.Subnet.Bits(), 32),
	}}
	if err := netlink.AddrReplace(br, addr); err != nil {
		return fmt.Errorf("set address %s on bridge %s: %w", addr.IPNet, n.cfg.Bridge, err)
	}
	// A fixed MAC: a Linux bridge otherwise takes the lowest MAC of its
	// ports, so it changes as taps come and go, and every guest, whose
	// ARP cache holds it for the gateway and (proxy ARP) for every other
	// address, loses the host until it resolves it again, seconds later.
	// A resumed guest, whose cache predates its new tap, would too.
	if mac := BridgeMAC(n.Gateway()); br.Attrs().HardwareAddr.String() != mac.String() {
		if err := netlink.LinkSetHardwareAddr(br, mac); err != nil {
			return fmt.Errorf("set MAC %s on bridge %s: %w", mac, n.cfg.Bridge, err)
		}
	}
	if err := netlink.LinkSetUp(br); err != nil {
		return fmt.Errorf("bring bridge %s up: %w", n.cfg.Bridge, err)
	}
	// /proc/sys/net is per network namespace: this turns forwarding on
	// where banger runs, not necessarily in the host's namespace.
	if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1\n"), 0); err != nil {
		return fmt.Errorf("enable ip forwarding: %w", err)
	}
	if err := n.bridgeSysctls(); err != nil {
		return err
	}
	if err := n.fw.ensure(ctx, n.cfg.Bridge, n.cfg.Subnet); err != nil {
		return fmt.Errorf("nat rules for %s: %w", n.cfg.Subnet, err)
	}
	return nil
}

// bridgeSysctls sets the bridge's own IP settings (they are per device and
// per namespace, so nothing else on the host changes):
//
//   - proxy_arp_pvlan on, proxy_delay 0: the host answers a VM's ARP for
//     another VM with the bridge's MAC, at once. Taps are isolated (no
//     frame passes from one to another), so VMs meet only through the
//     host's routing, where each VM's policy applies.
//   - IPv6 off: guests are IPv4-only, and with IPv6 the bridge would carry
//     a link-local address through which a guest reaches host services
//     listening on the IPv6 wildcard, past every IPv4 rule.
func (n *Network) bridgeSysctls() error {
	for _, s := range []struct{ path, value string }{
		{"/proc/sys/net/ipv4/conf/" + n.cfg.Bridge + "/proxy_arp_pvlan", "1"},
		{"/proc/sys/net/ipv4/neigh/" + n.cfg.Bridge + "/proxy_delay", "0"},
		{"/proc/sys/net/ipv6/conf/" + n.cfg.Bridge + "/disable_ipv6", "1"},
	} {
		err := os.WriteFile(s.path, []byte(s.value+"\n"), 0)
		if errors.Is(err, os.ErrNotExist) && strings.Contains(s.path, "/ipv6/") {
			continue // a kernel without IPv6 has nothing to turn off
		}
		if err != nil {
			return fmt.Errorf("set %s on bridge %s: %w", s.path, n.cfg.Bridge, err)
		}
	}
	return nil
}

func (n *Network) ensureBridge() (netlink.Link, error) {
	link, err := netlink.LinkByName(n.cfg.Bridge)
	if err == nil {
		if link.Type() != "bridge" {
			return nil, fmt.Errorf("device %s exists and is a %s, not a bridge: choose another bridge name", n.cfg.Bridge, link.Type())
		}
		return link, nil
	}
	if !isNotFound(err) {
		return nil, fmt.Errorf("look up bridge %s: %w", n.cfg.Bridge, err)
	}
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: n.cfg.Bridge}}
	if err := netlink.LinkAdd(br); err != nil && !errors.Is(err, unix.EEXIST) {
		return nil, fmt.Errorf("create bridge %s: %w", n.cfg.Bridge, err)
	}
	return netlink.LinkByName(n.cfg.Bridge)
}

// Teardown removes banger's rules and the bridge. What is already gone is
// not an error. Taps are the VMs' and are left to DeleteTap.
func (n *Network) Teardown(ctx context.Context) error {
	var errs []error
	if err := n.fw.teardown(ctx, n.cfg.Bridge, n.cfg.Subnet); err != nil {
		errs = append(errs, fmt.Errorf("remove nat rules: %w", err))
	}
	if link, err := netlink.LinkByName(n.cfg.Bridge); err == nil {
		if link.Type() != "bridge" {
			errs = append(errs, fmt.Errorf("device %s is a %s, not banger's bridge: left alone", n.cfg.Bridge, link.Type()))
		} else if err := netlink.LinkDel(link); err != nil && !isNotFound(err) {
			errs = append(errs, fmt.Errorf("delete bridge %s: %w", n.cfg.Bridge, err))
		}
	} else if !isNotFound(err) {
		errs = append(errs, fmt.Errorf("look up bridge %s: %w", n.cfg.Bridge, err))
	}
	return errors.Join(errs...)
}

// CreateTap makes a persistent tap device name for guest g, attached to the
// bridge and up, ready for a VMM to open. The bridge forwards frames for
// g's MAC only to this tap (a static entry; unknown destinations are not
// flooded to it) and passes nothing from it to another port (isolated).
// With the nft backend the tap is guarded and g.Policy applied, in one
// transaction (see GuardScript and PolicyScript): the VM can send only as
// g and only where its policy lets it. The iptables backend enforces
// ModeInternet for every guest and refuses any other policy
// (ErrPolicyNeedsNft) before making anything. It is idempotent: an
// existing tap is (re)attached, brought up and its guard and policy
// rewritten. A non-tap device of that name is an error. The bridge must
// exist (Ensure). A failed CreateTap leaves no tap or guard it made.
// With g.Held the tap is left down (an existing one is brought down
// before anything else) until RaiseTap.
func (n *Network) CreateTap(ctx context.Context, name string, g Guest) error {
	if err := checkIfname("tap", name); err != nil {
		return err
	}
	if err := g.check(); err != nil {
		return fmt.Errorf("tap %s: %w", name, err)
	}
	if err := n.checkPolicy(name, g); err != nil {
		return err
	}
	if _, err := netlink.LinkByName(n.cfg.Bridge); err != nil {
		return fmt.Errorf("bridge %s for tap %s: %w (call Ensure first)", n.cfg.Bridge, name, err)
	}
	link, err := netlink.LinkByName(name)
	created := false
	switch {
	case err == nil:
		if _, ok := link.(*netlink.Tuntap); !ok {
			return fmt.Errorf("device %s exists and is a %s, not a tap", name, link.Type())
		}
	case isNotFound(err):
		tap := &netlink.Tuntap{
			LinkAttrs: netlink.LinkAttrs{Name: name},
			Mode:      netlink.TUNTAP_MODE_TAP,
			// No packet info header, single queue: what Firecracker and
			// QEMU open a tap with.
			Flags: netlink.TUNTAP_NO_PI,
		}
		if err := netlink.LinkAdd(tap); err != nil {
			return fmt.Errorf("create tap %s: %w", name, err)
		}
		if link, err = netlink.LinkByName(name); err != nil {
			return fmt.Errorf("look up new tap %s: %w", name, err)
		}
		created = true
	default:
		return fmt.Errorf("look up tap %s: %w", name, err)
	}
	if g.Held && link.Attrs().Flags&net.FlagUp != 0 {
		if err := netlink.LinkSetDown(link); err != nil {
			return fmt.Errorf("hold tap %s down: %w", name, err)
		}
	}
	if err := n.attachPort(ctx, link, g); err != nil {
		if created { // a failed CreateTap leaves nothing behind
			_ = netlink.LinkDel(link)
			if gd, ok := n.fw.(guarder); ok {
				_ = gd.unguard(context.Background(), name)
			}
		}
		return err
	}
	return nil
}

// attachPort makes link a port of the bridge for guest g: attached,
// isolated, g's MAC pinned to it, guarded with g's policy, then up.
func (n *Network) attachPort(ctx context.Context, link netlink.Link, g Guest) error {
	name := link.Attrs().Name
	br, err := netlink.LinkByName(n.cfg.Bridge)
	if err != nil {
		return fmt.Errorf("bridge %s for tap %s: %w (call Ensure first)", n.cfg.Bridge, name, err)
	}
	if err := netlink.LinkSetMaster(link, br); err != nil {
		return fmt.Errorf("attach tap %s to bridge %s: %w", name, n.cfg.Bridge, err)
	}
	// The static entry also keeps the bridge from flooding g's frames to
	// every port once a learned entry would have aged out.
	if err := netlink.NeighSet(&netlink.Neigh{
		LinkIndex: link.Attrs().Index, Family: unix.AF_BRIDGE,
		State: netlink.NUD_NOARP, Flags: netlink.NTF_MASTER, HardwareAddr: g.MAC,
	}); err != nil {
		return fmt.Errorf("bridge entry for %s on tap %s: %w", g.MAC, name, err)
	}
	if err := netlink.LinkSetFlood(link, false); err != nil {
		return fmt.Errorf("turn off unknown-unicast flooding to tap %s: %w", name, err)
	}
	// Isolated ports exchange no frames with each other: the guard's
	// forward chain does the same with nft, this holds with iptables too.
	if err := netlink.LinkSetIsolated(link, true); err != nil {
		return fmt.Errorf("isolate tap %s on bridge %s: %w", name, n.cfg.Bridge, err)
	}
	if gd, ok := n.fw.(guarder); ok {
		if err := n.guardTap(ctx, gd, name, g); err != nil {
			return fmt.Errorf("guard tap %s: %w", name, err)
		}
	}
	if g.Held {
		return nil
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("bring tap %s up: %w", name, err)
	}
	return nil
}

// RaiseTap brings up a tap CreateTap made with Guest.Held: its bridge
// port forwards from then on. Raising an up tap is not an error; a
// missing one is.
func (n *Network) RaiseTap(ctx context.Context, name string) error {
	if err := checkIfname("tap", name); err != nil {
		return err
	}
	link, err := netlink.LinkByName(name)
	if err != nil {
		return fmt.Errorf("raise tap %s: %w", name, err)
	}
	if _, ok := link.(*netlink.Tuntap); !ok {
		return fmt.Errorf("device %s is a %s, not a tap", name, link.Type())
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("bring tap %s up: %w", name, err)
	}
	return nil
}

// ErrPolicyNeedsNft is returned for a policy other than the default when
// banger's rules are written with iptables: without the nft tap guards a
// guest can send from another guest's address, so per-VM rules, which go
// by source address, could be evaded.
var ErrPolicyNeedsNft = errors.New("network policies other than the default (internet) need the nft firewall backend: install nftables")

// CheckPolicy says why CreateTap or ApplyPolicy would refuse g's policy
// on tap (ErrPolicyNeedsNft, or a check against the guest subnet), without
// touching anything: the daemon checks a policy it stores for a stopped VM
// before storing it, so that the next start does not fail on it.
// Its errors do not name the tap, which users never see: the caller names
// the VM.
func (n *Network) CheckPolicy(tap string, g Guest) error {
	if err := checkIfname("tap", tap); err != nil {
		return err
	}
	if _, ok := n.fw.(guarder); !ok {
		if !g.Policy.IsDefault() {
			return ErrPolicyNeedsNft
		}
		return g.Policy.Check()
	}
	_, err := PolicyScript(n.cfg.Bridge, n.cfg.Subnet, tap, g)
	return err
}

// checkPolicy says why g's policy cannot be applied to tap, before
// anything is changed.
func (n *Network) checkPolicy(tap string, g Guest) error {
	if _, ok := n.fw.(guarder); !ok {
		if !g.Policy.IsDefault() {
			return fmt.Errorf("tap %s, policy %q: %w", tap, g.Policy, ErrPolicyNeedsNft)
		}
		return g.Policy.Check()
	}
	if _, err := PolicyScript(n.cfg.Bridge, n.cfg.Subnet, tap, g); err != nil {
		return fmt.Errorf("tap %s: network policy: %w", tap, err)
	}
	return nil
}

// ApplyPolicy replaces, while the VM runs, what the guest behind tap may
// reach with g.Policy: the tap's guard and policy tables are rewritten in
// one nft transaction, so no packet ever sees half of either. g must be
// the same guest CreateTap was given (MAC and address), with the new
// policy. It holds at once for connections already open: what the guest
// sends on a connection it opened is judged by the new policy packet by
// packet; connections opened to the guest (the daemon's SSH, the data
// channel) are not affected by any policy. The tap must exist and be a port of the bridge. With iptables only the
// default policy is accepted (a no-op: Ensure enforces it); any other is
// ErrPolicyNeedsNft. Removing a policy is DeleteTap: a tap never exists
// without one.
func (n *Network) ApplyPolicy(ctx context.Context, tap string, g Guest) error {
	if err := checkIfname("tap", tap); err != nil {
		return err
	}
	if err := g.check(); err != nil {
		return fmt.Errorf("tap %s: %w", tap, err)
	}
	if err := n.checkPolicy(tap, g); err != nil {
		return err
	}
	link, err := netlink.LinkByName(tap)
	if err != nil {
		return fmt.Errorf("apply policy to tap %s: %w (CreateTap first)", tap, err)
	}
	br, err := netlink.LinkByName(n.cfg.Bridge)
	if err != nil {
		return fmt.Errorf("apply policy to tap %s: bridge %s: %w", tap, n.cfg.Bridge, err)
	}
	if link.Attrs().MasterIndex != br.Attrs().Index {
		return fmt.Errorf("apply policy to tap %s: it is not a port of bridge %s", tap, n.cfg.Bridge)
	}
	gd, ok := n.fw.(guarder)
	if !ok {
		return nil
	}
	if err := n.guardTap(ctx, gd, tap, g); err != nil {
		return fmt.Errorf("apply policy %q to tap %s: %w", g.Policy, tap, err)
	}
	return nil
}

// Guarded reports whether CreateTap guards taps against spoofing and
// applies per-VM policies: it does with the nft backend, not with
// iptables alone (which enforces only the default policy, for every VM).
func (n *Network) Guarded() bool {
	_, ok := n.fw.(guarder)
	return ok
}

// DeleteTap removes the tap device name, its guard and its policy. What is missing is
// not an error; a device of that name that is not a tap is left alone and
// reported.
func (n *Network) DeleteTap(ctx context.Context, name string) error {
	_, err := n.deleteTap(ctx, name, false)
	return err
}

// ParkTap is DeleteTap for a VM that pauses: what its allowed host
// names opened (the tap's resolved and inuse sets) is kept in memory,
// and the next CreateTap of name for the same guest (address) puts it
// back, so the resumed guest's cached answers and open connections
// still pass (see ParkedNames for how their times run meanwhile).
// Parking a tap already gone keeps what was parked; DeleteTap, or a
// CreateTap of name for another address, forgets it. It answers what
// is parked for name (nil when nothing: a policy without names), for
// the daemon to keep across a restart of its own (Repark).
func (n *Network) ParkTap(ctx context.Context, name string) (*ParkedNames, error) {
	return n.deleteTap(ctx, name, true)
}

// Repark puts back what ParkTap answered for tap name, kept by a daemon
// before this one, for the next CreateTap of name. p is checked first:
// a damaged one is refused and nothing is parked.
func (n *Network) Repark(name string, p ParkedNames) error {
	if err := checkIfname("tap", name); err != nil {
		return err
	}
	if err := p.check(); err != nil {
		return fmt.Errorf("tap %s: %w", name, err)
	}
	ng := n.names
	ng.mu.Lock()
	defer ng.mu.Unlock()
	ng.parked[name] = p
	return nil
}

func (n *Network) deleteTap(ctx context.Context, name string, park bool) (*ParkedNames, error) {
	var guardErr error
	gd, guarded := n.fw.(guarder)
	var parked *ParkedNames
	n.names.mu.Lock()
	if park && guarded {
		// Read before the table goes; none when it is not there.
		kinuse, _ := gd.setElems(ctx, name, inuseSet)
		n.names.park(name, kinuse)
		if p, ok := n.names.parked[name]; ok {
			parked = &p
		}
	} else {
		n.names.drop(name)
	}
	n.names.mu.Unlock()
	if guarded {
		if err := gd.unguard(ctx, name); err != nil {
			guardErr = fmt.Errorf("remove the guard of tap %s: %w", name, err)
		}
	}
	link, err := netlink.LinkByName(name)
	if isNotFound(err) {
		return parked, guardErr
	}
	if err != nil {
		return parked, errors.Join(guardErr, fmt.Errorf("look up tap %s: %w", name, err))
	}
	if _, ok := link.(*netlink.Tuntap); !ok {
		return parked, errors.Join(guardErr, fmt.Errorf("device %s is a %s, not a tap: left alone", name, link.Type()))
	}
	if err := netlink.LinkDel(link); err != nil && !isNotFound(err) {
		return parked, errors.Join(guardErr, fmt.Errorf("delete tap %s: %w", name, err))
	}
	return parked, guardErr
}

// Taps lists the tap devices present whose names have TapName's shape,
// sorted. It is what reconcile and leak checks compare with the VMs known.
func (n *Network) Taps() ([]string, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	var out []string
	for _, l := range links {
		if _, ok := l.(*netlink.Tuntap); ok && isTapName(l.Attrs().Name) {
			out = append(out, l.Attrs().Name)
		}
	}
	sort.Strings(out)
	return out, nil
}

// NATRules lists banger's NAT and forwarding rules present, one per line
// of the backend's own listing (nft rule lines, or "-t TABLE -A CHAIN ..."
// for iptables). Empty means none. Tap guards are listed by Guards.
func (n *Network) NATRules() ([]string, error) {
	return n.fw.rules(context.Background())
}

// Policies lists the per-tap policy tables present, "banger-<tap>" in the
// ip family (nft backend; none otherwise). A tap banger made has one; a
// tap without one was made by a banger older than policies, and the
// daemon should ApplyPolicy to it.
func (n *Network) Policies() ([]string, error) {
	if gd, ok := n.fw.(guarder); ok {
		return gd.policies(context.Background())
	}
	return nil, nil
}

// Guards lists the tap guard tables present (nft backend; none otherwise).
func (n *Network) Guards() ([]string, error) {
	if gd, ok := n.fw.(guarder); ok {
		return gd.guards(context.Background())
	}
	return nil, nil
}

// guardTap (re)writes tap's guard and policy tables for g, with the
// addresses g's host names opened before still open (those of names
// its policy still allows; all of them for a tap the daemon has not
// seen since it started) and records what Admit needs to know.
func (n *Network) guardTap(ctx context.Context, gd guarder, tap string, g Guest) error {
	ng := n.names
	ng.mu.Lock()
	defer ng.mu.Unlock()
	var c carry
	var extra string
	if len(g.Policy.Names) > 0 {
		// What the sets hold now; none when the table is not there.
		kres, _ := gd.setElems(ctx, tap, resolvedSet)
		kinuse, _ := gd.setElems(ctx, tap, inuseSet)
		c = ng.carried(tap, g, kres, kinuse)
		extra = carryScript(tap, c, ng.now())
	}
	if err := gd.guard(ctx, n.cfg.Bridge, n.cfg.Subnet, tap, g, extra); err != nil {
		return err
	}
	ng.set(tap, g, c)
	return nil
}

func isNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf)
}
