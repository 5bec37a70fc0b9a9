package e2e

import (
	"fmt"
	"net"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/banger/banger/internal/shell"
	"github.com/banger/banger/internal/testenv"
	"github.com/miekg/dns"
)

// banner is what the test's listeners send, so a probe proves it reached
// one of them and not something else on that port.
const banner = "banger-probe"

// reachable reports whether guest vm opens a TCP connection to ip:port and
// reads want from it, within a few seconds. A policy drop makes the
// connect hang until the timeout.
func reachable(h *Harness, vm, ip string, port int, want string) bool {
	h.t.Helper()
	return reachAll(h, vm, probe{ip, port, want})[0]
}

// probe is one connection reachAll tries: to ip:port, a success when
// the peer's first bytes are want ("" for the connect alone).
type probe struct {
	ip   string
	port int
	want string
}

// bannerAt is the probe of ip:port expecting the test's banner.
func bannerAt(ip string, port int) probe { return probe{ip, port, banner} }

// reachAll tries several probes at once from one exec in guest vm, each
// bounded to 4 s; the answers are in the probes' order. A dropped connection costs its whole timeout, so probes that
// should fail are tried together, not one after another.
func reachAll(h *Harness, vm string, ps ...probe) []bool {
	h.t.Helper()
	var b strings.Builder
	b.WriteString("d=$(mktemp -d)\n")
	for i, p := range ps {
		inner := fmt.Sprintf("exec 3<>/dev/tcp/%s/%d && head -c %d <&3", p.ip, p.port, len(p.want))
		fmt.Fprintf(&b, "(timeout 4 bash -c %s > \"$d/o%d\" 2>/dev/null; echo $? > \"$d/c%d\") &\n", shell.Quote(inner), i, i)
	}
	b.WriteString("wait\n")
	for i := range ps {
		fmt.Fprintf(&b, "printf '%%s %%s\\n' \"$(cat \"$d/c%d\")\" \"$(tr -d '\\n' < \"$d/o%d\")\"\n", i, i)
	}
	b.WriteString("rm -rf \"$d\"\n")
	out := h.MustRun("vm", "exec", vm, "--", "bash", "-c", b.String())
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	if len(lines) != len(ps) {
		h.t.Fatalf("reachAll from %s: %d answers for %d probes: %q", vm, len(lines), len(ps), out)
	}
	oks := make([]bool, len(ps))
	for i, l := range lines {
		code, got, _ := strings.Cut(l, " ")
		oks[i] = code == "0" && strings.HasPrefix(got, ps[i].want)
		h.t.Logf("%s → %s:%d: reachable=%v", vm, ps[i].ip, ps[i].port, oks[i])
	}
	return oks
}

// noneReached says whether no probe succeeded.
func noneReached(oks []bool) bool { return !slices.Contains(oks, true) }

// resolves reports whether guest vm resolves name through its nameserver,
// the daemon's DNS responder on the gateway.
func resolves(h *Harness, vm, name string) bool {
	h.t.Helper()
	_, _, code := h.Run("vm", "exec", vm, "--", "timeout", "8", "getent", "hosts", name)
	h.t.Logf("%s resolves %s: %v", vm, name, code == 0)
	return code == 0
}

// serveResolver serves DNS on addr (UDP and TCP) inside namespace ns
// until the test ends: A answer for every name, a stand-in for the
// host's resolver.
func serveResolver(t *testing.T, ns, addr, answer string) {
	t.Helper()
	h := dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(req)
		if len(req.Question) == 1 && req.Question[0].Qtype == dns.TypeA {
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: req.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60},
				A: net.ParseIP(answer)})
		}
		_ = w.WriteMsg(m)
	})
	pc, err := testenv.ListenPacketInNetns(ns, "udp", addr)
	if err != nil {
		t.Fatalf("resolver udp %s in %s: %v", addr, ns, err)
	}
	l, err := testenv.ListenInNetns(ns, "tcp", addr)
	if err != nil {
		pc.Close()
		t.Fatalf("resolver tcp %s in %s: %v", addr, ns, err)
	}
	for _, s := range []*dns.Server{{PacketConn: pc, Handler: h}, {Listener: l, Handler: h}} {
		go func() { _ = s.ActivateAndServe() }()
		t.Cleanup(func() { _ = s.Shutdown() })
	}
}

