// Package ports owns published ports (forwards): a listener on the host
// per forward, each connection relayed to a port on a running guest's
// loopback through the pooled SSH connection (direct-tcpip), so services
// bound to the guest's 127.0.0.1 are reachable. Forwards are recorded in
// the store as intent: listened on while their VM runs (Reconcile at
// daemon start, VMStarted after a boot), closed when it stops (Unlisten),
// and forgotten with the VM's record.
//
// It asks vms.Lookup whether a VM runs and takes its lock while adding;
// it must not touch VM lifecycle, VMMs or the VM network.
package ports

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/banger/banger/internal/api"
	"github.com/banger/banger/internal/daemon/vms"
	"github.com/banger/banger/internal/errdefs"
	"github.com/banger/banger/internal/model"
	"github.com/banger/banger/internal/store"
)

// DefaultHostAddr is where a forward listens when the spec names no address:
// the host's loopback, so nothing is published beyond the host unasked.
const DefaultHostAddr = "127.0.0.1"

// ProtoTCP is the only protocol forwarded.
const ProtoTCP = "tcp"

// dialTimeout bounds reaching the guest for one relayed connection.
const dialTimeout = 10 * time.Second

// Spec is a parsed [HOSTADDR:]HOSTPORT:GUESTPORT[/tcp].
type Spec struct {
	HostAddr  string
	HostPort  int // 0: any free port
	GuestPort int
	Proto     string
}

// ParseSpec parses [HOSTADDR:]HOSTPORT:GUESTPORT[/tcp]; HOSTADDR is an IP
// address (IPv6 in brackets) and defaults to DefaultHostAddr.
func ParseSpec(s string) (Spec, error) {
	bad := func(why string) (Spec, error) {
		return Spec{}, errdefs.Errorf(errdefs.CodeInvalid, "port %q: %s: give [HOSTADDR:]HOSTPORT:GUESTPORT[/tcp], e.g. 8080:80 or 127.0.0.1:0:8000", s, why)
	}
	sp := Spec{HostAddr: DefaultHostAddr, Proto: ProtoTCP}
	rest := s
	if i := strings.LastIndexByte(rest, '/'); i >= 0 {
		if p := rest[i+1:]; p != ProtoTCP {
			return bad(fmt.Sprintf("protocol %q is not forwarded, only tcp", p))
		}
		rest = rest[:i]
	}
	i := strings.LastIndexByte(rest, ':')
	if i < 0 {
		return bad("no guest port")
	}
	host, guest := rest[:i], rest[i+1:]
	var err error
	if sp.GuestPort, err = parsePort(guest, 1); err != nil {
		return bad("guest " + err.Error())
	}
	hostPort := host
	if strings.ContainsAny(host, ":[]") {
		a, p, err := net.SplitHostPort(host)
		if err != nil {
			return bad("host address: " + err.Error())
		}
		ip, err := netip.ParseAddr(a)
		if err != nil || ip.Zone() != "" {
			return bad(fmt.Sprintf("host address %q is not an IP address", a))
		}
		sp.HostAddr, hostPort = ip.String(), p
	}
	if sp.HostPort, err = parsePort(hostPort, 0); err != nil {
		return bad("host " + err.Error())
	}
	return sp, nil
}

func parsePort(s string, lowest int) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < lowest || n > 65535 || strings.TrimLeft(s, "0123456789") != "" {
		return 0, fmt.Errorf("port %q is not a number from %d to 65535", s, lowest)
	}
	return n, nil
}

// Deps are what a Service is made of.
type Deps struct {
	Store *store.Store
	Log   *slog.Logger
	VMs   vms.Lookup
	// DialGuest connects to port on a running VM's guest: its address
	// when a server listens there, else its loopback.
	DialGuest func(ctx context.Context, vm model.VM, port int) (net.Conn, error)
	// Listen opens a host listener where the daemon's users are
	// (hostnet.ListenHost).
	Listen func(network, addr string) (net.Listener, error)
	Now    func() time.Time
	// Active marks a VM in use for as long as a relayed connection is
	// open (the idle timeout); done ends it. Optional.
	Active func(vmID string) (done func())
}

// Service keeps the forwards' listeners.
type Service struct {
	Deps
	mu   sync.Mutex
	live map[string]*forward // by hostKey
	// failed says why a recorded forward of a running VM has no
	// listener (its host port was taken while the VM was down), by failKey.
	failed map[string]string
}

