package hostnet

import (
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

func TestGuardScript(t *testing.T) {
	s := GuardScript("bgabc", testGuest)
	for _, want := range []string{
		"delete table bridge banger-bgabc",
		`iifname != "bgabc" accept`,
		"ether saddr != 02:ba:ac:10:00:05 drop",
		"ether type != { ip, arp } drop",
		"arp saddr ether != 02:ba:ac:10:00:05 drop",
		"arp saddr ip != { 172.16.0.5, 0.0.0.0 } drop",
		"ip saddr != 172.16.0.5 drop",
		"type filter hook forward priority filter; policy accept;\n\t\tiifname \"bgabc\" drop",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("guard script lacks %q:\n%s", want, s)
		}
	}
	got := guardTables("table bridge banger-bg1\ntable bridge other\ntable bridge banger-bg2\ntable ip banger-bg3\n", "bridge")
	if strings.Join(got, ",") != "banger-bg1,banger-bg2" {
		t.Errorf("guardTables = %v", got)
	}
	for _, g := range []Guest{{IP: testGuest.IP}, {MAC: testGuest.MAC}, {MAC: testGuest.MAC, IP: netip.MustParseAddr("fe80::1")}} {
		if err := g.check(); err == nil {
			t.Errorf("guest %+v accepted", g)
		}
	}
}

// openTap attaches to a persistent tap as a VMM would, so the test can
// send frames as the guest.
func openTap(t *testing.T, name string) *os.File {
	t.Helper()
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		t.Fatal(err)
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		t.Fatalf("attach to tap %s: %v", name, err)
	}
	f := os.NewFile(uintptr(fd), name)
	t.Cleanup(func() { f.Close() })
	return f
}

