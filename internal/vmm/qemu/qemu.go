// Package qemu is banger's QEMU driver: it builds QEMU's command line
// (-M microvm or q35, KVM when usable else TCG), starts QEMU detached,
// and drives it over QMP on the VM's api socket.
//
// It owns everything QEMU-specific: flags, QMP, the pidfile and the
// accelerator probe. It must not touch host networking, disks or the store:
// taps and disk files arrive ready in the vmm.Spec.
package qemu

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/banger/banger/internal/proc"
	"github.com/banger/banger/internal/vmm"
	"github.com/banger/banger/internal/vmm/vmmuser"
)

// DefaultBinary is looked up on PATH when Options.Binary is empty.
const DefaultBinary = "qemu-system-x86_64"

// Options configure a Driver.
type Options struct {
	Binary  string // QEMU binary; DefaultBinary on PATH when empty
	Machine string // MachineMicrovm (default) or MachineQ35
	// Accel is "auto" (default: KVM if /dev/kvm opens and a probe boot under
	// KVM makes progress, else TCG), "kvm" or "tcg".
	Accel string
	// ProbeKernel, when set, returns the kernel the KVM probe boots instead
	// of firmware, or nil while there is none (e.g. before the default
	// kernel is registered). It is asked at each decision, so a kernel
	// that appears later is used.
	ProbeKernel func() *ProbeKernel
	// ProbeTimeout bounds the KVM probe (default 8s).
	ProbeTimeout time.Duration
	// TSCkHz overrides the host TSC frequency given to TCG guests
	// (0: HostTSCkHz; negative: do not pass tsc_early_khz).
	TSCkHz int
	// StartTimeout bounds Start's wait for QMP (default 30s).
	StartTimeout time.Duration
	// KVMDevice is the device opened to see that KVM is usable ("" is
	// /dev/kvm). Tests with a QEMU stand-in name a file of their own, so
	// they run on hosts without KVM too.
	KVMDevice string
	// RunAs is the unprivileged system user QEMU drops to (-runas) once
	// it has opened its devices and files, before the guest runs:
	// vmmuser.Default when empty. It is created when missing (the daemon
	// runs as root). When it cannot be had, QEMU runs as the daemon's user
	// and Confinement says why.
	RunAs string
	// NoRunAs keeps QEMU running as the daemon's user.
	NoRunAs bool
}

// Driver runs VMs under QEMU. It implements vmm.Driver,
// vmm.AccelReporter, vmm.Confiner, vmm.Snapshotter and vmm.Controller.
type Driver struct {
	opts Options
	// backupSpeed caps a StartBackup's copy (bytes/s; 0: none), for a
	// test to write while one goes.
	backupSpeed int64

	mu       sync.Mutex
	decided  bool
	bin      string
	version  string
	accel    string
	reason   string
	ok       bool
	tscKHz   int
	hasVsock bool
	// weak: KVM was chosen on a firmware probe alone. Some hosts
	// (paravirtualised KVM) run firmware but no ordinary kernel, so the
	// choice is checked again by booting a kernel as soon as there is one.
	weak bool

	// Confinement, decided once with the binary (see confine).
	confined    bool
	runAs       string // -runas user, "" for none
	sandbox     bool   // -sandbox accepted by this QEMU
	chroot      bool   // -chroot accepted (and used with runAs)
	confineWhat string
	confineOK   bool
}

var (
	_ vmm.Driver        = (*Driver)(nil)
	_ vmm.AccelReporter = (*Driver)(nil)
	_ vmm.Confiner      = (*Driver)(nil)
	_ vmm.Snapshotter   = (*Driver)(nil)
	_ vmm.Controller    = (*Driver)(nil)
	_ vmm.LinkSetter    = (*Driver)(nil)
)

// netdevID is the id of the guest's network backend (-netdev …,id=).
const netdevID = "net0"

// SetLink sets the guest NIC's link (QMP set_link on the netdev, which
// the virtio-net device and the guest see as carrier).
func (d *Driver) SetLink(ctx context.Context, h vmm.Handle, up bool) error {
	return withQMP(ctx, h.APISocket, func(c *qmp) error {
		return c.execute(ctx, "set_link", map[string]any{"name": netdevID, "up": up}, nil)
	})
}

