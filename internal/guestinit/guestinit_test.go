package guestinit

import (
	"encoding/base64"
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

const testKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOfakefakefakefakefakefakefakefakefakefakefake banger"

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func TestParseCmdline(t *testing.T) {
	full := "root=/dev/vda rw console=ttyS0 banger.ip=172.16.0.2/24 banger.gw=172.16.0.1 banger.dns=172.16.0.1 " +
		"banger.hostname=dev-1 banger.key=" + b64(testKey) + " banger.work=/dev/vdb reboot=k panic=1 tsc_early_khz=2096008"
	tests := []struct {
		name    string
		cmdline string
		want    Params
		wantErr string
	}{
		{
			name:    "full contract",
			cmdline: full,
			want: Params{
				Addr:     netip.MustParsePrefix("172.16.0.2/24"),
				Gateway:  netip.MustParseAddr("172.16.0.1"),
				DNS:      []netip.Addr{netip.MustParseAddr("172.16.0.1")},
				Hostname: "dev-1", Key: testKey, WorkDisk: "/dev/vdb", Root: "/dev/vda",
			},
		},
		{
			name:    "several resolvers, init and last one wins",
			cmdline: "banger.hostname=a banger.hostname=b banger.dns=1.1.1.1,9.9.9.9 init=/bin/sh",
			want: Params{Hostname: "b", Init: "/bin/sh",
				DNS: []netip.Addr{netip.MustParseAddr("1.1.1.1"), netip.MustParseAddr("9.9.9.9")}},
		},
		{name: "unrelated parameters only", cmdline: "quiet ro console=ttyS0", want: Params{}},
		{name: "bad ip", cmdline: "banger.ip=172.16.0.2", wantErr: "banger.ip"},
		{name: "ipv6 ip", cmdline: "banger.ip=fd00::2/64", wantErr: "not IPv4"},
		{name: "bad gw", cmdline: "banger.gw=nope", wantErr: "banger.gw"},
		{name: "bad dns", cmdline: "banger.dns=1.1.1.1,x", wantErr: "banger.dns"},
		{name: "bad hostname", cmdline: "banger.hostname=Bad_Name", wantErr: "allowed"},
		{name: "bad key encoding", cmdline: "banger.key=%%%", wantErr: "banger.key"},
		{name: "empty key", cmdline: "banger.key=" + b64("  "), wantErr: "decodes to nothing"},
		{name: "work not a device", cmdline: "banger.work=vdb", wantErr: "/dev/"},
		{name: "envd", cmdline: "banger.envd=1", want: Params{Envd: true}},
		{name: "envd not 1", cmdline: "banger.envd=yes", wantErr: "banger.envd"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseCmdline(tt.cmdline)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.Addr != tt.want.Addr || got.Gateway != tt.want.Gateway || got.Hostname != tt.want.Hostname ||
				got.Key != tt.want.Key || got.WorkDisk != tt.want.WorkDisk || got.Root != tt.want.Root ||
				got.Init != tt.want.Init || got.Envd != tt.want.Envd || len(got.DNS) != len(tt.want.DNS) {
				t.Fatalf("got %+v\nwant %+v", got, tt.want)
			}
			for i := range got.DNS {
				if got.DNS[i] != tt.want.DNS[i] {
					t.Fatalf("DNS[%d] = %v, want %v", i, got.DNS[i], tt.want.DNS[i])
				}
			}
		})
	}
}

func TestValidate(t *testing.T) {
	ok := Params{Addr: netip.MustParsePrefix("172.16.0.2/24"), Hostname: "a", Key: testKey,
		Gateway: netip.MustParseAddr("172.16.0.1")}
	if err := ok.Validate(); err != nil {
		t.Fatalf("valid params: %v", err)
	}
	tests := []struct {
		name    string
		mutate  func(*Params)
		wantErr string
	}{
		{"no ip", func(p *Params) { p.Addr = netip.Prefix{} }, "banger.ip missing"},
		{"no hostname", func(p *Params) { p.Hostname = "" }, "banger.hostname missing"},
		{"no key", func(p *Params) { p.Key = "" }, "banger.key missing"},
		{"gw outside", func(p *Params) { p.Gateway = netip.MustParseAddr("10.0.0.1") }, "outside"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := ok
			tt.mutate(&p)
			err := p.Validate()
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want %q", err, tt.wantErr)
			}
		})
	}
}

