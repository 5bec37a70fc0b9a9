// Package guestinit is the pure side of banger's guest boot hook: it owns
// the banger.* kernel command line (Cmdline writes it for the daemon,
// ParseCmdline reads it in the guest) and renders
// the files the guest needs from them (hostname, /etc/hosts,
// /etc/resolv.conf, the authorized_keys file) and the sshd configuration
// banger's images carry.
//
// It does no I/O but InstallHostKey, which works under a root directory it
// is given so that it can be tested on a temporary one. cmd/banger-init
// applies what it returns inside the guest; internal/image writes the sshd
// configuration into new images. It must not know how the host builds
// disks or starts VMMs.
package guestinit

import (
	"encoding/base64"
	"fmt"
	"net/netip"
	"regexp"
	"strings"
)

// Paths inside the guest that the boot contract fixes.
const (
	// AuthorizedKeysPath is where banger-init writes the daemon's key; the
	// image's sshd reads it first.
	AuthorizedKeysPath = "/run/banger/authorized_keys"
	// InitPath is where images carry the banger-init binary.
	InitPath = "/usr/local/sbin/banger-init"
	// SSHDConfigPath is the drop-in the image carries with banger's sshd options.
	SSHDConfigPath = "/etc/ssh/sshd_config.d/banger.conf"
	// WorkMount is where the work disk is mounted.
	WorkMount = "/root"
	// HostKeyPath is the SSH host key the image's sshd serves (the image's
	// own, replaced at boot by the VM's when its work disk carries one).
	HostKeyPath = "/etc/ssh/ssh_host_ed25519_key"
	// WorkHostKey is where the daemon writes the VM's own SSH host key on a
	// new work disk, relative to the disk's root (so, in the guest, under
	// WorkMount); the public key is next to it with ".pub".
	WorkHostKey = ".banger/ssh_host_ed25519_key"
)

// Params are the banger.* parameters of the kernel command line, plus the
// standard ones banger-init needs.
type Params struct {
	Addr     netip.Prefix // banger.ip: guest address and prefix, e.g. 172.16.0.2/24
	Gateway  netip.Addr   // banger.gw: default route; invalid when absent
	DNS      []netip.Addr // banger.dns: resolvers (comma-separated)
	Hostname string       // banger.hostname
	Key      string       // banger.key decoded: the authorized_keys line(s)
	WorkDisk string       // banger.work: block device mounted at /root; empty when absent
	Root     string       // root=
	Init     string       // init=
	// Envd (banger.envd=1): banger-init as PID 1 starts E2B's envd at
	// boot, locked with a token nobody knows until the daemon gives it
	// the sandbox's (guestctl's envd op), so that the sandbox's create
	// finds it running instead of waiting for it to start.
	Envd bool
}

var hostnameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// ParseCmdline reads the parameters from a kernel command line (the content
// of /proc/cmdline). Parameters other than banger.*, root= and init= are
// ignored; a later parameter overrides an earlier one, as in the kernel.
// A malformed banger.* value is an error naming the parameter and what is
// allowed. Missing parameters are left zero: callers decide what is required
// (see Params.Validate).
func ParseCmdline(cmdline string) (Params, error) {
	var p Params
	for _, field := range strings.Fields(cmdline) {
		k, v, ok := strings.Cut(field, "=")
		if !ok {
			continue
		}
		var err error
		switch k {
		case "banger.ip":
			p.Addr, err = netip.ParsePrefix(v)
			if err == nil && !p.Addr.Addr().Is4() {
				err = fmt.Errorf("not IPv4")
			}
		case "banger.gw":
			p.Gateway, err = netip.ParseAddr(v)
		case "banger.dns":
			p.DNS = nil
			for _, s := range strings.Split(v, ",") {
				if s == "" {
					continue
				}
				a, e := netip.ParseAddr(s)
				if e != nil {
					err = e
					break
				}
				p.DNS = append(p.DNS, a)
			}
		case "banger.hostname":
			if !hostnameRE.MatchString(v) {
				err = fmt.Errorf("allowed: lower-case letters, digits and inner '-', at most 63 characters")
			}
			p.Hostname = v
		case "banger.key":
			var b []byte
			b, err = base64.StdEncoding.DecodeString(v)
			if err == nil {
				p.Key = strings.TrimSpace(string(b))
				if p.Key == "" {
					err = fmt.Errorf("decodes to nothing")
				}
			}
		case "banger.work":
			if !strings.HasPrefix(v, "/dev/") {
				err = fmt.Errorf("allowed: a /dev/ path")
			}
			p.WorkDisk = v
		case "banger.envd":
			if v != "1" {
				err = fmt.Errorf("allowed: 1")
			}
			p.Envd = v == "1"
		case "root":
			p.Root = v
		case "init":
			p.Init = v
		default:
			continue
		}
		if err != nil {
			return Params{}, fmt.Errorf("kernel parameter %s=%q: %v", k, v, err)
		}
	}
	return p, nil
}

