package hostnet

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/banger/banger/internal/testenv"
)

// policyLab is a host with banger's network in the test namespace, as a
// daemon would have it, plus:
//
//   - an uplink to an "internet" namespace (198.51.100.2) that also holds
//     a public address further away (203.0.113.10), a metadata service
//     (169.254.169.254) and a private LAN address (10.99.0.5), each
//     routed by the host through the uplink; every one has a listener on
//     the wildcard address, port 80;
//   - two more addresses of the host itself, one private on loopback
//     (10.123.0.1) and one public on the uplink (192.0.2.1), and listeners on
//     the host's wildcard address, ports 8080 and 8081, so the gateway and
//     both of them answer, as a careless host service would;
//   - banger's DNS responder on the gateway, forwarding to labResolver
//     in the "internet" namespace and gated by the Network;
//   - guests, each a namespace behind a port of the bridge, listening on
//     port 22.
//
// Every address lives in a namespace the test made; nothing leaves them.
type policyLab struct {
	t    *testing.T
	n    *Network
	inet string
}

type labGuest struct {
	ns   string
	port string // the host side, named like a tap
	g    Guest
}

func newPolicyLab(t *testing.T, n *Network) *policyLab {
	ctx := context.Background()
	if err := n.Ensure(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := n.Teardown(ctx); err != nil {
			t.Error(err)
		}
		assertClean(t, n)
		if ps, err := n.Policies(); err != nil || len(ps) != 0 {
			t.Errorf("policy tables left: %v, %v", ps, err)
		}
	})
	l := &policyLab{t: t, n: n, inet: addNetns(t, "banger-test-inet-")}
	sh(t, "ip", "link", "set", "lo", "up")
	sh(t, "ip", "addr", "add", "10.123.0.1/32", "dev", "lo")
	sh(t, "ip", "link", "add", "up0", "type", "veth", "peer", "name", "eth0", "netns", l.inet)
	sh(t, "ip", "addr", "add", "198.51.100.1/24", "dev", "up0")
	sh(t, "ip", "addr", "add", "192.0.2.1/32", "dev", "up0")
	sh(t, "ip", "link", "set", "up0", "up")
	sh(t, "ip", "-n", l.inet, "link", "set", "lo", "up")
	sh(t, "ip", "-n", l.inet, "addr", "add", "198.51.100.2/24", "dev", "eth0")
	for _, a := range []string{"203.0.113.10/32", "169.254.169.254/32", "10.99.0.5/32"} {
		sh(t, "ip", "-n", l.inet, "addr", "add", a, "dev", "lo")
	}
	sh(t, "ip", "-n", l.inet, "link", "set", "eth0", "up")
	for _, r := range []string{"203.0.113.0/24", "169.254.169.254/32", "10.99.0.0/16"} {
		sh(t, "ip", "route", "add", r, "via", "198.51.100.2")
	}
	l.listen("", "0.0.0.0:8080")
	l.listen("", "0.0.0.0:8081")
	l.listen(l.inet, "0.0.0.0:80")
	l.echo(l.inet, "0.0.0.0:7")
	d := NewDNS("vm", func(string) (netip.Addr, bool) { return netip.Addr{}, false },
		slog.New(slog.NewTextHandler(io.Discard, nil)))
	// Other names go to the "internet"'s resolver, when a test serves
	// one (serveLabResolver), through the gate of allowed names.
	d.Forward([]string{labResolver})
	d.Gate(n)
	if err := d.Start(net.JoinHostPort(n.Gateway().String(), "53")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return l
}

// listen serves, in namespace ns ("" for the host's), connections on addr
// with the word "ok".
func (l *policyLab) listen(ns, addr string) {
	var ln net.Listener
	var err error
	if ns == "" {
		ln, err = net.Listen("tcp", addr)
	} else {
		err = inNetnsErr(ns, func() error {
			var err error
			ln, err = net.Listen("tcp", addr)
			return err
		})
	}
	if err != nil {
		l.t.Fatalf("listen on %s in %q: %v", addr, ns, err)
	}
	l.t.Cleanup(func() { ln.Close() })
	testenv.Serve(ln, func(c net.Conn) { _, _ = c.Write([]byte("ok")) })
}

