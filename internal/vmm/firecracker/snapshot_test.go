package firecracker

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/banger/banger/internal/vmm"
	"github.com/banger/banger/internal/vmm/firecracker/fcapi"
)

func TestRestoreSequence(t *testing.T) {
	spec := baseSpec("/v")
	spec.Net.Tap = "tap9"
	var got []string
	for _, r := range RestoreSequence(spec, []string{"/s/firecracker.vmstate", "/s/firecracker.mem"}) {
		b, _ := json.Marshal(r.Body)
		got = append(got, r.Method+" "+r.Path+" "+string(b))
	}
	want := []string{
		`PUT /logger {"log_path":"/v/fc.log","level":"Info","show_level":true,"show_log_origin":false}`,
		`PUT /metrics {"metrics_path":"/v/metrics.json"}`,
		`PUT /snapshot/load {"snapshot_path":"/s/firecracker.vmstate","mem_backend":{"backend_type":"File","backend_path":"/s/firecracker.mem"},"network_overrides":[{"iface_id":"eth0","host_dev_name":"tap9"}]}`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("sequence:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func instanceState(t *testing.T, socket string) string {
	t.Helper()
	var info fcapi.InstanceInfo
	if err := newClient(socket).do(context.Background(), "GET", "/", nil, &info); err != nil {
		t.Fatal(err)
	}
	return info.State
}

// TestFakeSaveRestore drives Save, Resume and Restore against the fake as
// v1.14.2 answers: a snapshot only of a paused VM, a load only into a
// fresh process, the vsock socket recorded in the snapshot left behind by
// the dead process and removed before the load, the tap overridden.
func TestFakeSaveRestore(t *testing.T) {
	ctx := context.Background()
	d := New(Options{Binary: fakeBin})
	spec := fakeSpec(t)
	state := filepath.Join(spec.Dir, "state")
	if err := os.Mkdir(state, 0o700); err != nil {
		t.Fatal(err)
	}
	h := startVM(t, d, spec)

	// Firecracker refuses a snapshot of a running VM; Save pauses first.
	var ae *APIError
	err := newClient(spec.APISocket).put(ctx, "/snapshot/create", fcapi.SnapshotCreate{SnapshotType: "Full", SnapshotPath: state + "/x", MemFilePath: state + "/y"})
	if !errors.As(err, &ae) || ae.Status != 400 || !strings.Contains(ae.Fault, "not paused") {
		t.Fatalf("snapshot of a running VM: %v", err)
	}
	if err := d.Save(ctx, h, state); err != nil {
		t.Fatal(err)
	}
	if st := instanceState(t, spec.APISocket); st != "Paused" {
		t.Fatalf("state after Save = %q", st)
	}
	for _, f := range d.StateFiles(state) {
		if _, err := os.Stat(f); err != nil {
			t.Fatalf("state file: %v", err)
		}
	}
	if fi, _ := os.Stat(d.StateFiles(state)[1]); fi.Size() != int64(spec.MemoryMiB)<<20 {
		t.Fatalf("memory file %d bytes, want %d MiB", fi.Size(), spec.MemoryMiB)
	}
	if err := d.Resume(ctx, h); err != nil {
		t.Fatal(err)
	}
	if st := instanceState(t, spec.APISocket); st != "Running" {
		t.Fatalf("state after Resume = %q", st)
	}
	if err := d.Save(ctx, h, state); err != nil {
		t.Fatal(err)
	}
	// A VMM killed outright leaves its vsock socket, which must not
	// exist when the snapshot is loaded.
	if err := syscall.Kill(h.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if !vmm.WaitExit(wctx, d, h, 10*time.Millisecond) {
		t.Fatal("fake survived kill -9")
	}
	if _, err := os.Lstat(spec.VsockPath); err != nil {
		t.Fatalf("vsock socket gone with the process, unlike firecracker: %v", err)
	}
	restored := spec
	restored.Net = &vmm.NetIface{Tap: "tap7", MAC: spec.Net.MAC}
	h2, err := d.Restore(ctx, restored, state)
	if err != nil {
		t.Fatal(err)
	}
	if h2.PID == h.PID || !d.Alive(h2) {
		t.Fatalf("restored handle %+v", h2)
	}
	if st := instanceState(t, spec.APISocket); st != "Running" {
		t.Fatalf("state after Restore = %q", st)
	}
	var cfg struct {
		Drives []fcapi.Drive            `json:"drives"`
		Ifaces []fcapi.NetworkInterface `json:"network-interfaces"`
		Boot   *fcapi.BootSource        `json:"boot-source"`
	}
	if err := newClient(spec.APISocket).do(ctx, "GET", "/vm/config", nil, &cfg); err != nil {
		t.Fatal(err)
	}
	if len(cfg.Drives) != 2 || cfg.Boot == nil || len(cfg.Ifaces) != 1 || cfg.Ifaces[0].HostDevName != "tap7" {
		t.Fatalf("config after load: %+v", cfg)
	}
	rec := readRecord(t, spec.APISocket)
	var load recorded
	for _, r := range rec {
		if r.Path == "/snapshot/load" {
			load = r
		}
	}
	mb, _ := load.Body["mem_backend"].(map[string]any)
	if load.Method != "PUT" || load.Body["resume_vm"] != nil || mb["backend_type"] != "File" || mb["backend_path"] != d.StateFiles(state)[1] {
		t.Fatalf("load request %+v", load)
	}
	if _, err := d.Restore(ctx, restored, state); err == nil || !strings.Contains(err.Error(), "held by running firecracker") {
		t.Fatalf("Restore over a live VMM: %v", err)
	}
	if err := d.Kill(ctx, h2); err != nil {
		t.Fatal(err)
	}
	assertNothingLeft(t, spec)

	t.Run("missing state", func(t *testing.T) {
		_, err := d.Restore(ctx, spec, filepath.Join(spec.Dir, "none"))
		if !errors.As(err, &ae) || ae.Path != "/snapshot/load" || !strings.Contains(ae.Fault, "snapshot file") {
			t.Fatalf("Restore without state: %v", err)
		}
		assertNothingLeft(t, spec)
	})
	t.Run("save of a dead vmm", func(t *testing.T) {
		if err := d.Save(ctx, h2, state); err == nil || !strings.Contains(err.Error(), "not running") {
			t.Fatalf("Save of a dead VMM: %v", err)
		}
	})
}

// TestFakeSnapshotLoadRules checks the fake's load rules against what
// firecracker answers: only a fresh process loads, and a vsock socket
// that exists at load fails it.
func TestFakeSnapshotLoadRules(t *testing.T) {
	ctx := context.Background()
	d := New(Options{Binary: fakeBin})
	spec := fakeSpec(t)
	state := filepath.Join(spec.Dir, "state")
	os.Mkdir(state, 0o700)
	h := startVM(t, d, spec)
	if err := d.Save(ctx, h, state); err != nil {
		t.Fatal(err)
	}
	files := d.StateFiles(state)
	load := fcapi.SnapshotLoad{SnapshotPath: files[0], MemBackend: &fcapi.MemBackend{BackendType: "File", BackendPath: files[1]}, ResumeVM: true}
	var ae *APIError
	// Into a started process.
	err := newClient(spec.APISocket).put(ctx, "/snapshot/load", load)
	if !errors.As(err, &ae) || !strings.Contains(ae.Fault, "after starting") {
		t.Fatalf("load into a running VM: %v", err)
	}
	if err := d.Kill(ctx, h); err != nil {
		t.Fatal(err)
	}

	fresh := func(t *testing.T) *client {
		sock := filepath.Join(t.TempDir(), "fc.sock")
		cmd := exec.Command(fakeBin, "--api-sock", sock)
		cmd.Dir = spec.Dir // where the snapshot's relative paths resolve
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		c := newClient(sock)
		for i := 0; c.do(ctx, "GET", "/", nil, nil) != nil; i++ {
			if i > 500 {
				t.Fatal("fake never answered")
			}
			time.Sleep(10 * time.Millisecond)
		}
		return c
	}
	t.Run("after configuring", func(t *testing.T) {
		c := fresh(t)
		if err := c.put(ctx, "/machine-config", fcapi.MachineConfig{VcpuCount: 1, MemSizeMib: 128}); err != nil {
			t.Fatal(err)
		}
		err := c.put(ctx, "/snapshot/load", load)
		if !errors.As(err, &ae) || !strings.Contains(ae.Fault, "not allowed after configuring boot-specific resources") {
			t.Fatalf("load after configuring: %v", err)
		}
	})
	t.Run("vsock socket exists", func(t *testing.T) {
		l, err := net.Listen("unix", spec.VsockPath)
		if err != nil {
			t.Fatal(err)
		}
		l.(*net.UnixListener).SetUnlinkOnClose(false)
		l.Close()
		defer os.Remove(spec.VsockPath)
		err = fresh(t).put(ctx, "/snapshot/load", load)
		if !errors.As(err, &ae) || !strings.Contains(ae.Fault, "AddrInUse") {
			t.Fatalf("load over an existing vsock socket: %v", err)
		}
	})
	t.Run("unknown interface override", func(t *testing.T) {
		bad := load
		bad.NetworkOverrides = []fcapi.NetworkOverride{{IfaceID: "eth9", HostDevName: "tap1"}}
		err := fresh(t).put(ctx, "/snapshot/load", bad)
		if !errors.As(err, &ae) || !strings.Contains(ae.Fault, "eth9") {
			t.Fatalf("override of a missing interface: %v", err)
		}
		os.Remove(spec.VsockPath)
	})
	t.Run("paused after load without resume", func(t *testing.T) {
		c := fresh(t)
		paused := load
		paused.ResumeVM = false
		if err := c.put(ctx, "/snapshot/load", paused); err != nil {
			t.Fatal(err)
		}
		var info fcapi.InstanceInfo
		if err := c.do(ctx, "GET", "/", nil, &info); err != nil || info.State != "Paused" {
			t.Fatalf("GET / after a paused load = %+v, %v", info, err)
		}
		os.Remove(spec.VsockPath)
	})
}
