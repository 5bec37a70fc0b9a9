package hostnet

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"time"
)

// nftTable is the nftables table that holds every rule banger makes; it is
// replaced whole by Ensure and deleted whole by Teardown, so banger never
// edits anyone else's rules.
const nftTable = "banger"

// ruleTag is the comment on every iptables rule banger makes, and the one
// way Teardown finds them.
const ruleTag = "banger"

// NftScript returns the nft script that replaces banger's table with the
// rules for bridge and subnet: masquerade of the subnet leaving by any other
// interface, and forward accept for traffic from the bridge and replies to
// it. Declaring the table before deleting it makes the delete succeed when
// no table exists, and nft applies the whole script as one transaction.
func NftScript(bridge string, subnet netip.Prefix) string {
	return fmt.Sprintf(`table ip %[1]s {}
delete table ip %[1]s
table ip %[1]s {
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		ip saddr %[3]s oifname != "%[2]s" masquerade comment "%[4]s"
	}
	chain forward {
		type filter hook forward priority filter; policy accept;
		iifname "%[2]s" accept comment "%[4]s"
		oifname "%[2]s" ct state related,established accept comment "%[4]s"
	}
}
`, nftTable, bridge, subnet.Masked(), ruleTag)
}

// iptablesRule is one rule: its table and its rule specification without
// the -A/-C/-D verb.
type iptablesRule struct {
	table string
	spec  []string
}