// DialControl connects to the control channel's socket, CtlSocket(dir).
// QEMU serves one connection at a time: a second dial waits in the
// socket's backlog until the first is closed.
func (d *Driver) DialControl(ctx context.Context, dir string) (net.Conn, error) {
	var dl net.Dialer
	c, err := dl.DialContext(ctx, "unix", CtlSocket(dir))
	if err != nil {
		return nil, fmt.Errorf("qemu control channel: %w", err)
	}
	return c, nil
}

// New returns a driver; nothing is probed until Available or Start.
func New(opts Options) *Driver {
	opts.Accel = cmp.Or(opts.Accel, "auto")
	opts.Machine = cmp.Or(opts.Machine, MachineMicrovm)
	if opts.ProbeTimeout <= 0 {
		opts.ProbeTimeout = 8 * time.Second
	}
	if opts.StartTimeout <= 0 {
		opts.StartTimeout = 30 * time.Second
	}
	return &Driver{opts: opts}
}

// Name is "qemu".
func (d *Driver) Name() string { return "qemu" }

// Formats prefers qcow2 (a copy-on-write overlay QEMU opens itself) and
// takes raw.
func (d *Driver) Formats() []string { return []string{vmm.FormatQcow2, vmm.FormatRaw} }

// InstallHint names the Debian packages.
func (d *Driver) InstallHint() string { return "apt-get install qemu-system-x86 qemu-utils" }

// Owns reports a pid file, a chroot directory or a qcow2 disk in vmDir:
// QEMU writes the first, Start makes the second, and only QEMU opens the
// third.
func (d *Driver) Owns(vmDir string) bool {
	for _, p := range []string{PIDFile(vmDir), ChrootDir(vmDir)} {
		if _, err := os.Lstat(p); err == nil {
			return true
		}
	}
	m, _ := filepath.Glob(filepath.Join(vmDir, "*."+vmm.FormatQcow2))
	return len(m) > 0
}

// Cleanup removes the QMP socket, the vsock path, the control channel's
// socket, the pid file and the empty chroot directory. A QEMU that
// dropped to RunAs could not remove its sockets and pid file when it
// exited.
func (d *Driver) Cleanup(spec vmm.Spec) error {
	paths := []string{spec.APISocket, spec.VsockPath}
	if spec.Dir != "" {
		paths = append(paths, PIDFile(spec.Dir), ChrootDir(spec.Dir), CtlSocket(spec.Dir))
	}
	return vmm.RemoveFiles(paths...)
}

// Available finds the binary, reads its version and decides the
// accelerator (probing KVM when Accel is auto), once; later calls return the
// cached answer, except that a KVM choice resting on firmware alone is
// probed again with a kernel once Options.ProbeKernel gives one. The reason
// is filled in both cases: why it cannot run, or which binary and
// accelerator it will use and why.
func (d *Driver) Available(ctx context.Context) (bool, string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.decideWith(ctx, d.probeKernel())
	return d.ok, d.reason
}

// decideWith decides when nothing is decided yet, or when the decision is
// weak and pk (nil: none) can make it strong; d.mu is held.
func (d *Driver) decideWith(ctx context.Context, pk *ProbeKernel) {
	if !d.decided || (d.weak && pk != nil) {
		d.decide(ctx, pk)
	}
}

func (d *Driver) probeKernel() *ProbeKernel {
	if d.opts.ProbeKernel == nil {
		return nil
	}
	return d.opts.ProbeKernel()
}

// Accel returns the accelerator Start will use ("kvm" or "tcg", "" when the
// driver is unavailable) and why it was chosen.
func (d *Driver) Accel(ctx context.Context) (accel, reason string) {
	d.Available(ctx)
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.accel, d.reason
}

