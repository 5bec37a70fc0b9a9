package e2b

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/banger/banger/internal/api"
	"github.com/banger/banger/internal/envd"
	"github.com/banger/banger/internal/errdefs"
	"github.com/banger/banger/internal/guestctl"
	"github.com/banger/banger/internal/model"
	"github.com/banger/banger/internal/progress"
	"github.com/banger/banger/internal/store"
)

// fakeVMs stands in for the VM manager: records in the real store, no
// guests. Each "guest" is an envd server on 127.0.0.1 started by the
// control plane's RunGuest, plus ports a test maps to host listeners.
type fakeVMs struct {
	t     *testing.T
	st    *store.Store
	mu    sync.Mutex
	n     int
	alive map[string]bool
	envds map[string]*httptest.Server // by VM id
	ports map[int]string              // guest port → host address, for every VM
	ttls  map[string]string           // last TTL set, by VM id
	// slowCreate is how long a Create takes after the VM is made, as a
	// boot or a restore under load does.
	slowCreate time.Duration
	made       map[string]api.CreateVMRequest // each Create's request, by VM id
	pause      int                            // Pause calls
	// raceResume makes Resume answer a conflict after resuming, as when
	// another resume won the VM's lock first.
	raceResume bool
	resumes    int   // Resume calls
	resumeErr  error // Resume fails with it
	snaps      []*fakeSnap
	forks      map[string][]string     // VM ids made from each snapshot id
	forkFailAt int                     // the nth create from a snapshot fails (0: never)
	fromSnap   int                     // creates from a snapshot so far
	servers    map[string]*envd.Server // each VM's envd, by VM id
	// control: the guests serve the control channel's envd request
	// (GuestControl); else it is unavailable and envd comes over SSH.
	control  bool
	controls int               // envd requests over the control channel
	scripts  int               // envd scripts run over "SSH"
	lastEnv  map[string]string // the environment envd was last given
	// readies are the Ready of every create, booted or from a snapshot.
	readies []string
	// bootEnvds are the Envd of every booting create.
	bootEnvds []bool
}

// GuestControl plays banger-init's side of guestctl.OpEnvd when control
// is set: a VM's running envd takes the token, else one is started.
func (f *fakeVMs) GuestControl(_ context.Context, vm model.VM, req guestctl.Request) (guestctl.Reply, error) {
	if !f.control {
		return guestctl.Reply{}, errdefs.Errorf(errdefs.CodeUnavailable, "no control channel")
	}
	if err := req.Validate(); err != nil || req.Op != guestctl.OpEnvd {
		f.t.Errorf("control request %+v: %v", req, err)
		return guestctl.Reply{}, fmt.Errorf("bad request")
	}
	f.mu.Lock()
	f.controls++
	f.mu.Unlock()
	env := map[string]string{}
	for _, kv := range req.EnvdEnv {
		k, v, _ := strings.Cut(kv, "=")
		env[k] = v
	}
	if msg, code := f.guestEnvd(vm, req.EnvdToken, env, true); code == envdRekeyGone {
		if msg, code := f.guestEnvd(vm, req.EnvdToken, env, false); code != 0 {
			return guestctl.Reply{}, fmt.Errorf("%s", msg)
		}
	} else if code != 0 {
		return guestctl.Reply{}, fmt.Errorf("%s", msg)
	}
	return guestctl.Reply{OK: true}, nil
}

func (f *fakeVMs) Create(ctx context.Context, req api.CreateVMRequest, report progress.Func) (model.VM, error) {
	f.mu.Lock()
	f.readies = append(f.readies, req.Ready)
	if req.FromSnapshot == "" {
		f.bootEnvds = append(f.bootEnvds, req.Envd)
	}
	f.mu.Unlock()
	defer time.Sleep(f.slowCreate)
	makeVM := f.create
	if req.FromSnapshot != "" {
		makeVM = f.createFromSnapshot
	}
	vm, err := makeVM(ctx, req)
	if err == nil {
		f.mu.Lock()
		f.made[vm.ID] = req
		f.mu.Unlock()
	}
	return vm, err
}