func TestRender(t *testing.T) {
	p := Params{Addr: netip.MustParsePrefix("172.16.0.9/24"), Hostname: "box",
		DNS: []netip.Addr{netip.MustParseAddr("172.16.0.1"), netip.MustParseAddr("1.1.1.1")}, Key: testKey}
	tests := []struct {
		name string
		got  string
		want []string
		not  []string
	}{
		{"hosts", Hosts(p), []string{"127.0.0.1\tlocalhost\n", "127.0.1.1\tbox\n", "172.16.0.9\tbox\n"}, nil},
		{"hosts without name", Hosts(Params{}), []string{"127.0.0.1\tlocalhost\n"}, []string{"127.0.1.1"}},
		{"resolv", ResolvConf(p), []string{"nameserver 172.16.0.1\nnameserver 1.1.1.1\n"}, nil},
		{"resolv empty", ResolvConf(Params{}), []string{"options"}, []string{"nameserver"}},
		{"keys", AuthorizedKeys(p), []string{testKey + "\n"}, nil},
		{"sshd", SSHDConfig(), []string{"AuthorizedKeysFile /run/banger/authorized_keys .ssh/authorized_keys\n",
			"UsePAM no\n", "PasswordAuthentication no\n", "UseDNS no\n"}, []string{"UsePAM yes"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, w := range tt.want {
				if !strings.Contains(tt.got, w) {
					t.Errorf("missing %q in:\n%s", w, tt.got)
				}
			}
			for _, n := range tt.not {
				if strings.Contains(tt.got, n) {
					t.Errorf("unexpected %q in:\n%s", n, tt.got)
				}
			}
		})
	}
	if AuthorizedKeys(Params{}) != "" {
		t.Error("AuthorizedKeys without key must be empty")
	}
}

func TestCmdline(t *testing.T) {
	p := Params{
		Addr:     netip.MustParsePrefix("172.16.0.2/24"),
		Gateway:  netip.MustParseAddr("172.16.0.1"),
		DNS:      []netip.Addr{netip.MustParseAddr("172.16.0.1")},
		Hostname: "dev-1", Key: testKey, WorkDisk: "/dev/vdb", Root: "/dev/vda",
	}
	// The daemon's command line, byte for byte.
	want := "console=ttyS0 reboot=k panic=1 root=/dev/vda rw banger.ip=172.16.0.2/24 banger.gw=172.16.0.1 " +
		"banger.dns=172.16.0.1 banger.hostname=dev-1 banger.key=" + b64(testKey) + " banger.work=/dev/vdb"
	if got := Cmdline("  console=ttyS0 reboot=k panic=1 \n", p); got != want {
		t.Errorf("Cmdline =\n %q\nwant\n %q", got, want)
	}
	if got := Cmdline(" ", Params{Hostname: "a"}); got != "banger.hostname=a" {
		t.Errorf("Cmdline without defaults = %q", got)
	}
	if got := Cmdline("", Params{}); got != "" {
		t.Errorf("Cmdline of nothing = %q", got)
	}
}

func TestCmdlineRoundTrip(t *testing.T) {
	for _, p := range []Params{
		{
			Addr:     netip.MustParsePrefix("172.16.0.2/24"),
			Gateway:  netip.MustParseAddr("172.16.0.1"),
			DNS:      []netip.Addr{netip.MustParseAddr("172.16.0.1")},
			Hostname: "dev-1", Key: testKey, WorkDisk: "/dev/vdb", Root: "/dev/vda",
		},
		{
			Addr:     netip.MustParsePrefix("10.0.0.9/8"),
			DNS:      []netip.Addr{netip.MustParseAddr("1.1.1.1"), netip.MustParseAddr("9.9.9.9")},
			Hostname: "x", Key: testKey + "\n" + testKey, Init: "/sbin/init", Envd: true,
		},
		{},
	} {
		// Parameters of the kernel's own defaults are ignored, or
		// overridden by the ones that follow.
		line := Cmdline("console=ttyS0 root=/dev/sda banger.hostname=zz", p)
		got, err := ParseCmdline(line)
		if err != nil {
			t.Fatalf("ParseCmdline(%q): %v", line, err)
		}
		want := p
		if want.Root == "" {
			want.Root = "/dev/sda"
		}
		if want.Hostname == "" {
			want.Hostname = "zz"
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("round trip of %q:\n got %+v\nwant %+v", line, got, want)
		}
	}
}
