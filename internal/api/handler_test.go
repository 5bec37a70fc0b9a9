package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/banger/banger/internal/errdefs"
	"github.com/banger/banger/internal/model"
	"github.com/banger/banger/internal/progress"
	"github.com/banger/banger/internal/workspace"
)

// fakeService answers the methods a test sets; any other call fails the
// test through the nil embedded interface (a panic in the handler).
type fakeService struct {
	Service
	getVM        func(ref string) (model.VM, error)
	listVMs      func() ([]model.VM, error)
	createVM     func(req CreateVMRequest, p progress.Func) (model.VM, error)
	deleteVM     func(ref string, force bool) error
	setVMNet     func(ref string, req VMNetRequest) (model.VM, error)
	setVMTTL     func(ref string, req VMTTLRequest) (model.VM, error)
	pauseVM      func(ref string) (model.VM, error)
	resumeVM     func(ref string, p progress.Func) (model.VM, error)
	snapshots    map[string]model.Snapshot
	forkReq      ForkRequest
	vmLogs       func(req LogsRequest, w io.Writer) error
	execVM       func(req ExecRequest, stdout, stderr io.Writer) (int, error)
	prepare      func(req WorkspaceRequest, tar io.Reader) (WorkspaceInfo, error)
	send         func(data io.Reader) (int64, error)
	attach       func(ctx context.Context, aio AttachIO) error
	attachReq    AttachRequest
	execAttached func(ctx context.Context, req ExecRequest, aio AttachIO) (int, error)
	getSession   func(vm, ref string) (model.Session, error)
	listSessions func(vm string) ([]model.Session, error)
	listImages   func() ([]model.Image, error)
	info         DaemonInfo
}

func (f *fakeService) Info(context.Context) DaemonInfo { return f.info }
func (f *fakeService) GetVM(_ context.Context, ref string) (model.VM, error) {
	return f.getVM(ref)
}
func (f *fakeService) ListVMs(context.Context) ([]model.VM, error) { return f.listVMs() }
func (f *fakeService) CreateVM(_ context.Context, req CreateVMRequest, p progress.Func) (model.VM, error) {
	return f.createVM(req, p)
}
func (f *fakeService) DeleteVM(_ context.Context, ref string, force bool) error {
	return f.deleteVM(ref, force)
}
func (f *fakeService) SetVMNet(_ context.Context, ref string, req VMNetRequest) (model.VM, error) {
	return f.setVMNet(ref, req)
}
func (f *fakeService) SetVMTTL(_ context.Context, ref string, req VMTTLRequest) (model.VM, error) {
	return f.setVMTTL(ref, req)
}
func (f *fakeService) PauseVM(_ context.Context, ref string) (model.VM, error) {
	return f.pauseVM(ref)
}
func (f *fakeService) ResumeVM(_ context.Context, ref string, p progress.Func) (model.VM, error) {
	return f.resumeVM(ref, p)
}
func (f *fakeService) CreateSnapshot(_ context.Context, vmRef string, req CreateSnapshotRequest) (model.Snapshot, error) {
	if vmRef == "gone" {
		return model.Snapshot{}, errdefs.NotFound("vm", vmRef)
	}
	s := model.Snapshot{ID: "s" + req.Name, Name: req.Name, VMName: vmRef, State: model.SnapshotReady}
	f.snapshots[req.Name] = s
	return s, nil
}
func (f *fakeService) ListSnapshots(context.Context) ([]model.Snapshot, error) {
	var out []model.Snapshot
	for _, s := range f.snapshots {
		out = append(out, s)
	}
	return out, nil
}
func (f *fakeService) GetSnapshot(_ context.Context, ref string) (model.Snapshot, error) {
	if s, ok := f.snapshots[ref]; ok {
		return s, nil
	}
	return model.Snapshot{}, errdefs.NotFound("snapshot", ref)
}
func (f *fakeService) RemoveSnapshot(_ context.Context, ref string) error {
	if ref == "used" {
		return errdefs.Errorf(errdefs.CodeConflict, "snapshot used is used by vm kid-1: delete those vms first")
	}
	delete(f.snapshots, ref)
	return nil
}
func (f *fakeService) Fork(_ context.Context, req ForkRequest, p progress.Func) ([]model.VM, error) {
	f.forkReq = req
	p(progress.Event{Phase: "fork", Message: "kid-1 (1 of 1)"})
	if req.Source == "gone" {
		return nil, errdefs.Errorf(errdefs.CodeNotFound, "no snapshot or vm named %q to fork", req.Source)
	}
	return []model.VM{{Name: req.NamePrefix + "-1", State: model.VMRunning}}, nil
}
func (f *fakeService) VMLogs(_ context.Context, _ string, req LogsRequest, w io.Writer) error {
	// Enums are the domain's to validate; the handler only decodes.
	if err := model.ValidateLogSource(req.Source); err != nil {
		return errdefs.Invalid(err)
	}
	return f.vmLogs(req, w)
}
func (f *fakeService) ExecVM(_ context.Context, _ string, req ExecRequest, stdout, stderr io.Writer) (int, error) {
	return f.execVM(req, stdout, stderr)
}
func (f *fakeService) PrepareWorkspace(_ context.Context, _ string, req WorkspaceRequest, tar io.Reader) (WorkspaceInfo, error) {
	return f.prepare(req, tar)
}
func (f *fakeService) SendSession(_ context.Context, _, _ string, data io.Reader) (int64, error) {
	return f.send(data)
}
func (f *fakeService) AttachSession(ctx context.Context, _, _ string, req AttachRequest, aio AttachIO) error {
	f.attachReq = req
	return f.attach(ctx, aio)
}
func (f *fakeService) ExecVMAttached(ctx context.Context, _ string, req ExecRequest, aio AttachIO) (int, error) {
	return f.execAttached(ctx, req, aio)
}
func (f *fakeService) GetSession(_ context.Context, vm, ref string) (model.Session, error) {
	return f.getSession(vm, ref)
}
func (f *fakeService) ListSessions(_ context.Context, vm string) ([]model.Session, error) {
	return f.listSessions(vm)
}
func (f *fakeService) ListImages(context.Context) ([]model.Image, error) { return f.listImages() }