// echo serves, in namespace ns, connections on addr that echo each line.
func (l *policyLab) echo(ns, addr string) {
	var ln net.Listener
	if err := inNetnsErr(ns, func() error {
		var err error
		ln, err = net.Listen("tcp", addr)
		return err
	}); err != nil {
		l.t.Fatalf("listen on %s in %q: %v", addr, ns, err)
	}
	l.t.Cleanup(func() { ln.Close() })
	testenv.Serve(ln, func(c net.Conn) { _, _ = io.Copy(c, c) })
}

// guest adds a guest namespace with address ip behind a bridge port made
// as CreateTap makes one (a veth stands in for the tap so the guest has a
// real network stack), with policy p.
func (l *policyLab) guest(ip string, p Policy) *labGuest {
	t := l.t
	addr := netip.MustParseAddr(ip)
	mac, _ := net.ParseMAC(MACForIP(addr))
	lg := &labGuest{ns: addNetns(t, "banger-test-guest-"), port: TapName(fmt.Sprintf("%012x%020d", addr.As4()[3], 0)),
		g: Guest{MAC: mac, IP: addr, Policy: p}}
	sh(t, "ip", "link", "add", lg.port, "type", "veth", "peer", "name", "eth0", "netns", lg.ns)
	t.Cleanup(func() {
		if gd, ok := l.n.fw.(guarder); ok {
			if err := gd.unguard(context.Background(), lg.port); err != nil {
				t.Error(err)
			}
		}
	})
	sh(t, "ip", "-n", lg.ns, "link", "set", "eth0", "address", mac.String())
	sh(t, "ip", "-n", lg.ns, "addr", "add", ip+"/24", "dev", "eth0")
	sh(t, "ip", "-n", lg.ns, "link", "set", "eth0", "up")
	sh(t, "ip", "-n", lg.ns, "link", "set", "lo", "up")
	sh(t, "ip", "-n", lg.ns, "route", "add", "default", "via", l.n.Gateway().String())
	link, err := netlink.LinkByName(lg.port)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.n.attachPort(context.Background(), link, lg.g); err != nil {
		t.Fatal(err)
	}
	l.listen(lg.ns, ":22")
	return lg
}

// setPolicy changes a running guest's policy.
func (l *policyLab) setPolicy(lg *labGuest, p Policy) {
	l.t.Helper()
	lg.g.Policy = p
	if err := l.n.ApplyPolicy(context.Background(), lg.port, lg.g); err != nil {
		l.t.Fatalf("ApplyPolicy %s: %v", p, err)
	}
}

// dialEcho connects from namespace ns (a guest's) to the lab's echo
// service on 203.0.113.10:7, failing the test when it cannot, and
// returns one round trip of a byte over that connection, which is
// closed when the test ends.
func dialEcho(t *testing.T, ns string) (echo func() error) {
	t.Helper()
	var conn net.Conn
	if err := inNetnsErr(ns, func() error {
		var err error
		conn, err = net.DialTimeout("tcp", "203.0.113.10:7", time.Second)
		return err
	}); err != nil {
		t.Fatalf("guest connect to the echo service: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	return func() error {
		conn.SetDeadline(time.Now().Add(time.Second))
		if _, err := conn.Write([]byte("x")); err != nil {
			return err
		}
		_, err := io.ReadFull(conn, make([]byte, 1))
		return err
	}
}

// inNetnsErr runs fn on an OS thread switched into the named namespace;
// unlike inNamedNetns it may run on any goroutine.
func inNetnsErr(name string, fn func() error) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return err
	}
	defer orig.Close()
	target, err := netns.GetFromName(name)
	if err != nil {
		return err
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		return err
	}
	defer netns.Set(orig)
	return fn()
}

