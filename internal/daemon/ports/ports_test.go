package ports

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/banger/banger/internal/api"
	"github.com/banger/banger/internal/errdefs"
	"github.com/banger/banger/internal/model"
	"github.com/banger/banger/internal/store"
	"github.com/banger/banger/internal/testenv"
)

func TestParseSpec(t *testing.T) {
	for _, c := range []struct {
		in   string
		want Spec
	}{
		{"8080:80", Spec{"127.0.0.1", 8080, 80, "tcp"}},
		{"0:8000/tcp", Spec{"127.0.0.1", 0, 8000, "tcp"}},
		{"0.0.0.0:8080:80", Spec{"0.0.0.0", 8080, 80, "tcp"}},
		{"[::1]:8080:80/tcp", Spec{"::1", 8080, 80, "tcp"}},
	} {
		got, err := ParseSpec(c.in)
		if err != nil || got != c.want {
			t.Errorf("ParseSpec(%q) = %+v, %v; want %+v", c.in, got, err, c.want)
		}
	}
	for _, in := range []string{"", "80", "8080:0", "8080:65536", "70000:80", "-1:80", "+1:80", "a:80", "8080:80/udp",
		"localhost:8080:80", "1.2.3:8080:80", "::1:8080:80", "[fe80::1%eth0]:1:2", ":80"} {
		if _, err := ParseSpec(in); errdefs.CodeOf(err) != errdefs.CodeInvalid {
			t.Errorf("ParseSpec(%q) = %v, want invalid", in, err)
		}
	}
}

// fakeVMs knows running VMs by name and id.
type fakeVMs struct{ vms map[string]model.VM }

func (f *fakeVMs) Resolve(_ context.Context, ref string) (model.VM, error) {
	for _, v := range f.vms {
		if v.Name == ref || v.ID == ref {
			return v, nil
		}
	}
	return model.VM{}, errdefs.NotFound("vm", ref)
}

func (f *fakeVMs) Running(ctx context.Context, ref string) (model.VM, error) {
	vm, err := f.Resolve(ctx, ref)
	if err == nil && !f.Alive(vm) {
		err = errdefs.Errorf(errdefs.CodeConflict, "vm %s is not running", vm.Name)
	}
	return vm, err
}

func (f *fakeVMs) Alive(vm model.VM) bool { return vm.State == model.VMRunning }

func (f *fakeVMs) Lock(ctx context.Context, ref string) (model.VM, func(), error) {
	vm, err := f.Resolve(ctx, ref)
	return vm, func() {}, err
}

// echoGuest is a "guest" answering each line with "PORT: line", reached by
// the fake dialer below instead of over SSH.
func echoGuest(t *testing.T) (dial func(ctx context.Context, vm model.VM, port int) (net.Conn, error), dials *int) {
	addr := testenv.Serve(testenv.Listen(t, "tcp", "127.0.0.1:0"), func(c net.Conn) {
		r := bufio.NewReader(c)
		port, _ := r.ReadString('\n')
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			fmt.Fprintf(c, "%s: %s", strings.TrimSpace(port), line)
		}
	})
	n := 0
	return func(ctx context.Context, vm model.VM, port int) (net.Conn, error) {
		n++
		if port == 9 {
			return nil, fmt.Errorf("connect to 127.0.0.1:9: connection refused")
		}
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", addr)
		if err == nil {
			fmt.Fprintf(c, "%s/%d\n", vm.Name, port)
		}
		return c, err
	}, &n
}