// serve runs the handler on a unix socket and returns a client of it and
// a raw HTTP client for status checks.
func serve(t *testing.T, svc Service) (*Client, *http.Client) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "d.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: NewHandler(svc, nil)}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	raw := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return net.Dial("unix", sock)
	}}}
	return NewClient(sock), raw
}

func rawDo(t *testing.T, hc *http.Client, method, path, body string) (int, string, http.Header) {
	t.Helper()
	req, _ := http.NewRequest(method, "http://bangerd"+path, strings.NewReader(body))
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header
}

func TestErrorsAndValidation(t *testing.T) {
	svc := &fakeService{
		getVM: func(ref string) (model.VM, error) {
			switch ref {
			case "ok":
				return model.VM{ID: "1", Name: "ok"}, nil
			case "boom":
				return model.VM{}, errors.New("disk on fire")
			}
			return model.VM{}, errdefs.NotFound("vm", ref)
		},
		listVMs: func() ([]model.VM, error) { return nil, nil },
		deleteVM: func(ref string, force bool) error {
			return errdefs.Errorf(errdefs.CodeConflict, "vm %q is running (force=%v)", ref, force)
		},
		createVM: func(CreateVMRequest, progress.Func) (model.VM, error) {
			t.Error("CreateVM called on bad input")
			return model.VM{}, nil
		},
		setVMNet: func(ref string, req VMNetRequest) (model.VM, error) {
			// The domain validates values; the handler only decodes.
			if req.Net != nil && *req.Net == "wide" {
				return model.VM{}, errdefs.Errorf(errdefs.CodeInvalid, "invalid network mode %q: use none, internet or open", *req.Net)
			}
			return model.VM{}, errdefs.NotFound("vm", ref)
		},
	}
	_, hc := serve(t, svc)
	for _, tc := range []struct {
		method, path, body string
		status             int
		code, inMessage    string
	}{
		{"GET", "/v1/vms/nope", "", 404, errdefs.CodeNotFound, `vm "nope" not found`},
		{"GET", "/v1/vms/boom", "", 500, errdefs.CodeInternal, "disk on fire"},
		{"POST", "/v1/vms", `{"cpus":"two"}`, 400, errdefs.CodeInvalid, `"cpus"`},
		{"POST", "/v1/vms", `{"cpuz":2}`, 400, errdefs.CodeInvalid, `cpuz`},
		{"POST", "/v1/vms", `{"cpus":`, 400, errdefs.CodeInvalid, "request body"},
		{"POST", "/v1/vms", `{} {}`, 400, errdefs.CodeInvalid, "extra data"},
		{"DELETE", "/v1/vms/x?force=maybe", "", 400, errdefs.CodeInvalid, "force"},
		{"GET", "/v1/vms?label=bad+key%3D1", "", 400, errdefs.CodeInvalid, `label key "bad key"`},
		{"DELETE", "/v1/vms/x?force=1", "", 409, errdefs.CodeConflict, "force=true"},
		{"PUT", "/v1/vms/x/net", `{"allow":"10.0.0.1"}`, 400, errdefs.CodeInvalid, `"allow"`},
		{"PUT", "/v1/vms/x/net", `{"mode":"none"}`, 400, errdefs.CodeInvalid, "mode"},
		{"PUT", "/v1/vms/x/net", `{"net":"wide"}`, 400, errdefs.CodeInvalid, `invalid network mode "wide"`},
		{"PUT", "/v1/vms/nope/net", `{}`, 404, errdefs.CodeNotFound, `vm "nope" not found`},
		{"POST", "/v1/vms/x/net", `{}`, 405, errdefs.CodeInvalid, "PUT"},
		{"GET", "/v1/vms/x/logs?tail=-1", "", 400, errdefs.CodeInvalid, "tail"},
		{"GET", "/v1/vms/x/logs?source=disk", "", 400, errdefs.CodeInvalid, "console, vmm or all"},
		{"POST", "/v1/vms/x/exec", `{"command":[]}`, 400, errdefs.CodeInvalid, "command"},
		{"POST", "/v1/vms/x/sessions/s/attach", ``, 400, errdefs.CodeInvalid, "Upgrade"},
		{"GET", "/v1/nothing", "", 404, errdefs.CodeNotFound, "no route"},
		{"PUT", "/v1/vms/x", "", 405, errdefs.CodeInvalid, "GET"},
	} {
		status, body, hdr := rawDo(t, hc, tc.method, tc.path, tc.body)
		if status != tc.status {
			t.Errorf("%s %s: status %d, want %d (%s)", tc.method, tc.path, status, tc.status, body)
			continue
		}
		if tc.code == "" {
			continue
		}
		var e errdefs.Error
		if err := json.Unmarshal([]byte(body), &e); err != nil || hdr.Get("Content-Type") != "application/json" {
			t.Errorf("%s %s: body %q is not a JSON error: %v", tc.method, tc.path, body, err)
			continue
		}
		if e.Code != tc.code || !strings.Contains(e.Message, tc.inMessage) {
			t.Errorf("%s %s: error %+v, want code %s with %q", tc.method, tc.path, e, tc.code, tc.inMessage)
		}
	}
	status, body, _ := rawDo(t, hc, "GET", "/v1/vms", "")
	if status != 200 || strings.TrimSpace(body) != "[]" {
		t.Errorf("empty list: %d %q, want 200 []", status, body)
	}
	status, body, _ = rawDo(t, hc, "GET", "/v1/vms/ok", "")
	if status != 200 || !strings.Contains(body, `"name":"ok"`) {
		t.Errorf("GET ok: %d %q", status, body)
	}
}