// reach tries target from ns: "tcp HOST:PORT" must answer "ok", and
// "dns HOST" must answer a query over both UDP and TCP.
func reach(ns, target string) error {
	const timeout = time.Second
	kind, addr, _ := strings.Cut(target, " ")
	return inNetnsErr(ns, func() error {
		if kind == "dns" {
			for _, proto := range []string{"udp", "tcp"} {
				c := &dns.Client{Net: proto, Timeout: timeout}
				m := new(dns.Msg)
				m.SetQuestion("other.vm.", dns.TypeA)
				if _, _, err := c.Exchange(m, net.JoinHostPort(addr, "53")); err != nil {
					return fmt.Errorf("dns over %s: %w", proto, err)
				}
			}
			return nil
		}
		c, err := net.DialTimeout("tcp", addr, timeout)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(timeout))
		b, err := io.ReadAll(c)
		if err != nil || string(b) != "ok" {
			return fmt.Errorf("read %q, %v", b, err)
		}
		return nil
	})
}

// Targets the lab offers.
const (
	tGateway   = "tcp 172.16.0.1:8080"
	tGateway2  = "tcp 172.16.0.1:8081"
	tHostLocal = "tcp 10.123.0.1:8080"
	tHostPub   = "tcp 192.0.2.1:8080"
	tMetadata  = "tcp 169.254.169.254:80"
	tLAN       = "tcp 10.99.0.5:80"
	tUplink    = "tcp 198.51.100.2:80"
	tPublic    = "tcp 203.0.113.10:80"
	tDNS       = "dns 172.16.0.1"
)

var allTargets = []string{tGateway, tGateway2, tHostLocal, tHostPub, tMetadata, tLAN, tUplink, tPublic, tDNS}

// expect checks, all at once, that from lg exactly the targets in ok are
// reached (others is a map of extra targets, such as sibling guests, to
// whether each must be reached).
func (l *policyLab) expect(what string, lg *labGuest, ok []string, others map[string]bool) {
	l.t.Helper()
	want := map[string]bool{}
	for _, tg := range allTargets {
		want[tg] = slices.Contains(ok, tg)
	}
	for tg, w := range others {
		want[tg] = w
	}
	l.check(what, lg, want)
}

// check checks, all at once, that from lg each target is reached or not
// as want says.
func (l *policyLab) check(what string, lg *labGuest, want map[string]bool) {
	l.t.Helper()
	var mu sync.Mutex
	var wg sync.WaitGroup
	got := map[string]error{}
	for tg := range want {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := reach(lg.ns, tg)
			mu.Lock()
			got[tg] = err
			mu.Unlock()
		}()
	}
	wg.Wait()
	for tg, w := range want {
		switch err := got[tg]; {
		case w && err != nil:
			l.t.Errorf("%s: %s from %s failed, want reached: %v", what, tg, lg.g.IP, err)
		case !w && err == nil:
			l.t.Errorf("%s: %s from %s reached, want blocked", what, tg, lg.g.IP)
		}
	}
}

// dockerLike makes the iptables filter table look like a Docker host's
// with a permissive admin: FORWARD policy DROP, a DOCKER-USER chain at
// the head of FORWARD that accepts everything, and INPUT accepting
// everything first. None of it may open what banger's policy closes.
func dockerLike(t *testing.T, bin string) {
	sh(t, bin, "-w", "-P", "FORWARD", "DROP")
	sh(t, bin, "-w", "-N", "DOCKER-USER")
	sh(t, bin, "-w", "-A", "DOCKER-USER", "-j", "ACCEPT")
	sh(t, bin, "-w", "-I", "FORWARD", "1", "-j", "DOCKER-USER")
	sh(t, bin, "-w", "-I", "INPUT", "1", "-j", "ACCEPT")
}

// TestPolicyNft plays two guests under every mode and exception with the
// nft backend, changing the policy of the running first guest.
func TestPolicyNft(t *testing.T) {
	if !insideTestNetns(t, "nft") {
		return
	}
	testPolicyNft(t, false)
}

// TestPolicyNftDocker: the same behind a Docker-like iptables setup that
// accepts everything ahead of banger.
func TestPolicyNftDocker(t *testing.T) {
	if !insideTestNetns(t, "nft", "iptables") {
		return
	}
	dockerLike(t, "iptables")
	testPolicyNft(t, true)
}

