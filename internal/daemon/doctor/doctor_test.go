package doctor

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/banger/banger/internal/api"
	"github.com/banger/banger/internal/storage"
	"github.com/banger/banger/internal/vmm"
)

func check(rep api.DoctorReport, name string) (api.DoctorCheck, bool) {
	for _, c := range rep.Checks {
		if c.Name == name {
			return c, true
		}
	}
	return api.DoctorCheck{}, false
}

// A VM directory reconcile moved aside is a warning with what to do.
func TestLostFound(t *testing.T) {
	lf := t.TempDir()
	h := Host{
		VMsDir: t.TempDir(), Drivers: vmm.NewRegistry(),
		PickDriver:   func(context.Context) (vmm.Driver, error) { return nil, errors.New("none") },
		PickStrategy: func(vmm.Driver) (storage.Strategy, error) { return nil, errors.New("none") },
		NetErr:       errors.New("no network here"),
		LostFound:    lf,
	}
	if c, ok := check(Report(context.Background(), h), "lost+found"); !ok || !c.OK {
		t.Fatalf("empty lost+found: %+v", c)
	}
	os.Mkdir(filepath.Join(lf, "0123-20261130T000000Z"), 0o700)
	c, ok := check(Report(context.Background(), h), "lost+found")
	if !ok || c.OK || !strings.Contains(c.Detail, lf) || c.Fix == "" {
		t.Fatalf("lost+found with a directory: %+v", c)
	}
	if c, _ := check(Report(context.Background(), h), "network"); c.OK || !strings.Contains(c.Detail, "no network here") {
		t.Fatalf("network check: %+v", c)
	}
}

type fakeNet bool

func (fakeNet) Gateway() netip.Addr { return netip.MustParseAddr("172.16.0.1") }
func (f fakeNet) Guarded() bool     { return bool(f) }

// The report says whether per-VM network policies are enforced: with nft
// they are, with iptables only the default is.
func TestNetPolicy(t *testing.T) {
	for _, guarded := range []bool{true, false} {
		h := Host{
			VMsDir: t.TempDir(), Drivers: vmm.NewRegistry(), LostFound: t.TempDir(), Bridge: "banger0",
			PickDriver:   func(context.Context) (vmm.Driver, error) { return nil, errors.New("none") },
			PickStrategy: func(vmm.Driver) (storage.Strategy, error) { return nil, errors.New("none") },
			Net:          fakeNet(guarded),
		}
		c, ok := check(Report(context.Background(), h), "net policy")
		switch {
		case !ok:
			t.Fatalf("guarded=%v: no net policy check", guarded)
		case guarded && (!c.OK || !strings.Contains(c.Detail, "per-VM")):
			t.Fatalf("nft: %+v", c)
		case !guarded && (c.OK || !strings.Contains(c.Detail, "only the default") || c.Fix != "install nftables"):
			t.Fatalf("iptables: %+v", c)
		}
	}
}
