// Package firecracker is banger's Firecracker driver: it starts the
// firecracker binary detached with an api socket per VM and configures and
// boots the guest over Firecracker's REST API on that socket.
//
// It owns everything Firecracker-specific: flags, API paths and bodies. It
// must not touch host networking, disks or the store: taps and disk files
// arrive ready in the vmm.Spec.
package firecracker

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/banger/banger/internal/proc"
	"github.com/banger/banger/internal/vmm"
	"github.com/banger/banger/internal/vmm/firecracker/fcapi"
)

// DefaultBinary is looked up on PATH when Options.Binary is empty.
const DefaultBinary = "firecracker"

// Options configure a Driver.
type Options struct {
	Binary string // firecracker binary; DefaultBinary on PATH when empty
	// NoPCI starts firecracker without --enable-pci, so devices are
	// virtio-mmio announced on the kernel command line. The default (PCI)
	// suits kernels without CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES, such as
	// Debian's cloud kernel.
	NoPCI bool
	// LogLevel of Firecracker's own log: Error, Warning, Info (default) or Debug.
	LogLevel string
	// StartTimeout bounds Start's wait for the api socket (default 10s).
	StartTimeout time.Duration
	// ProbeKernel, when set, returns the vmlinux Available boots to check
	// that KVM runs a guest (a kernel with no root disk must reach its root
	// mount), or "" while there is none. Until there is one, Available's
	// answer is not cached, so a kernel registered later is probed.
	ProbeKernel func() string
	// ProbeTimeout bounds that probe boot (default 10s).
	ProbeTimeout time.Duration
	// KVMDevice is the device Available opens to see that KVM is usable
	// ("" is /dev/kvm). Tests over fakefc, which runs no guest, name a
	// file of their own, so they run on hosts without KVM too.
	KVMDevice string
}

// Driver runs VMs under Firecracker. It implements vmm.Driver,
// vmm.Confiner, vmm.Snapshotter and vmm.Controller (over the vsock).
type Driver struct {
	opts Options

	mu      sync.Mutex
	decided bool
	ok      bool
	reason  string
}

var (
	_ vmm.Driver      = (*Driver)(nil)
	_ vmm.Confiner    = (*Driver)(nil)
	_ vmm.Snapshotter = (*Driver)(nil)
)

// New returns a driver; nothing is probed until Available.
func New(opts Options) *Driver {
	opts.LogLevel = cmp.Or(opts.LogLevel, "Info")
	if opts.StartTimeout <= 0 {
		opts.StartTimeout = 10 * time.Second
	}
	if opts.ProbeTimeout <= 0 {
		opts.ProbeTimeout = 10 * time.Second
	}
	return &Driver{opts: opts}
}

// Name is "firecracker".
func (d *Driver) Name() string { return "firecracker" }

// Formats is raw only: Firecracker's block devices have no image formats.
func (d *Driver) Formats() []string { return []string{vmm.FormatRaw} }

// InstallHint says where the binary comes from and what it needs.
func (d *Driver) InstallHint() string {
	return "install the firecracker binary on PATH (or set \"firecracker\" in config.json); it needs a usable KVM"
}

// Owns is false: every file a Firecracker VM leaves in its directory is
// named by the Spec (sockets, logs, metrics), none is Firecracker's own.
func (d *Driver) Owns(vmDir string) bool { return false }

// Cleanup removes the api socket and the vsock socket, which firecracker
// leaves behind when it exits.
func (d *Driver) Cleanup(spec vmm.Spec) error {
	return vmm.RemoveFiles(spec.APISocket, spec.VsockPath)
}

// JailerBinary is Firecracker's confinement launcher.
const JailerBinary = "jailer"