func testPolicyNft(t *testing.T, short bool) {
	l := newPolicyLab(t, newTestNetwork(t, "nft"))
	a := l.guest("172.16.0.2", Policy{})
	b := l.guest("172.16.0.3", Policy{})
	toB, toA := "tcp 172.16.0.3:22", "tcp 172.16.0.2:22"
	if ps, err := l.n.Policies(); err != nil || !slices.Equal(ps, []string{policyTable(a.port), policyTable(b.port)}) {
		t.Errorf("Policies = %v, %v; want both guests'", ps, err)
	}

	l.expect("internet (default)", a, []string{tDNS, tUplink, tPublic}, map[string]bool{toB: false})
	l.expect("internet (default), other guest", b, []string{tDNS, tUplink, tPublic}, map[string]bool{toA: false})
	if short {
		return
	}

	l.setPolicy(a, mustPolicy(t, "internet", []string{"172.16.0.1:8080/tcp", "10.123.0.1", "169.254.169.254:80", "10.99.0.0/16"}, nil, []string{"172.16.0.3"}))
	l.expect("internet with allows", a, []string{tDNS, tUplink, tPublic, tGateway, tHostLocal, tMetadata, tLAN}, map[string]bool{toB: true})
	l.expect("the other guest, allowed to by nobody", b, []string{tDNS, tUplink, tPublic}, map[string]bool{toA: false})

	l.setPolicy(a, mustPolicy(t, "internet", []string{"172.16.0.1:8080/udp"}, []string{"203.0.113.0/24"}, nil))
	l.expect("internet with a deny, and an allow of the wrong protocol", a, []string{tDNS, tUplink}, map[string]bool{toB: false})

	// A connection the guest opened under internet is cut when its policy
	// becomes none; the host's connections into the guest are not.
	l.setPolicy(a, Policy{})
	echo := dialEcho(t, a.ns)
	if err := echo(); err != nil {
		t.Fatalf("echo under internet: %v", err)
	}
	l.setPolicy(a, mustPolicy(t, "none", nil, nil, nil))
	if err := echo(); err == nil {
		t.Error("a connection opened under internet still carries data under none")
	}
	l.expect("none", a, nil, map[string]bool{toB: false})
	if c, err := net.DialTimeout("tcp", "172.16.0.2:22", time.Second); err != nil {
		t.Errorf("the host cannot reach a guest under none: %v", err)
	} else {
		c.Close()
	}

	l.setPolicy(a, mustPolicy(t, "none", []string{"203.0.113.10:80/tcp"}, nil, nil))
	l.expect("none with one allow", a, []string{tPublic}, map[string]bool{toB: false})

	l.setPolicy(a, mustPolicy(t, "open", nil, []string{"10.99.0.5"}, nil))
	l.expect("open with a deny", a, []string{tDNS, tUplink, tPublic, tGateway, tGateway2, tHostLocal, tHostPub, tMetadata}, map[string]bool{toB: false})

	// Around the host: frames sent straight to the other guest's MAC,
	// which the bridge would deliver without routing them, with B allowed.
	l.setPolicy(a, mustPolicy(t, "internet", nil, nil, []string{"172.16.0.3"}))
	l.check("allowed to B by routing", a, map[string]bool{tDNS: true, toB: true})
	sh(t, "ip", "-n", a.ns, "neigh", "replace", "172.16.0.3", "lladdr", b.g.MAC.String(), "dev", "eth0", "nud", "permanent")
	sh(t, "ip", "-n", b.ns, "neigh", "replace", "172.16.0.2", "lladdr", a.g.MAC.String(), "dev", "eth0", "nud", "permanent")
	l.check("allowed to B, but bridged", a, map[string]bool{toB: false})
	// Either the guard's forward chain or the port isolation alone stops
	// it; only without both does it pass, so the test shows them at work.
	for _, lg := range []*labGuest{a, b} {
		sh(t, "ip", "link", "set", "dev", lg.port, "type", "bridge_slave", "isolated", "off")
	}
	l.check("bridged, ports not isolated", a, map[string]bool{toB: false})
	for _, lg := range []*labGuest{a, b} {
		sh(t, "nft", "delete", "chain", "bridge", guardTable(lg.port), "isolate")
	}
	l.check("bridged, ports not isolated, no guard forward chain", a, map[string]bool{toB: true})
	sh(t, "ip", "-n", a.ns, "neigh", "del", "172.16.0.3", "dev", "eth0")
	sh(t, "ip", "-n", b.ns, "neigh", "del", "172.16.0.2", "dev", "eth0")
	l.setPolicy(a, Policy{})
	l.setPolicy(b, Policy{})

	// IPv6: the bridge has no address, and guest to guest is dropped.
	br, _ := netlink.LinkByName(testBridge)
	if as, err := netlink.AddrList(br, netlink.FAMILY_V6); err != nil || len(as) != 0 {
		t.Errorf("bridge IPv6 addresses = %v, %v; want none", as, err)
	}
	sh(t, "ip", "-n", a.ns, "addr", "add", "fd00:ba::2/64", "dev", "eth0", "nodad")
	sh(t, "ip", "-n", b.ns, "addr", "add", "fd00:ba::3/64", "dev", "eth0", "nodad")
	if err := reach(a.ns, "tcp [fd00:ba::3]:22"); err == nil {
		t.Error("guest reached another guest over IPv6")
	}
}