func newService(t *testing.T) (*Service, *fakeVMs, *store.Store) {
	st, err := store.Open(filepath.Join(t.TempDir(), "banger.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	vms := &fakeVMs{vms: map[string]model.VM{}}
	for i, name := range []string{"web", "db"} {
		vm := model.VM{ID: name + "0000000000", Name: name, State: model.VMRunning, DesiredState: model.VMRunning,
			GuestIP: fmt.Sprintf("10.0.0.%d", i+2), CID: uint32(i + 3), CreatedAt: time.Now(), UpdatedAt: time.Now()}
		if err := st.CreateVM(context.Background(), vm); err != nil {
			t.Fatal(err)
		}
		vms.vms[name] = vm
	}
	dial, _ := echoGuest(t)
	s := New(Deps{Store: st, VMs: vms, DialGuest: dial})
	t.Cleanup(s.Close)
	return s, vms, st
}

// roundTrip sends a line to 127.0.0.1:port and reads the answer.
func roundTrip(t *testing.T, port int, line string) (string, error) {
	t.Helper()
	c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), 2*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintln(c, line)
	return bufio.NewReader(c).ReadString('\n')
}

func TestAddRelayRemove(t *testing.T) {
	s, _, st := newService(t)
	ctx := context.Background()
	f, err := s.Add(ctx, "web", api.AddPortRequest{Spec: "0:8000"})
	if err != nil {
		t.Fatal(err)
	}
	if f.HostPort == 0 || f.HostAddr != "127.0.0.1" || f.GuestPort != 8000 || f.VMID != "web0000000000" {
		t.Fatalf("Add = %+v", f)
	}
	// Connections relay both ways, several at once.
	for i := range 3 {
		got, err := roundTrip(t, f.HostPort, fmt.Sprint("hello ", i))
		if err != nil || got != fmt.Sprintf("web/8000: hello %d\n", i) {
			t.Fatalf("relay = %q, %v", got, err)
		}
	}
	// The same host port again, by any VM, creates nothing.
	spec := fmt.Sprintf("127.0.0.1:%d:80", f.HostPort)
	if _, err := s.Add(ctx, "db", api.AddPortRequest{Spec: spec}); errdefs.CodeOf(err) != errdefs.CodeConflict || !strings.Contains(err.Error(), "already published") {
		t.Fatalf("second Add of a port = %v, want conflict", err)
	}
	// A port another program holds is a clear conflict.
	other, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	taken := other.Addr().(*net.TCPAddr).Port
	if _, err := s.Add(ctx, "db", api.AddPortRequest{Spec: fmt.Sprintf("%d:80", taken)}); errdefs.CodeOf(err) != errdefs.CodeConflict || !strings.Contains(err.Error(), "taken") {
		t.Fatalf("Add of a taken port = %v, want conflict", err)
	}
	if got, _ := st.ListForwards(ctx, ""); len(got) != 1 {
		t.Fatalf("records after refusals = %+v", got)
	}
	if got, err := s.List(ctx, "web"); err != nil || len(got) != 1 || got[0].HostPort != f.HostPort {
		t.Fatalf("List = %+v, %v", got, err)
	}
	if err := s.Remove(ctx, "db", strconv.Itoa(f.HostPort)); errdefs.CodeOf(err) != errdefs.CodeNotFound {
		t.Fatalf("Remove by another VM = %v, want not found", err)
	}
	if err := s.Remove(ctx, "web", strconv.Itoa(f.HostPort)); err != nil {
		t.Fatal(err)
	}
	if _, err := roundTrip(t, f.HostPort, "x"); err == nil {
		t.Fatal("port still answers after Remove")
	}
	if got, _ := s.List(ctx, "web"); len(got) != 0 {
		t.Fatalf("List after Remove = %+v", got)
	}
}

func TestGuestRefusesClosesConnection(t *testing.T) {
	s, _, _ := newService(t)
	f, err := s.Add(context.Background(), "web", api.AddPortRequest{Spec: "0:9"})
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(f.HostPort)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("read from a refused relay = %d, %v; want EOF", n, err)
	}
}

