// Package config holds bangerd's settings and where they come from: built-in
// defaults, then a JSON config file, then BANGER_* environment variables,
// then command-line flags (the caller applies flags last). It does no other
// I/O than reading the config file.
package config

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/banger/banger/internal/model"
)

// Config is bangerd's configuration.
type Config struct {
	StateDir  string `json:"state_dir"`  // default /var/lib/banger
	Socket    string `json:"socket"`     // default <state_dir>/bangerd.sock
	CacheDir  string `json:"cache_dir"`  // build caches keyed by recipe; default /var/cache/banger
	Group     string `json:"group"`      // optional group allowed on the socket and state dir
	LogLevel  string `json:"log_level"`  // debug, info, warn, error
	Netns     string `json:"netns"`      // run all networking inside this network namespace ("" = host)
	VMM       string `json:"vmm"`        // auto, firecracker, qemu
	Accel     string `json:"accel"`      // auto, kvm, tcg
	Subnet    string `json:"subnet"`     // guest subnet, default 172.16.0.0/24 (gateway .1)
	Bridge    string `json:"bridge"`     // default banger0
	DNSSuffix string `json:"dns_suffix"` // default "vm"
	// DNSUpstreams are where guests' queries for other names go:
	// comma-separated "IP" or "IP:port"; "" (the default) takes the
	// nameservers of /etc/resolv.conf as bangerd sees it (in a netns,
	// /etc/netns/NAME/resolv.conf when there is one); "none" answers
	// only VM names.
	DNSUpstreams string `json:"dns_upstreams"`
	// WorkspaceTransport is how workspace streams reach guests: "tcp" (the
	// token-guarded plain data channel, default; fast under emulation) or
	// "ssh" (always encrypted, for hosts whose VMs must not see each
	// other's traffic even when one spoofs the bridge).
	WorkspaceTransport string `json:"workspace_transport"`
	// Binaries; looked up on PATH when empty. BinDir is where banger-init
	// and the other banger binaries live (default: bangerd's own directory).
	Firecracker string `json:"firecracker"`
	QEMU        string `json:"qemu"`
	BinDir      string `json:"bin_dir"`
	// Defaults for new VMs and images.
	DefaultImage  string `json:"default_image"`  // default "default"
	DefaultKernel string `json:"default_kernel"` // default catalog entry name
	CPUs          int    `json:"cpus"`           // default 2
	Memory        string `json:"memory"`         // default "1G"
	Disk          string `json:"disk"`           // work disk, default "4G"
	// The most one VM may ask for: a request is a stranger's input, and
	// the host is shared.
	MaxCPUs   int    `json:"max_cpus"`   // default 16
	MaxMemory string `json:"max_memory"` // default "16G"
	MaxDisk   string `json:"max_disk"`   // default "256G"
	// MaxConsoleLog caps a VM's console and VMM logs: the guest writes
	// them. Past it the file's end moves to <log>.1 and the file restarts.
	MaxConsoleLog string `json:"max_console_log"` // default "8M"
	// MaxCopyOut and MaxCopyOutEntries bound one read out of a guest (a
	// file, or a tar of a tree, e.g. for `vm cp`): the guest decides how
	// much it sends, the host's disk receives it.
	MaxCopyOut        string `json:"max_copy_out"`         // default "16G"
	MaxCopyOutEntries int    `json:"max_copy_out_entries"` // default 1048576
	// The E2B-compatible control plane (docs/e2b.md): off when E2BListen
	// is empty; E2BDomain is the suffix of sandbox host names (default
	// localhost:PORT).
	E2BListen string `json:"e2b_listen"`
	E2BDomain string `json:"e2b_domain"`
	// E2BTLS serves the E2B listener over HTTPS with banger's own CA.
	E2BTLS bool `json:"e2b_tls"`
	// E2BDNS, an IP:PORT, makes the listener also answer DNS there for
	// the names under its domain (docs/e2b.md); "" for none.
	E2BDNS string `json:"e2b_dns"`
	// WarmPool is how many spare VMs the daemon keeps restored ahead of
	// time from each warm-start template (0, the default: none), at most
	// MaxWarmPool. Each spare holds its memory while it waits.
	WarmPool int `json:"warm_pool"`
	// WarmOnFirstUse has the daemon make the warm-start template of a
	// shape in the background after a create of that shape booted for
	// want of one (off by default: a template costs a boot and disk).
	WarmOnFirstUse bool `json:"warm_on_first_use"`
	// ChainDepth bounds the qcow2 files a snapshot's system disk reads
	// through (itself and the snapshots it descends from): a snapshot
	// deeper than it is flattened in the background. 1 to MaxChainDepth.
	ChainDepth int `json:"chain_depth"` // default 8
}