// create is Create of a booted VM.
func (f *fakeVMs) create(ctx context.Context, req api.CreateVMRequest) (model.VM, error) {
	if req.Image != "" && req.Image != "other" {
		return model.VM{}, errdefs.Errorf(errdefs.CodeNotFound, "image %q not found", req.Image)
	}
	f.mu.Lock()
	f.n++
	n := f.n
	f.mu.Unlock()
	now := time.Now().UTC()
	d, err := time.ParseDuration(req.TTL)
	if err != nil {
		return model.VM{}, err
	}
	exp := now.Add(d)
	id := model.NewID()
	vm := model.VM{ID: id, Name: req.Name, ImageID: "img", KernelID: "k", CPUs: 2, MemoryMiB: 1024, DiskBytes: 4 << 30,
		DesiredState: model.VMRunning, State: model.VMRunning, VMM: "qemu", CowStrategy: "qcow2",
		GuestIP: fmt.Sprintf("172.16.0.%d", n+1), GuestMAC: "02:fc:00:00:00:02", DNSName: req.Name + ".vm",
		CID: uint32(100 + n), Dir: "/s/" + id, CreatedAt: now, UpdatedAt: now, StartedAt: &now,
		Net: model.NetPolicy{Mode: model.NetInternet}, ExpiresAt: &exp, ExpireAction: req.TTLAction, Labels: req.Labels}
	if req.Net != "" {
		vm.Net.Mode = req.Net
	}
	vm.Net.Allow, vm.Net.Deny = req.Allow, req.Deny
	if req.TTL != "" {
		f.mu.Lock()
		f.ttls[id] = req.TTL
		f.mu.Unlock()
	}
	if err := f.st.CreateVM(ctx, vm); err != nil {
		return model.VM{}, err
	}
	f.mu.Lock()
	f.alive[id] = true
	f.mu.Unlock()
	return vm, nil
}

func (f *fakeVMs) Delete(ctx context.Context, ref string, _ bool) error {
	vm, err := f.Get(ctx, ref)
	if err != nil {
		return err
	}
	f.mu.Lock()
	delete(f.alive, vm.ID)
	if e := f.envds[vm.ID]; e != nil {
		e.Close()
		delete(f.envds, vm.ID)
	}
	f.mu.Unlock()
	return f.st.DeleteVM(ctx, vm.ID)
}

func (f *fakeVMs) Get(ctx context.Context, ref string) (model.VM, error) {
	vm, err := f.st.GetVM(ctx, ref)
	if err != nil {
		return vm, store.Describe("vm", ref, err)
	}
	return vm, nil
}

func (f *fakeVMs) List(ctx context.Context) ([]model.VM, error) { return f.st.ListVMs(ctx) }

func (f *fakeVMs) SetTTL(ctx context.Context, ref string, req api.VMTTLRequest) (model.VM, error) {
	vm, err := f.Get(ctx, ref)
	if err != nil {
		return vm, err
	}
	if req.TTL == model.TTLNone {
		return vm, f.st.SetVMExpiry(ctx, vm.ID, nil, "")
	}
	d, err := time.ParseDuration(req.TTL)
	if err != nil {
		return vm, errdefs.Invalid(err)
	}
	at := time.Now().UTC().Add(d)
	f.mu.Lock()
	f.ttls[vm.ID] = req.TTL
	f.mu.Unlock()
	if err := f.st.SetVMExpiry(ctx, vm.ID, &at, req.Action); err != nil {
		return vm, err
	}
	return f.Get(ctx, vm.ID)
}

// Pause marks the VM paused; its envd server goes on (as it would in the
// saved memory) but the VM is not alive, so the relay refuses it.
func (f *fakeVMs) Pause(ctx context.Context, ref string) (model.VM, error) {
	vm, err := f.Get(ctx, ref)
	if err != nil {
		return vm, err
	}
	if vm.State == model.VMPaused || !f.Alive(vm) {
		return vm, errdefs.Errorf(errdefs.CodeConflict, "vm %s is not running", vm.Name)
	}
	f.mu.Lock()
	f.alive[vm.ID] = false
	f.pause++
	f.mu.Unlock()
	vm.State, vm.DesiredState = model.VMPaused, model.VMPaused
	return vm, f.st.UpdateVM(ctx, vm)
}