// A stopped VM's port is recorded as intent: its host port is checked and
// picked now, listened on when the VM starts.
func TestStoppedVMRecordsIntent(t *testing.T) {
	s, vms, st := newService(t)
	ctx := context.Background()
	vm := vms.vms["db"]
	vm.State = model.VMStopped
	vms.vms["db"] = vm
	f, err := s.Add(ctx, "db", api.AddPortRequest{Spec: "0:5432"})
	if err != nil || f.HostPort == 0 || f.State != model.ForwardStopped {
		t.Fatalf("Add to a stopped VM = %+v, %v", f, err)
	}
	if _, err := roundTrip(t, f.HostPort, "x"); err == nil {
		t.Fatal("a stopped VM's port answers")
	}
	// Its port is taken for the other VMs, though nothing listens yet.
	if _, err := s.Add(ctx, "web", api.AddPortRequest{Spec: fmt.Sprintf("%d:80", f.HostPort)}); errdefs.CodeOf(err) != errdefs.CodeConflict || !strings.Contains(err.Error(), "vm db") {
		t.Fatalf("Add of a stopped VM's port = %v, want conflict naming db", err)
	}
	if got, err := s.ListOf(ctx, vm.ID); err != nil || len(got) != 1 || got[0].State != model.ForwardStopped {
		t.Fatalf("ListOf = %+v, %v", got, err)
	}
	vm.State = model.VMRunning
	vms.vms["db"] = vm
	s.VMStarted(ctx, vm)
	if got, err := roundTrip(t, f.HostPort, "up"); err != nil || got != "db/5432: up\n" {
		t.Fatalf("relay after start = %q, %v", got, err)
	}
	if got, _ := s.ListOf(ctx, vm.ID); len(got) != 1 || got[0].State != model.ForwardListening {
		t.Fatalf("ListOf after start = %+v", got)
	}
	if _, err := s.Add(ctx, "db", api.AddPortRequest{Spec: "x"}); errdefs.CodeOf(err) != errdefs.CodeInvalid {
		t.Fatalf("Add of a bad spec = %v, want invalid", err)
	}
	if got, _ := st.ListForwards(ctx, ""); len(got) != 1 {
		t.Fatalf("records = %+v", got)
	}
}

// Stop closes the listeners and keeps the records; a start listens
// again; a port taken meanwhile is shown failed and kept for later.
func TestUnlistenVMStartedAndReconcile(t *testing.T) {
	s, vms, st := newService(t)
	ctx := context.Background()
	web, err := s.Add(ctx, "web", api.AddPortRequest{Spec: "0:8000"})
	if err != nil {
		t.Fatal(err)
	}
	db, err := s.Add(ctx, "db", api.AddPortRequest{Spec: "0:5432"})
	if err != nil {
		t.Fatal(err)
	}
	// An open relayed connection is cut when its VM stops.
	c, err := net.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(db.HostPort)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintln(c, "hi")
	r := bufio.NewReader(c)
	if line, err := r.ReadString('\n'); err != nil || line != "db/5432: hi\n" {
		t.Fatalf("relay = %q, %v", line, err)
	}
	dbVM := vms.vms["db"]
	dbVM.State = model.VMStopped
	vms.vms["db"] = dbVM
	s.Unlisten(dbVM.ID)
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := r.ReadString('\n'); err == nil {
		t.Fatal("relayed connection survived Unlisten")
	}
	if _, err := roundTrip(t, db.HostPort, "x"); err == nil {
		t.Fatal("port answers after Unlisten")
	}
	if got, _ := st.ListForwards(ctx, dbVM.ID); len(got) != 1 {
		t.Fatalf("records after Unlisten = %+v, want kept", got)
	}

	// A daemon restart: listeners close, records stay, Reconcile listens
	// again for running VMs; the stopped VM's wait for its start.
	s.Close()
	if _, err := roundTrip(t, web.HostPort, "x"); err == nil {
		t.Fatal("port answers after Close")
	}
	dial, _ := echoGuest(t)
	s2 := New(Deps{Store: st, VMs: vms, DialGuest: dial})
	defer s2.Close()
	s2.Reconcile(ctx)
	if got, err := roundTrip(t, web.HostPort, "again"); err != nil || got != "web/8000: again\n" {
		t.Fatalf("relay after Reconcile = %q, %v", got, err)
	}
	if _, err := roundTrip(t, db.HostPort, "x"); err == nil {
		t.Fatal("a stopped VM's port answers after Reconcile")
	}

	// Another program takes db's port while it is down: its start
	// shows the forward failed and keeps the record.
	other, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(db.HostPort)))
	if err != nil {
		t.Fatal(err)
	}
	dbVM.State = model.VMRunning
	vms.vms["db"] = dbVM
	s2.VMStarted(ctx, dbVM)
	if got, _ := s2.ListOf(ctx, dbVM.ID); len(got) != 1 || got[0].State != model.ForwardFailed || !strings.Contains(got[0].Error, "taken") {
		t.Fatalf("ListOf with a taken port = %+v", got)
	}
	// Freed, the next start listens again.
	other.Close()
	s2.Unlisten(dbVM.ID)
	s2.VMStarted(ctx, dbVM)
	if got, err := roundTrip(t, db.HostPort, "back"); err != nil || got != "db/5432: back\n" {
		t.Fatalf("relay after a second start = %q, %v", got, err)
	}

	// Deleting the VM's record takes its forwards.
	s2.Unlisten(dbVM.ID)
	if err := st.DeleteVM(ctx, dbVM.ID); err != nil {
		t.Fatal(err)
	}
	if got, _ := st.ListForwards(ctx, ""); len(got) != 1 || got[0].VMID != vms.vms["web"].ID {
		t.Fatalf("records after delete = %+v", got)
	}
}

