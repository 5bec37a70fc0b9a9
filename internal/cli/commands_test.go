package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/banger/banger/internal/api"
	"github.com/banger/banger/internal/errdefs"
	"github.com/banger/banger/internal/model"
	"github.com/banger/banger/internal/progress"
	"github.com/banger/banger/internal/version"
)

var update = flag.Bool("update", false, "rewrite testdata/commands.golden from the current output")

// fakeService answers every call the CLI makes with fixed records; refs
// named "missing" are not found. Methods it does not define panic (nil
// embedded interface), which the handler turns into a failed request.
type fakeService struct {
	api.Service
}

var (
	started  = time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	exitZero = 0
	fakeImg  = model.Image{ID: "0123456789abcdef", Name: "default", Path: "/state/images/default.ext4", SizeBytes: 2 << 30,
		Checksum: "sha256:ab", Source: "build", Init: "fast", Recipe: `{"suite":"bookworm"}`}
	fakeKernel = model.Kernel{ID: "fedcba9876543210", Name: "debian-cloud-bookworm", Version: "6.1.0-28-cloud-amd64",
		VmlinuxPath: "/state/kernels/k/vmlinux", InitrdPath: "/state/kernels/k/initrd", Cmdline: "console=ttyS0", Source: "catalog"}
	fakeVM = model.VM{ID: "aaaabbbbccccdddd", Name: "dev", ImageID: fakeImg.ID, KernelID: fakeKernel.ID, CPUs: 2, MemoryMiB: 1024,
		DiskBytes: 4 << 30, DesiredState: model.VMRunning, State: model.VMRunning, VMM: "qemu", Accel: "tcg", CowStrategy: "qcow2",
		GuestIP: "172.16.0.2", GuestMAC: "02:ba:ac:10:00:02", DNSName: "dev.vm", CID: 3, Dir: "/state/vms/aaaabbbbccccdddd", StartedAt: &started,
		Net:     model.NetPolicy{Mode: "internet", AllowVMs: []string{"db"}},
		HostKey: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHostKeyOfDev", Labels: map[string]string{"app": "web", "e2b.meta/team": "a"}}
	fakeForward = model.Forward{VMID: "aaaabbbbccccdddd", HostAddr: "127.0.0.1", HostPort: 41234, GuestPort: 8000, Proto: "tcp",
		CreatedAt: time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC), State: model.ForwardListening}
	fakeKey     = model.E2BKey{ID: "5555666677778888", Name: "ci", Prefix: "e2b_012345", CreatedAt: started}
	fakeSession = model.Session{ID: "1111222233334444", VMID: fakeVM.ID, Name: "server", Command: "python3", Args: []string{"-m", "http.server"},
		Cwd: "/root", StdinMode: "pipe", Status: "exited", GuestPID: 42, ExitCode: &exitZero}
)

func notFound(ref string) error {
	if ref == "missing" {
		return errdefs.NotFound("vm", ref)
	}
	return nil
}