// decide fills the cached fields, probing KVM with pk (nil: firmware);
// d.mu is held.
func (d *Driver) decide(ctx context.Context, pk *ProbeKernel) {
	d.weak, d.tscKHz = false, 0
	bin := d.opts.Binary
	if bin == "" {
		bin = DefaultBinary
	}
	path, err := exec.LookPath(bin)
	if err != nil {
		d.decided, d.reason = true, fmt.Sprintf("qemu binary %q not found: %v", bin, err)
		return
	}
	out, err := exec.CommandContext(ctx, path, "-version").Output()
	if err != nil {
		if ctx.Err() != nil {
			d.reason = fmt.Sprintf("%s -version interrupted: %v", path, ctx.Err())
			return // not cached: the caller gave up, the host did not answer no
		}
		d.decided, d.reason = true, fmt.Sprintf("%s -version failed: %v", path, err)
		return
	}
	d.bin, d.version = path, ParseVersion(string(out))
	if !d.confined {
		d.confine(ctx, path)
		if ctx.Err() != nil {
			d.reason = fmt.Sprintf("qemu confinement check interrupted: %v", ctx.Err())
			return
		}
	}
	var why string
	switch d.opts.Accel {
	case "tcg":
		d.accel, why = "tcg", "tcg forced by configuration"
	case "kvm":
		if ok, r := kvmOpens(d.opts.KVMDevice); !ok {
			d.decided, d.reason = true, fmt.Sprintf("kvm forced by configuration but %s", r)
			return
		}
		d.accel, why = "kvm", "kvm forced by configuration"
	case "auto":
		if ok, r := kvmOpens(d.opts.KVMDevice); !ok {
			d.accel, why = "tcg", r
		} else if ok, r := probe(ctx, path, "kvm", pk, d.opts.ProbeTimeout); !ok {
			if ctx.Err() != nil {
				d.reason = r
				return
			}
			d.accel, why = "tcg", "/dev/kvm opens but guests do not run under it: "+r
		} else {
			d.accel, why = "kvm", r
			if pk == nil {
				d.weak = true
				why += " (firmware only: a kernel boot checks again before the first VM)"
			}
		}
	default:
		d.decided, d.reason = true, fmt.Sprintf("unknown accel %q: use auto, kvm or tcg", d.opts.Accel)
		return
	}
	if d.accel == "tcg" && d.opts.TSCkHz >= 0 {
		d.tscKHz = d.opts.TSCkHz
		if d.tscKHz == 0 {
			d.tscKHz, _ = HostTSCkHz() // 0 leaves tsc_early_khz out
		}
	}
	_, err = os.Stat("/dev/vhost-vsock")
	d.hasVsock = err == nil
	d.decided, d.ok = true, true
	d.reason = fmt.Sprintf("qemu %s (%s), machine %s, accel %s: %s", d.version, path, d.opts.Machine, d.accel, why)
}

// Confinement says which user QEMU runs as and under which seccomp
// filter; ok when it drops to the unprivileged user under -sandbox. When
// the driver is unavailable it gives Available's reason and false.
func (d *Driver) Confinement(ctx context.Context) (string, bool) {
	d.Available(ctx)
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.confined {
		return "qemu unavailable: " + d.reason, false
	}
	return d.confineWhat, d.confineOK
}