// uplink gives namespace ns a route to an "internet" namespace of its
// own, 198.51.100.2 on a veth, that holds the public addresses addrs,
// each with a banner listener on port; the namespaces go when the test
// ends.
func uplink(t *testing.T, ns string, addrs []string, port int) {
	t.Helper()
	inet := testenv.Netns(t)
	for _, args := range [][]string{
		{"-n", ns, "link", "add", "up0", "type", "veth", "peer", "name", "eth0", "netns", inet},
		{"-n", ns, "addr", "add", "198.51.100.1/24", "dev", "up0"},
		{"-n", ns, "link", "set", "up0", "up"},
		{"-n", inet, "addr", "add", "198.51.100.2/24", "dev", "eth0"},
		{"-n", inet, "link", "set", "eth0", "up"},
		{"-n", ns, "route", "add", "203.0.113.0/24", "via", "198.51.100.2"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	for _, a := range addrs {
		if out, err := exec.Command("ip", "-n", inet, "addr", "add", a+"/32", "dev", "lo").CombinedOutput(); err != nil {
			t.Fatalf("add %s in %s: %v: %s", a, inet, err, out)
		}
		l, err := testenv.ListenInNetns(inet, "tcp", net.JoinHostPort(a, fmt.Sprint(port)))
		if err != nil {
			t.Fatalf("listen on %s:%d in %s: %v", a, port, inet, err)
		}
		t.Cleanup(func() { l.Close() })
		go serveBanner(l)
		c, err := testenv.DialInNetns(ns, "tcp", net.JoinHostPort(a, fmt.Sprint(port)), 3*time.Second)
		if err != nil {
			t.Fatalf("%s:%d does not answer from %s: %v", a, port, ns, err)
		}
		c.Close()
	}
}

// serveBanner accepts on l until it is closed, greeting each connection.
func serveBanner(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		_, _ = c.Write([]byte(banner))
		_ = c.Close()
	}
}

// TestGuestNetworkPolicy: a real guest reaches, from inside the test
// namespace, only what its policy lets it: by default none of the host's
// addresses (gateway, another host address, the metadata address) nor a
// sibling VM; each once allowed; nothing at all (DNS included) with
// --net none; with --net none --allow example.test, the address the
// name resolves to, only after the guest resolved it, and nothing else.
// Names other than VMs' resolve through the daemon's responder, which
// asks the host's resolver (a stand-in on the other host address, which
// the guest itself cannot reach). Every address here is in the daemon's
// test namespace or an "internet" namespace routed from it.
func TestGuestNetworkPolicy(t *testing.T) {
	const resolver = "10.250.0.1:53"
	h := NewHarness(t, "BANGER_DNS_UPSTREAMS="+resolver)
	const port = 8000
	const hostAddr = "10.250.0.1"          // another address of the host, as on a LAN
	const metadata = "169.254.169.254"     // the cloud metadata address
	pa := h.StartVM("pa")                  // the default: internet
	pb := h.StartVM("pb", "--net", "open") // everything but other VMs
	gw := "172.16.0.1"

	for _, a := range []string{hostAddr, metadata} {
		if out, err := exec.Command("ip", "-n", h.Netns, "addr", "add", a+"/32", "dev", "lo").CombinedOutput(); err != nil {
			t.Fatalf("add %s to lo in %s: %v: %s", a, h.Netns, err, out)
		}
	}
	// One listener per address, each inside the namespace.
	for _, a := range []string{gw, hostAddr, metadata} {
		l, err := testenv.ListenInNetns(h.Netns, "tcp", net.JoinHostPort(a, fmt.Sprint(port)))
		if err != nil {
			t.Fatalf("listen on %s:%d in %s: %v", a, port, h.Netns, err)
		}
		t.Cleanup(func() { l.Close() })
		go serveBanner(l)
	}
	// The listeners answer from the namespace itself.
	for _, a := range []string{gw, hostAddr, metadata} {
		c, err := testenv.DialInNetns(h.Netns, "tcp", net.JoinHostPort(a, fmt.Sprint(port)), 3*time.Second)
		if err != nil {
			t.Fatalf("listener %s:%d does not answer in the namespace: %v", a, port, err)
		}
		c.Close()
	}

	if got := h.VM("pa").Net; got.String() != "internet" {
		t.Fatalf("pa's policy = %+v, want internet", got)
	}
	if got := h.VM("pb").Net; got.String() != "open" {
		t.Fatalf("pb's policy = %+v, want open", got)
	}

	// internet: none of the host's addresses, nor the sibling; DNS works.
	if got := reachAll(h, "pa", bannerAt(gw, port), bannerAt(hostAddr, port), bannerAt(metadata, port), probe{pb.GuestIP, 22, "SSH-2.0"}); !noneReached(got) {
		t.Fatalf("internet: pa reached the host's %s, %s, %s on %d or pb's sshd: %v", gw, hostAddr, metadata, port, got)
	}
	if !resolves(h, "pa", "pb.vm") {
		t.Fatalf("internet: pa cannot resolve pb.vm on the gateway")
	}
	serveResolver(t, h.Netns, resolver, "203.0.113.7")
	if out, _, code := h.Run("vm", "exec", "pa", "--", "timeout", "8", "getent", "hosts", "example.test"); code != 0 || !strings.Contains(out, "203.0.113.7") {
		t.Fatalf("internet: pa resolves example.test as %q (exit %d), want the host resolver's 203.0.113.7", out, code)
	}
	if reachable(h, "pa", "10.250.0.1", 53, "") {
		t.Fatalf("internet: pa reached the host's resolver itself")
	}
	// open: the host's addresses, still not the sibling.
	for _, a := range []string{gw, hostAddr, metadata} {
		if !reachable(h, "pb", a, port, banner) {
			t.Fatalf("open: pb did not reach %s:%d", a, port)
		}
	}
	if reachable(h, "pb", pa.GuestIP, 22, "SSH-2.0") {
		t.Fatalf("open: pb reached pa's sshd without --allow-vm")
	}

	// Allowed one by one, live, on the running VM.
	h.MustRun("vm", "net", "pa", "--allow", gw+":"+fmt.Sprint(port))
	if got := reachAll(h, "pa", bannerAt(gw, port), bannerAt(hostAddr, port), bannerAt(metadata, port)); !got[0] || got[1] || got[2] {
		t.Fatalf("--allow %s:%d must open that alone: %v", gw, port, got)
	}
	h.MustRun("vm", "net", "pa", "--allow", gw+":"+fmt.Sprint(port), "--allow", hostAddr, "--allow", metadata+":"+fmt.Sprint(port)+"/tcp")
	for _, a := range []string{gw, hostAddr, metadata} {
		if !reachable(h, "pa", a, port, banner) {
			t.Fatalf("allowed: pa did not reach %s:%d", a, port)
		}
	}
	h.MustRun("vm", "net", "pa", "--allow-vm", "pb")
	if !reachable(h, "pa", pb.GuestIP, 22, "SSH-2.0") {
		t.Fatalf("--allow-vm pb: pa did not reach pb's sshd")
	}
	if reachable(h, "pb", pa.GuestIP, 22, "SSH-2.0") {
		t.Fatalf("pa's --allow-vm pb let pb reach pa")
	}
	// Deny wins over allow.
	h.MustRun("vm", "net", "pa", "--deny", "169.254.0.0/16")
	if got := reachAll(h, "pa", bannerAt(metadata, port), bannerAt(hostAddr, port)); got[0] || !got[1] {
		t.Fatalf("--deny 169.254.0.0/16 must drop the allowed metadata address alone: %v", got)
	}
	shown := h.MustRun("vm", "net", "pa")
	for _, want := range []string{"mode:     internet", "10.250.0.1", "169.254.169.254:8000/tcp", "deny:     169.254.0.0/16", "allow-vm: pb"} {
		if !strings.Contains(shown, want) {
			t.Fatalf("vm net pa shows %q, lacking %q", shown, want)
		}
	}

	// Refused input names the bad value and changes nothing.
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--allow-vm", "ghost"}, `allow-vm "ghost": no such VM`},
		{[]string{"--allow", "192.168.1.5/24"}, "did you mean 192.168.1.0/24"},
		{[]string{"--net", "wide"}, `invalid network mode "wide"`},
		{[]string{"--allow", pb.GuestIP}, "allow-vm, not allow"},
	} {
		_, errOut, code := h.Run(append([]string{"vm", "net", "pa"}, tc.args...)...)
		if code == 0 || !strings.Contains(errOut, tc.want) {
			t.Errorf("vm net pa %s: code %d, stderr %q, want %q", strings.Join(tc.args, " "), code, errOut, tc.want)
		}
	}
	if again := h.MustRun("vm", "net", "pa"); again != shown {
		t.Fatalf("refused changes changed the policy:\n%s\nwas\n%s", again, shown)
	}

	// none: nothing out, not even DNS on the gateway; the daemon's own
	// connections to the guest (vm exec) still work.
	h.MustRun("vm", "net", "pa", "--reset", "--net", "none")
	if resolves(h, "pa", "pb.vm") {
		t.Fatalf("none: pa still resolves names on the gateway")
	}
	if !noneReached(reachAll(h, "pa", bannerAt(gw, port), probe{gw, 53, ""})) {
		t.Fatalf("none: pa still reaches the gateway")
	}

	// none with a host name: the addresses the name resolves to, only
	// once the guest has resolved it. The stand-in resolver answers
	// every name with 203.0.113.7, a public address in an "internet"
	// namespace behind the test namespace (an answer's address must be
	// public to be opened); 203.0.113.8 there is in no answer.
	uplink(t, h.Netns, []string{"203.0.113.7", "203.0.113.8"}, port)
	h.MustRun("vm", "net", "pa", "--reset", "--net", "none", "--allow", "example.test")
	if shown := h.MustRun("vm", "net", "pa"); !strings.Contains(shown, "example.test") {
		t.Fatalf("vm net pa shows %q, lacking the host name", shown)
	}
	if reachable(h, "pa", "203.0.113.7", port, banner) {
		t.Fatalf("--allow example.test: pa reached its address before resolving it")
	}
	if !resolves(h, "pa", "other.test") || reachable(h, "pa", "203.0.113.7", port, banner) {
		t.Fatalf("--allow example.test: resolving another name must work and open nothing")
	}
	if out, _, code := h.Run("vm", "exec", "pa", "--", "timeout", "8", "getent", "hosts", "example.test"); code != 0 || !strings.Contains(out, "203.0.113.7") {
		t.Fatalf("--allow example.test: pa resolves it as %q (exit %d)", out, code)
	}
	if !reachable(h, "pa", "203.0.113.7", port, banner) {
		t.Fatalf("--allow example.test: pa did not reach its address after resolving it")
	}
	if !noneReached(reachAll(h, "pa", bannerAt("203.0.113.8", port), bannerAt(gw, port), bannerAt(hostAddr, port))) {
		t.Fatalf("--allow example.test: pa reached an address no answer gave")
	}
	// A pause and resume keeps what the name opened: the resumed guest
	// reaches the address again without looking the name up.
	h.MustRun("vm", "pause", "pa")
	h.MustRun("vm", "resume", "pa")
	if !reachable(h, "pa", "203.0.113.7", port, banner) {
		t.Fatalf("--allow example.test: a pause and resume closed what the name opened")
	}
	// The same across a kill -9 of bangerd while paused: the next daemon
	// finds what was opened beside the VM.
	h.MustRun("vm", "pause", "pa")
	pid := h.DaemonPID()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitGone(t, pid)
	h.MustRun("vm", "resume", "pa")
	if !reachable(h, "pa", "203.0.113.7", port, banner) {
		t.Fatalf("--allow example.test: a pause, daemon restart and resume closed what the name opened")
	}
	if _, errOut, code := h.Run("vm", "net", "pa", "--net", "internet"); code == 0 || !strings.Contains(errOut, `allow "example.test": host names are allowed only with network mode none`) {
		t.Fatalf("a host name under internet: code %d, stderr %q", code, errOut)
	}

	// Deleting pb takes it out of pa's allow-vm: its address goes to the
	// next VM made.
	h.MustRun("vm", "net", "pa", "--reset", "--allow-vm", "pb")
	h.MustRun("vm", "delete", "--force", "pb")
	if got := h.VM("pa").Net; len(got.AllowVMs) != 0 {
		t.Fatalf("pa still names a deleted vm: %+v", got)
	}
	h.MustRun("vm", "delete", "--force", "pa")
	h.AssertNoLeaks()
}
