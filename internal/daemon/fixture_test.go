package daemon

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"log/slog"
	"net/netip"
	"os"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/banger/banger/internal/config"
	"github.com/banger/banger/internal/daemon/vms/vmstest"
	"github.com/banger/banger/internal/model"
	"github.com/banger/banger/internal/storage"
	"github.com/banger/banger/internal/store"
	"github.com/banger/banger/internal/vmm"
)

type fixture struct {
	d     *Daemon
	drv   *vmstest.Driver
	strat *vmstest.Strategy
	taps  *vmstest.Taps
	st    *store.Store
	cfg   config.Config
}

// newFixture is a daemon over a real store in a temp dir with a fake VMM,
// strategy and taps, holding an image and a kernel; the guest is ready at
// once. Tests that replace a host part call d.wire() again.
func newFixture(t testing.TB) *fixture {
	t.Helper()
	cfg, st := vmstest.State(t)
	d, err := New(cfg, st, slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{d: d, drv: vmstest.NewDriver(), strat: &vmstest.Strategy{}, taps: vmstest.NewTaps(), st: st, cfg: cfg}
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	d.host.signer = signer
	d.host.drivers = vmm.NewRegistry(f.drv)
	d.host.strategies = []storage.Strategy{f.strat}
	d.host.taps = f.taps
	d.host.subnet = netip.MustParsePrefix("172.16.0.0/24")
	d.waitGuest = func(context.Context, model.VM, func() bool) error { return nil }
	d.waitListening = d.waitGuest
	d.wire()
	return f
}