// confine decides, once, the user QEMU drops to and which confinement
// flags bin takes; d.mu is held. A QEMU that cannot be confined still
// runs: the guest is hostile either way, and refusing would leave no VMM
// at all on hosts where only root can run one. The caller leaves the
// decision open when ctx ended.
func (d *Driver) confine(ctx context.Context, bin string) {
	name := cmp.Or(d.opts.RunAs, vmmuser.Default)
	var who string // why QEMU keeps the daemon's user, "" when it drops
	user := vmmuser.User{}
	switch {
	case d.opts.NoRunAs:
		who = fmt.Sprintf("qemu runs as the daemon's user (uid %d): dropping to a user is off in the configuration", os.Geteuid())
	case os.Geteuid() != 0:
		who = fmt.Sprintf("qemu runs as the daemon's user (uid %d): dropping to %s needs a daemon running as root", os.Geteuid(), name)
	default:
		u, err := vmmuser.Ensure(ctx, name)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			who = fmt.Sprintf("qemu runs as root: %v", err)
		}
		user = u
	}
	// Asked of the binary with -version, which QEMU handles after parsing
	// the flags before it: a QEMU built without seccomp refuses -sandbox,
	// -runas resolves the user as QEMU sees it, and -chroot is deprecated
	// in newer QEMUs. All at once first; one by one to say which failed.
	sandbox := []string{"-sandbox", SandboxArg(who == "")}
	runas := []string{"-runas", user.Name}
	chroot := []string{"-chroot", "/"}
	all := sandbox
	if who == "" {
		all = slices.Concat(sandbox, runas, chroot)
	}
	d.sandbox, d.chroot = true, who == ""
	var refused []string
	if ok, _ := accepts(ctx, bin, all); !ok {
		if ctx.Err() != nil {
			return
		}
		if ok, why := accepts(ctx, bin, sandbox); !ok {
			d.sandbox = false
			refused = append(refused, "no seccomp sandbox ("+why+")")
		}
		if who == "" {
			if ok, why := accepts(ctx, bin, runas); !ok {
				who = "qemu runs as root: " + why
			} else if ok, why := accepts(ctx, bin, chroot); !ok {
				d.chroot = false
				refused = append(refused, "the host's file system stays in view ("+why+")")
			}
		}
		if ctx.Err() != nil {
			return
		}
	}
	d.confineOK = who == "" && len(refused) == 0
	var parts []string
	if who == "" {
		d.runAs = user.Name
		what := fmt.Sprintf("qemu runs as user %s (uid %d) once started (-runas)", user.Name, user.UID)
		if d.chroot {
			what += " in an empty chroot"
		}
		parts = append(parts, what)
	} else {
		d.runAs, d.chroot = "", false
		parts = append(parts, who)
	}
	if d.sandbox {
		parts = append(parts, "seccomp sandbox -sandbox "+SandboxArg(d.runAs != ""))
	}
	parts = append(parts, refused...)
	d.confined, d.confineWhat = true, strings.Join(parts, "; ")
}

// accepts reports whether bin takes flags, by running it with them and
// -version for at most 10 s; when not, why says what QEMU said.
func accepts(ctx context.Context, bin string, flags []string) (ok bool, why string) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, append(slices.Clone(flags), "-version")...).CombinedOutput()
	if err != nil {
		return false, fmt.Sprintf("%s refused: %v: %s", flags[0], err, lastLine(string(out)))
	}
	return true, ""
}

// ParseVersion extracts "7.2.22" from `qemu-system-x86_64 -version` output.
func ParseVersion(out string) string {
	const key = "version "
	i := strings.Index(out, key)
	if i < 0 {
		return strings.TrimSpace(out)
	}
	f := strings.Fields(out[i+len(key):])
	if len(f) == 0 {
		return ""
	}
	return f[0]
}

// matcher recognises the QEMU process started with socket.
func matcher(socket string) proc.Matcher {
	return proc.ArgMatcher("-qmp", qmpArg(socket))
}

// Start launches QEMU for spec and returns once QMP answers and reports the
// guest running. See vmm.Driver.
func (d *Driver) Start(ctx context.Context, spec vmm.Spec) (vmm.Handle, error) {
	return d.start(ctx, spec, nil)
}