// New makes a Service.
func New(deps Deps) *Service {
	if deps.Log == nil {
		deps.Log = slog.New(slog.DiscardHandler)
	}
	if deps.Now == nil {
		deps.Now = time.Now
	}
	if deps.Listen == nil {
		deps.Listen = net.Listen
	}
	if deps.Active == nil {
		deps.Active = func(string) func() { return func() {} }
	}
	return &Service{Deps: deps, live: map[string]*forward{}, failed: map[string]string{}}
}

// forward is one live listener and the connections it relays.
type forward struct {
	rec   model.Forward
	vm    model.VM
	l     net.Listener
	ctx   context.Context
	stop  context.CancelFunc
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

func hostKey(addr string, port int) string {
	return net.JoinHostPort(addr, strconv.Itoa(port))
}

// failKey names a recorded forward in Service.failed: "VMID HOST:PORT".
func failKey(r model.Forward) string { return r.VMID + " " + hostKey(r.HostAddr, r.HostPort) }

// Add publishes a port of a VM. A running VM's port is listened on at
// once; a stopped VM's is recorded and listened on when it starts (its
// host port is checked free now, and a HOSTPORT of 0 is picked now).
func (s *Service) Add(ctx context.Context, ref string, req api.AddPortRequest) (model.Forward, error) {
	sp, err := ParseSpec(req.Spec)
	if err != nil {
		return model.Forward{}, err
	}
	// Under the VM's lock, a stop cannot tear the VM down between the
	// check and the listener being known to Unlisten, nor a start miss
	// the record.
	vm, unlock, err := s.VMs.Lock(ctx, ref)
	if err != nil {
		return model.Forward{}, err
	}
	defer unlock()
	alive := s.VMs.Alive(vm)
	rec := model.Forward{VMID: vm.ID, HostAddr: sp.HostAddr, HostPort: sp.HostPort, GuestPort: sp.GuestPort, Proto: sp.Proto, CreatedAt: s.Now().UTC()}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.checkFree(ctx, sp); err != nil {
		return model.Forward{}, err
	}
	f, err := s.listen(vm, rec)
	if err != nil {
		return model.Forward{}, err
	}
	if err := s.Store.CreateForward(ctx, f.rec); err != nil {
		f.close()
		return model.Forward{}, s.describeCreate(vm, f.rec, err)
	}
	if !alive {
		// The port was free and is now picked; the listener waits for
		// the VM's start.
		f.close()
		s.Log.Info("port recorded for a stopped vm", "vm", vm.Name, "host", hostKey(f.rec.HostAddr, f.rec.HostPort), "guest_port", f.rec.GuestPort)
		return withState(f.rec, model.ForwardStopped, ""), nil
	}
	s.start(f)
	s.Log.Info("port published", "vm", vm.Name, "host", hostKey(f.rec.HostAddr, f.rec.HostPort), "guest_port", f.rec.GuestPort)
	return withState(f.rec, model.ForwardListening, ""), nil
}

// checkFree refuses a host port published already, listened on or only
// recorded (a stopped VM's); s.mu is held.
func (s *Service) checkFree(ctx context.Context, sp Spec) error {
	if sp.HostPort == 0 {
		return nil
	}
	if f, ok := s.live[hostKey(sp.HostAddr, sp.HostPort)]; ok {
		return errdefs.Errorf(errdefs.CodeConflict, "host port %s is already published (vm %s, guest port %d): remove it first or pick another",
			hostKey(sp.HostAddr, sp.HostPort), f.vm.Name, f.rec.GuestPort)
	}
	recs, err := s.Store.ListForwards(ctx, "")
	if err != nil {
		return store.Describe("forward", hostKey(sp.HostAddr, sp.HostPort), err)
	}
	for _, r := range recs {
		if r.HostAddr == sp.HostAddr && r.HostPort == sp.HostPort && r.Proto == sp.Proto {
			name := r.VMID
			if vm, err := s.VMs.Resolve(ctx, r.VMID); err == nil {
				name = vm.Name
			}
			return errdefs.Errorf(errdefs.CodeConflict, "host port %s is already published (vm %s, guest port %d): remove it first or pick another",
				hostKey(sp.HostAddr, sp.HostPort), name, r.GuestPort)
		}
	}
	return nil
}

// describeCreate is the error of a forward record that could not be made.
func (s *Service) describeCreate(vm model.VM, rec model.Forward, err error) error {
	if errors.Is(err, store.ErrConflict) {
		return errdefs.Errorf(errdefs.CodeConflict, "host port %s is already published", hostKey(rec.HostAddr, rec.HostPort))
	}
	return store.Describe("vm", vm.Name, err)
}

func withState(f model.Forward, state, why string) model.Forward {
	f.State, f.Error = state, why
	return f
}

// Reservation is host ports held for a VM being created (--publish): the
// listeners are open, so no other program or VM takes the ports while
// the VM is made and booted, but nothing is recorded yet.
type Reservation struct {
	fs []*forward
}

// Forwards are the reserved forwards, with the ports picked for 0.
func (r *Reservation) Forwards() []model.Forward {
	out := make([]model.Forward, 0, len(r.fs))
	for _, f := range r.fs {
		out = append(out, f.rec)
	}
	return out
}

// Reserve parses specs and opens their host listeners, before the VM they
// are for exists: a spec that is invalid, a host port published already
// (or twice in specs) or taken by another program fails it, and nothing
// is held then. The caller must Bind or Release the reservation.
func (s *Service) Reserve(ctx context.Context, specs []string) (*Reservation, error) {
	r := &Reservation{}
	if len(specs) == 0 {
		return r, nil
	}
	var sps []Spec
	seen := map[string]bool{}
	for _, spec := range specs {
		sp, err := ParseSpec(spec)
		if err != nil {
			return nil, err
		}
		if k := hostKey(sp.HostAddr, sp.HostPort); sp.HostPort != 0 {
			if seen[k] {
				return nil, errdefs.Errorf(errdefs.CodeInvalid, "host port %s is published twice", k)
			}
			seen[k] = true
		}
		sps = append(sps, sp)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.Now().UTC()
	for _, sp := range sps {
		err := s.checkFree(ctx, sp)
		var f *forward
		if err == nil {
			f, err = s.listen(model.VM{}, model.Forward{HostAddr: sp.HostAddr, HostPort: sp.HostPort, GuestPort: sp.GuestPort, Proto: sp.Proto, CreatedAt: now})
		}
		if err != nil {
			s.Release(r)
			return nil, err
		}
		r.fs = append(r.fs, f)
	}
	return r, nil
}

// Release closes a reservation's listeners (its VM was not made).
func (s *Service) Release(r *Reservation) {
	if r == nil {
		return
	}
	for _, f := range r.fs {
		f.close()
	}
	r.fs = nil
}

// Bind records a reservation's forwards as the VM's and serves them if it
// runs (else closes them until it starts). On error nothing is recorded
// or held, and the caller undoes the VM.
func (s *Service) Bind(ctx context.Context, r *Reservation, vmID string) ([]model.Forward, error) {
	if r == nil || len(r.fs) == 0 {
		return nil, nil
	}
	vm, unlock, err := s.VMs.Lock(ctx, vmID)
	if err != nil {
		s.Release(r)
		return nil, err
	}
	defer unlock()
	alive := s.VMs.Alive(vm)
	s.mu.Lock()
	defer s.mu.Unlock()
	var made []model.Forward
	for _, f := range r.fs {
		f.vm = vm
		f.rec.VMID = vm.ID
		if err = s.Store.CreateForward(ctx, f.rec); err != nil {
			err = s.describeCreate(vm, f.rec, err)
			break
		}
		made = append(made, f.rec)
	}
	if err != nil {
		for _, m := range made {
			_ = s.Store.DeleteForward(context.Background(), m.VMID, m.HostAddr, m.HostPort)
		}
		s.Release(r)
		return nil, err
	}
	out := make([]model.Forward, 0, len(r.fs))
	for _, f := range r.fs {
		if alive {
			s.start(f)
			out = append(out, withState(f.rec, model.ForwardListening, ""))
		} else {
			f.close()
			out = append(out, withState(f.rec, model.ForwardStopped, ""))
		}
		s.Log.Info("port published", "vm", vm.Name, "host", hostKey(f.rec.HostAddr, f.rec.HostPort), "guest_port", f.rec.GuestPort)
	}
	r.fs = nil
	return out, nil
}

// listen opens rec's listener, filling in the port picked for 0.
func (s *Service) listen(vm model.VM, rec model.Forward) (*forward, error) {
	addr := hostKey(rec.HostAddr, rec.HostPort)
	l, err := s.Listen("tcp", addr)
	if err != nil {
		switch {
		case errors.Is(err, syscall.EADDRINUSE):
			return nil, errdefs.Errorf(errdefs.CodeConflict, "host port %s is taken: pick another, or 0 for any free port", addr)
		case errors.Is(err, syscall.EADDRNOTAVAIL):
			return nil, errdefs.Errorf(errdefs.CodeInvalid, "host address %s is not an address of this host", rec.HostAddr)
		case errors.Is(err, syscall.EACCES):
			return nil, errdefs.Errorf(errdefs.CodeInvalid, "host port %s needs privileges the daemon lacks: pick one above 1023", addr)
		}
		return nil, errdefs.Errorf(errdefs.CodeUnavailable, "listen on %s: %v", addr, err)
	}
	if ta, ok := l.Addr().(*net.TCPAddr); ok {
		rec.HostPort = ta.Port
	}
	ctx, stop := context.WithCancel(context.Background())
	return &forward{rec: rec, vm: vm, l: l, ctx: ctx, stop: stop, conns: map[net.Conn]struct{}{}}, nil
}

// start records f as live and serves it; s.mu is held.
func (s *Service) start(f *forward) {
	s.live[hostKey(f.rec.HostAddr, f.rec.HostPort)] = f
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		s.serve(f)
	}()
}

func (s *Service) serve(f *forward) {
	for {
		c, err := f.l.Accept()
		if err != nil {
			if f.ctx.Err() == nil && !errors.Is(err, net.ErrClosed) {
				s.Log.Warn("port listener failed", "vm", f.vm.Name, "host_port", f.rec.HostPort, "err", err)
			}
			return
		}
		if !f.track(c) {
			c.Close()
			return
		}
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			defer f.untrack(c)
			defer s.Active(f.rec.VMID)()
			s.relay(f, c)
		}()
	}
}