func (fakeService) Info(context.Context) api.DaemonInfo {
	return api.DaemonInfo{PID: 7, StateDir: "/state", Socket: "/state/bangerd.sock", LogPath: "/state/bangerd.log", Started: "2025-01-02T03:04:05Z"}
}
func (fakeService) Doctor(context.Context) api.DoctorReport {
	return api.DoctorReport{VMM: "qemu", Accel: "tcg", CowStrategy: "qcow2", NetworkMode: "host",
		Checks: []api.DoctorCheck{{Name: "kvm", Detail: "/dev/kvm missing", Fix: "enable virtualisation"}, {Name: "qemu", OK: true, Detail: "8.2"}}}
}
func (fakeService) ListImages(context.Context) ([]model.Image, error) {
	return []model.Image{fakeImg}, nil
}
func (fakeService) GetImage(_ context.Context, ref string) (model.Image, error) {
	return fakeImg, notFound(ref)
}
func (fakeService) BuildImage(_ context.Context, _ api.BuildImageRequest, report progress.Func) (model.Image, error) {
	report(progress.Event{Phase: "mmdebstrap", Message: "unpacking", Elapsed: 1.5})
	return fakeImg, nil
}
func (fakeService) ImportImage(_ context.Context, _ api.ImportImageRequest, report progress.Func) (model.Image, error) {
	report(progress.Event{Phase: "inspect", Elapsed: 0.5})
	return fakeImg, nil
}
func (fakeService) RemoveImage(_ context.Context, ref string) error { return notFound(ref) }
func (fakeService) ListKernels(context.Context) ([]api.KernelEntry, error) {
	return []api.KernelEntry{{Name: fakeKernel.Name, Catalog: true, Description: "Debian cloud", Kernel: &fakeKernel}, {Name: "other", Catalog: true, Description: "another"}}, nil
}
func (fakeService) GetKernel(_ context.Context, ref string) (model.Kernel, error) {
	return fakeKernel, notFound(ref)
}
func (fakeService) PullKernel(_ context.Context, _ string, report progress.Func) (model.Kernel, error) {
	report(progress.Event{Phase: "download", Done: 1, Total: 2, Elapsed: 2})
	return fakeKernel, nil
}
func (fakeService) ImportKernel(context.Context, api.ImportKernelRequest) (model.Kernel, error) {
	return fakeKernel, nil
}
func (fakeService) RemoveKernel(_ context.Context, ref string) error { return notFound(ref) }
func (fakeService) ListVMs(context.Context) ([]model.VM, error) {
	return []model.VM{fakeVM}, nil
}
func (fakeService) GetVM(_ context.Context, ref string) (model.VM, error) {
	v := fakeVM
	v.ImageName, v.KernelName = fakeImg.Name, fakeKernel.Name
	v.IdleTimeoutSeconds, v.IdleAction = 300, model.TTLDelete
	failed := fakeForward
	failed.HostPort, failed.GuestPort = 8081, 81
	failed.State, failed.Error = model.ForwardFailed, "host port 127.0.0.1:8081 is taken: pick another, or 0 for any free port"
	v.Ports = []model.Forward{fakeForward, failed}
	return v, notFound(ref)
}
func (fakeService) CreateVM(_ context.Context, req api.CreateVMRequest, report progress.Func) (model.VM, error) {
	report(progress.Event{Phase: "disks", Elapsed: 0.1})
	v := fakeVM
	v.Labels = req.Labels
	for _, spec := range req.Publish {
		if spec == "8080:80" {
			return model.VM{}, errdefs.Errorf(errdefs.CodeConflict, "host port 127.0.0.1:8080 is taken: pick another, or 0 for any free port")
		}
		v.Ports = append(v.Ports, fakeForward)
	}
	return v, nil
}
func (fakeService) StartVM(_ context.Context, ref string, report progress.Func) (model.VM, error) {
	report(progress.Event{Phase: "boot", Elapsed: 0.2})
	return fakeVM, notFound(ref)
}
func (fakeService) RestartVM(_ context.Context, ref string, report progress.Func) (model.VM, error) {
	return fakeVM, notFound(ref)
}

var fakeSnapshot = model.Snapshot{ID: "5555666677778888", Name: "s1", VMID: fakeVM.ID, VMName: "dev", ImageID: fakeImg.ID,
	KernelID: fakeKernel.ID, CPUs: 2, MemoryMiB: 1024, DiskBytes: 4 << 30, VMM: "qemu", CowStrategy: "qcow2",
	GuestIP: "172.16.0.2", GuestMAC: "02:00:ac:10:00:02", Dir: "/var/lib/banger/snapshots/5555666677778888",
	SizeBytes: 300 << 20, State: model.SnapshotReady, UsedBy: []string{}}