// MaxChainDepth bounds chain_depth: a VM's chain is its own overlay
// over a snapshot's, and storage.CheckQcow2Chain refuses chains of more
// than 32 files.
const MaxChainDepth = 16

// MaxWarmPool bounds warm_pool: spares hold memory and CPU while idle.
const MaxWarmPool = 8

// Defaults returns the built-in configuration.
func Defaults() Config {
	return Config{
		StateDir:           "/var/lib/banger",
		CacheDir:           "/var/cache/banger",
		LogLevel:           "info",
		VMM:                "auto",
		Accel:              "auto",
		Subnet:             "172.16.0.0/24",
		Bridge:             "banger0",
		DNSSuffix:          "vm",
		WorkspaceTransport: "tcp",
		DefaultImage:       "default",
		DefaultKernel:      "debian-cloud-bookworm",
		CPUs:               2,
		Memory:             "1G",
		Disk:               "4G",
		MaxCPUs:            16,
		MaxMemory:          "16G",
		MaxDisk:            "256G",
		MaxConsoleLog:      "8M",
		MaxCopyOut:         "16G",
		MaxCopyOutEntries:  1 << 20,
		ChainDepth:         8,
	}
}

// envNames maps environment variables to fields.
var envNames = map[string]func(c *Config) *string{
	"BANGER_STATE_DIR":           func(c *Config) *string { return &c.StateDir },
	"BANGER_SOCKET":              func(c *Config) *string { return &c.Socket },
	"BANGER_CACHE_DIR":           func(c *Config) *string { return &c.CacheDir },
	"BANGER_GROUP":               func(c *Config) *string { return &c.Group },
	"BANGER_LOG_LEVEL":           func(c *Config) *string { return &c.LogLevel },
	"BANGER_NETNS":               func(c *Config) *string { return &c.Netns },
	"BANGER_VMM":                 func(c *Config) *string { return &c.VMM },
	"BANGER_ACCEL":               func(c *Config) *string { return &c.Accel },
	"BANGER_SUBNET":              func(c *Config) *string { return &c.Subnet },
	"BANGER_BRIDGE":              func(c *Config) *string { return &c.Bridge },
	"BANGER_DNS_SUFFIX":          func(c *Config) *string { return &c.DNSSuffix },
	"BANGER_DNS_UPSTREAMS":       func(c *Config) *string { return &c.DNSUpstreams },
	"BANGER_WORKSPACE_TRANSPORT": func(c *Config) *string { return &c.WorkspaceTransport },
	"BANGER_FIRECRACKER":         func(c *Config) *string { return &c.Firecracker },
	"BANGER_QEMU":                func(c *Config) *string { return &c.QEMU },
	"BANGER_BIN_DIR":             func(c *Config) *string { return &c.BinDir },
	"BANGER_E2B_LISTEN":          func(c *Config) *string { return &c.E2BListen },
	"BANGER_E2B_DOMAIN":          func(c *Config) *string { return &c.E2BDomain },
	"BANGER_E2B_DNS":             func(c *Config) *string { return &c.E2BDNS },
}

// Load returns defaults overlaid with the config file (if it exists) and the
// environment. The file is BANGER_CONFIG, else <state dir>/config.json.
func Load(getenv func(string) string) (Config, error) {
	c := Defaults()
	if v := getenv("BANGER_STATE_DIR"); v != "" {
		c.StateDir = v
	}
	path := getenv("BANGER_CONFIG")
	explicit := path != ""
	if !explicit {
		path = filepath.Join(c.StateDir, "config.json")
	}
	if b, err := os.ReadFile(path); err == nil {
		dec := json.NewDecoder(strings.NewReader(string(b)))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&c); err != nil {
			return c, fmt.Errorf("config file %s: %w", path, err)
		}
	} else if explicit || !os.IsNotExist(err) {
		return c, fmt.Errorf("config file: %w", err)
	}
	for name, field := range envNames {
		if v := getenv(name); v != "" {
			*field(&c) = v
		}
	}
	if v := getenv("BANGER_WARM_POOL"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			return c, fmt.Errorf("BANGER_WARM_POOL %q: not a whole number", v)
		}
		c.WarmPool = n
	}
	if v := getenv("BANGER_WARM_ON_FIRST_USE"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return c, fmt.Errorf("BANGER_WARM_ON_FIRST_USE %q: want true or false", v)
		}
		c.WarmOnFirstUse = b
	}
	if v := getenv("BANGER_CHAIN_DEPTH"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			return c, fmt.Errorf("BANGER_CHAIN_DEPTH %q: not a whole number", v)
		}
		c.ChainDepth = n
	}
	c.Finish()
	return c, nil
}