// A field left out of a policy change stays nil (keep it); one given
// empty arrives as an empty list (clear it).
func TestListVMsByLabel(t *testing.T) {
	vms := []model.VM{
		{ID: "1", Name: "a", Labels: map[string]string{"app": "web", "tier": "x"}},
		{ID: "2", Name: "b", Labels: map[string]string{"app": "db"}},
		{ID: "3", Name: "c"},
	}
	c, _ := serve(t, &fakeService{listVMs: func() ([]model.VM, error) { return slices.Clone(vms), nil }})
	for _, tc := range []struct {
		terms []string
		want  []string
	}{
		{nil, []string{"a", "b", "c"}},
		{[]string{"app=web"}, []string{"a"}},
		{[]string{"app"}, []string{"a", "b"}},
		{[]string{"app=db,tier"}, nil},
		{[]string{"app=none"}, nil},
	} {
		sel, err := model.ParseLabelSelector(tc.terms)
		if err != nil {
			t.Fatal(err)
		}
		got, err := c.ListVMsByLabel(context.Background(), sel)
		var names []string
		for _, vm := range got {
			names = append(names, vm.Name)
		}
		if err != nil || !slices.Equal(names, tc.want) {
			t.Errorf("ListVMsByLabel(%q) = %v, %v; want %v", tc.terms, names, err, tc.want)
		}
	}
}

func TestSetVMNetFields(t *testing.T) {
	var got VMNetRequest
	svc := &fakeService{setVMNet: func(ref string, req VMNetRequest) (model.VM, error) {
		got = req
		return model.VM{Name: ref, Net: model.NetPolicy{Mode: "none"}}, nil
	}}
	c, _ := serve(t, svc)
	mode := "none"
	vm, err := c.SetVMNet(context.Background(), "web", VMNetRequest{Net: &mode, Allow: &[]string{}, AllowVMs: &[]string{"db"}, Reset: true})
	if err != nil || vm.Name != "web" || vm.Net.Mode != "none" {
		t.Fatalf("SetVMNet = %+v, %v", vm, err)
	}
	if got.Net == nil || *got.Net != "none" || got.Allow == nil || len(*got.Allow) != 0 || got.Deny != nil ||
		got.AllowVMs == nil || (*got.AllowVMs)[0] != "db" || !got.Reset {
		t.Fatalf("service got %+v", got)
	}
}

func TestClientErrors(t *testing.T) {
	svc := &fakeService{getVM: func(ref string) (model.VM, error) { return model.VM{}, errdefs.NotFound("vm", ref) }}
	c, _ := serve(t, svc)
	_, err := c.GetVM(context.Background(), "a/b")
	var e *errdefs.Error
	if !errors.As(err, &e) || e.Code != errdefs.CodeNotFound || e.Message != `vm "a/b" not found` {
		t.Fatalf("GetVM error = %#v", err)
	}
	if errors.Is(err, ErrDaemonUnreachable) {
		t.Fatal("an API error matched ErrDaemonUnreachable")
	}
	dead := NewClient(filepath.Join(t.TempDir(), "none.sock"))
	err = dead.Health(context.Background())
	if !errors.Is(err, ErrDaemonUnreachable) || !strings.Contains(err.Error(), "none.sock") {
		t.Fatalf("dead socket: %v, want ErrDaemonUnreachable naming the socket", err)
	}

	// A dying daemon: the connection is taken, then dropped unanswered.
	sock := filepath.Join(t.TempDir(), "dying.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			conn.Close()
		}
	}()
	if err := NewClient(sock).Health(context.Background()); !errors.Is(err, ErrDaemonUnreachable) {
		t.Fatalf("a connection dropped unanswered: %v, want ErrDaemonUnreachable", err)
	}
}