func (fakeService) CreateSnapshot(_ context.Context, vmRef string, req api.CreateSnapshotRequest) (model.Snapshot, error) {
	s := fakeSnapshot
	s.Name = req.Name
	return s, notFound(vmRef)
}
func (fakeService) ListSnapshots(context.Context) ([]model.Snapshot, error) {
	used := fakeSnapshot
	used.ID, used.Name, used.UsedBy = "9999aaaabbbbcccc", "used", []string{"dev-1", "dev-2"}
	return []model.Snapshot{fakeSnapshot, used}, nil
}
func (fakeService) GetSnapshot(_ context.Context, ref string) (model.Snapshot, error) {
	return fakeSnapshot, nil
}
func (fakeService) RemoveSnapshot(_ context.Context, ref string) error {
	if ref == "used" {
		return errdefs.Errorf(errdefs.CodeConflict, "snapshot used is used by vm dev-1, dev-2: delete those vms first")
	}
	return nil
}
func (fakeService) WarmImage(_ context.Context, req api.WarmRequest, report progress.Func) (model.Snapshot, error) {
	if req.Image == "missing" {
		return model.Snapshot{}, errdefs.Errorf(errdefs.CodeNotFound, "image %q not found", req.Image)
	}
	report(progress.Event{Phase: "boot", Message: "booting warm-build-0a1b2c3d", Elapsed: 0.1})
	t := fakeSnapshot
	t.Name, t.Template, t.VMName = "warm-0a1b2c3d4e5f", "0a1b2c3d4e5f", "warm-build-0a1b2c3d"
	return t, nil
}
func (fakeService) ListTemplates(context.Context) ([]model.Snapshot, error) {
	t := fakeSnapshot
	t.Name, t.Template, t.ImageName, t.UsedBy = "warm-0a1b2c3d4e5f", "0a1b2c3d4e5f", "default", []string{"run-1"}
	old := t
	old.Name, old.Stale, old.UsedBy = "warm-99aa88bb77cc", "its image changed", []string{}
	return []model.Snapshot{t, old}, nil
}
func (fakeService) RemoveTemplate(_ context.Context, ref string) error {
	if ref == "warm-0a1b2c3d4e5f" {
		return errdefs.Errorf(errdefs.CodeConflict, "template warm-0a1b2c3d4e5f is used by vm run-1: delete those vms first")
	}
	return nil
}
func (fakeService) Fork(_ context.Context, req api.ForkRequest, report progress.Func) ([]model.VM, error) {
	if req.Source == "missing" {
		return nil, errdefs.Errorf(errdefs.CodeNotFound, "no snapshot or vm named %q to fork", req.Source)
	}
	report(progress.Event{Phase: "fork", Message: "kid-1 (1 of 2)", Elapsed: 0.1})
	var out []model.VM
	for i := range req.Count {
		v := fakeVM
		v.Name = fmt.Sprintf("%s-%d", req.NamePrefix, i+1)
		v.GuestIP, v.GuestMAC = fmt.Sprintf("172.16.0.%d", 3+i), fmt.Sprintf("02:00:ac:10:00:%02x", 3+i)
		// What each fork was asked to get, for the output to show.
		if req.Labels != nil {
			v.Labels = req.Labels
		}
		if req.Net != "" {
			v.Net = model.NetPolicy{Mode: req.Net, Allow: req.Allow}
		}
		if req.TTL != "" {
			v.ExpireAction = req.TTL + " " + req.TTLAction
		}
		out = append(out, v)
	}
	return out, nil
}
func (fakeService) PauseVM(_ context.Context, ref string) (model.VM, error) {
	v := fakeVM
	v.Name, v.State, v.DesiredState = ref, model.VMPaused, model.VMPaused
	return v, notFound(ref)
}
func (fakeService) ResumeVM(_ context.Context, ref string, report progress.Func) (model.VM, error) {
	report(progress.Event{Phase: "restore", Elapsed: 0.3})
	v := fakeVM
	v.Name = ref
	return v, notFound(ref)
}
func (fakeService) StopVM(_ context.Context, ref string, _ api.StopVMRequest) (model.VM, error) {
	v := fakeVM
	v.Name, v.State = ref, model.VMStopped
	return v, notFound(ref)
}
func (fakeService) DeleteVM(_ context.Context, ref string, _ bool) error { return notFound(ref) }
func (fakeService) AddPort(_ context.Context, ref string, req api.AddPortRequest) (model.Forward, error) {
	if req.Spec == "8080:80" {
		return model.Forward{}, errdefs.Errorf(errdefs.CodeConflict, "host port 127.0.0.1:8080 is taken: pick another, or 0 for any free port")
	}
	return fakeForward, notFound(ref)
}
func (fakeService) RemovePort(_ context.Context, ref, _ string) error { return notFound(ref) }
func (fakeService) ListPorts(_ context.Context, ref string) ([]model.Forward, error) {
	return []model.Forward{fakeForward}, notFound(ref)
}
func (fakeService) SetVMTTL(_ context.Context, ref string, req api.VMTTLRequest) (model.VM, error) {
	if req.TTL == "" && req.Idle == model.TTLNone {
		return fakeVM, notFound(ref)
	}
	if req.TTL != model.TTLNone {
		// The answer would say "in" how long from now: not golden.
		return model.VM{}, errdefs.Errorf(errdefs.CodeInvalid, "invalid ttl %q", req.TTL)
	}
	return fakeVM, notFound(ref)
}
func (fakeService) SetVMNet(_ context.Context, ref string, req api.VMNetRequest) (model.VM, error) {
	v := fakeVM
	if req.Reset {
		v.Net = model.NetPolicy{Mode: "internet"}
	}
	if req.Net != nil {
		v.Net.Mode = *req.Net
	}
	if req.Allow != nil {
		v.Net.Allow = *req.Allow
	}
	if req.Deny != nil {
		v.Net.Deny = *req.Deny
	}
	if req.AllowVMs != nil {
		v.Net.AllowVMs = *req.AllowVMs
	}
	return v, notFound(ref)
}
func (fakeService) E2BServe(_ context.Context, req api.E2BServeRequest) (api.E2BStatus, error) {
	return api.E2BStatus{Listen: "127.0.0.1:3000", Domain: "localhost:3000", TLS: req.TLS, DNS: req.DNS}, nil
}
func (fakeService) E2BCA(context.Context) (api.E2BCA, error) {
	return api.E2BCA{Path: "/var/lib/banger/e2b/ca.pem", PEM: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"}, nil
}
func (fakeService) E2BStop(context.Context) error                    { return nil }
func (fakeService) E2BStatus(context.Context) (api.E2BStatus, error) { return api.E2BStatus{}, nil }
func (fakeService) CreateE2BKey(_ context.Context, req api.E2BKeyRequest) (api.E2BKeyCreated, error) {
	if req.Name != "ci" {
		return api.E2BKeyCreated{}, errdefs.Errorf(errdefs.CodeInvalid, "invalid e2b key name %q", req.Name)
	}
	k := fakeKey
	k.MaxSandboxes = req.MaxSandboxes
	return api.E2BKeyCreated{Key: "e2b_0123456789abcdef0123456789abcdef01234567", Record: k}, nil
}
func (fakeService) ListE2BKeys(context.Context) ([]model.E2BKey, error) {
	return []model.E2BKey{fakeKey}, nil
}
func (fakeService) RevokeE2BKey(_ context.Context, ref string) error { return notFound(ref) }
func (fakeService) Hosts(context.Context) (string, error)            { return "172.16.0.2 dev.vm\n", nil }
func (fakeService) ExecVM(_ context.Context, _ string, req api.ExecRequest, stdout, _ io.Writer) (int, error) {
	fmt.Fprintln(stdout, strings.Join(req.Command, " "))
	return 3, nil
}
func (fakeService) ExecVMAttached(_ context.Context, _ string, req api.ExecRequest, aio api.AttachIO) (int, error) {
	in, _ := io.ReadAll(aio.Stdin)
	fmt.Fprintf(aio.Stdout, "%s tty=%v term=%q size=%v stdin=%q\n", strings.Join(req.Command, " "), req.TTY, req.Term, req.Size, in)
	return 4, nil
}
func (fakeService) PrepareWorkspace(_ context.Context, _ string, _ api.WorkspaceRequest, tar io.Reader) (api.WorkspaceInfo, error) {
	_, _ = io.Copy(io.Discard, tar)
	return api.WorkspaceInfo{GuestPath: "/root/repo", Files: 3, Bytes: 4096, Head: "abc123", Transport: "tcp"}, nil
}
func (fakeService) ListSessions(context.Context, string) ([]model.Session, error) {
	return []model.Session{fakeSession}, nil
}
func (fakeService) GetSession(_ context.Context, _, ref string) (model.Session, error) {
	return fakeSession, notFound(ref)
}
func (fakeService) StartSession(context.Context, string, api.StartSessionRequest) (model.Session, error) {
	return fakeSession, nil
}
func (fakeService) SendSession(_ context.Context, _, _ string, data io.Reader) (int64, error) {
	return io.Copy(io.Discard, data)
}
func (fakeService) StopSession(_ context.Context, _, ref string, _ api.StopSessionRequest) (model.Session, error) {
	return fakeSession, notFound(ref)
}
func (fakeService) KillSession(_ context.Context, _, ref, _ string) (model.Session, error) {
	return fakeSession, notFound(ref)
}
func (fakeService) RemoveSession(_ context.Context, _, ref string) error { return notFound(ref) }

// fakeDaemon serves the API over fakeService on a socket of its own.
func fakeDaemon(t *testing.T) string {
	t.Helper()
	return serveFake(t, fakeService{})
}

// serveFake serves the API over svc on a socket of its own.
func serveFake(t *testing.T, svc api.Service) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "bangerd.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: api.NewHandler(svc, nil)}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return sock
}