// start launches QEMU for spec; with incoming set, QEMU waits for its
// state (-incoming defer) and is handed incoming once QMP answers, as
// the migration stream to load before the guest runs.
func (d *Driver) start(ctx context.Context, spec vmm.Spec, incoming *os.File) (vmm.Handle, error) {
	if ok, reason := d.Available(ctx); !ok {
		return vmm.Handle{}, fmt.Errorf("qemu unavailable: %s", reason)
	}
	d.mu.Lock()
	// A firmware-only KVM choice is checked with the kernel about to boot.
	if k := bootKernel(spec.Kernel); k != "" {
		d.decideWith(ctx, &ProbeKernel{Kernel: k, Initrd: spec.Kernel.Initrd})
	}
	if !d.ok {
		reason := d.reason
		d.mu.Unlock()
		return vmm.Handle{}, fmt.Errorf("qemu unavailable: %s", reason)
	}
	ao := ArgOptions{Machine: d.opts.Machine, Accel: d.accel, TSCkHz: d.tscKHz, VhostVsock: d.hasVsock, Sandbox: d.sandbox, RunAs: d.runAs, Chroot: d.chroot}
	bin := d.bin
	d.mu.Unlock()
	args, err := BuildArgs(spec, ao)
	if err != nil {
		return vmm.Handle{}, err
	}
	if incoming != nil {
		args = append(args, "-incoming", "defer")
	}
	if h, err := d.Find(spec.APISocket); err == nil {
		return vmm.Handle{}, fmt.Errorf("api socket %s is held by running qemu pid %d", spec.APISocket, h.PID)
	}
	if err := vmm.ClaimSocket(spec.APISocket); err != nil {
		return vmm.Handle{}, err
	}
	pidfile := PIDFile(spec.Dir)
	_ = os.Remove(pidfile)
	if ao.Chroot {
		if err := emptyDir(ChrootDir(spec.Dir)); err != nil {
			return vmm.Handle{}, err
		}
	}
	files, err := openDescriptorDisks(spec)
	if err != nil {
		return vmm.Handle{}, err
	}
	child, err := proc.StartDetachedWith("", bin, args, spec.LogPath, files)
	closeAll(files)
	if err != nil {
		return vmm.Handle{}, err
	}
	h := vmm.Handle{PID: child.PID, APISocket: spec.APISocket}
	fail := func(err error) (vmm.Handle, error) {
		_ = proc.Terminate(context.Background(), child.PID, nil, 0)
		<-child.Done()
		_ = os.Remove(spec.APISocket)
		_ = os.Remove(pidfile)
		_ = os.Remove(ChrootDir(spec.Dir))
		return vmm.Handle{}, err
	}
	sctx, cancel := context.WithTimeout(ctx, d.opts.StartTimeout)
	defer cancel()
	restoring := incoming != nil
	for {
		var st qmpStatus
		err := withQMP(sctx, spec.APISocket, func(c *qmp) error {
			if err := c.execute(sctx, "query-status", nil, &st); err != nil {
				return err
			}
			if restoring && incoming == nil && st.Status == "paused" {
				// Loaded: the state was saved with the vCPUs stopped,
				// and QEMU keeps the saved run state. A link held down
				// is dropped before the guest runs a single instruction.
				if spec.Net != nil && spec.Net.LinkDown {
					if err := c.execute(sctx, "set_link", map[string]any{"name": netdevID, "up": false}, nil); err != nil {
						return err
					}
				}
				if err := c.execute(sctx, "cont", nil, nil); err != nil {
					return err
				}
				return c.execute(sctx, "query-status", nil, &st)
			}
			if incoming == nil || st.Status != "inmigrate" {
				return nil
			}
			// The state goes in by descriptor: a confined QEMU opens no path.
			if err := c.sendFD(sctx, stateFD, incoming); err != nil {
				return err
			}
			incoming = nil
			return c.execute(sctx, "migrate-incoming", map[string]any{"uri": "fd:" + stateFD}, nil)
		})
		var qerr *QMPError
		if errors.As(err, &qerr) {
			return fail(fmt.Errorf("qemu refused the saved state: %w", err))
		}
		if err == nil && st.Running {
			// Running now, so QEMU closes the read-write descriptors at
			// once (see dropWritable).
			if err := withQMP(sctx, spec.APISocket, dropWritable); err != nil {
				return fail(fmt.Errorf("qemu: %w", err))
			}
			return h, nil
		}
		if err == nil && st.Status != "prelaunch" && st.Status != "inmigrate" {
			return fail(fmt.Errorf("qemu started but guest status is %q", st.Status))
		}
		select {
		case <-child.Done():
			return fail(fmt.Errorf("qemu exited during start (%v): %s", child.Err(), vmm.LogTail(spec.LogPath)))
		case <-sctx.Done():
			return fail(fmt.Errorf("qemu did not answer on %s within %v: %w (log: %s)", spec.APISocket, d.opts.StartTimeout, sctx.Err(), vmm.LogTail(spec.LogPath)))
		case <-time.After(25 * time.Millisecond):
		}
	}
}