func TestProgressStream(t *testing.T) {
	svc := &fakeService{createVM: func(req CreateVMRequest, p progress.Func) (model.VM, error) {
		switch req.Name {
		case "early":
			return model.VM{}, errdefs.Errorf(errdefs.CodeConflict, "vm %q already exists", req.Name)
		case "late":
			p(progress.Event{Phase: "disk"})
			return model.VM{}, errdefs.Errorf(errdefs.CodeTimeout, "ssh did not answer")
		}
		p(progress.Event{Phase: "disk", Message: "making disks", Done: 1, Total: 2})
		p(progress.Event{Phase: "boot", Elapsed: 1.5})
		return model.VM{ID: "id1", Name: req.Name, CPUs: req.CPUs}, nil
	}}
	c, hc := serve(t, svc)

	status, body, hdr := rawDo(t, hc, "POST", "/v1/vms", `{"name":"a","cpus":3}`)
	if status != 200 || hdr.Get("Content-Type") != ContentTypeNDJSON {
		t.Fatalf("stream: %d %s", status, hdr.Get("Content-Type"))
	}
	lines := strings.Split(strings.TrimSpace(body), "\n")
	want := []string{
		`{"type":"progress","progress":{"phase":"disk","message":"making disks","done":1,"total":2}}`,
		`{"type":"progress","progress":{"phase":"boot","elapsed":1.5}}`,
	}
	if len(lines) != 3 || lines[0] != want[0] || lines[1] != want[1] || !strings.HasPrefix(lines[2], `{"type":"result","result":{"id":"id1","name":"a"`) {
		t.Fatalf("stream lines:\n%s", body)
	}

	var got []progress.Event
	vm, err := c.CreateVM(context.Background(), CreateVMRequest{Name: "b", CPUs: 2}, func(p progress.Event) { got = append(got, p) })
	if err != nil || vm.Name != "b" || vm.CPUs != 2 || len(got) != 2 || got[0].Total != 2 || got[1].Phase != "boot" {
		t.Fatalf("client stream: %+v %v %+v", vm, err, got)
	}

	status, body, _ = rawDo(t, hc, "POST", "/v1/vms", `{"name":"early"}`)
	if status != 409 || !strings.Contains(body, `"code":"conflict"`) {
		t.Fatalf("error before progress: %d %s, want a 409 JSON error", status, body)
	}
	_, err = c.CreateVM(context.Background(), CreateVMRequest{Name: "late"}, nil)
	var e *errdefs.Error
	if !errors.As(err, &e) || e.Code != errdefs.CodeTimeout || e.Message != "ssh did not answer" {
		t.Fatalf("error after progress: %#v", err)
	}
}

func TestExecFrames(t *testing.T) {
	svc := &fakeService{execVM: func(req ExecRequest, stdout, stderr io.Writer) (int, error) {
		if req.Command[0] == "missing" {
			return 0, errdefs.NotFound("vm", "x")
		}
		io.WriteString(stdout, "out\x00put\n")
		io.WriteString(stderr, "err\n")
		return 42, nil
	}}
	c, hc := serve(t, svc)
	var out, errb bytes.Buffer
	code, err := c.ExecVM(context.Background(), "x", ExecRequest{Command: []string{"sh", "-c", "x"}}, &out, &errb)
	if err != nil || code != 42 || out.String() != "out\x00put\n" || errb.String() != "err\n" {
		t.Fatalf("exec: %d %v %q %q", code, err, out.String(), errb.String())
	}
	_, body, _ := rawDo(t, hc, "POST", "/v1/vms/x/exec", `{"command":["a"]}`)
	if !strings.Contains(body, `{"type":"stderr","data":"ZXJyCg=="}`) || !strings.Contains(body, `{"type":"exit","exit_code":42}`) {
		t.Fatalf("exec frames:\n%s", body)
	}
	_, err = c.ExecVM(context.Background(), "x", ExecRequest{Command: []string{"missing"}}, &out, &errb)
	if !errdefs.IsNotFound(err) {
		t.Fatalf("exec error: %v", err)
	}
}

func TestRawLogsAndTrailer(t *testing.T) {
	svc := &fakeService{vmLogs: func(req LogsRequest, w io.Writer) error {
		if req.Source == "vmm" {
			return errdefs.Errorf(errdefs.CodeUnavailable, "no vmm log yet")
		}
		io.WriteString(w, "line1\n")
		if req.Follow {
			io.WriteString(w, "line2\n")
			return errdefs.Errorf(errdefs.CodeInternal, "console vanished")
		}
		return nil
	}}
	c, _ := serve(t, svc)
	var b bytes.Buffer
	if err := c.VMLogs(context.Background(), "x", LogsRequest{Tail: 5}, &b); err != nil || b.String() != "line1\n" {
		t.Fatalf("logs: %q %v", b.String(), err)
	}
	b.Reset()
	err := c.VMLogs(context.Background(), "x", LogsRequest{Follow: true}, &b)
	if b.String() != "line1\nline2\n" || err == nil || !strings.Contains(err.Error(), "console vanished") || errdefs.CodeOf(err) != errdefs.CodeInternal {
		t.Fatalf("logs with late error: %q %v", b.String(), err)
	}
	err = c.VMLogs(context.Background(), "x", LogsRequest{Source: "vmm"}, &b)
	if errdefs.CodeOf(err) != errdefs.CodeUnavailable {
		t.Fatalf("logs early error: %v", err)
	}
}