// relay copies c to the guest port and back until both sides are done.
func (s *Service) relay(f *forward, c net.Conn) {
	dctx, cancel := context.WithTimeout(f.ctx, dialTimeout)
	g, err := s.DialGuest(dctx, f.vm, f.rec.GuestPort)
	cancel()
	if err != nil {
		s.Log.Debug("port relay: guest refused", "vm", f.vm.Name, "guest_port", f.rec.GuestPort, "err", err)
		return
	}
	if !f.track(g) {
		g.Close()
		return
	}
	defer f.untrack(g)
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		// Pass the end of one direction on, so request/response protocols
		// that wait for EOF finish; the other direction goes on.
		if cw, ok := dst.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		} else {
			dst.Close()
		}
		done <- struct{}{}
	}
	go pipe(g, c)
	go pipe(c, g)
	<-done
	<-done
}

// track adds c to f's connections unless f is closing.
func (f *forward) track(c net.Conn) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.conns == nil {
		return false
	}
	f.conns[c] = struct{}{}
	return true
}

func (f *forward) untrack(c net.Conn) {
	c.Close()
	f.mu.Lock()
	delete(f.conns, c)
	f.mu.Unlock()
}

// close stops the listener and cuts every relayed connection.
func (f *forward) close() {
	f.stop()
	f.l.Close()
	f.mu.Lock()
	conns := f.conns
	f.conns = nil
	f.mu.Unlock()
	for c := range conns {
		c.Close()
	}
	f.wg.Wait()
}

