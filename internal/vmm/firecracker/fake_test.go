package firecracker

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/banger/banger/internal/proc"
	"github.com/banger/banger/internal/vmm"
	"github.com/banger/banger/internal/vmm/firecracker/fcapi"
)

// fakeBin is the fake firecracker built once for the package's tests.
var fakeBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "banger-fakefc-")
	if err != nil {
		panic(err)
	}
	fakeBin = filepath.Join(dir, "firecracker")
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(os.Getenv("GOROOT"), "bin", "go")
	}
	if out, err := exec.Command(goBin, "build", "-o", fakeBin, "./fakefc").CombinedOutput(); err != nil {
		os.Stderr.Write(out)
		panic("building fakefc: " + err.Error())
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// fakeSpec makes a VM directory with the files firecracker opens.
func fakeSpec(t *testing.T) vmm.Spec {
	t.Helper()
	dir := t.TempDir()
	s := baseSpec(dir)
	for _, p := range []string{s.Kernel.Vmlinux, s.Kernel.Initrd, s.Disks[0].Path, s.Disks[1].Path} {
		if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

type recorded struct {
	Method string         `json:"method"`
	Path   string         `json:"path"`
	Body   map[string]any `json:"body"`
}

func readRecord(t *testing.T, socket string) []recorded {
	t.Helper()
	f, err := os.Open(socket + ".requests.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []recorded
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var r recorded
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("record line %q: %v", sc.Text(), err)
		}
		out = append(out, r)
	}
	return out
}

func cleanupVM(t *testing.T, d *Driver, socket string) {
	t.Cleanup(func() {
		if h, err := d.Find(socket); err == nil {
			_ = d.Kill(context.Background(), h)
		}
	})
}

// startVM starts spec and kills what is left of it when the test ends.
func startVM(t *testing.T, d *Driver, spec vmm.Spec) vmm.Handle {
	t.Helper()
	cleanupVM(t, d, spec.APISocket)
	h, err := d.Start(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func TestFakeLifecycle(t *testing.T) {
	ctx := context.Background()
	d := New(Options{Binary: fakeBin})
	spec := fakeSpec(t)
	h := startVM(t, d, spec)
	if !d.Alive(h) {
		t.Fatal("not alive after Start")
	}
	if f, err := d.Find(spec.APISocket); err != nil || f != h {
		t.Fatalf("Find = %+v, %v; want %+v", f, err, h)
	}
	argv, _ := proc.Cmdline(h.PID)
	if strings.Join(argv[1:], " ") != "--api-sock "+spec.APISocket+" --id vm-1 --enable-pci" {
		t.Fatalf("argv = %q", argv)
	}
	if _, err := d.Start(ctx, spec); err == nil || !strings.Contains(err.Error(), "held by running firecracker") {
		t.Fatalf("second Start: %v", err)
	}

	// What reached the API is the documented boot sequence, in order.
	want, _ := BootSequence(spec)
	rec := readRecord(t, spec.APISocket)
	var calls []recorded
	for _, r := range rec {
		if r.Method != "GET" {
			calls = append(calls, r)
		}
	}
	if len(calls) != len(want) {
		t.Fatalf("recorded %d calls, want %d: %+v", len(calls), len(want), calls)
	}
	for i, w := range want {
		wb, _ := json.Marshal(w.Body)
		var wm map[string]any
		_ = json.Unmarshal(wb, &wm)
		gb, _ := json.Marshal(calls[i].Body)
		wb, _ = json.Marshal(wm)
		if calls[i].Method != w.Method || calls[i].Path != w.Path || string(gb) != string(wb) {
			t.Errorf("call %d = %s %s %s, want %s %s %s", i, calls[i].Method, calls[i].Path, gb, w.Method, w.Path, wb)
		}
	}
	if b, _ := os.ReadFile(spec.LogPath); !strings.Contains(string(b), "Running Firecracker") {
		t.Errorf("firecracker log %q lacks its start line", b)
	}
	if fi, err := os.Stat(spec.VsockPath); err != nil || fi.Mode()&os.ModeSocket == 0 {
		t.Errorf("vsock socket not made: %v", err)
	}

	// The fake keeps the configuration it was given and moves its state.
	c := newClient(spec.APISocket)
	var cfg map[string]any
	if err := c.do(ctx, http.MethodGet, "/vm/config", nil, &cfg); err != nil || cfg["boot-source"] == nil {
		t.Fatalf("GET /vm/config = %v, %v", cfg, err)
	}
	state := func() string {
		var info fcapi.InstanceInfo
		if err := c.do(ctx, http.MethodGet, "/", nil, &info); err != nil {
			t.Fatal(err)
		}
		if info.VMMVersion != "1.14.2" || info.ID != "vm-1" {
			t.Fatalf("GET / = %+v", info)
		}
		return info.State
	}
	if st := state(); st != "Running" {
		t.Fatalf("state after Start: %s", st)
	}
	if err := c.do(ctx, http.MethodPatch, "/vm", fcapi.VM{State: "Paused"}, nil); err != nil {
		t.Fatal(err)
	}
	if st := state(); st != "Paused" {
		t.Fatalf("after PATCH /vm Paused: %s", st)
	}
	if err := c.do(ctx, http.MethodPatch, "/vm", fcapi.VM{State: "Resumed"}, nil); err != nil {
		t.Fatal(err)
	}
	if st := state(); st != "Running" {
		t.Fatalf("after PATCH /vm Resumed: %s", st)
	}

	// Ctrl-Alt-Del: the guest reboots and firecracker exits.
	if err := d.Shutdown(ctx, h); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if !vmm.WaitExit(wctx, d, h, 20*time.Millisecond) {
		t.Fatal("firecracker still running after Shutdown")
	}
	if err := d.Shutdown(ctx, h); err != nil {
		t.Fatalf("Shutdown of a gone VM: %v", err)
	}
	if err := d.Kill(ctx, h); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(spec.APISocket); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("api socket left after Kill: %v", err)
	}
	if _, err := d.Find(spec.APISocket); !errors.Is(err, vmm.ErrNotFound) {
		t.Fatalf("Find after exit: %v", err)
	}
}

func TestFakeKill(t *testing.T) {
	ctx := context.Background()
	d := New(Options{Binary: fakeBin, NoPCI: true})
	spec := fakeSpec(t)
	spec.Net, spec.CID = nil, 0
	h := startVM(t, d, spec)
	if argv, _ := proc.Cmdline(h.PID); strings.Contains(strings.Join(argv, " "), "--enable-pci") {
		t.Fatalf("NoPCI still passes --enable-pci: %q", argv)
	}
	if err := d.Kill(ctx, h); err != nil {
		t.Fatal(err)
	}
	if d.Alive(h) {
		t.Fatal("alive after Kill")
	}
	if _, err := os.Stat(spec.APISocket); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("api socket left after Kill")
	}
	if err := d.Kill(ctx, h); err != nil {
		t.Fatalf("second Kill: %v", err)
	}
}

// TestFakeKillRemovesSockets: firecracker leaves its api socket and the
// vsock socket it bound behind when it dies; Kill removes both, and
// Cleanup removes what a VMM that died on its own left.
func TestFakeKillRemovesSockets(t *testing.T) {
	ctx := context.Background()
	d := New(Options{Binary: fakeBin})
	spec := fakeSpec(t)
	h := startVM(t, d, spec)
	if fi, err := os.Stat(spec.VsockPath); err != nil || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("vsock socket not made: %v", err)
	}
	if err := d.Kill(ctx, h); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{spec.APISocket, spec.VsockPath} {
		if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left after Kill (%v)", p, err)
		}
	}

	// A VMM that exited by itself (a guest reboot) leaves both sockets.
	h = startVM(t, d, spec)
	if err := d.Shutdown(ctx, h); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if !vmm.WaitExit(wctx, d, h, 20*time.Millisecond) {
		t.Fatal("firecracker still running after Shutdown")
	}
	if _, err := os.Lstat(spec.VsockPath); err != nil {
		t.Fatalf("the fake removed its vsock socket at exit, unlike firecracker: %v", err)
	}
	for i := 0; i < 2; i++ {
		if err := d.Cleanup(spec); err != nil {
			t.Fatalf("Cleanup #%d: %v", i+1, err)
		}
	}
	for _, p := range []string{spec.APISocket, spec.VsockPath} {
		if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left after Cleanup (%v)", p, err)
		}
	}
}