// openDescriptorDisks opens the files of spec's DescriptorDisks, read-write
// then read-only for each, in the order BuildArgs numbers them.
func openDescriptorDisks(spec vmm.Spec) ([]*os.File, error) {
	var files []*os.File
	for _, i := range DescriptorDisks(spec) {
		p := spec.Disks[i].Path
		rw, err := os.OpenFile(p, os.O_RDWR, 0)
		if err != nil {
			closeAll(files)
			return nil, fmt.Errorf("disk %s: %w", spec.Disks[i].ID, err)
		}
		ro, err := os.Open(p)
		if err != nil {
			rw.Close()
			closeAll(files)
			return nil, fmt.Errorf("disk %s: %w", spec.Disks[i].ID, err)
		}
		files = append(files, rw, ro)
	}
	return files, nil
}

func closeAll(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}

// Shutdown presses the ACPI power button (system_powerdown). QEMU runs
// with -no-reboot, so the guest's poweroff or reboot ends the process.
func (d *Driver) Shutdown(ctx context.Context, h vmm.Handle) error {
	return vmm.AskUnlessGone(d, h, func() error {
		return withQMP(ctx, h.APISocket, func(c *qmp) error {
			return c.execute(ctx, "system_powerdown", nil, nil)
		})
	})
}

// Kill asks QEMU to quit over QMP, then SIGTERM/SIGKILL if it lingers, and
// removes the api socket and pidfile.
func (d *Driver) Kill(ctx context.Context, h vmm.Handle) error {
	m := matcher(h.APISocket)
	if proc.Alive(h.PID, m) {
		qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_ = withQMP(qctx, h.APISocket, func(c *qmp) error { return c.execute(qctx, "quit", nil, nil) })
		cancel()
		proc.WaitGone(ctx, h.PID, m, 2*time.Second)
		if err := proc.Terminate(ctx, h.PID, m, time.Second); err != nil {
			return err
		}
	}
	if _, err := d.Find(h.APISocket); err == nil {
		return nil // a newer qemu owns the socket now
	}
	_ = os.Remove(h.APISocket)
	if dir := dirOf(h.APISocket); dir != "" {
		_ = os.Remove(PIDFile(dir))
	}
	return nil
}

// emptyDir makes dir an empty directory of mode 0555, or checks that it
// is one: QEMU runs inside it, so it must hold nothing.
func emptyDir(dir string) error {
	if err := os.Mkdir(dir, 0o555); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("qemu chroot: %w", err)
	}
	fi, err := os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("qemu chroot: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("qemu chroot %s is not a directory", dir)
	}
	if ents, err := os.ReadDir(dir); err != nil || len(ents) != 0 {
		return fmt.Errorf("qemu chroot %s must be an empty directory (%d entries, %v)", dir, len(ents), err)
	}
	// Mkdir's mode went through the umask; an existing one may differ.
	if err := os.Chmod(dir, 0o555); err != nil {
		return fmt.Errorf("qemu chroot: %w", err)
	}
	return nil
}

func dirOf(p string) string {
	i := strings.LastIndexByte(p, '/')
	if i <= 0 {
		return ""
	}
	return p[:i]
}

// Find returns the live QEMU started with apiSocket. It trusts the pidfile
// next to the socket when its PID still carries the socket, else scans
// /proc.
func (d *Driver) Find(apiSocket string) (vmm.Handle, error) {
	m := matcher(apiSocket)
	if dir := dirOf(apiSocket); dir != "" {
		if b, err := os.ReadFile(PIDFile(dir)); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && proc.Alive(pid, m) {
				return vmm.Handle{PID: pid, APISocket: apiSocket}, nil
			}
		}
	}
	return vmm.FindProcess(m, apiSocket)
}

// Alive reports whether h.PID is still QEMU with h's QMP socket.
func (d *Driver) Alive(h vmm.Handle) bool { return proc.Alive(h.PID, matcher(h.APISocket)) }
