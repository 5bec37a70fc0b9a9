package hostnet

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"
)

// Guest is who a tap belongs to: the VM's MAC and IPv4 address, and what
// it may reach. A tap created for a Guest is guarded: the VM behind it can
// send only as itself, and only where Policy lets it (the zero Policy is
// ModeInternet).
type Guest struct {
	MAC    net.HardwareAddr
	IP     netip.Addr
	Policy Policy
	// Held makes CreateTap leave the tap down: attached and guarded, but
	// a disabled bridge port that passes no frame either way and learns
	// no address, until RaiseTap. A VM restored from a snapshot sends
	// with its parent's MAC and address until it is told its own.
	Held bool
}

// check says why g cannot be guarded, if it cannot.
func (g Guest) check() error {
	if len(g.MAC) != 6 {
		return fmt.Errorf("guest MAC %q is not an Ethernet address", g.MAC)
	}
	if !g.IP.Is4() {
		return fmt.Errorf("guest address %s is not IPv4", g.IP)
	}
	return nil
}

// guardPrefix starts the name of every tap's guard table, in nftables'
// bridge family.
const guardPrefix = nftTable + "-"

func guardTable(tap string) string { return guardPrefix + tap }

// GuardScript returns the nft script that (re)makes tap's guard: a table of
// its own in the bridge family. Its prerouting chain drops, among the
// frames entering the bridge from tap, those whose Ethernet source is not
// the guest's MAC, those that are not IPv4 or ARP (IPv6 and VLAN tags
// included), ARP whose sender is not the guest (0.0.0.0 is let through: an
// address probe), and IPv4 whose source is not the guest's address. Its
// forward chain drops every frame the bridge would pass from tap straight
// to another port.
//
// Why: without it a VM can answer ARP for another VM's address or the
// gateway's, or send from another VM's MAC so that the bridge forwards that
// VM's frames to it, and so read traffic meant for others, such as a
// workspace stream on the data channel. Pinning the source address is also
// what lets the policy table (PolicyScript) judge a packet by its source.
// Bridged frames never reach the IP forward hook where the policy sits, so
// VMs meet only through the host's routing (the bridge answers ARP for the
// other VMs, see Ensure), where the policy applies. Guests are IPv4-only;
// IPv6 would reach the host's link-local addresses past the policy. One
// table per tap, so that making or removing one guard never touches
// another, and the guards outlive a daemon restart with the taps they
// guard.
func GuardScript(tap string, g Guest) string {
	return fmt.Sprintf(`table bridge %[1]s {}
delete table bridge %[1]s
table bridge %[1]s {
	chain guard {
		type filter hook prerouting priority filter; policy accept;
		iifname != "%[2]s" accept
		ether saddr != %[3]s drop comment "%[5]s"
		ether type != { ip, arp } drop comment "%[5]s"
		arp saddr ether != %[3]s drop comment "%[5]s"
		arp saddr ip != { %[4]s, 0.0.0.0 } drop comment "%[5]s"
		ip saddr != %[4]s drop comment "%[5]s"
	}
	chain isolate {
		type filter hook forward priority filter; policy accept;
		iifname "%[2]s" drop comment "%[5]s"
	}
}
`, guardTable(tap), tap, g.MAC, g.IP, ruleTag)
}

// unguardScript removes tap's guard and policy tables; missing ones are
// not an error.
func unguardScript(tap string) string {
	return fmt.Sprintf("table bridge %[1]s {}\ndelete table bridge %[1]s\ntable ip %[2]s {}\ndelete table ip %[2]s\n",
		guardTable(tap), policyTable(tap))
}

// guardTables picks banger's per-tap tables out of `nft list tables
// FAMILY`.
func guardTables(listing, family string) []string {
	var out []string
	for _, line := range strings.Split(listing, "\n") {
		if name, ok := strings.CutPrefix(strings.TrimSpace(line), "table "+family+" "); ok && strings.HasPrefix(name, guardPrefix) {
			out = append(out, name)
		}
	}
	return out
}

// guard (re)makes tap's guard and policy tables in one transaction, so a
// tap is never guarded without a policy or the other way round; extra
// (elements for the policy's sets) goes in the same transaction.
func (f nftFirewall) guard(ctx context.Context, bridge string, subnet netip.Prefix, tap string, g Guest, extra string) error {
	policy, err := PolicyScript(bridge, subnet, tap, g)
	if err != nil {
		return err
	}
	_, err = run(ctx, GuardScript(tap, g)+policy+extra, f.bin, "-f", "-")
	return err
}

func (f nftFirewall) setElems(ctx context.Context, tap, set string) (map[netip.Addr]time.Duration, error) {
	out, err := run(ctx, "", f.bin, "-j", "list", "set", "ip", policyTable(tap), set)
	if err != nil {
		return nil, err
	}
	return setElems(out)
}

func (f nftFirewall) exec(ctx context.Context, script string) error {
	_, err := run(ctx, script, f.bin, "-f", "-")
	return err
}

func (f nftFirewall) unguard(ctx context.Context, tap string) error {
	_, err := run(ctx, unguardScript(tap), f.bin, "-f", "-")
	return err
}

// guards lists the guard tables present.
func (f nftFirewall) guards(ctx context.Context) ([]string, error) {
	out, err := run(ctx, "", f.bin, "list", "tables", "bridge")
	if err != nil {
		return nil, err
	}
	return guardTables(out, "bridge"), nil
}

// policies lists the policy tables present.
func (f nftFirewall) policies(ctx context.Context) ([]string, error) {
	out, err := run(ctx, "", f.bin, "list", "tables", "ip")
	if err != nil {
		return nil, err
	}
	return guardTables(out, "ip"), nil
}