func TestFakeStartFailureLeavesNothing(t *testing.T) {
	ctx := context.Background()
	d := New(Options{Binary: fakeBin})

	t.Run("missing kernel carries fault_message", func(t *testing.T) {
		spec := fakeSpec(t)
		os.Remove(spec.Kernel.Vmlinux)
		_, err := d.Start(ctx, spec)
		var ae *APIError
		if !errors.As(err, &ae) || ae.Path != "/boot-source" || !strings.Contains(ae.Fault, "kernel file cannot be opened") {
			t.Fatalf("Start with a missing kernel: %v", err)
		}
		assertNothingLeft(t, spec)
	})
	t.Run("busy api socket", func(t *testing.T) {
		spec := fakeSpec(t)
		l, err := net.Listen("unix", spec.APISocket)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		if _, err := d.Start(ctx, spec); err == nil || !strings.Contains(err.Error(), "in use") {
			t.Fatalf("Start on a busy socket: %v", err)
		}
		if pids, _ := proc.Find(matcher(spec.APISocket)); len(pids) != 0 {
			t.Fatalf("processes left: %v", pids)
		}
	})
	t.Run("stale socket file", func(t *testing.T) {
		spec := fakeSpec(t)
		cleanupVM(t, d, spec.APISocket)
		os.WriteFile(spec.APISocket, nil, 0o600)
		h, err := d.Start(ctx, spec)
		if err != nil {
			t.Fatalf("Start over a stale socket: %v", err)
		}
		_ = d.Kill(ctx, h)
	})
	t.Run("binary missing", func(t *testing.T) {
		spec := fakeSpec(t)
		if _, err := New(Options{Binary: "/nonexistent/firecracker"}).Start(ctx, spec); err == nil || !strings.Contains(err.Error(), "not found") {
			t.Fatalf("Start without a binary: %v", err)
		}
	})
}