// Reserve holds --publish ports before the VM exists: a port taken or
// given twice fails it holding nothing; Bind records and serves them.
func TestReserveBind(t *testing.T) {
	s, vms, st := newService(t)
	ctx := context.Background()
	other, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	taken := other.Addr().(*net.TCPAddr).Port

	freePort := testenv.QuietPort(t)
	for _, specs := range [][]string{
		{fmt.Sprintf("%d:80", freePort), fmt.Sprintf("%d:81", taken)},
		{fmt.Sprintf("%d:80", freePort), fmt.Sprintf("127.0.0.1:%d:81", freePort)},
		{fmt.Sprintf("%d:80", freePort), "nonsense"},
	} {
		if r, err := s.Reserve(ctx, specs); err == nil {
			s.Release(r)
			t.Fatalf("Reserve(%v) succeeded", specs)
		} else {
			t.Logf("Reserve(%v): %v", specs, err)
		}
		// The first port of the failed reservation is free again.
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort)))
		if err != nil {
			t.Fatalf("port %d held after a failed Reserve: %v", freePort, err)
		}
		l.Close()
	}

	r, err := s.Reserve(ctx, []string{"0:8000", fmt.Sprintf("%d:22", freePort)})
	if err != nil {
		t.Fatal(err)
	}
	fs := r.Forwards()
	if len(fs) != 2 || fs[0].HostPort == 0 || fs[1].HostPort != freePort {
		t.Fatalf("reserved %+v", fs)
	}
	// Held: another program cannot take it meanwhile.
	if l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(fs[0].HostPort))); err == nil {
		l.Close()
		t.Fatal("a reserved port was free")
	}
	got, err := s.Bind(ctx, r, vms.vms["web"].ID)
	if err != nil || len(got) != 2 || got[0].State != model.ForwardListening {
		t.Fatalf("Bind = %+v, %v", got, err)
	}
	if line, err := roundTrip(t, fs[0].HostPort, "bound"); err != nil || line != "web/8000: bound\n" {
		t.Fatalf("relay after Bind = %q, %v", line, err)
	}
	if recs, _ := st.ListForwards(ctx, vms.vms["web"].ID); len(recs) != 2 {
		t.Fatalf("records after Bind = %+v", recs)
	}
	// Released instead, the ports are free and nothing is recorded.
	r2, err := s.Reserve(ctx, []string{"0:1"})
	if err != nil {
		t.Fatal(err)
	}
	p := r2.Forwards()[0].HostPort
	s.Release(r2)
	l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
	if err != nil {
		t.Fatalf("port %d held after Release: %v", p, err)
	}
	l.Close()
	if recs, _ := st.ListForwards(ctx, ""); len(recs) != 2 {
		t.Fatalf("records after Release = %+v", recs)
	}
}

// A relayed connection keeps its VM active until it closes.
func TestRelayIsActivity(t *testing.T) {
	s, _, _ := newService(t)
	var mu sync.Mutex
	busy := map[string]int{}
	s.Active = func(id string) func() {
		mu.Lock()
		busy[id]++
		mu.Unlock()
		return func() { mu.Lock(); busy[id]--; mu.Unlock() }
	}
	f, err := s.Add(context.Background(), "web", api.AddPortRequest{Spec: "0:8000"})
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(f.HostPort)))
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintln(c, "x")
	if _, err := bufio.NewReader(c).ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	n := busy[f.VMID]
	mu.Unlock()
	if n != 1 {
		t.Fatalf("busy while connected = %d", n)
	}
	c.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		mu.Lock()
		n = busy[f.VMID]
		mu.Unlock()
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("busy after close = %d", n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