// Confinement is never ok: firecracker runs as the daemon's user, with
// only the seccomp filters it installs itself, whether or not the jailer
// is installed. The jailer is looked for next to the firecracker binary,
// then on PATH, and named when found.
//
// Using it would take: starting `jailer --id <id> --exec-file <firecracker>
// --uid <vmm uid> --gid <vmm gid> --chroot-base-dir <dir> -- <firecracker
// args>` instead of firecracker; hard-linking or copying the kernel,
// initrd and disks into the chroot (<base>/firecracker/<id>/root), where
// every API path then points; making the tap and /dev/kvm usable there
// (the jailer mknods /dev/kvm and /dev/net/tun itself); the api socket,
// vsock socket, logs and console moving under the chroot, so Find, Kill
// and Cleanup look there; and a jailer on the host to test it with.
func (d *Driver) Confinement(ctx context.Context) (string, bool) {
	bin, err := d.binary()
	if err != nil {
		return "firecracker unavailable: " + err.Error(), false
	}
	const how = " (firecracker runs as the daemon's user with only its built-in seccomp filters)"
	if j := findJailer(bin); j != "" {
		return "firecracker runs unconfined: jailer found at " + j + " but banger does not use it yet" + how, false
	}
	return "firecracker runs unconfined: jailer not found" + how, false
}

// findJailer returns the jailer next to bin, else on PATH, else "".
func findJailer(bin string) string {
	next := filepath.Join(filepath.Dir(bin), JailerBinary)
	if fi, err := os.Stat(next); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
		return next
	}
	if p, err := exec.LookPath(JailerBinary); err == nil {
		return p
	}
	return ""
}

func (d *Driver) binary() (string, error) {
	bin := d.opts.Binary
	if bin == "" {
		bin = DefaultBinary
	}
	p, err := exec.LookPath(bin)
	if err != nil {
		return "", fmt.Errorf("firecracker binary %q not found: %w", bin, err)
	}
	return p, nil
}

// Available reports whether the binary runs and KVM is usable, once; later
// calls return the cached answer. /dev/kvm opening is necessary but not
// enough (a paravirtualised KVM may run no ordinary guest): with
// a kernel from Options.ProbeKernel the answer rests on a real probe boot;
// without one the reason says the guest side was not verified, and the
// answer is not kept, so the next call probes once a kernel exists.
func (d *Driver) Available(ctx context.Context) (bool, string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.decided {
		return d.ok, d.reason
	}
	ok, reason, final := d.check(ctx)
	d.ok, d.reason, d.decided = ok, reason, final
	return ok, reason
}

func (d *Driver) check(ctx context.Context) (ok bool, reason string, final bool) {
	bin, err := d.binary()
	if err != nil {
		return false, err.Error(), true
	}
	out, err := exec.CommandContext(ctx, bin, "--version").Output()
	if err != nil {
		if ctx.Err() != nil {
			return false, fmt.Sprintf("%s --version interrupted: %v", bin, ctx.Err()), false
		}
		return false, fmt.Sprintf("%s --version failed: %v", bin, err), true
	}
	ver := ParseVersion(string(out))
	if err := vmm.OpenKVM(d.opts.KVMDevice); err != nil {
		return false, fmt.Sprintf("firecracker %s (%s) found but KVM is unusable: %v", ver, bin, err), true
	}
	pk := ""
	if d.opts.ProbeKernel != nil {
		pk = d.opts.ProbeKernel()
	}
	if pk == "" {
		return true, fmt.Sprintf("firecracker %s (%s), /dev/kvm opens (guest boot not probed yet: no kernel to probe with)", ver, bin), false
	}
	pok, why := d.probe(ctx, pk)
	if ctx.Err() != nil {
		return false, "firecracker probe interrupted: " + why, false
	}
	if !pok {
		return false, fmt.Sprintf("firecracker %s (%s): /dev/kvm opens but KVM runs no ordinary guest here: %s", ver, bin, why), true
	}
	return true, fmt.Sprintf("firecracker %s (%s), KVM boots guests: %s", ver, bin, why), true
}

