package config

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func env(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func TestLoadLayers(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "config.json"), []byte(`{"bridge":"bg1","workspace_transport":"ssh"}`), 0o644)

	c, err := Load(env(map[string]string{"BANGER_STATE_DIR": dir}))
	if err != nil {
		t.Fatal(err)
	}
	if c.Bridge != "bg1" || c.WorkspaceTransport != "ssh" || c.Subnet != Defaults().Subnet {
		t.Errorf("file over defaults: %+v", c)
	}
	if c.Socket != filepath.Join(dir, "bangerd.sock") {
		t.Errorf("socket: %q", c.Socket)
	}

	c, err = Load(env(map[string]string{"BANGER_STATE_DIR": dir, "BANGER_WORKSPACE_TRANSPORT": "tcp"}))
	if err != nil || c.WorkspaceTransport != "tcp" {
		t.Errorf("environment over file: %q, %v", c.WorkspaceTransport, err)
	}

	c, err = Load(env(map[string]string{"BANGER_STATE_DIR": dir, "BANGER_WARM_ON_FIRST_USE": "1"}))
	if err != nil || !c.WarmOnFirstUse {
		t.Errorf("BANGER_WARM_ON_FIRST_USE=1: %v, %v", c.WarmOnFirstUse, err)
	}
	if _, err := Load(env(map[string]string{"BANGER_STATE_DIR": dir, "BANGER_WARM_ON_FIRST_USE": "often"})); err == nil || !strings.Contains(err.Error(), "BANGER_WARM_ON_FIRST_USE") {
		t.Errorf("BANGER_WARM_ON_FIRST_USE=often: %v", err)
	}

	os.WriteFile(filepath.Join(dir, "config.json"), []byte(`{"bridges":"x"}`), 0o644)
	if _, err := Load(env(map[string]string{"BANGER_STATE_DIR": dir})); err == nil || !strings.Contains(err.Error(), "bridges") {
		t.Errorf("unknown field: %v", err)
	}
	if _, err := Load(env(map[string]string{"BANGER_CONFIG": filepath.Join(dir, "missing.json")})); err == nil {
		t.Error("a named config file that is missing was accepted")
	}
}

func TestValidate(t *testing.T) {
	if err := Defaults().Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	for _, tc := range []struct {
		set  func(*Config)
		want string
	}{
		{func(c *Config) { c.VMM = "xen" }, `invalid vmm "xen"`},
		{func(c *Config) { c.Accel = "hvf" }, `invalid accel "hvf"`},
		{func(c *Config) { c.WorkspaceTransport = "rsync" }, `invalid workspace_transport "rsync"`},
		{func(c *Config) { c.WorkspaceTransport = "" }, `invalid workspace_transport ""`},
		{func(c *Config) { c.StateDir = "state" }, "must be an absolute path"},
		{func(c *Config) { c.MaxCPUs = 0 }, "invalid max_cpus 0"},
		{func(c *Config) { c.WarmPool = 9 }, "invalid warm_pool 9"},
		{func(c *Config) { c.WarmPool = -1 }, "invalid warm_pool -1"},
		{func(c *Config) { c.ChainDepth = 0 }, "invalid chain_depth 0"},
		{func(c *Config) { c.ChainDepth = 17 }, "invalid chain_depth 17"},
		{func(c *Config) { c.MaxMemory = "lots" }, "invalid max_memory"},
		{func(c *Config) { c.MaxDisk = "" }, "invalid max_disk"},
		{func(c *Config) { c.DNSUpstreams = "resolver.example" }, `invalid dns_upstreams entry "resolver.example"`},
		{func(c *Config) { c.DNSUpstreams = "192.0.2.1:0" }, "port 0"},
	} {
		c := Defaults()
		tc.set(&c)
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("want %q, got %v", tc.want, err)
		}
	}
	c := Defaults()
	c.WorkspaceTransport = "ssh"
	if err := c.Validate(); err != nil {
		t.Errorf("ssh transport: %v", err)
	}
}

func TestUpstreams(t *testing.T) {
	for _, tc := range []struct {
		in       string
		want     []string
		fromHost bool
	}{
		{"", nil, true},
		{"  ", nil, true},
		{"none", nil, false},
		{"192.0.2.1", []string{"192.0.2.1:53"}, false},
		{"192.0.2.1:5353, 2001:db8::1,[2001:db8::2]:54", []string{"192.0.2.1:5353", "[2001:db8::1]:53", "[2001:db8::2]:54"}, false},
	} {
		c := Defaults()
		c.DNSUpstreams = tc.in
		got, fromHost, err := c.Upstreams()
		if err != nil || !slices.Equal(got, tc.want) || fromHost != tc.fromHost {
			t.Errorf("%q: %q %v %v, want %q %v", tc.in, got, fromHost, err, tc.want, tc.fromHost)
		}
	}
}