func TestWorkspaceAndSend(t *testing.T) {
	svc := &fakeService{
		prepare: func(req WorkspaceRequest, tar io.Reader) (WorkspaceInfo, error) {
			// Enums are the domain's to validate; the handler only decodes.
			if err := workspace.ValidateMode(req.Mode); err != nil {
				return WorkspaceInfo{}, errdefs.Invalid(err)
			}
			b, _ := io.ReadAll(tar)
			return WorkspaceInfo{GuestPath: req.GuestPath, Bytes: int64(len(b)), Files: map[bool]int64{true: 1}[req.ReadOnly]}, nil
		},
		send: func(data io.Reader) (int64, error) { return io.Copy(io.Discard, data) },
	}
	c, hc := serve(t, svc)
	info, err := c.PrepareWorkspace(context.Background(), "x", WorkspaceRequest{GuestPath: "/root/r", ReadOnly: true, Mode: "tracked"}, strings.NewReader("tarbytes"))
	if err != nil || info.GuestPath != "/root/r" || info.Bytes != 8 || info.Files != 1 {
		t.Fatalf("prepare: %+v %v", info, err)
	}
	status, body, _ := rawDo(t, hc, "POST", "/v1/vms/x/workspace/prepare?mode=zip", "")
	if status != 400 || !strings.Contains(body, `workspace mode \"zip\" is not allowed`) {
		t.Fatalf("bad mode: %d %s", status, body)
	}
	n, err := c.SendSession(context.Background(), "x", "s", strings.NewReader("hello\n"))
	if err != nil || n != 6 {
		t.Fatalf("send: %d %v", n, err)
	}
}