// arpRequest is an Ethernet frame from src asking who has target, telling
// sender.
func arpRequest(src net.HardwareAddr, sender, target netip.Addr) []byte {
	b := make([]byte, 42)
	copy(b[0:6], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	copy(b[6:12], src)
	binary.BigEndian.PutUint16(b[12:], unix.ETH_P_ARP)
	binary.BigEndian.PutUint16(b[14:], 1)             // Ethernet
	binary.BigEndian.PutUint16(b[16:], unix.ETH_P_IP) // IPv4
	b[18], b[19] = 6, 4                               // address lengths
	binary.BigEndian.PutUint16(b[20:], 1)             // request
	copy(b[22:28], src)                               // sender MAC
	copy(b[28:32], sender.AsSlice())                  // sender IP
	copy(b[38:42], target.AsSlice())                  // target IP
	return b
}

// udpFrame is an Ethernet frame carrying a UDP datagram from src/from to
// dst/to:port.
func udpFrame(src, dst net.HardwareAddr, from, to netip.Addr, port uint16, payload string) []byte {
	b := make([]byte, 14+20+8+len(payload))
	copy(b[0:6], dst)
	copy(b[6:12], src)
	binary.BigEndian.PutUint16(b[12:], unix.ETH_P_IP)
	ip := b[14:34]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(20+8+len(payload)))
	ip[8], ip[9] = 64, unix.IPPROTO_UDP
	copy(ip[12:16], from.AsSlice())
	copy(ip[16:20], to.AsSlice())
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(ip[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(ip[10:], ^uint16(sum))
	udp := b[34:]
	binary.BigEndian.PutUint16(udp[0:], 40000)
	binary.BigEndian.PutUint16(udp[2:], port)
	binary.BigEndian.PutUint16(udp[4:], uint16(8+len(payload)))
	copy(udp[8:], payload) // checksum 0: none, allowed over IPv4
	return b
}

// TestTapGuard plays a VM behind a guarded tap: what it sends as itself
// reaches the host; ARP and IPv4 claiming another address, and frames
// from another MAC, do not. The same spoof without the guard gets through,
// so the test shows the guard, not the host, stopping it.
func TestTapGuard(t *testing.T) {
	if !insideTestNetns(t, "nft") {
		return
	}
	ctx := context.Background()
	n := newTestNetwork(t, "nft")
	if err := n.Ensure(ctx); err != nil {
		t.Fatal(err)
	}
	defer n.Teardown(ctx)
	name := TapName("feedfacefeedfacefeedfacefeedface")
	// Open, so that what the guard lets through reaches the host's test
	// socket; policies are tested on their own.
	g := testGuest
	g.Policy = Policy{Mode: ModeOpen}
	if err := n.CreateTap(ctx, name, g); err != nil {
		t.Fatal(err)
	}
	defer n.DeleteTap(ctx, name)
	tap := openTap(t, name)
	// The port forwards only once the tap has carrier, which opening it
	// gives a moment later; a frame sent before is lost.
	for deadline := time.Now().Add(3 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		out := sh(t, "bridge", "link", "show", "dev", name)
		if strings.Contains(out, "state forwarding") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("bridge port %s never forwards: %s", name, out)
		}
	}
	br, err := netlink.LinkByName(testBridge)
	if err != nil {
		t.Fatal(err)
	}
	gw := n.Gateway()
	send := func(frame []byte) {
		t.Helper()
		if _, err := tap.Write(frame); err != nil {
			t.Fatalf("send frame: %v", err)
		}
	}
	// neighbour waits up to wait for the host to know ip, and returns its MAC.
	neighbour := func(ip netip.Addr, wait time.Duration) string {
		deadline := time.Now().Add(wait)
		for {
			ns, _ := netlink.NeighList(br.Attrs().Index, netlink.FAMILY_V4)
			for _, e := range ns {
				if e.IP.Equal(ip.AsSlice()) && len(e.HardwareAddr) > 0 {
					return e.HardwareAddr.String()
				}
			}
			if time.Now().After(deadline) {
				return ""
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	other := net.HardwareAddr{0x02, 0xba, 0xac, 0x10, 0x00, 0x99}

	// As itself: the host learns the guest's address.
	send(arpRequest(testGuest.MAC, testGuest.IP, gw))
	if got := neighbour(testGuest.IP, 3*time.Second); got != testGuest.MAC.String() {
		t.Fatalf("the host did not learn the guest from its own ARP (neighbour %q)", got)
	}
	// Another address from its own MAC, and its own address from another
	// MAC: neither reaches the host.
	spoofIP := netip.MustParseAddr("172.16.0.7")
	send(arpRequest(testGuest.MAC, spoofIP, gw))
	send(arpRequest(other, netip.MustParseAddr("172.16.0.8"), gw))
	if got := neighbour(spoofIP, time.Second); got != "" {
		t.Errorf("ARP claiming %s got through: the host maps it to %s", spoofIP, got)
	}
	if got := neighbour(netip.MustParseAddr("172.16.0.8"), 0); got != "" {
		t.Errorf("ARP from MAC %s got through", other)
	}
	tapLink, _ := netlink.LinkByName(name)
	fdb, _ := netlink.NeighList(tapLink.Attrs().Index, unix.AF_BRIDGE)
	for _, e := range fdb {
		if e.HardwareAddr.String() == other.String() {
			t.Errorf("the bridge learned the spoofed MAC %s on the tap", other)
		}
	}

	// IPv4: a datagram from the guest's address arrives, one from another
	// address does not.
	pc, err := net.ListenPacket("udp4", net.JoinHostPort(gw.String(), "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	port := uint16(pc.LocalAddr().(*net.UDPAddr).Port)
	send(udpFrame(testGuest.MAC, br.Attrs().HardwareAddr, spoofIP, gw, port, "spoofed"))
	send(udpFrame(testGuest.MAC, br.Attrs().HardwareAddr, testGuest.IP, gw, port, "genuine"))
	buf := make([]byte, 64)
	for {
		pc.SetReadDeadline(time.Now().Add(3 * time.Second))
		k, from, err := pc.ReadFrom(buf)
		if err != nil {
			t.Fatalf("the guest's own datagram did not arrive: %v", err)
		}
		if string(buf[:k]) == "spoofed" {
			t.Errorf("a datagram from %s got through", from)
			continue
		}
		break
	}

	// Without the guard the same ARP spoof gets through.
	if err := n.fw.(guarder).unguard(ctx, name); err != nil {
		t.Fatal(err)
	}
	send(arpRequest(testGuest.MAC, spoofIP, gw))
	if got := neighbour(spoofIP, 3*time.Second); got == "" {
		t.Error("an unguarded ARP spoof did not reach the host either: the test proves nothing")
	}
}