// Remove unpublishes a VM's port: port is HOSTPORT or HOSTADDR:HOSTPORT.
func (s *Service) Remove(ctx context.Context, ref, port string) error {
	vm, err := s.VMs.Resolve(ctx, ref)
	if err != nil {
		return err
	}
	addr, p := "", port
	if strings.ContainsAny(port, ":[]") {
		if addr, p, err = net.SplitHostPort(port); err != nil {
			return errdefs.Errorf(errdefs.CodeInvalid, "port %q: give HOSTPORT or HOSTADDR:HOSTPORT", port)
		}
	}
	n, err := parsePort(p, 1)
	if err != nil {
		return errdefs.Errorf(errdefs.CodeInvalid, "host %v", err)
	}
	recs, err := s.Store.ListForwards(ctx, vm.ID)
	if err != nil {
		return store.Describe("vm", vm.Name, err)
	}
	var match []model.Forward
	for _, r := range recs {
		if r.HostPort == n && (addr == "" || r.HostAddr == addr) {
			match = append(match, r)
		}
	}
	switch len(match) {
	case 0:
		return errdefs.Errorf(errdefs.CodeNotFound, "vm %s publishes no host port %s (see `banger vm port list %s`)", vm.Name, port, vm.Name)
	case 1:
	default:
		return errdefs.Errorf(errdefs.CodeInvalid, "vm %s publishes host port %d on several addresses: give HOSTADDR:HOSTPORT", vm.Name, n)
	}
	r := match[0]
	s.mu.Lock()
	delete(s.failed, failKey(r))
	f := s.live[hostKey(r.HostAddr, r.HostPort)]
	if f != nil && f.rec.VMID == vm.ID {
		delete(s.live, hostKey(r.HostAddr, r.HostPort))
	} else {
		f = nil
	}
	s.mu.Unlock()
	if f != nil {
		f.close()
	}
	if err := s.Store.DeleteForward(ctx, vm.ID, r.HostAddr, r.HostPort); err != nil && !errors.Is(err, store.ErrNotFound) {
		return store.Describe("vm", vm.Name, err)
	}
	s.Log.Info("port unpublished", "vm", vm.Name, "host", hostKey(r.HostAddr, r.HostPort))
	return nil
}