// probe boots kernel with no disk; reaching the root mount (a panic
// there) or init proves KVM runs guests. Nothing is left behind.
func (d *Driver) probe(ctx context.Context, kernel string) (bool, string) {
	dir, err := os.MkdirTemp("", "banger-fc-probe-")
	if err != nil {
		return false, err.Error()
	}
	defer os.RemoveAll(dir)
	spec := vmm.Spec{
		ID: "banger-probe", Name: "banger-probe", Dir: dir, CPUs: 1, MemoryMiB: 128,
		Kernel:    vmm.Kernel{Vmlinux: kernel},
		Cmdline:   "console=ttyS0 panic=-1 reboot=k",
		APISocket: dir + "/api.sock", LogPath: dir + "/fc.log", Console: dir + "/console.log",
	}
	h, err := d.Start(ctx, spec)
	if err != nil {
		return false, err.Error()
	}
	defer d.Kill(context.Background(), h)
	deadline := time.Now().Add(d.opts.ProbeTimeout)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		b, _ := os.ReadFile(spec.Console)
		for _, m := range []string{"Kernel panic", "Run /init", "Freeing unused kernel", "VFS: "} {
			if strings.Contains(string(b), m) {
				return true, fmt.Sprintf("probe boot reached %q", m)
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return false, fmt.Sprintf("probe boot made no progress in %v", d.opts.ProbeTimeout)
}

var versionRE = regexp.MustCompile(`Firecracker v([0-9][0-9A-Za-z.\-]*)`)

// ParseVersion extracts "1.14.2" from `firecracker --version` output.
func ParseVersion(out string) string {
	if m := versionRE.FindStringSubmatch(out); m != nil {
		return m[1]
	}
	return strings.TrimSpace(out)
}

// Args returns firecracker's argv (without the binary) for spec.
func Args(spec vmm.Spec, pci bool) []string {
	args := []string{"--api-sock", spec.APISocket, "--id", InstanceID(spec.ID)}
	if pci {
		args = append(args, "--enable-pci")
	}
	return args
}

var badIDChars = regexp.MustCompile(`[^a-zA-Z0-9-]`)

// InstanceID maps a VM id to Firecracker's instance id alphabet
// (letters, digits, '-', at most 64).
func InstanceID(id string) string {
	s := badIDChars.ReplaceAllString(id, "-")
	if len(s) > 64 {
		s = s[:64]
	}
	if s == "" {
		s = "anonymous-instance"
	}
	return s
}

// Request is one API call of the boot sequence.
type Request struct {
	Method string
	Path   string
	Body   any
}

// BootArgs is the guest command line given to Firecracker: the spec's, plus
// a serial console when it names none and reboot=k (a guest reboot then
// exits Firecracker, which is how a Ctrl-Alt-Del shutdown completes).
func BootArgs(cmdline string) string {
	return vmm.KernelArgs(cmdline, "console=ttyS0", "reboot=k")
}

var driveIDRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// InDir is how the VM's own files are named to Firecracker: relative to
// the VM directory, which is firecracker's working directory, when p lies
// directly in it (dir set), else p as given. Firecracker records the
// drive paths and the vsock socket path of a snapshot as it was given
// them and opens or binds them again at load; named relative, a
// snapshot restored in another VM's directory (a fork) opens that VM's
// disks and binds that VM's socket, never its parent's. Pure.
func InDir(dir, p string) string {
	if dir == "" || p == "" || !filepath.IsAbs(p) {
		return p
	}
	if filepath.Dir(filepath.Clean(p)) == filepath.Clean(dir) {
		return filepath.Base(p)
	}
	return p
}

// BootSequence returns the API calls that configure and start spec's VM,
// in order. It does no I/O. It refuses what Firecracker cannot do: no
// vmlinux, qcow2 disks, bad drive ids. Disks and the vsock socket in
// spec.Dir are named relative to it (InDir).
func BootSequence(spec vmm.Spec) ([]Request, error) {
	if spec.Kernel.Vmlinux == "" {
		return nil, fmt.Errorf("firecracker needs an uncompressed ELF vmlinux; kernel for %q has none", spec.Name)
	}
	if spec.MemoryMiB <= 0 {
		return nil, fmt.Errorf("spec for %q: memory must be positive, got %d MiB", spec.Name, spec.MemoryMiB)
	}
	cpus := spec.CPUs
	if cpus <= 0 {
		cpus = 1
	}
	if cpus > 32 {
		return nil, fmt.Errorf("spec for %q: firecracker takes at most 32 vCPUs, got %d", spec.Name, cpus)
	}
	var reqs []Request
	put := func(path string, body any) { reqs = append(reqs, Request{http.MethodPut, path, body}) }
	if spec.LogPath != "" {
		put("/logger", fcapi.Logger{LogPath: spec.LogPath, Level: "Info", ShowLevel: true})
	}
	if spec.Metrics != "" {
		put("/metrics", fcapi.Metrics{MetricsPath: spec.Metrics})
	}
	put("/machine-config", fcapi.MachineConfig{VcpuCount: cpus, MemSizeMib: spec.MemoryMiB})
	put("/boot-source", fcapi.BootSource{KernelImagePath: spec.Kernel.Vmlinux, InitrdPath: spec.Kernel.Initrd, BootArgs: BootArgs(spec.Cmdline)})
	seen := map[string]bool{}
	for i, dk := range spec.Disks {
		if !driveIDRE.MatchString(dk.ID) || seen[dk.ID] {
			return nil, fmt.Errorf("disk %d id %q: want a unique id of letters, digits, '-' or '_'", i, dk.ID)
		}
		seen[dk.ID] = true
		if dk.Format != "" && dk.Format != "raw" {
			return nil, fmt.Errorf("disk %q is %s: firecracker takes raw disks only", dk.ID, dk.Format)
		}
		if dk.Path == "" {
			return nil, fmt.Errorf("disk %q has no path", dk.ID)
		}
		put("/drives/"+dk.ID, fcapi.Drive{DriveID: dk.ID, PathOnHost: InDir(spec.Dir, dk.Path), IsRootDevice: i == 0, IsReadOnly: dk.ReadOnly})
	}
	if spec.Net != nil {
		if spec.Net.Tap == "" {
			return nil, fmt.Errorf("network interface for %q has no tap", spec.Name)
		}
		put("/network-interfaces/eth0", fcapi.NetworkInterface{IfaceID: "eth0", HostDevName: spec.Net.Tap, GuestMAC: spec.Net.MAC})
	}
	if spec.CID != 0 {
		if spec.CID < 3 {
			return nil, fmt.Errorf("vsock CID %d is reserved: use 3 or more", spec.CID)
		}
		if spec.VsockPath == "" {
			return nil, fmt.Errorf("vsock CID %d given without a vsock socket path", spec.CID)
		}
		put("/vsock", fcapi.Vsock{GuestCID: spec.CID, UDSPath: InDir(spec.Dir, spec.VsockPath)})
	}
	put("/actions", fcapi.Action{ActionType: "InstanceStart"})
	return reqs, nil
}

// applyOptions overrides the logger level of a sequence with Options.LogLevel.
func (d *Driver) applyOptions(reqs []Request) {
	for i, r := range reqs {
		if l, ok := r.Body.(fcapi.Logger); ok {
			l.Level = d.opts.LogLevel
			reqs[i].Body = l
		}
	}
}

func matcher(socket string) proc.Matcher { return proc.ArgMatcher("--api-sock", socket) }

// Start launches firecracker for spec, configures the VM and starts it.
// The process's stdout and stderr (the guest serial console, and
// firecracker's messages before its logger is set) go to spec.Console, or
// to spec.LogPath when no console is given; firecracker's own log goes to
// spec.LogPath through PUT /logger. See vmm.Driver for the contract.
func (d *Driver) Start(ctx context.Context, spec vmm.Spec) (vmm.Handle, error) {
	bin, err := d.binary()
	if err != nil {
		return vmm.Handle{}, err
	}
	if spec.APISocket == "" {
		return vmm.Handle{}, fmt.Errorf("spec for %q has no api socket", spec.Name)
	}
	reqs, err := BootSequence(spec)
	if err != nil {
		return vmm.Handle{}, err
	}
	return d.run(ctx, bin, spec, reqs)
}

// run starts firecracker for spec and sends it reqs once its api socket
// answers; on any failure nothing is left.
func (d *Driver) run(ctx context.Context, bin string, spec vmm.Spec, reqs []Request) (vmm.Handle, error) {
	d.applyOptions(reqs)
	if h, err := d.Find(spec.APISocket); err == nil {
		return vmm.Handle{}, fmt.Errorf("api socket %s is held by running firecracker pid %d", spec.APISocket, h.PID)
	}
	if err := vmm.ClaimSocket(spec.APISocket); err != nil {
		return vmm.Handle{}, err
	}
	if spec.CID != 0 {
		if err := vmm.ClaimSocket(spec.VsockPath); err != nil {
			return vmm.Handle{}, err
		}
	}
	// firecracker opens its log and metrics files but does not create them.
	var made []string
	for _, p := range []string{spec.LogPath, spec.Metrics} {
		if p == "" {
			continue
		}
		if _, err := os.Stat(p); errors.Is(err, os.ErrNotExist) {
			made = append(made, p)
		}
		f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
		if err != nil {
			return vmm.Handle{}, fmt.Errorf("create firecracker log file: %w", err)
		}
		f.Close()
	}
	out := spec.Console
	if out == "" {
		out = spec.LogPath
	}
	if out == "" {
		out = os.DevNull
	}
	// Its working directory is the VM's: the relative paths of
	// BootSequence (and of a snapshot it loads) resolve there.
	child, err := proc.StartDetachedIn(spec.Dir, bin, Args(spec, !d.opts.NoPCI), out)
	if err != nil {
		return vmm.Handle{}, err
	}
	h := vmm.Handle{PID: child.PID, APISocket: spec.APISocket}
	fail := func(err error) (vmm.Handle, error) {
		_ = proc.Terminate(context.Background(), child.PID, nil, 0)
		<-child.Done()
		_ = os.Remove(spec.APISocket)
		if spec.CID != 0 {
			_ = os.Remove(spec.VsockPath)
		}
		for _, p := range made {
			_ = os.Remove(p)
		}
		return vmm.Handle{}, err
	}
	c := newClient(spec.APISocket)
	sctx, cancel := context.WithTimeout(ctx, d.opts.StartTimeout)
	defer cancel()
	for {
		var info fcapi.InstanceInfo
		err := c.do(sctx, http.MethodGet, "/", nil, &info)
		if err == nil {
			break
		}
		select {
		case <-child.Done():
			return fail(fmt.Errorf("firecracker exited during start (%v): %s", child.Err(), vmm.LogTail(out)))
		case <-sctx.Done():
			return fail(fmt.Errorf("firecracker api socket %s did not answer within %v: %w", spec.APISocket, d.opts.StartTimeout, err))
		case <-time.After(10 * time.Millisecond):
		}
	}
	for _, r := range reqs {
		if err := c.do(ctx, r.Method, r.Path, r.Body, nil); err != nil {
			return fail(err)
		}
	}
	return h, nil
}

// Shutdown sends Ctrl-Alt-Del to the guest; with reboot=k the guest's
// reboot ends firecracker.
func (d *Driver) Shutdown(ctx context.Context, h vmm.Handle) error {
	return vmm.AskUnlessGone(d, h, func() error {
		return newClient(h.APISocket).put(ctx, "/actions", fcapi.Action{ActionType: "SendCtrlAltDel"})
	})
}

// Kill sends SIGTERM, then SIGKILL after a second, and removes the api
// socket and the vsock socket (firecracker leaves both behind). The vsock
// path is asked of the API while the process still answers (a relative
// one is resolved in the process's working directory); for a process
// already gone only Cleanup, given the spec, can remove it.
func (d *Driver) Kill(ctx context.Context, h vmm.Handle) error {
	vsockPath := ""
	if d.Alive(h) {
		qctx, cancel := context.WithTimeout(ctx, time.Second)
		var cfg fcapi.VMConfig
		if newClient(h.APISocket).do(qctx, http.MethodGet, "/vm/config", nil, &cfg) == nil && cfg.Vsock != nil {
			vsockPath = cfg.Vsock.UDSPath
			if vsockPath != "" && !filepath.IsAbs(vsockPath) {
				cwd, err := os.Readlink(fmt.Sprintf("/proc/%d/cwd", h.PID))
				if err != nil || !d.Alive(h) {
					cwd = filepath.Dir(h.APISocket)
				}
				vsockPath = filepath.Join(cwd, vsockPath)
			}
		}
		cancel()
	}
	if err := proc.Terminate(ctx, h.PID, matcher(h.APISocket), time.Second); err != nil {
		return err
	}
	if _, err := d.Find(h.APISocket); err == nil {
		return nil // a newer firecracker owns the socket now
	}
	if err := os.Remove(h.APISocket); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove api socket: %w", err)
	}
	if err := vmm.RemoveFiles(vsockPath); err != nil {
		return fmt.Errorf("remove vsock socket: %w", err)
	}
	return nil
}

// Find returns the live firecracker started with --api-sock apiSocket.
func (d *Driver) Find(apiSocket string) (vmm.Handle, error) {
	return vmm.FindProcess(matcher(apiSocket), apiSocket)
}

// Alive reports whether h.PID is still firecracker with h's api socket.
func (d *Driver) Alive(h vmm.Handle) bool { return proc.Alive(h.PID, matcher(h.APISocket)) }
