package vms

import (
	"context"
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/banger/banger/internal/api"
	"github.com/banger/banger/internal/errdefs"
	"github.com/banger/banger/internal/hostnet"
	"github.com/banger/banger/internal/model"
)

func strp(s string) *string       { return &s }
func listp(s ...string) *[]string { return &s }

// tapPolicy is the policy in force on vm's tap (fails if it has none).
func (f *fixture) tapPolicy(t *testing.T, vm model.VM) hostnet.Policy {
	t.Helper()
	p, ok := f.taps.Policy(hostnet.TapName(vm.ID))
	if !ok {
		t.Fatalf("vm %s has no tap", vm.Name)
	}
	return p
}

func (f *fixture) mustGet(t *testing.T, ref string) model.VM {
	t.Helper()
	vm, err := f.m.Get(context.Background(), ref)
	if err != nil {
		t.Fatal(err)
	}
	return vm
}

func TestNetPolicyStoredAndGivenToTheTap(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	db, err := f.m.Create(ctx, api.CreateVMRequest{Name: "db", Disk: "64M"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if db.Net.Mode != model.NetInternet || db.Net.String() != "internet" {
		t.Fatalf("default policy = %+v", db.Net)
	}
	// Unsorted, duplicated, an id for a name: stored canonical.
	app, err := f.m.Create(ctx, api.CreateVMRequest{Name: "app", Disk: "64M", Start: true, Net: "NONE",
		Allow:    []string{"API.Example.com", "192.168.1.0/24", "10.0.0.5:5432", "*.example.com", "10.0.0.5:5432"},
		Deny:     []string{"203.0.113.0/24"},
		AllowVMs: []string{db.ID, "db"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := model.NetPolicy{Mode: "none", Allow: []string{"10.0.0.5:5432", "192.168.1.0/24", "*.example.com", "api.example.com"}, Deny: []string{"203.0.113.0/24"}, AllowVMs: []string{"db"}}
	if got := f.mustGet(t, "app").Net; !reflect.DeepEqual(got, want) {
		t.Fatalf("stored policy = %+v, want %+v", got, want)
	}
	// The tap gets the names resolved to addresses.
	p := f.tapPolicy(t, app)
	if p.String() != "none allow=10.0.0.5:5432,192.168.1.0/24,*.example.com,api.example.com deny=203.0.113.0/24 vm="+db.GuestIP {
		t.Fatalf("tap policy = %s", p)
	}
	// A VM without one gets the default at boot.
	db, err = f.m.Start(ctx, "db", nil)
	if err != nil {
		t.Fatal(err)
	}
	if p := f.tapPolicy(t, db); !p.IsDefault() {
		t.Fatalf("default vm's tap policy = %s", p)
	}
}

func TestCreateRefusesBadPolicy(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	if _, err := f.m.Create(ctx, api.CreateVMRequest{Name: "other", Disk: "64M"}, nil); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		req  api.CreateVMRequest
		code string
		want string
	}{
		{api.CreateVMRequest{Net: "closed"}, errdefs.CodeInvalid, `invalid network mode "closed"`},
		{api.CreateVMRequest{Allow: []string{"10.0.0.0/8:99999"}}, errdefs.CodeInvalid, `allow "10.0.0.0/8:99999"`},
		{api.CreateVMRequest{Allow: []string{"192.168.1.5/24"}}, errdefs.CodeInvalid, "did you mean 192.168.1.0/24"},
		{api.CreateVMRequest{Deny: []string{"10.0.0.1:22"}}, errdefs.CodeInvalid, `deny "10.0.0.1:22"`},
		{api.CreateVMRequest{AllowVMs: []string{"ghost"}}, errdefs.CodeInvalid, `allow-vm "ghost": no such VM`},
		{api.CreateVMRequest{Name: "me", AllowVMs: []string{"me"}}, errdefs.CodeInvalid, `allow-vm "me": that is this VM itself`},
		{api.CreateVMRequest{Allow: []string{"172.16.0.2:22"}}, errdefs.CodeInvalid, "other VMs are reached with allow-vm"},
		{api.CreateVMRequest{Allow: []string{"example.com"}}, errdefs.CodeInvalid, `allow "example.com": host names are allowed only with network mode none`},
		{api.CreateVMRequest{Net: "none", Allow: []string{"example.com:443"}}, errdefs.CodeInvalid, `allow "example.com:443": a host name opens every port`},
	} {
		tc.req.Disk = "64M"
		_, err := f.m.Create(ctx, tc.req, nil)
		if errdefs.CodeOf(err) != tc.code || err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: err %v (%s), want %s with %q", tc.req, err, errdefs.CodeOf(err), tc.code, tc.want)
		}
	}
	// Without nft only the default can be enforced: anything else is
	// refused as unavailable, saying why.
	f.taps.NeedsNft = true
	_, err := f.m.Create(ctx, api.CreateVMRequest{Name: "open", Disk: "64M", Net: "open"}, nil)
	if errdefs.CodeOf(err) != errdefs.CodeUnavailable || !strings.Contains(err.Error(), "install nftables") {
		t.Fatalf("open policy without nft: %v (%s)", err, errdefs.CodeOf(err))
	}
	if _, err := f.m.Create(ctx, api.CreateVMRequest{Name: "plain", Disk: "64M"}, nil); err != nil {
		t.Fatalf("default policy without nft: %v", err)
	}
	vms, _ := f.m.List(ctx)
	if len(vms) != 2 {
		t.Fatalf("refused creates left records: %d vms", len(vms))
	}
}

func TestSetNetOnARunningVM(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	other, err := f.m.Create(ctx, api.CreateVMRequest{Name: "other", Disk: "64M"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	vm, err := f.m.Create(ctx, api.CreateVMRequest{Name: "web", Disk: "64M", Start: true, Deny: []string{"203.0.113.0/24"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	// A field given replaces that part; the others stay.
	got, err := f.m.SetNet(ctx, "web", api.VMNetRequest{Allow: listp("172.16.0.1:8080"), AllowVMs: listp("other")})
	if err != nil {
		t.Fatal(err)
	}
	want := "internet allow=172.16.0.1:8080 deny=203.0.113.0/24 vm=other"
	if got.Net.String() != want || f.mustGet(t, "web").Net.String() != want {
		t.Fatalf("after set: answer %s, record %s; want %s", got.Net, f.mustGet(t, "web").Net, want)
	}
	if p := f.tapPolicy(t, vm); p.String() != "internet allow=172.16.0.1:8080 deny=203.0.113.0/24 vm="+other.GuestIP {
		t.Fatalf("live policy = %s", p)
	}

	// Refused input changes neither the record nor the tap.
	applied := f.taps.Applied
	for _, tc := range []struct {
		req  api.VMNetRequest
		code string
		want string
	}{
		{api.VMNetRequest{Net: strp("wide")}, errdefs.CodeInvalid, `invalid network mode "wide"`},
		{api.VMNetRequest{Allow: listp("10.0.0.1:0")}, errdefs.CodeInvalid, `port "0"`},
		{api.VMNetRequest{AllowVMs: listp("nobody")}, errdefs.CodeInvalid, `allow-vm "nobody": no such VM`},
		{api.VMNetRequest{AllowVMs: listp(vm.ID)}, errdefs.CodeInvalid, "this VM itself"},
		{api.VMNetRequest{Allow: listp("172.16.0.0/24")}, errdefs.CodeInvalid, "allow-vm, not allow"},
	} {
		_, err := f.m.SetNet(ctx, "web", tc.req)
		if errdefs.CodeOf(err) != tc.code || err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: err %v (%s), want %s with %q", tc.req, err, errdefs.CodeOf(err), tc.code, tc.want)
		}
	}
	// The host cannot apply it: the old policy stays in force and stored.
	f.taps.ApplyErr = errors.New("nft: netlink: Error: Could not process rule")
	if _, err := f.m.SetNet(ctx, "web", api.VMNetRequest{Net: strp("open")}); err == nil || !strings.Contains(err.Error(), "Could not process rule") {
		t.Fatalf("failed apply: %v", err)
	}
	f.taps.ApplyErr = nil
	f.taps.NeedsNft = true
	if _, err := f.m.SetNet(ctx, "web", api.VMNetRequest{Net: strp("open")}); errdefs.CodeOf(err) != errdefs.CodeUnavailable {
		t.Fatalf("policy without nft: %v (%s)", err, errdefs.CodeOf(err))
	}
	f.taps.NeedsNft = false
	if f.taps.Applied != applied || f.mustGet(t, "web").Net.String() != want {
		t.Fatalf("refused changes applied %d times; record %s", f.taps.Applied-applied, f.mustGet(t, "web").Net)
	}
	if p := f.tapPolicy(t, vm); !strings.HasPrefix(p.String(), "internet allow=172.16.0.1:8080") {
		t.Fatalf("live policy after refusals = %s", p)
	}

	// An empty list clears that part; reset starts from the default.
	if got, err = f.m.SetNet(ctx, "web", api.VMNetRequest{Deny: listp("")}); err != nil || got.Net.String() != "internet allow=172.16.0.1:8080 vm=other" {
		t.Fatalf("clear deny: %s, %v", got.Net, err)
	}
	if got, err = f.m.SetNet(ctx, "web", api.VMNetRequest{Reset: true, Net: strp("none")}); err != nil || got.Net.String() != "none" {
		t.Fatalf("reset: %s, %v", got.Net, err)
	}
	if p := f.tapPolicy(t, vm); p.String() != "none" {
		t.Fatalf("live policy after reset = %s", p)
	}
}

func TestSetNetOnAStoppedVM(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	vm, err := f.m.Create(ctx, api.CreateVMRequest{Name: "idle", Disk: "64M"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.m.SetNet(ctx, "idle", api.VMNetRequest{Net: strp("open"), Deny: listp("10.0.0.0/8")}); err != nil {
		t.Fatal(err)
	}
	if f.taps.Applied != 0 || len(f.taps.Made) != 0 {
		t.Fatalf("a stopped vm's policy touched taps: %d applies, %v", f.taps.Applied, f.taps.Made)
	}
	if _, err := f.m.Start(ctx, "idle", nil); err != nil {
		t.Fatal(err)
	}
	if p := f.tapPolicy(t, vm); p.String() != "open deny=10.0.0.0/8" {
		t.Fatalf("policy at start = %s", p)
	}
	if _, err := f.m.Stop(ctx, "idle", api.StopVMRequest{}); err != nil {
		t.Fatal(err)
	}
	// A host that lost nft refuses to store it, and refuses to start a
	// VM whose stored policy it cannot enforce, making nothing.
	f.taps.NeedsNft = true
	if _, err := f.m.SetNet(ctx, "idle", api.VMNetRequest{Allow: listp("10.1.0.0/16")}); errdefs.CodeOf(err) != errdefs.CodeUnavailable {
		t.Fatalf("stored policy without nft: %v", err)
	}
	_, err = f.m.Start(ctx, "idle", nil)
	if errdefs.CodeOf(err) != errdefs.CodeUnavailable || !strings.Contains(err.Error(), "install nftables") {
		t.Fatalf("start without nft: %v (%s)", err, errdefs.CodeOf(err))
	}
	if len(f.taps.Made) != 0 || len(f.drv.Procs) != 0 {
		t.Fatalf("refused start left taps %v procs %v", f.taps.Made, f.drv.Procs)
	}
}

func TestDeleteForgetsAllowVM(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	vb, err := f.m.Create(ctx, api.CreateVMRequest{Name: "vb", Disk: "64M"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	va, err := f.m.Create(ctx, api.CreateVMRequest{Name: "va", Disk: "64M", Start: true, AllowVMs: []string{"vb"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	stopped, err := f.m.Create(ctx, api.CreateVMRequest{Name: "vs", Disk: "64M", AllowVMs: []string{"vb"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if p := f.tapPolicy(t, va); len(p.AllowVMs) != 1 || p.AllowVMs[0].String() != vb.GuestIP {
		t.Fatalf("va's policy = %s", p)
	}
	if err := f.m.Delete(ctx, "vb", false); err != nil {
		t.Fatal(err)
	}
	// vb's address is free: the next VM gets it and must not be reachable.
	vc, err := f.m.Create(ctx, api.CreateVMRequest{Name: "vc", Disk: "64M"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if vc.GuestIP != vb.GuestIP {
		t.Fatalf("test assumption: vc got %s, not vb's %s", vc.GuestIP, vb.GuestIP)
	}
	if p := f.tapPolicy(t, va); p.AllowVMs != nil {
		t.Fatalf("va still allows %v after vb was deleted", p.AllowVMs)
	}
	for _, name := range []string{va.Name, stopped.Name} {
		if n := f.mustGet(t, name).Net; n.AllowVMs != nil {
			t.Fatalf("%s's record still names %v", name, n.AllowVMs)
		}
	}
}

func TestReconcileReappliesPolicies(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	db, err := f.m.Create(ctx, api.CreateVMRequest{Name: "db", Disk: "64M"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	app, err := f.m.Create(ctx, api.CreateVMRequest{Name: "app", Disk: "64M", Start: true, AllowVMs: []string{"db"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	plain, err := f.m.Create(ctx, api.CreateVMRequest{Name: "plain", Disk: "64M", Start: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	// The daemon dies; the taps were made by a banger without policies.
	f.m.handles = newHandleCache()
	f.taps.Policies = map[string]hostnet.Policy{}
	f.m.Reconcile(ctx)
	want := hostnet.Policy{Mode: hostnet.ModeInternet, AllowVMs: []netip.Addr{netip.MustParseAddr(db.GuestIP)}}
	if p := f.tapPolicy(t, app); p.String() != want.String() {
		t.Fatalf("app's policy after reconcile = %s, want %s", p, want)
	}
	if p := f.tapPolicy(t, plain); !p.IsDefault() {
		t.Fatalf("plain's policy after reconcile = %s", p)
	}
}