// Finish fills the settings derived from others.
func (c *Config) Finish() {
	if c.Socket == "" {
		c.Socket = filepath.Join(c.StateDir, "bangerd.sock")
	}
}

// Validate checks the settings that have a fixed set of values.
func (c Config) Validate() error {
	switch c.VMM {
	case "auto", "firecracker", "qemu":
	default:
		return fmt.Errorf("invalid vmm %q: use auto, firecracker or qemu", c.VMM)
	}
	switch c.WorkspaceTransport {
	case "tcp", "ssh":
	default:
		return fmt.Errorf("invalid workspace_transport %q: use tcp (fast data channel) or ssh (always encrypted)", c.WorkspaceTransport)
	}
	switch c.Accel {
	case "auto", "kvm", "tcg":
	default:
		return fmt.Errorf("invalid accel %q: use auto, kvm or tcg", c.Accel)
	}
	if c.MaxCPUs < 1 {
		return fmt.Errorf("invalid max_cpus %d: use 1 or more", c.MaxCPUs)
	}
	if c.WarmPool < 0 || c.WarmPool > MaxWarmPool {
		return fmt.Errorf("invalid warm_pool %d: use 0 (none) to %d spares per template", c.WarmPool, MaxWarmPool)
	}
	if c.ChainDepth < 1 || c.ChainDepth > MaxChainDepth {
		return fmt.Errorf("invalid chain_depth %d: use 1 to %d qcow2 files per snapshot", c.ChainDepth, MaxChainDepth)
	}
	if c.MaxCopyOutEntries < 1 {
		return fmt.Errorf("invalid max_copy_out_entries %d: use 1 or more", c.MaxCopyOutEntries)
	}
	for _, kv := range [][2]string{{"max_memory", c.MaxMemory}, {"max_disk", c.MaxDisk}, {"max_console_log", c.MaxConsoleLog}, {"max_copy_out", c.MaxCopyOut}, {"memory", c.Memory}, {"disk", c.Disk}} {
		if _, err := model.ParseSize(kv[1]); err != nil {
			return fmt.Errorf("invalid %s: %v", kv[0], err)
		}
	}
	if _, _, err := c.Upstreams(); err != nil {
		return err
	}
	if !filepath.IsAbs(c.StateDir) {
		return fmt.Errorf("state dir %q must be an absolute path", c.StateDir)
	}
	return nil
}

// Upstreams parses dns_upstreams: the resolvers as "IP:port", or
// fromHost when they are the host's (the setting is empty); none at all
// for "none".
func (c Config) Upstreams() (addrs []string, fromHost bool, err error) {
	v := strings.TrimSpace(c.DNSUpstreams)
	switch v {
	case "":
		return nil, true, nil
	case "none":
		return nil, false, nil
	}
	for _, e := range strings.Split(v, ",") {
		e = strings.TrimSpace(e)
		ap, perr := netip.ParseAddrPort(e)
		if perr != nil {
			a, aerr := netip.ParseAddr(e)
			if aerr != nil {
				return nil, false, fmt.Errorf("invalid dns_upstreams entry %q: want an IP address, optionally with :port (or \"none\")", e)
			}
			ap = netip.AddrPortFrom(a, 53)
		}
		if ap.Port() == 0 {
			return nil, false, fmt.Errorf("invalid dns_upstreams entry %q: port 0", e)
		}
		addrs = append(addrs, ap.String())
	}
	return addrs, false, nil
}

// Paths under the state directory.
func (c Config) DBPath() string     { return filepath.Join(c.StateDir, "banger.db") }
func (c Config) LogPath() string    { return filepath.Join(c.StateDir, "bangerd.log") }
func (c Config) LockPath() string   { return filepath.Join(c.StateDir, "bangerd.lock") }
func (c Config) VMsDir() string     { return filepath.Join(c.StateDir, "vms") }
func (c Config) ImagesDir() string  { return filepath.Join(c.StateDir, "images") }
func (c Config) KernelsDir() string { return filepath.Join(c.StateDir, "kernels") }

// LostFoundDir is where reconcile moves VM directories it has no record
// of: banger never deletes what it cannot account for.
func (c Config) LostFoundDir() string { return filepath.Join(c.StateDir, "lost+found") }
func (c Config) KeyPath() string      { return filepath.Join(c.StateDir, "ssh", "id_ed25519") }