func TestAttach(t *testing.T) {
	exit := 7
	svc := &fakeService{
		getSession: func(vm, ref string) (model.Session, error) {
			return model.Session{Name: ref, ExitCode: &exit}, nil
		},
		attach: func(ctx context.Context, aio AttachIO) error {
			return nil
		},
	}
	c, _ := serve(t, svc)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// Echo upper-cased stdin until EOF (detach).
	svc.attach = func(ctx context.Context, aio AttachIO) error {
		buf := make([]byte, 100)
		for {
			n, err := aio.Stdin.Read(buf)
			if n > 0 {
				aio.Stdout.Write(bytes.ToUpper(buf[:n]))
				aio.Stderr.Write([]byte("e"))
			}
			if err != nil {
				return nil
			}
		}
	}
	a, err := c.AttachSession(ctx, "vm", "echo", AttachRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var out, errb syncBuffer
	done := make(chan AttachEndInfo)
	go func() {
		end, err := a.Receive(&out, &errb)
		if err != nil {
			t.Error(err)
		}
		done <- end
	}()
	a.Write([]byte("hello"))
	waitFor(t, func() bool { return out.String() == "HELLO" })
	a.Detach()
	end := <-done
	a.Close()
	if end.Reason != AttachDetached || errb.String() != "e" {
		t.Fatalf("detach: %+v, stderr %q", end, errb.String())
	}

	// The session ends by itself: reason exited with its exit code.
	svc.attach = func(ctx context.Context, aio AttachIO) error {
		aio.Stdout.Write([]byte("bye"))
		return nil
	}
	a, err = c.AttachSession(ctx, "vm", "ends", AttachRequest{From: AttachFromStart})
	if err != nil {
		t.Fatal(err)
	}
	var out2 bytes.Buffer
	end, err = a.Receive(&out2, io.Discard)
	a.Close()
	if err != nil || end.Reason != AttachExited || end.ExitCode != 7 || out2.String() != "bye" {
		t.Fatalf("exit: %+v %v %q", end, err, out2.String())
	}
	if svc.attachReq.From != AttachFromStart {
		t.Fatalf("attach offset reached the service as %q", svc.attachReq.From)
	}

	// Refused before anything happened: a plain 409.
	svc.attach = func(ctx context.Context, aio AttachIO) error {
		return errdefs.Errorf(errdefs.CodeConflict, "session is attached elsewhere")
	}
	_, err = c.AttachSession(ctx, "vm", "busy", AttachRequest{})
	var e *errdefs.Error
	if !errors.As(err, &e) || e.Code != errdefs.CodeConflict || HTTPStatus(e.Code) != 409 {
		t.Fatalf("busy: %#v", err)
	}

	// A client that vanishes ends Stdin and cancels the context.
	gone := make(chan error, 1)
	svc.attach = func(ctx context.Context, aio AttachIO) error {
		_, err := io.Copy(io.Discard, aio.Stdin)
		<-ctx.Done()
		gone <- err
		return nil
	}
	a, err = c.AttachSession(ctx, "vm", "gone", AttachRequest{})
	if err != nil {
		t.Fatal(err)
	}
	a.Write([]byte("x"))
	a.Close()
	select {
	case err := <-gone:
		if err != nil {
			t.Fatalf("stdin after disconnect: %v, want EOF", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("disconnect did not end the attachment")
	}
}

func TestAttachFrames(t *testing.T) {
	var b bytes.Buffer
	big := bytes.Repeat([]byte("z"), MaxAttachFrame+3)
	for _, f := range []struct {
		typ byte
		p   []byte
	}{{AttachStdin, []byte("abc")}, {AttachDetach, nil}, {AttachStdout, big}} {
		if err := WriteAttachFrame(&b, f.typ, f.p); err != nil {
			t.Fatal(err)
		}
	}
	for _, want := range []struct {
		typ byte
		n   int
	}{{AttachStdin, 3}, {AttachDetach, 0}, {AttachStdout, MaxAttachFrame}, {AttachStdout, 3}} {
		typ, p, err := ReadAttachFrame(&b)
		if err != nil || typ != want.typ || len(p) != want.n {
			t.Fatalf("frame: %c %d %v, want %c %d", typ, len(p), err, want.typ, want.n)
		}
	}
	if _, _, err := ReadAttachFrame(&b); err != io.EOF {
		t.Fatalf("end: %v, want EOF", err)
	}
	if _, _, err := ReadAttachFrame(bytes.NewReader([]byte{'o', 0xff, 0, 0, 0})); err == nil || !strings.Contains(err.Error(), "limit") {
		t.Fatalf("oversized frame: %v", err)
	}
	if _, _, err := ReadAttachFrame(bytes.NewReader([]byte{'o', 0, 0, 0, 5, 'a'})); err == nil || err == io.EOF {
		t.Fatalf("truncated frame: %v", err)
	}
}

type syncBuffer struct {
	mu chan struct{}
	b  bytes.Buffer
}

func (s *syncBuffer) lock() {
	if s.mu == nil {
		s.mu = make(chan struct{}, 1)
	}
	s.mu <- struct{}{}
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.lock()
	defer func() { <-s.mu }()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.lock()
	defer func() { <-s.mu }()
	return s.b.String()
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 5 s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A JSON body over MaxRequestBody is refused with 413 naming the limit,
// before the service sees it; streamed bodies are not bounded by it.
func TestBodyLimit(t *testing.T) {
	svc := &fakeService{
		createVM: func(CreateVMRequest, progress.Func) (model.VM, error) {
			t.Error("CreateVM called with an oversize body")
			return model.VM{}, nil
		},
		prepare: func(_ WorkspaceRequest, tar io.Reader) (WorkspaceInfo, error) {
			n, err := io.Copy(io.Discard, tar)
			return WorkspaceInfo{Bytes: n}, err
		},
		send: func(data io.Reader) (int64, error) { return io.Copy(io.Discard, data) },
	}
	c, hc := serve(t, svc)
	big := `{"name":"` + strings.Repeat("a", MaxRequestBody) + `"}`
	status, body, hdr := rawDo(t, hc, "POST", "/v1/vms", big)
	var e errdefs.Error
	if status != http.StatusRequestEntityTooLarge || hdr.Get("Content-Type") != "application/json" ||
		json.Unmarshal([]byte(body), &e) != nil || e.Code != errdefs.CodeInvalid || !strings.Contains(e.Message, "1048576 bytes") {
		t.Fatalf("oversize body: %d %s", status, body)
	}
	// The client surfaces it as an invalid-request error.
	_, err := c.CreateVM(context.Background(), CreateVMRequest{Name: strings.Repeat("a", MaxRequestBody)}, nil)
	if errdefs.CodeOf(err) != errdefs.CodeInvalid || !strings.Contains(err.Error(), "limit") {
		t.Fatalf("client on an oversize body: %v", err)
	}

	stream := strings.Repeat("x", 3*MaxRequestBody)
	info, err := c.PrepareWorkspace(context.Background(), "x", WorkspaceRequest{}, strings.NewReader(stream))
	if err != nil || info.Bytes != int64(len(stream)) {
		t.Fatalf("workspace stream of %d bytes: %+v %v", len(stream), info, err)
	}
	n, err := c.SendSession(context.Background(), "x", "s", strings.NewReader(stream))
	if err != nil || n != int64(len(stream)) {
		t.Fatalf("send of %d bytes: %d %v", len(stream), n, err)
	}
}

// The deadline route hands the request over as given; the domain validates.
func TestSetVMTTLRoute(t *testing.T) {
	var got VMTTLRequest
	at := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	svc := &fakeService{setVMTTL: func(ref string, req VMTTLRequest) (model.VM, error) {
		got = req
		if req.TTL == "soon" {
			return model.VM{}, errdefs.Errorf(errdefs.CodeInvalid, "invalid ttl %q", req.TTL)
		}
		return model.VM{Name: ref, ExpiresAt: &at, ExpireAction: model.TTLStop}, nil
	}}
	c, _ := serve(t, svc)
	vm, err := c.SetVMTTL(context.Background(), "web", VMTTLRequest{TTL: "10m", Action: "stop"})
	if err != nil || vm.Name != "web" || vm.ExpiresAt == nil || !vm.ExpiresAt.Equal(at) || vm.ExpireAction != model.TTLStop {
		t.Fatalf("SetVMTTL = %+v, %v", vm, err)
	}
	if got != (VMTTLRequest{TTL: "10m", Action: "stop"}) {
		t.Fatalf("service got %+v", got)
	}
	if _, err := c.SetVMTTL(context.Background(), "web", VMTTLRequest{TTL: "soon"}); errdefs.CodeOf(err) != errdefs.CodeInvalid {
		t.Fatalf("invalid ttl: %v", err)
	}
}

// An attached exec: the request reaches the service with its terminal,
// stdin frames become its stdin, resize frames its sizes (the newest
// replacing one not yet taken), end of input its EOF, and the end frame
// carries the exit code.
func TestExecAttached(t *testing.T) {
	svc := &fakeService{}
	c, hc := serve(t, svc)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var got ExecRequest
	svc.execAttached = func(ctx context.Context, req ExecRequest, aio AttachIO) (int, error) {
		got = req
		fmt.Fprintf(aio.Stdout, "ready\n")
		ws := <-aio.Resize
		fmt.Fprintf(aio.Stdout, "size %dx%d\n", ws.Cols, ws.Rows)
		b, err := io.ReadAll(aio.Stdin)
		fmt.Fprintf(aio.Stdout, "stdin %q %v\n", b, err)
		return 3, nil
	}
	a, err := c.ExecVMAttached(ctx, "vm", ExecRequest{Command: []string{"top"}, TTY: true, Term: "xterm", Size: &WindowSize{Cols: 100, Rows: 30}})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	var out syncBuffer
	done := make(chan AttachEndInfo, 1)
	go func() {
		end, err := a.Receive(&out, io.Discard)
		if err != nil {
			t.Error(err)
		}
		done <- end
	}()
	waitFor(t, func() bool { return out.String() == "ready\n" })
	a.Resize(WindowSize{Cols: 1, Rows: 1})
	a.Resize(WindowSize{Cols: 0, Rows: 5}) // invalid: dropped
	waitFor(t, func() bool { return strings.Contains(out.String(), "size") })
	a.Write([]byte("ab"))
	a.Write([]byte("c"))
	a.CloseStdin()
	end := <-done
	if end.Reason != AttachExited || end.ExitCode != 3 || end.Error != "" {
		t.Fatalf("end %+v", end)
	}
	if want := "ready\nsize 1x1\nstdin \"abc\" <nil>\n"; out.String() != want {
		t.Fatalf("output %q, want %q", out.String(), want)
	}
	if !got.TTY || got.Term != "xterm" || got.Size == nil || *got.Size != (WindowSize{Cols: 100, Rows: 30}) || got.Command[0] != "top" {
		t.Fatalf("request reached the service as %+v", got)
	}

	// Refused before it started: a plain error, no upgrade.
	svc.execAttached = func(context.Context, ExecRequest, AttachIO) (int, error) {
		return -1, errdefs.Errorf(errdefs.CodeConflict, "vm vm is not running")
	}
	_, err = c.ExecVMAttached(ctx, "vm", ExecRequest{Command: []string{"top"}})
	var e *errdefs.Error
	if !errors.As(err, &e) || e.Code != errdefs.CodeConflict {
		t.Fatalf("refused exec: %#v", err)
	}
	// A terminal without the upgrade is refused.
	status, body, _ := rawDo(t, hc, "POST", "/v1/vms/x/exec", `{"command":["top"],"tty":true}`)
	if status != 400 || !strings.Contains(body, "Upgrade") {
		t.Fatalf("tty without upgrade: %d %s", status, body)
	}
}

func TestParseWindowSize(t *testing.T) {
	if ws, err := ParseWindowSize([]byte(`{"cols":120,"rows":40}`)); err != nil || ws != (WindowSize{Cols: 120, Rows: 40}) {
		t.Fatalf("valid: %+v %v", ws, err)
	}
	for _, bad := range []string{``, `{`, `{"cols":0,"rows":40}`, `{"cols":80,"rows":-1}`, `{"cols":80,"rows":10001}`, `[1,2]`} {
		if _, err := ParseWindowSize([]byte(bad)); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// On a session attachment the end of input detaches (an exec's only ends
// its stdin), and resize frames reach the service.
func TestAttachEndOfInputAndResize(t *testing.T) {
	svc := &fakeService{}
	c, _ := serve(t, svc)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	svc.attach = func(ctx context.Context, aio AttachIO) error {
		fmt.Fprintln(aio.Stdout, "up")
		ws := <-aio.Resize
		fmt.Fprintf(aio.Stdout, "%dx%d\n", ws.Cols, ws.Rows)
		_, err := io.Copy(io.Discard, aio.Stdin)
		return err
	}
	a, err := c.AttachSession(ctx, "vm", "s", AttachRequest{})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	var out syncBuffer
	done := make(chan AttachEndInfo, 1)
	go func() {
		end, err := a.Receive(&out, io.Discard)
		if err != nil {
			t.Error(err)
		}
		done <- end
	}()
	waitFor(t, func() bool { return out.String() == "up\n" })
	a.Resize(WindowSize{Cols: 132, Rows: 43})
	waitFor(t, func() bool { return out.String() == "up\n132x43\n" })
	a.CloseStdin()
	if end := <-done; end.Reason != AttachDetached {
		t.Fatalf("end of input on a session attachment: %+v, want detached", end)
	}
}

// Pause answers the VM; resume streams progress, then the VM; errors keep
// their kind.
func TestPauseResumeRoutes(t *testing.T) {
	svc := &fakeService{
		pauseVM: func(ref string) (model.VM, error) {
			if ref == "gone" {
				return model.VM{}, errdefs.Errorf(errdefs.CodeConflict, "vm gone is not running")
			}
			return model.VM{Name: ref, State: model.VMPaused}, nil
		},
		resumeVM: func(ref string, p progress.Func) (model.VM, error) {
			p(progress.Event{Phase: "restore", Message: "restoring"})
			if ref == "web2" {
				return model.VM{}, errdefs.Errorf(errdefs.CodeConflict, "vm web2 is not paused")
			}
			return model.VM{Name: ref, State: model.VMRunning}, nil
		},
	}
	c, _ := serve(t, svc)
	ctx := context.Background()
	if vm, err := c.PauseVM(ctx, "web"); err != nil || vm.State != model.VMPaused {
		t.Fatalf("PauseVM = %+v, %v", vm, err)
	}
	if _, err := c.PauseVM(ctx, "gone"); errdefs.CodeOf(err) != errdefs.CodeConflict {
		t.Fatalf("PauseVM of a stopped vm: %v", err)
	}
	var phases []string
	vm, err := c.ResumeVM(ctx, "web", func(e progress.Event) { phases = append(phases, e.Phase) })
	if err != nil || vm.State != model.VMRunning || strings.Join(phases, ",") != "restore" {
		t.Fatalf("ResumeVM = %+v, %v (phases %v)", vm, err, phases)
	}
	if _, err := c.ResumeVM(ctx, "web2", nil); errdefs.CodeOf(err) != errdefs.CodeConflict || !strings.Contains(err.Error(), "not paused") {
		t.Fatalf("ResumeVM of a running vm: %v", err)
	}
}

// Snapshot routes answer snapshots; fork streams progress, then the
// VMs; errors keep their kind.
func TestSnapshotForkRoutes(t *testing.T) {
	svc := &fakeService{snapshots: map[string]model.Snapshot{}}
	c, _ := serve(t, svc)
	ctx := context.Background()
	if s, err := c.CreateSnapshot(ctx, "web", CreateSnapshotRequest{Name: "s1"}); err != nil || s.Name != "s1" || s.VMName != "web" {
		t.Fatalf("CreateSnapshot = %+v, %v", s, err)
	}
	if _, err := c.CreateSnapshot(ctx, "gone", CreateSnapshotRequest{}); errdefs.CodeOf(err) != errdefs.CodeNotFound {
		t.Fatalf("CreateSnapshot of a missing vm: %v", err)
	}
	if all, err := c.ListSnapshots(ctx); err != nil || len(all) != 1 {
		t.Fatalf("ListSnapshots = %+v, %v", all, err)
	}
	if s, err := c.GetSnapshot(ctx, "s1"); err != nil || s.ID != "ss1" {
		t.Fatalf("GetSnapshot = %+v, %v", s, err)
	}
	if _, err := c.GetSnapshot(ctx, "nope"); errdefs.CodeOf(err) != errdefs.CodeNotFound {
		t.Fatalf("GetSnapshot of a missing one: %v", err)
	}
	if err := c.RemoveSnapshot(ctx, "used"); errdefs.CodeOf(err) != errdefs.CodeConflict || !strings.Contains(err.Error(), "kid-1") {
		t.Fatalf("RemoveSnapshot in use: %v", err)
	}
	if err := c.RemoveSnapshot(ctx, "s1"); err != nil || len(svc.snapshots) != 0 {
		t.Fatalf("RemoveSnapshot: %v (%v left)", err, svc.snapshots)
	}
	if all, err := c.ListSnapshots(ctx); err != nil || all == nil || len(all) != 0 {
		t.Fatalf("empty ListSnapshots = %#v, %v (want [], not null)", all, err)
	}
	var phases []string
	vms, err := c.Fork(ctx, ForkRequest{Source: "s1", Count: 1, NamePrefix: "kid"}, func(e progress.Event) { phases = append(phases, e.Phase) })
	if err != nil || len(vms) != 1 || vms[0].Name != "kid-1" || strings.Join(phases, ",") != "fork" || svc.forkReq.Count != 1 {
		t.Fatalf("Fork = %+v, %v (phases %v, req %+v)", vms, err, phases, svc.forkReq)
	}
	if _, err := c.Fork(ctx, ForkRequest{Source: "gone", Count: 1}, nil); errdefs.CodeOf(err) != errdefs.CodeNotFound {
		t.Fatalf("Fork of a missing source: %v", err)
	}
}