// banger runs the CLI with args against the daemon on sock.
func banger(sock string, stdin string, args ...string) (stdout, stderr string, code int) {
	var out, errb bytes.Buffer
	a := &app{stdin: strings.NewReader(stdin), stdout: &out, stderr: &errb, getenv: func(string) string { return "" }}
	code = a.run(append([]string{"--socket", sock}, args...))
	return out.String(), errb.String(), code
}

// TestCommandOutput runs each command that prints a daemon answer, as a
// table or key-value lines and as JSON, and compares all output with
// testdata/commands.golden.
func TestCommandOutput(t *testing.T) {
	defer func(l *time.Location) { time.Local = l }(time.Local)
	time.Local = time.UTC
	sock := fakeDaemon(t)
	src := t.TempDir()
	os.WriteFile(filepath.Join(src, "a.txt"), []byte("a"), 0o644)
	kfile := filepath.Join(src, "vmlinux")
	cases := [][]string{
		{"doctor"},
		{"daemon", "start"},
		{"daemon", "status"},
		{"image", "list"},
		{"image", "show", "default"},
		{"image", "show", "missing"},
		{"image", "build", "--name", "x"},
		{"image", "import", filepath.Join(src, "a.txt")},
		{"image", "rm", "a", "b"},
		{"image", "rm", "a", "missing", "b"},
		{"kernel", "list"},
		{"kernel", "show", "k"},
		{"kernel", "pull", "k"},
		{"kernel", "import", "--vmlinux", kfile},
		{"kernel", "rm", "k"},
		{"vm", "list"},
		{"vm", "list", "--label", "app=web", "-l", "e2b.meta/team"},
		{"vm", "list", "--label", "app=db"},
		{"vm", "list", "--label", "bad key"},
		{"vm", "show", "dev"},
		{"vm", "show", "missing"},
		{"vm", "create"},
		{"vm", "create", "--label", "app=web", "--label", "k8s.banger.dev/pod-uid=0f1e"},
		{"vm", "create", "--label", "bad key=1"},
		{"vm", "start", "dev"},
		{"vm", "start", "missing"},
		{"vm", "restart", "dev"},
		{"vm", "pause", "dev"},
		{"vm", "pause", "missing"},
		{"vm", "resume", "dev"},
		{"vm", "snapshot", "create", "dev", "--name", "s1"},
		{"vm", "snapshot", "create", "missing"},
		{"vm", "snapshot", "list"},
		{"vm", "snapshot", "show", "s1"},
		{"vm", "snapshot", "rm", "s1", "used"},
		{"vm", "fork", "s1", "--count", "2", "--name-prefix", "kid"},
		{"vm", "fork", "missing"},
		{"vm", "fork", "s1", "--name-prefix", "lab", "--label", "team=a", "--ttl", "1h", "--ttl-action", "stop", "--net", "none", "--allow", "api.example.com"},
		{"vm", "create", "--from-snapshot", "s1", "--name", "web", "--ttl", "1h", "-p", "0:80"},
		{"image", "warm", "--cpus", "1", "--memory", "512M"},
		{"image", "warm", "missing"},
		{"image", "warm", "--list"},
		{"image", "warm", "--list", "default"},
		{"image", "unwarm", "warm-99aa88bb77cc", "warm-0a1b2c3d4e5f"},
		{"vm", "stop", "a", "b"},
		{"vm", "stop", "a", "missing"},
		{"vm", "delete", "a", "b"},
		{"vm", "net", "dev"},
		{"vm", "net", "missing"},
		{"vm", "net", "dev", "--net", "none", "--allow", "10.0.0.5:5432", "--allow", "192.168.1.0/24", "--deny", "10.0.0.0/8", "--allow-vm", "db"},
		{"vm", "net", "dev", "--reset", "--allow-vm", ""},
		{"vm", "hosts"},
		{"vm", "exec", "dev", "--", "echo", "hi"},
		{"vm", "exec", "-i", "dev", "--", "cat"},
		{"vm", "exec", "-t", "dev", "--", "cat"},
		{"vm", "exec", "-tt", "dev", "--", "cat"},
		{"session", "attach", "--detach-keys", "ctrl-1", "dev", "server"},
		{"vm", "run", "--rm", "--", "echo", "hi"},
		{"vm", "run", "--verbose", "--", "echo", "hi"},
		{"vm", "run", "--rm", "--name", "dev", "--", "echo", "hi"},
		{"vm", "workspace", "prepare", "dev", "--no-git", "--source", src},
		{"session", "list", "dev"},
		{"session", "show", "dev", "server"},
		{"session", "show", "dev", "missing"},
		{"session", "start", "dev", "--", "python3"},
		{"session", "send", "dev", "server", "hello"},
		{"session", "send", "--raw", "dev", "server", "hello"},
		{"session", "send", "dev", "server"},
		{"session", "stop", "dev", "server"},
		{"session", "kill", "dev", "server"},
		{"session", "rm", "dev", "server"},

		{"vm", "ttl", "dev", "none"},
		{"vm", "ttl", "missing", "none"},
		{"vm", "ttl", "dev", "soon"},
		{"vm", "port", "add", "dev", "0:8000"},
		{"vm", "port", "add", "dev", "8080:80"},
		{"vm", "port", "list", "dev"},
		{"vm", "port", "rm", "dev", "41234"},
		{"vm", "create", "--publish", "0:8000", "--idle-timeout", "5m"},
		{"vm", "create", "-p", "0:8000", "-p", "8080:80"},
		{"vm", "run", "-p", "0:8000", "--", "echo", "hi"},
		{"vm", "ttl", "dev", "--idle", "none"},
		{"vm", "ttl", "dev"},
		{"e2b", "serve"},
		{"e2b", "serve", "--tls"},
		{"e2b", "serve", "--tls", "--dns", "127.0.0.77:53"},
		{"e2b", "ca"},
		{"e2b", "status"},
		{"e2b", "stop"},
		{"e2b", "key", "create", "ci"},
		{"e2b", "key", "create", "ci", "--max-sandboxes", "3"},
		{"e2b", "key", "create", "Bad Name"},
		{"e2b", "key", "list"},
		{"e2b", "key", "revoke", "ci"},
		{"e2b", "key", "revoke", "missing"},
	}
	var got bytes.Buffer
	for _, args := range cases {
		for _, json := range []bool{false, true} {
			a := args
			if json {
				a = append([]string{"--json"}, args...)
			}
			stdout, stderr, code := banger(sock, "", a...)
			fmt.Fprintf(&got, "### banger %s\n--- exit %d\n--- stdout\n%s--- stderr\n%s", strings.Join(a, " "), code, stdout, stderr)
		}
	}
	out := strings.ReplaceAll(got.String(), src, "SRC") // a temp dir, different each run
	golden := filepath.Join("testdata", "commands.golden")
	if *update {
		if err := os.WriteFile(golden, []byte(out), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	gl, wl := strings.Split(out, "\n"), strings.Split(string(want), "\n")
	for i := 0; i < len(gl) || i < len(wl); i++ {
		var g, w string
		if i < len(gl) {
			g = gl[i]
		}
		if i < len(wl) {
			w = wl[i]
		}
		if g != w {
			t.Fatalf("output differs from %s at line %d:\ngot  %q\nwant %q\n(go test -run TestCommandOutput -update rewrites it)", golden, i+1, g, w)
		}
	}
}

// TestVersionOutput: the CLI's version and the daemon's, as two lines or
// as {"cli": ..., "daemon": ...}.
func TestVersionOutput(t *testing.T) {
	sock := fakeDaemon(t)
	cv := version.Current()
	stdout, _, code := banger(sock, "", "version")
	want := fmt.Sprintf("banger  %s %s %s\nbangerd   \n", cv.Version, short(cv.Commit), cv.GoVersion)
	if code != 0 || stdout != want {
		t.Errorf("version: exit %d, %q; want %q", code, stdout, want)
	}
	stdout, _, code = banger(sock, "", "--json", "version")
	var got map[string]version.Info
	if err := json.Unmarshal([]byte(stdout), &got); err != nil || code != 0 || got["cli"] != cv || got["daemon"] != (version.Info{}) ||
		!strings.HasPrefix(stdout, "{\n  \"cli\": {") {
		t.Errorf("--json version: exit %d, %q (%v)", code, stdout, err)
	}
}