// List returns a VM's published ports, by host port.
func (s *Service) List(ctx context.Context, ref string) ([]model.Forward, error) {
	vm, err := s.VMs.Resolve(ctx, ref)
	if err != nil {
		return nil, err
	}
	return s.ListOf(ctx, vm.ID)
}

// ListOf is List for a VM known by id, each forward with its live state.
func (s *Service) ListOf(ctx context.Context, vmID string) ([]model.Forward, error) {
	recs, err := s.Store.ListForwards(ctx, vmID)
	if err != nil {
		return nil, store.Describe("vm", vmID, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, r := range recs {
		k := hostKey(r.HostAddr, r.HostPort)
		switch f, ok := s.live[k]; {
		case ok && f.rec.VMID == r.VMID:
			recs[i] = withState(r, model.ForwardListening, "")
		case s.failed[failKey(r)] != "":
			recs[i] = withState(r, model.ForwardFailed, s.failed[failKey(r)])
		default:
			recs[i] = withState(r, model.ForwardStopped, "")
		}
	}
	return recs, nil
}

// Unlisten closes every listener of the VM and the connections they
// relay, keeping the records: the VM stopped (or is being deleted, whose
// record takes its forwards with it). Safe to call for a VM without any.
func (s *Service) Unlisten(vmID string) {
	s.mu.Lock()
	var drop []*forward
	for k, f := range s.live {
		if f.rec.VMID == vmID {
			drop = append(drop, f)
			delete(s.live, k)
		}
	}
	for k := range s.failed {
		if strings.HasPrefix(k, vmID+" ") {
			delete(s.failed, k)
		}
	}
	s.mu.Unlock()
	for _, f := range drop {
		f.close()
	}
}

// VMStarted listens on the recorded forwards of a VM that just booted. A
// host port another program took meanwhile is logged and shown failed,
// and the record kept for the next start.
func (s *Service) VMStarted(ctx context.Context, vm model.VM) {
	recs, err := s.Store.ListForwards(ctx, vm.ID)
	if err != nil {
		s.Log.Warn("published ports unreadable", "vm", vm.Name, "err", err)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range recs {
		s.relisten(vm, r)
	}
}

// relisten opens a recorded forward's listener unless it has one; s.mu
// is held.
func (s *Service) relisten(vm model.VM, r model.Forward) {
	k := hostKey(r.HostAddr, r.HostPort)
	if f, ok := s.live[k]; ok && f.rec.VMID == vm.ID {
		return
	}
	f, err := s.listen(vm, r)
	if err != nil {
		s.failed[failKey(r)] = err.Error()
		s.Log.Warn("published port not listened on", "vm", vm.Name, "host", k, "err", err)
		return
	}
	delete(s.failed, failKey(r))
	s.start(f)
}

// Reconcile listens again for the recorded forwards of running VMs, at
// daemon start. Those of stopped VMs wait for their start.
func (s *Service) Reconcile(ctx context.Context) {
	recs, err := s.Store.ListForwards(ctx, "")
	if err != nil {
		s.Log.Warn("published ports unreadable", "err", err)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range recs {
		vm, err := s.VMs.Resolve(ctx, r.VMID)
		if err != nil {
			s.Log.Warn("published port of an unknown vm", "vm", r.VMID, "host", hostKey(r.HostAddr, r.HostPort), "err", err)
			continue
		}
		if s.VMs.Alive(vm) {
			s.relisten(vm, r)
		}
	}
}

// Close stops every listener, keeping the records for the next Reconcile:
// the daemon is shutting down, its VMs keep running.
func (s *Service) Close() {
	s.mu.Lock()
	live := s.live
	s.live = map[string]*forward{}
	s.mu.Unlock()
	for _, f := range live {
		f.close()
	}
}