func assertNothingLeft(t *testing.T, spec vmm.Spec) {
	t.Helper()
	if pids, _ := proc.Find(matcher(spec.APISocket)); len(pids) != 0 {
		t.Fatalf("firecracker processes left: %v", pids)
	}
	for _, p := range []string{spec.APISocket, spec.VsockPath} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("%s left behind (%v)", p, err)
		}
	}
}

// TestFakeAPI checks the fake itself against what firecracker v1.14.2
// answered: order rules, fault messages, and SIGTERM's exit status.
func TestFakeAPI(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	sock := filepath.Join(dir, "api.sock")
	cmd := exec.Command(fakeBin, "--api-sock", sock, "--id", "t1")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	c := newClient(sock)
	deadline := time.Now().Add(5 * time.Second)
	var info fcapi.InstanceInfo
	for c.do(ctx, "GET", "/", nil, &info) != nil {
		if time.Now().After(deadline) {
			t.Fatal("fake never answered")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if info.State != "Not started" || info.ID != "t1" || info.AppName != "Firecracker" {
		t.Fatalf("GET / = %+v", info)
	}
	fault := func(err error, want string) {
		t.Helper()
		var ae *APIError
		if !errors.As(err, &ae) || ae.Status != 400 || !strings.Contains(ae.Fault, want) {
			t.Fatalf("err = %v, want 400 with %q", err, want)
		}
	}
	fault(c.put(ctx, "/actions", fcapi.Action{ActionType: "InstanceStart"}), "without kernel configuration")
	fault(c.do(ctx, "PATCH", "/vm", fcapi.VM{State: "Paused"}, nil), "before starting")
	fault(c.put(ctx, "/machine-config", map[string]any{"vcpu_count": 1, "mem_size_mib": 128, "bogus": 1}), "deserializing")
	fault(c.put(ctx, "/drives/a", fcapi.Drive{DriveID: "b", PathOnHost: "/dev/null"}), "does not match")
	fault(c.put(ctx, "/no-such-thing", map[string]any{}), "Invalid request")
	var mc map[string]any
	if err := c.do(ctx, "GET", "/machine-config", nil, &mc); err != nil || mc["huge_pages"] != "None" || mc["track_dirty_pages"] != false {
		t.Fatalf("GET /machine-config = %v, %v", mc, err)
	}
	kernel := filepath.Join(dir, "vmlinux")
	os.WriteFile(kernel, []byte("x"), 0o600)
	if err := c.put(ctx, "/boot-source", fcapi.BootSource{KernelImagePath: kernel}); err != nil {
		t.Fatal(err)
	}
	if err := c.put(ctx, "/actions", fcapi.Action{ActionType: "InstanceStart"}); err != nil {
		t.Fatal(err)
	}
	fault(c.put(ctx, "/actions", fcapi.Action{ActionType: "InstanceStart"}), "after starting")
	fault(c.put(ctx, "/machine-config", fcapi.MachineConfig{VcpuCount: 2, MemSizeMib: 256}), "after starting")
	if err := c.do(ctx, "GET", "/", nil, &info); err != nil || info.State != "Running" {
		t.Fatalf("GET / after start = %+v, %v", info, err)
	}
	// A 204 has an empty body.
	req, _ := http.NewRequest("PATCH", "http://localhost/vm", strings.NewReader(`{"state":"Paused"}`))
	resp, err := c.hc.Do(req)
	if err != nil || resp.StatusCode != 204 || resp.ContentLength > 0 {
		t.Fatalf("PATCH /vm = %v, %v", resp, err)
	}
	resp.Body.Close()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	err = cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 143 {
		t.Fatalf("exit after SIGTERM = %v, want status 143", err)
	}
}

// Confinement is never ok, and names a jailer next to the binary when
// there is one (banger does not use it yet).
func TestConfinementReportsJailer(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "firecracker")
	if err := os.Link(fakeBin, bin); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir)
	d := New(Options{Binary: bin})
	what, ok := d.Confinement(context.Background())
	if ok || !strings.HasPrefix(what, "firecracker runs unconfined: jailer not found") {
		t.Fatalf("without a jailer: %v %q", ok, what)
	}
	jailer := filepath.Join(dir, JailerBinary)
	if err := os.WriteFile(jailer, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	what, ok = d.Confinement(context.Background())
	if ok || !strings.Contains(what, "jailer found at "+jailer) {
		t.Fatalf("with a jailer: %v %q", ok, what)
	}
	if what, ok := New(Options{Binary: filepath.Join(dir, "none")}).Confinement(context.Background()); ok || !strings.Contains(what, "unavailable") {
		t.Fatalf("without firecracker: %v %q", ok, what)
	}
}