func (f *fakeVMs) Resume(ctx context.Context, ref string, _ progress.Func) (model.VM, error) {
	vm, err := f.Get(ctx, ref)
	if err != nil {
		return vm, err
	}
	if vm.State != model.VMPaused {
		return vm, errdefs.Errorf(errdefs.CodeConflict, "vm %s is not paused", vm.Name)
	}
	f.mu.Lock()
	f.resumes++
	if err := f.resumeErr; err != nil {
		f.mu.Unlock()
		return vm, err
	}
	f.alive[vm.ID] = true
	raced := f.raceResume
	f.mu.Unlock()
	vm.State, vm.DesiredState = model.VMRunning, model.VMRunning
	if err := f.st.UpdateVM(ctx, vm); err != nil || !raced {
		return vm, err
	}
	// As when another resume got there first.
	return vm, errdefs.Errorf(errdefs.CodeConflict, "vm %s is not paused (state running)", vm.Name)
}

func (f *fakeVMs) Alive(vm model.VM) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.alive[vm.ID]
}

// runGuest plays the guest side of envdScript: it reads the token and
// environment from stdin and starts an envd on 127.0.0.1.
func (f *fakeVMs) runGuest(_ context.Context, vm model.VM, cmd string, stdin io.Reader) (string, int, error) {
	if cmd == metricsScript {
		// The host's own /proc and / stand in for the guest's.
		out, err := exec.Command("sh", "-c", cmd).CombinedOutput()
		if err != nil {
			return string(out), 1, nil
		}
		return string(out), 0, nil
	}
	rekey := cmd == envdRekeyScript()
	if !rekey && !strings.Contains(cmd, " envd --listen 0.0.0.0:49983 --token-file ") {
		return "unexpected command", 1, nil
	}
	raw, _ := io.ReadAll(stdin)
	lines := strings.Split(strings.TrimSuffix(string(raw), "\n"), "\n")
	env := map[string]string{}
	for _, l := range lines[1:] {
		if k, v, ok := strings.Cut(l, "="); ok {
			env[k] = v
		}
	}
	f.mu.Lock()
	f.scripts++
	f.mu.Unlock()
	msg, code := f.guestEnvd(vm, lines[0], env, rekey)
	return msg, code, nil
}

// guestEnvd gives vm's envd a token and environment (rekey; envdRekeyGone
// when it has none) or starts one with them, as the guest does.
func (f *fakeVMs) guestEnvd(vm model.VM, token string, env map[string]string, rekey bool) (string, int) {
	f.mu.Lock()
	f.lastEnv = env
	srv := f.servers[vm.ID]
	f.mu.Unlock()
	if rekey {
		if srv == nil {
			return "", envdRekeyGone
		}
		if err := srv.Reconfigure(token, env); err != nil {
			return err.Error(), 1
		}
		return "", 0
	}
	me, _ := user.Current()
	srv, err := envd.New(envd.Config{Token: token, DefaultUser: me.Username, Env: env})
	if err != nil {
		return err.Error(), 1
	}
	f.serve(vm.ID, srv)
	return "", 0
}

func (f *fakeVMs) dialGuest(ctx context.Context, vm model.VM, port int) (net.Conn, error) {
	f.mu.Lock()
	addr := ""
	if port == envd.Port {
		if ts := f.envds[vm.ID]; ts != nil {
			addr = ts.Listener.Addr().String()
		}
	} else {
		addr = f.ports[port]
	}
	f.mu.Unlock()
	if addr == "" {
		return nil, fmt.Errorf("connection refused: nothing listens on guest port %d", port)
	}
	var d net.Dialer
	return d.DialContext(ctx, "tcp", addr)
}

// servePort serves h as guest port port of every fake sandbox, over TLS
// when useTLS, until the test ends.
func (fx *fixture) servePort(t *testing.T, port int, h http.Handler, useTLS bool) {
	srv := httptest.NewUnstartedServer(h)
	if useTLS {
		srv.StartTLS()
	} else {
		srv.Start()
	}
	t.Cleanup(srv.Close)
	fx.vms.mu.Lock()
	fx.vms.ports[port] = srv.Listener.Addr().String()
	fx.vms.mu.Unlock()
}

