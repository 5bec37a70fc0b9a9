package hostnet

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"sort"
	"strings"
)

// tapPrefix starts every tap banger makes, so Taps can tell banger's taps
// from others without any record.
const tapPrefix = "bt"

var (
	hexIDRE   = regexp.MustCompile(`^[0-9a-f]{12,}$`)
	tapNameRE = regexp.MustCompile(`^` + tapPrefix + `[0-9a-f]{12}$`)
)

// TapName returns the tap device name of a VM: "bt" and 12 hex digits, 14
// characters, within the kernel's 15-character limit. For banger's hex VM
// ids the digits are the id's prefix, so the tap is recognisable; any other
// id is hashed, so the result is always a valid, deterministic name.
func TapName(vmID string) string {
	id := strings.ToLower(vmID)
	if hexIDRE.MatchString(id) {
		return tapPrefix + id[:12]
	}
	sum := sha256.Sum256([]byte(vmID))
	return tapPrefix + hex.EncodeToString(sum[:6])
}

// isTapName reports whether name has the shape TapName gives.
func isTapName(name string) bool { return tapNameRE.MatchString(name) }

// AllocateIP returns the lowest host address of subnet after the gateway
// (the first host address) that is not in used. It fails when the subnet is
// not IPv4 or has no free address left. The broadcast address is never
// handed out.
func AllocateIP(subnet netip.Prefix, used []netip.Addr) (netip.Addr, error) {
	if !subnet.IsValid() || !subnet.Addr().Is4() {
		return netip.Addr{}, fmt.Errorf("subnet %s is not an IPv4 prefix", subnet)
	}
	if subnet.Bits() > 30 {
		return netip.Addr{}, fmt.Errorf("subnet %s is too small: use a prefix of /30 or larger", subnet)
	}
	subnet = subnet.Masked()
	taken := make(map[netip.Addr]bool, len(used))
	for _, a := range used {
		taken[a.Unmap()] = true
	}
	gw := subnet.Addr().Next()
	for a := gw.Next(); subnet.Contains(a); a = a.Next() {
		if !subnet.Contains(a.Next()) {
			break // a is the broadcast address
		}
		if !taken[a] {
			return a, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("subnet %s is full: every guest address is in use", subnet)
}

// MACForIP derives a guest MAC from its IPv4 address: the locally
// administered, unicast prefix 02:ba followed by the four address bytes,
// e.g. 172.16.0.2 → 02:ba:ac:10:00:02. Distinct IPs give distinct MACs.
func MACForIP(ip netip.Addr) string {
	b := ip.Unmap().As4()
	return fmt.Sprintf("02:ba:%02x:%02x:%02x:%02x", b[0], b[1], b[2], b[3])
}

// BridgeMAC is the bridge's own MAC: the guest MAC pattern of the gateway
// address, which no guest is given.
func BridgeMAC(gw netip.Addr) net.HardwareAddr {
	mac, _ := net.ParseMAC(MACForIP(gw))
	return mac
}

// HostsLines renders /etc/hosts lines "<ip>\t<name>.<suffix> <name>" for
// the given VMs, sorted by name so the output is stable.
func HostsLines(suffix string, vms map[string]netip.Addr) string {
	names := make([]string, 0, len(vms))
	for n := range vms {
		names = append(names, n)
	}
	sort.Strings(names)
	suffix = strings.Trim(suffix, ".")
	var b strings.Builder
	for _, n := range names {
		fqdn := n
		if suffix != "" {
			fqdn = n + "." + suffix
		}
		fmt.Fprintf(&b, "%s\t%s %s\n", vms[n], fqdn, n)
	}
	return b.String()
}
