package hostnet

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
)

// Guest is who a tap belongs to: the VM's MAC and IPv4 address. A tap
// created for a Guest is guarded: the VM behind it can send only as
// itself.
type Guest struct {
	MAC net.HardwareAddr
	IP  netip.Addr
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
// its own in the bridge family whose one chain drops, among the frames
// entering the bridge from tap, those whose Ethernet source is not the
// guest's MAC, those that are not IPv4, ARP or IPv6 (VLAN tags included),
// ARP whose sender is not the guest (0.0.0.0 is let through: an address
// probe), and IPv4 whose source is not the guest's address.
//
// Why: without it a VM can answer ARP for another VM's address or the
// gateway's, or send from another VM's MAC so that the bridge forwards that
// VM's frames to it, and so read traffic meant for others, such as a
// workspace stream on the data channel. One table per tap, so that making
// or removing one guard never touches another, and the guards outlive a
// daemon restart with the taps they guard.
func GuardScript(tap string, g Guest) string {
	return fmt.Sprintf(`table bridge %[1]s {}
delete table bridge %[1]s
table bridge %[1]s {
	chain guard {
		type filter hook prerouting priority filter; policy accept;
		iifname != "%[2]s" accept
		ether saddr != %[3]s drop comment "%[5]s"
		ether type != { ip, arp, ip6 } drop comment "%[5]s"
		arp saddr ether != %[3]s drop comment "%[5]s"
		arp saddr ip != { %[4]s, 0.0.0.0 } drop comment "%[5]s"
		ip saddr != %[4]s drop comment "%[5]s"
	}
}
`, guardTable(tap), tap, g.MAC, g.IP, ruleTag)
}

// unguardScript removes tap's guard table; a missing one is not an error.
func unguardScript(tap string) string {
	return fmt.Sprintf("table bridge %[1]s {}\ndelete table bridge %[1]s\n", guardTable(tap))
}

// guardTables picks banger's guard tables out of `nft list tables bridge`.
func guardTables(listing string) []string {
	var out []string
	for _, line := range strings.Split(listing, "\n") {
		if name, ok := strings.CutPrefix(strings.TrimSpace(line), "table bridge "); ok && strings.HasPrefix(name, guardPrefix) {
			out = append(out, name)
		}
	}
	return out
}

func (f nftFirewall) guard(ctx context.Context, tap string, g Guest) error {
	_, err := run(ctx, GuardScript(tap, g), f.bin, "-f", "-")
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
	return guardTables(out), nil
}
