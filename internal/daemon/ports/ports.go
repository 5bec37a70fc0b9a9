// Package ports owns published ports (forwards): a listener on the host
// per forward, each connection relayed to a port on a running guest's
// loopback through the pooled SSH connection (direct-tcpip), so services
// bound to the guest's 127.0.0.1 are reachable. Forwards are recorded in
// the store, re-established when the daemon starts (Reconcile) and torn
// down when their VM stops or is deleted (DropVM).
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
	// DialGuest connects to port on a running VM's guest loopback.
	DialGuest func(ctx context.Context, vm model.VM, port int) (net.Conn, error)
	// Listen opens a host listener where the daemon's users are
	// (hostnet.ListenHost).
	Listen func(network, addr string) (net.Listener, error)
	Now    func() time.Time
}

// Service keeps the forwards' listeners.
type Service struct {
	Deps
	mu   sync.Mutex
	live map[string]*forward // by hostKey
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
	return &Service{Deps: deps, live: map[string]*forward{}}
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

// Add publishes a port of a running VM.
func (s *Service) Add(ctx context.Context, ref string, req api.AddPortRequest) (model.Forward, error) {
	sp, err := ParseSpec(req.Spec)
	if err != nil {
		return model.Forward{}, err
	}
	if _, err := s.VMs.Running(ctx, ref); err != nil {
		return model.Forward{}, err
	}
	// Under the VM's lock, a stop cannot tear the VM down between the
	// check and the listener being known to DropVM.
	vm, unlock, err := s.VMs.Lock(ctx, ref)
	if err != nil {
		return model.Forward{}, err
	}
	defer unlock()
	if !s.VMs.Alive(vm) {
		return model.Forward{}, errdefs.Errorf(errdefs.CodeConflict, "vm %s is not running (state %s): start it with `banger vm start %s`", vm.Name, vm.State, vm.Name)
	}
	rec := model.Forward{VMID: vm.ID, HostAddr: sp.HostAddr, HostPort: sp.HostPort, GuestPort: sp.GuestPort, Proto: sp.Proto, CreatedAt: s.Now().UTC()}
	s.mu.Lock()
	defer s.mu.Unlock()
	if sp.HostPort != 0 {
		if f, ok := s.live[hostKey(sp.HostAddr, sp.HostPort)]; ok {
			return model.Forward{}, errdefs.Errorf(errdefs.CodeConflict, "host port %s is already published (vm %s, guest port %d): remove it first or pick another",
				hostKey(sp.HostAddr, sp.HostPort), f.vm.Name, f.rec.GuestPort)
		}
	}
	f, err := s.listen(vm, rec)
	if err != nil {
		return model.Forward{}, err
	}
	if err := s.Store.CreateForward(ctx, f.rec); err != nil {
		f.close()
		if errors.Is(err, store.ErrConflict) {
			return model.Forward{}, errdefs.Errorf(errdefs.CodeConflict, "host port %s is already published", hostKey(f.rec.HostAddr, f.rec.HostPort))
		}
		return model.Forward{}, store.Describe("vm", vm.Name, err)
	}
	s.start(f)
	s.Log.Info("port published", "vm", vm.Name, "host", hostKey(f.rec.HostAddr, f.rec.HostPort), "guest_port", f.rec.GuestPort)
	return f.rec, nil
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

// ListOf is List for a VM known by id.
func (s *Service) ListOf(ctx context.Context, vmID string) ([]model.Forward, error) {
	recs, err := s.Store.ListForwards(ctx, vmID)
	if err != nil {
		return nil, store.Describe("vm", vmID, err)
	}
	return recs, nil
}

// DropVM closes every forward of the VM and forgets them: it stopped or is
// being deleted. Safe to call for a VM without any.
func (s *Service) DropVM(vmID string) {
	s.mu.Lock()
	var drop []*forward
	for k, f := range s.live {
		if f.rec.VMID == vmID {
			drop = append(drop, f)
			delete(s.live, k)
		}
	}
	s.mu.Unlock()
	for _, f := range drop {
		f.close()
	}
	if err := s.Store.DeleteForwards(context.Background(), vmID); err != nil {
		s.Log.Warn("forget published ports", "vm", vmID, "err", err)
	}
}

// Reconcile listens again for the recorded forwards of running VMs, at
// daemon start, and forgets those whose VM no longer runs or whose host
// port another program took meanwhile.
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
		if err == nil && s.VMs.Alive(vm) {
			var f *forward
			if f, err = s.listen(vm, r); err == nil {
				s.start(f)
				continue
			}
		} else if err == nil {
			err = errors.New("vm not running")
		}
		s.Log.Warn("published port dropped", "vm", r.VMID, "host", hostKey(r.HostAddr, r.HostPort), "err", err)
		if err := s.Store.DeleteForward(ctx, r.VMID, r.HostAddr, r.HostPort); err != nil && !errors.Is(err, store.ErrNotFound) {
			s.Log.Warn("forget published port", "vm", r.VMID, "err", err)
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