// Cmdline writes the kernel command line that ParseCmdline reads: the
// kernel's own defaults (trimmed; left out when blank), then root=<Root> rw
// (banger's root disks are always writable), init=, banger.ip, banger.gw,
// banger.dns, banger.hostname, banger.key (base64, so that the key's spaces
// do not split it), banger.work and banger.envd. Zero fields are left
// out. Values are
// written as given: ones ParseCmdline would refuse (a hostname with a
// space, say) must be caught before.
func Cmdline(kernelDefault string, p Params) string {
	var parts []string
	if d := strings.TrimSpace(kernelDefault); d != "" {
		parts = append(parts, d)
	}
	if p.Root != "" {
		parts = append(parts, "root="+p.Root, "rw")
	}
	if p.Init != "" {
		parts = append(parts, "init="+p.Init)
	}
	if p.Addr.IsValid() {
		parts = append(parts, "banger.ip="+p.Addr.String())
	}
	if p.Gateway.IsValid() {
		parts = append(parts, "banger.gw="+p.Gateway.String())
	}
	if len(p.DNS) > 0 {
		dns := make([]string, len(p.DNS))
		for i, a := range p.DNS {
			dns[i] = a.String()
		}
		parts = append(parts, "banger.dns="+strings.Join(dns, ","))
	}
	if p.Hostname != "" {
		parts = append(parts, "banger.hostname="+p.Hostname)
	}
	if p.Key != "" {
		parts = append(parts, "banger.key="+base64.StdEncoding.EncodeToString([]byte(p.Key)))
	}
	if p.WorkDisk != "" {
		parts = append(parts, "banger.work="+p.WorkDisk)
	}
	if p.Envd {
		parts = append(parts, "banger.envd=1")
	}
	return strings.Join(parts, " ")
}

// Validate reports the first parameter banger-init cannot do without:
// banger.ip, banger.hostname and banger.key. The gateway must lie in the
// address's subnet when given.
func (p Params) Validate() error {
	switch {
	case !p.Addr.IsValid():
		return fmt.Errorf("kernel parameter banger.ip missing (want e.g. banger.ip=172.16.0.2/24)")
	case p.Hostname == "":
		return fmt.Errorf("kernel parameter banger.hostname missing")
	case p.Key == "":
		return fmt.Errorf("kernel parameter banger.key missing (base64 of an authorized_keys line)")
	case p.Gateway.IsValid() && !p.Addr.Masked().Contains(p.Gateway):
		return fmt.Errorf("banger.gw=%s is outside banger.ip=%s", p.Gateway, p.Addr)
	}
	return nil
}

// Hosts renders /etc/hosts naming the guest by its hostname and address.
func Hosts(p Params) string {
	var b strings.Builder
	b.WriteString("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
	if p.Hostname != "" {
		b.WriteString("127.0.1.1\t" + p.Hostname + "\n")
		if p.Addr.IsValid() {
			b.WriteString(p.Addr.Addr().String() + "\t" + p.Hostname + "\n")
		}
	}
	return b.String()
}

// ResolvConf renders /etc/resolv.conf from banger.dns; with no resolver it
// names none, so lookups fail fast rather than time out.
func ResolvConf(p Params) string {
	var b strings.Builder
	b.WriteString("# written by banger-init from the kernel command line\n")
	for _, a := range p.DNS {
		b.WriteString("nameserver " + a.String() + "\n")
	}
	b.WriteString("options timeout:2 attempts:2\n")
	return b.String()
}

// AuthorizedKeys renders the authorized_keys file from banger.key.
func AuthorizedKeys(p Params) string {
	if p.Key == "" {
		return ""
	}
	return p.Key + "\n"
}

// SSHDConfig is the sshd drop-in banger images carry: root login by key
// only, banger's key file first, and the options that make a login fast
// (no PAM, no DNS lookups, no banner waits).
func SSHDConfig() string {
	return `# banger: root by key only; the daemon's key is written at boot.
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
AuthorizedKeysFile ` + AuthorizedKeysPath + ` .ssh/authorized_keys
UsePAM no
UseDNS no
GSSAPIAuthentication no
PrintMotd no
PrintLastLog no
HostKey ` + HostKeyPath + `
`
}