// fixture is a control plane over fakeVMs listening on 127.0.0.1.
type fixture struct {
	svc    *Service
	vms    *fakeVMs
	url    string
	key    string
	addr   string
	client *http.Client // trusts the control plane's CA when it speaks TLS
}

func newFixture(t *testing.T) *fixture { return newFixtureTLS(t, false) }

// newFixtureTLS is newFixture with the listener on HTTPS when useTLS.
func newFixtureTLS(t *testing.T, useTLS bool) *fixture {
	t.Helper()
	st, err := store.Open(filepath.Join(t.TempDir(), "banger.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	f := &fakeVMs{t: t, st: st, alive: map[string]bool{}, envds: map[string]*httptest.Server{},
		ports: map[int]string{}, ttls: map[string]string{}, made: map[string]api.CreateVMRequest{}, forks: map[string][]string{}, servers: map[string]*envd.Server{}}
	svc := New(Deps{Store: st, Log: slog.New(slog.NewTextHandler(io.Discard, nil)), VMs: f,
		RunGuest: f.runGuest, DialGuest: f.dialGuest, Listen: net.Listen, Now: time.Now, Dir: t.TempDir()})
	status, err := svc.Serve(Listener{Addr: "127.0.0.1:0", TLS: useTLS})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(svc.Close)
	key, _, err := svc.CreateKey(context.Background(), "test", 0)
	if err != nil {
		t.Fatal(err)
	}
	client := http.DefaultClient
	if useTLS {
		ca, err := svc.CA()
		if err != nil {
			t.Fatal(err)
		}
		client = caClient(ca.PEM)
	}
	return &fixture{svc: svc, vms: f, url: status.URL(), key: key, addr: status.Listen, client: client}
}

// caClient is an HTTP client that trusts only the CA of caPEM.
func caClient(caPEM []byte) *http.Client {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
}

// port of the fixture's listener, for Host names.
func (fx *fixture) port() string {
	_, p, _ := net.SplitHostPort(fx.addr)
	return p
}

func (fx *fixture) do(t *testing.T, method, path, body string, hdr ...string) (int, string, http.Header) {
	t.Helper()
	req, _ := http.NewRequest(method, fx.url+path, strings.NewReader(body))
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("X-API-Key", fx.key)
	for i := 0; i+1 < len(hdr); i += 2 {
		if hdr[i] == "Host" {
			req.Host = hdr[i+1]
			continue
		}
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := fx.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header
}

// fakeSnap is a snapshot of fakeVMs: the source's envd token stands in
// for the memory a fork resumes (envd goes on in the fork with it).
type fakeSnap struct {
	sn    model.Snapshot
	token string
	env   map[string]string
}

func (f *fakeVMs) CreateSnapshot(ctx context.Context, ref, name string) (model.Snapshot, error) {
	vm, err := f.Get(ctx, ref)
	if err != nil {
		return model.Snapshot{}, err
	}
	if vm.State != model.VMPaused && !f.Alive(vm) {
		return model.Snapshot{}, errdefs.Errorf(errdefs.CodeConflict, "vm %s is neither running nor paused", vm.Name)
	}
	if name == "" {
		name = vm.Name + "-snap"
	}
	rec, _ := f.st.E2BSandbox(ctx, vm.ID)
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, s := range f.snaps {
		if s.sn.Name == name {
			return model.Snapshot{}, errdefs.Errorf(errdefs.CodeConflict, "snapshot %q already exists", name)
		}
	}
	sn := model.Snapshot{ID: model.NewID(), Name: name, VMID: vm.ID, VMName: vm.Name, State: model.SnapshotReady, CreatedAt: time.Now(), Net: vm.Net}
	f.snaps = append(f.snaps, &fakeSnap{sn: sn, token: rec.Token, env: rec.Env})
	return sn, nil
}

// users are the live VMs made from snapshot id (the store drops a
// deleted VM's record).
func (f *fakeVMs) users(ctx context.Context, id string) []string {
	var out []string
	for _, vmID := range f.forks[id] {
		if vm, err := f.st.GetVM(ctx, vmID); err == nil {
			out = append(out, vm.Name)
		}
	}
	return out
}

func (f *fakeVMs) ListSnapshots(ctx context.Context) ([]model.Snapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []model.Snapshot
	for _, s := range f.snaps {
		sn := s.sn
		sn.UsedBy = f.users(ctx, sn.ID)
		out = append(out, sn)
	}
	return out, nil
}

func (f *fakeVMs) GetSnapshot(ctx context.Context, ref string) (model.Snapshot, error) {
	all, _ := f.ListSnapshots(ctx)
	for _, sn := range all {
		if sn.Name == ref || sn.ID == ref {
			return sn, nil
		}
	}
	return model.Snapshot{}, errdefs.Errorf(errdefs.CodeNotFound, "snapshot %q not found", ref)
}

func (f *fakeVMs) RemoveSnapshot(ctx context.Context, ref string) error {
	sn, err := f.GetSnapshot(ctx, ref)
	if err != nil {
		return err
	}
	if len(sn.UsedBy) > 0 {
		return errdefs.Errorf(errdefs.CodeConflict, "snapshot %s is used by %v", sn.Name, sn.UsedBy)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, s := range f.snaps {
		if s.sn.ID == sn.ID {
			f.snaps = append(f.snaps[:i], f.snaps[i+1:]...)
			break
		}
	}
	return nil
}

// createFromSnapshot is Create with FromSnapshot: a running VM with the
// snapshot's network policy unless the request names one, and an envd
// with the snapshot's token and environment, as a restored guest's envd
// would have.
func (f *fakeVMs) createFromSnapshot(ctx context.Context, req api.CreateVMRequest) (model.VM, error) {
	sn, err := f.GetSnapshot(ctx, req.FromSnapshot)
	if err != nil {
		return model.VM{}, err
	}
	var snap *fakeSnap
	f.mu.Lock()
	for _, s := range f.snaps {
		if s.sn.ID == sn.ID {
			snap = s
		}
	}
	f.fromSnap++
	failed := f.fromSnap == f.forkFailAt
	f.mu.Unlock()
	if failed {
		return model.VM{}, errdefs.Errorf(errdefs.CodeInternal, "restore failed")
	}
	net, allow, deny := req.Net, req.Allow, req.Deny
	if net == "" && allow == nil && deny == nil {
		net, allow, deny = sn.Net.Mode, sn.Net.Allow, sn.Net.Deny
	}
	vm, err := f.create(ctx, api.CreateVMRequest{Name: req.Name, TTL: req.TTL, TTLAction: req.TTLAction, Labels: req.Labels,
		Net: net, Allow: allow, Deny: deny})
	if err != nil {
		return vm, err
	}
	if snap.token != "" {
		me, _ := user.Current()
		srv, err := envd.New(envd.Config{Token: snap.token, DefaultUser: me.Username, Env: snap.env})
		if err != nil {
			return vm, err
		}
		f.serve(vm.ID, srv)
	}
	f.mu.Lock()
	f.forks[sn.ID] = append(f.forks[sn.ID], vm.ID)
	f.mu.Unlock()
	return vm, nil
}

// serve runs a VM's envd on 127.0.0.1.
func (f *fakeVMs) serve(vmID string, srv *envd.Server) {
	ts := httptest.NewServer(srv.Handler())
	f.t.Cleanup(func() { ts.Close(); srv.Close() })
	f.mu.Lock()
	f.envds[vmID], f.servers[vmID] = ts, srv
	f.mu.Unlock()
}

// SetNet applies a vm net request (Reset and the fields given).
func (f *fakeVMs) SetNet(ctx context.Context, ref string, req api.VMNetRequest) (model.VM, error) {
	vm, err := f.Get(ctx, ref)
	if err != nil {
		return vm, err
	}
	if req.Reset {
		vm.Net = model.NetPolicy{Mode: model.NetInternet}
	}
	if req.Net != nil {
		vm.Net.Mode = *req.Net
	}
	if req.Allow != nil {
		vm.Net.Allow = *req.Allow
	}
	if req.Deny != nil {
		vm.Net.Deny = *req.Deny
	}
	return vm, f.st.UpdateVM(ctx, vm)
}