func mustPolicy(t *testing.T, mode string, allow, deny, vms []string) Policy {
	t.Helper()
	p, err := ParsePolicy(mode, allow, deny, vms)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func testPolicyIptables(t *testing.T, bin string, docker bool) {
	path, err := exec.LookPath(bin)
	if err != nil {
		t.Skipf("no %s", bin)
	}
	if docker {
		dockerLike(t, bin)
	}
	n := newTestNetwork(t, "iptables")
	n.fw = iptablesFirewall{bin: path}
	l := newPolicyLab(t, n)
	a := l.guest("172.16.0.2", Policy{})
	l.guest("172.16.0.3", Policy{})
	toB := "tcp 172.16.0.3:22"
	l.expect("internet (default) with "+bin, a, []string{tDNS, tUplink, tPublic}, map[string]bool{toB: false})
	// Control: without the jumps to the policy chains everything answers,
	// so what was blocked above was blocked by them; Ensure puts them back.
	for _, j := range iptablesPolicyJumps(testBridge) {
		sh(t, path, append([]string{"-w", "-t", "mangle", "-D"}, j...)...)
	}
	l.expect("no policy chains with "+bin, a, allTargets, map[string]bool{toB: true})
	if err := n.Ensure(context.Background()); err != nil {
		t.Fatal(err)
	}
	l.expect("internet (default) again with "+bin, a, []string{tDNS, tUplink, tPublic}, map[string]bool{toB: false})
	for _, p := range []Policy{{Mode: ModeOpen}, {Mode: ModeNone}, {Allow: []Rule{{Prefix: netip.MustParsePrefix("10.0.0.0/8")}}}} {
		g := a.g
		g.Policy = p
		if err := n.ApplyPolicy(context.Background(), a.port, g); !errors.Is(err, ErrPolicyNeedsNft) {
			t.Errorf("ApplyPolicy %s with iptables: %v, want ErrPolicyNeedsNft", p, err)
		}
		if err := n.CreateTap(context.Background(), "bt0000000000ff", g); !errors.Is(err, ErrPolicyNeedsNft) {
			t.Errorf("CreateTap with policy %s with iptables: %v, want ErrPolicyNeedsNft", p, err)
		}
	}
	if _, err := netlink.LinkByName("bt0000000000ff"); err == nil {
		t.Error("a refused CreateTap made its tap")
	}
	if err := n.ApplyPolicy(context.Background(), a.port, a.g); err != nil {
		t.Errorf("ApplyPolicy of the default with iptables: %v", err)
	}
}

func TestPolicyIptables(t *testing.T) {
	if insideTestNetns(t, "iptables") {
		testPolicyIptables(t, "iptables", false)
	}
}

func TestPolicyIptablesDocker(t *testing.T) {
	if insideTestNetns(t, "iptables") {
		testPolicyIptables(t, "iptables", true)
	}
}

func TestPolicyIptablesLegacy(t *testing.T) {
	if insideTestNetns(t, "iptables-legacy") {
		testPolicyIptables(t, "iptables-legacy", true)
	}
}