// iptablesRules returns the rules the iptables fallback adds, each as the
// argv tail after "iptables -t TABLE -A", tagged with banger's comment.
func iptablesRules(bridge string, subnet netip.Prefix) []iptablesRule {
	tag := []string{"-m", "comment", "--comment", ruleTag}
	return []iptablesRule{
		{"nat", append([]string{"POSTROUTING", "-s", subnet.Masked().String(), "!", "-o", bridge, "-j", "MASQUERADE"}, tag...)},
		{"filter", append([]string{"FORWARD", "-i", bridge, "-j", "ACCEPT"}, tag...)},
		{"filter", append([]string{"FORWARD", "-o", bridge, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"}, tag...)},
	}
}

// IptablesArgs returns the argv (without the binary) to apply verb ("-I",
// "-A", "-C" or "-D") to each of the fallback's rules.
func IptablesArgs(verb, bridge string, subnet netip.Prefix) [][]string {
	var out [][]string
	for _, r := range iptablesRules(bridge, subnet) {
		args := append([]string{"-w", "-t", r.table, verb}, r.spec...)
		out = append(out, args)
	}
	return out
}

// taggedIptablesRules picks, from "iptables -S" output, the rules that carry
// banger's comment, as "-A CHAIN ..." lines.
func taggedIptablesRules(listing string) []string {
	var out []string
	for _, line := range strings.Split(listing, "\n") {
		line = strings.TrimSpace(line)
		if strings.HasPrefix(line, "-A ") && strings.Contains(line, "--comment "+ruleTag) &&
			(strings.HasSuffix(line, "--comment "+ruleTag) || strings.Contains(line, "--comment "+ruleTag+" ")) {
			out = append(out, line)
		}
	}
	return out
}

// nftRules picks the rule lines out of "nft list table" output: every line
// inside a chain that is not the chain's type/policy declaration.
func nftRules(listing string) []string {
	var out []string
	depth := 0
	for _, line := range strings.Split(listing, "\n") {
		t := strings.TrimSpace(line)
		switch {
		case strings.HasSuffix(t, "{"):
			depth++
		case t == "}":
			depth--
		case depth >= 2 && t != "" && !strings.HasPrefix(t, "type "):
			out = append(out, t)
		}
	}
	return out
}

// run runs a command and returns its stdout, with stderr in the error.
func run(ctx context.Context, stdin string, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

// firewall applies and removes banger's forwarding and NAT rules.
type firewall interface {
	ensure(ctx context.Context, bridge string, subnet netip.Prefix) error
	teardown(ctx context.Context, bridge string, subnet netip.Prefix) error
	rules(ctx context.Context) ([]string, error)
}

// guarder is the part of a firewall that guards taps against spoofing
// and applies each VM's own policy (nft only).
type guarder interface {
	// guard (re)writes tap's guard and policy tables, then runs extra
	// in the same transaction.
	guard(ctx context.Context, bridge string, subnet netip.Prefix, tap string, g Guest, extra string) error
	// exec runs an nft script as one transaction.
	exec(ctx context.Context, script string) error
	// setElems lists the elements of set in tap's policy table with the
	// time each has left; an error when the table or set is not there.
	setElems(ctx context.Context, tap, set string) (map[netip.Addr]time.Duration, error)
	unguard(ctx context.Context, tap string) error
	guards(ctx context.Context) ([]string, error)
	policies(ctx context.Context) ([]string, error)
}

var _ guarder = nftFirewall{}

// nftFirewall keeps banger's rules in its own nft table. An accept there
// cannot override a drop in another table (a packet must pass every
// forward hook), so when iptables' FORWARD policy drops (as on hosts with
// Docker), it also inserts banger's tagged forward accepts with iptables.
type nftFirewall struct {
	bin      string
	iptables string // "" when iptables is not installed
}

func (f nftFirewall) ensure(ctx context.Context, bridge string, subnet netip.Prefix) error {
	if _, err := run(ctx, NftScript(bridge, subnet), f.bin, "-f", "-"); err != nil {
		return err
	}
	if f.iptables == "" {
		return nil
	}
	out, err := run(ctx, "", f.iptables, "-w", "-t", "filter", "-S", "FORWARD")
	if err != nil || !forwardPolicyDrops(out) {
		return nil // no iptables filter table in use, or it accepts
	}
	return iptablesFirewall{bin: f.iptables}.ensureRules(ctx, bridge, subnet, "filter")
}

// forwardPolicyDrops reports whether "iptables -S FORWARD" output sets a
// DROP policy.
func forwardPolicyDrops(listing string) bool {
	for _, line := range strings.Split(listing, "\n") {
		if strings.TrimSpace(line) == "-P FORWARD DROP" {
			return true
		}
	}
	return false
}

func (f nftFirewall) teardown(ctx context.Context, bridge string, subnet netip.Prefix) error {
	// Same idiom as the script: declare then delete, so a missing table is
	// not an error and nothing else is touched.
	_, err := run(ctx, fmt.Sprintf("table ip %[1]s {}\ndelete table ip %[1]s\n", nftTable), f.bin, "-f", "-")
	if f.iptables != "" {
		err = errors.Join(err, iptablesFirewall{bin: f.iptables}.teardown(ctx, bridge, subnet))
	}
	return err
}

func (f nftFirewall) rules(ctx context.Context) ([]string, error) {
	var all []string
	if f.iptables != "" {
		r, err := iptablesFirewall{bin: f.iptables}.rules(ctx)
		if err != nil {
			return nil, err
		}
		all = r
	}
	out, err := run(ctx, "", f.bin, "list", "tables", "ip")
	if err != nil {
		return nil, err
	}
	if !slices.Contains(strings.Split(out, "\n"), "table ip "+nftTable) {
		return all, nil
	}
	out, err = run(ctx, "", f.bin, "list", "table", "ip", nftTable)
	if err != nil {
		return nil, err
	}
	return append(all, nftRules(out)...), nil
}

type iptablesFirewall struct{ bin string }

func (f iptablesFirewall) ensure(ctx context.Context, bridge string, subnet netip.Prefix) error {
	if err := f.ensurePolicy(ctx, bridge, subnet); err != nil {
		return err
	}
	return f.ensureRules(ctx, bridge, subnet, "")
}

// The iptables backend's policy chains, in the mangle table.
const (
	iptInputChain   = "banger-input"
	iptForwardChain = "banger-forward"
)

// IptablesPolicyScript returns the iptables-restore input (for --noflush)
// that (re)fills the iptables backend's policy chains with ModeInternet
// for every guest: from the bridge, only replies on connections opened to
// a guest, DNS to the gateway and public destinations pass; the host's addresses, other guests and
// nonPublic are dropped.
//
// Why mangle: its INPUT and FORWARD chains run before the filter table's,
// where Docker and other tools put their accepts, so nothing there can
// shadow these drops, and nothing else banger knows of writes to mangle.
// Why one policy for all: without the nft tap guards a guest can send from
// another guest's address, so a rule keyed by source would be a choice the
// guest makes; these rules look only at the bridge and the destination.
func IptablesPolicyScript(bridge string, subnet netip.Prefix) string {
	subnet = subnet.Masked()
	gw := subnet.Addr().Next()
	tag := "-m comment --comment " + ruleTag
	var b strings.Builder
	fmt.Fprintf(&b, "*mangle\n:%s - [0:0]\n:%s - [0:0]\n", iptInputChain, iptForwardChain)
	for _, chain := range []string{iptInputChain, iptForwardChain} {
		fmt.Fprintf(&b, "-A %s -m conntrack --ctstate RELATED,ESTABLISHED --ctdir REPLY %s -j RETURN\n", chain, tag)
	}
	for _, proto := range []string{"udp", "tcp"} {
		fmt.Fprintf(&b, "-A %s -d %s/32 -p %s --dport 53 %s -j RETURN\n", iptInputChain, gw, proto, tag)
	}
	fmt.Fprintf(&b, "-A %s %s -j DROP\n", iptInputChain, tag)
	for _, p := range append([]netip.Prefix{subnet}, nonPublic...) {
		fmt.Fprintf(&b, "-A %s -d %s %s -j DROP\n", iptForwardChain, p, tag)
	}
	fmt.Fprintf(&b, "-A %s %s -j RETURN\nCOMMIT\n", iptForwardChain, tag)
	return b.String()
}

// iptablesPolicyJumps are the mangle rules that send traffic from the
// bridge to the policy chains, as argv tails after "-t mangle -I".
func iptablesPolicyJumps(bridge string) [][]string {
	tag := []string{"-m", "comment", "--comment", ruleTag}
	return [][]string{
		append([]string{"INPUT", "-i", bridge, "-j", iptInputChain}, tag...),
		append([]string{"FORWARD", "-i", bridge, "-j", iptForwardChain}, tag...),
	}
}

// ensurePolicy refills the policy chains in one iptables-restore
// transaction (declaring a chain with --noflush empties it), then adds
// the jumps to them at the head of mangle INPUT and FORWARD if missing.
func (f iptablesFirewall) ensurePolicy(ctx context.Context, bridge string, subnet netip.Prefix) error {
	restore := f.bin + "-restore"
	if _, err := exec.LookPath(restore); err != nil {
		return fmt.Errorf("%s not found next to %s: install the iptables package whole", restore, f.bin)
	}
	if _, err := run(ctx, IptablesPolicyScript(bridge, subnet), restore, "-w", "--noflush"); err != nil {
		return err
	}
	for _, j := range iptablesPolicyJumps(bridge) {
		if _, err := run(ctx, "", f.bin, append([]string{"-w", "-t", "mangle", "-C"}, j...)...); err == nil {
			continue
		}
		if _, err := run(ctx, "", f.bin, append([]string{"-w", "-t", "mangle", "-I", j[0], "1"}, j[1:]...)...); err != nil {
			return err
		}
	}
	return nil
}

// ensureRules inserts, at the head of their chains so that no earlier
// rule of someone else drops guest traffic first, banger's rules that are
// not present yet; only those of table when table is not "".
func (f iptablesFirewall) ensureRules(ctx context.Context, bridge string, subnet netip.Prefix, table string) error {
	check := IptablesArgs("-C", bridge, subnet)
	add := IptablesArgs("-I", bridge, subnet)
	for i := range add {
		if table != "" && add[i][2] != table {
			continue
		}
		if _, err := run(ctx, "", f.bin, check[i]...); err == nil {
			continue // present already
		}
		if _, err := run(ctx, "", f.bin, add[i]...); err != nil {
			return err
		}
	}
	return nil
}

// iptablesTables are the tables banger's iptables rules live in.
var iptablesTables = []string{"nat", "filter", "mangle"}

// teardown deletes every rule carrying banger's tag, whatever bridge or
// subnet it names, so rules left by an earlier configuration go too, then
// the policy chains.
func (f iptablesFirewall) teardown(ctx context.Context, _ string, _ netip.Prefix) error {
	var errs []error
	for _, table := range iptablesTables {
		out, err := run(ctx, "", f.bin, "-w", "-t", table, "-S")
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, rule := range taggedIptablesRules(out) {
			args, err := splitRule(rule)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			args[0] = "-D"
			if _, err := run(ctx, "", f.bin, append([]string{"-w", "-t", table}, args...)...); err != nil {
				errs = append(errs, err)
			}
		}
	}
	out, err := run(ctx, "", f.bin, "-w", "-t", "mangle", "-S")
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	for _, chain := range []string{iptInputChain, iptForwardChain} {
		if !slices.Contains(strings.Split(out, "\n"), "-N "+chain) {
			continue
		}
		if _, err := run(ctx, "", f.bin, "-w", "-t", "mangle", "-F", chain); err != nil {
			errs = append(errs, err)
		} else if _, err := run(ctx, "", f.bin, "-w", "-t", "mangle", "-X", chain); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (f iptablesFirewall) rules(ctx context.Context) ([]string, error) {
	var all []string
	for _, table := range iptablesTables {
		out, err := run(ctx, "", f.bin, "-w", "-t", table, "-S")
		if err != nil {
			return nil, err
		}
		for _, r := range taggedIptablesRules(out) {
			all = append(all, "-t "+table+" "+r)
		}
	}
	return all, nil
}

// splitRule splits an "iptables -S" line into arguments. iptables quotes
// only values with spaces, with double quotes; banger's rules have none, so
// a line with a quote is refused rather than guessed at.
func splitRule(line string) ([]string, error) {
	if strings.ContainsAny(line, `"'\`) {
		return nil, fmt.Errorf("iptables rule %q has quoting banger does not parse", line)
	}
	return strings.Fields(line), nil
}
