// Package guestaccess is how the daemon and its users reach into a
// running VM: commands over the pooled SSH connection, the VM's console
// and VMM logs, what the CLI needs to exec the system ssh, and the /etc/hosts
// lines of running VMs.
//
// It must not touch VM lifecycle (it asks VMs whether a VM runs), the VMM,
// or the store beyond reading VM records.
package guestaccess

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/banger/banger/internal/api"
	"github.com/banger/banger/internal/daemon/vms"
	"github.com/banger/banger/internal/errdefs"
	"github.com/banger/banger/internal/guest"
	"github.com/banger/banger/internal/hostnet"
	"github.com/banger/banger/internal/model"
	"github.com/banger/banger/internal/shell"
	"github.com/banger/banger/internal/store"
	"github.com/banger/banger/internal/tail"
)

// Deps are what a Service is made of.
type Deps struct {
	Store *store.Store
	VMs   vms.Lookup
	// Dial returns a (pooled) SSH client to a running VM's guest: Dial
	// below, or a test's stand-in.
	Dial func(ctx context.Context, vm model.VM) (guest.Client, error)
	// Signer is the daemon's SSH key; Pool keeps one connection per VM.
	Signer ssh.Signer
	Pool   *guest.Pool
	// KeyPath is the daemon's private SSH key, for `vm ssh`.
	KeyPath string
	// Netns is the network namespace the VMs' network lives in.
	Netns string
	// DNSSuffix is the domain of VM names (<vm>.<suffix>).
	DNSSuffix string
	// SSHPort is the guests' sshd port: 0 is 22, which banger's images
	// use; tests point it at a listener of their own.
	SSHPort int
}

// Service reaches into running VMs.
type Service struct {
	Deps
}

// New makes a Service.
func New(deps Deps) *Service { return &Service{Deps: deps} }

// sshTimeout bounds how long a booting guest may take to answer SSH.
const sshTimeout = 180 * time.Second

// endpoint is how to reach a VM's sshd: its IP and its pinned host key,
// the VM's own or, for a VM made before VMs had their own, its image's.
func (sv *Service) endpoint(ctx context.Context, vm model.VM) (guest.Endpoint, error) {
	var im model.Image
	if vm.HostKey == "" {
		var err error
		if im, err = sv.Store.GetImage(ctx, vm.ImageID); err != nil {
			return guest.Endpoint{}, store.Describe("image", vm.ImageID, err)
		}
		if im.HostKey == "" {
			return guest.Endpoint{}, errdefs.Errorf(errdefs.CodeInvalid, "image %s has no recorded SSH host key; rebuild or re-import it", im.Name)
		}
	}
	return guest.Endpoint{Host: vm.GuestIP, Port: sv.sshPort(), User: "root", HostKey: vm.PinnedHostKey(im)}, nil
}

// sshPort is Deps.SSHPort, 22 when unset.
func (sv *Service) sshPort() int {
	if sv.SSHPort == 0 {
		return 22
	}
	return sv.SSHPort
}

// Dial returns the pooled SSH client of a running VM's guest.
func (sv *Service) Dial(ctx context.Context, vm model.VM) (guest.Client, error) {
	if sv.Pool == nil {
		return nil, errdefs.Errorf(errdefs.CodeUnavailable, "guest access is not configured")
	}
	ep, err := sv.endpoint(ctx, vm)
	if err != nil {
		return nil, err
	}
	return sv.Pool.Get(ctx, vm.ID, ep)
}

// WaitReady waits until a booting guest's sshd runs commands, failing
// early when its VMM dies (vmmAlive turns false). A guest restored from a
// saved state (vm.State resuming: a resume, a fork, a warm start) ran
// commands before it was saved, so a handshake that authenticates proves
// it ready and no command is run (guest.WaitDial). The connection that
// proved the guest ready joins the pool and serves the first exec.
func (sv *Service) WaitReady(ctx context.Context, vm model.VM, vmmAlive func() bool) error {
	if sv.Pool == nil {
		return errdefs.Errorf(errdefs.CodeUnavailable, "guest access is not configured")
	}
	ep, err := sv.endpoint(ctx, vm)
	if err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, sshTimeout)
	defer cancel()
	go func() {
		// Stop waiting as soon as the VMM is gone: its log says why.
		for wctx.Err() == nil {
			if !vmmAlive() {
				cancel()
				return
			}
			time.Sleep(250 * time.Millisecond)
		}
	}()
	wait := guest.WaitReady
	if vm.State == model.VMResuming {
		wait = guest.WaitDial
	}
	c, err := wait(wctx, ep, sv.Signer, 200*time.Millisecond)
	if err != nil {
		if !vmmAlive() {
			return fmt.Errorf("the vmm exited during boot; %s", tailFile(vm.LogPath, vm.ConsolePath))
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("guest ssh did not answer within %s: %v; %s", sshTimeout, err, tailFile(vm.ConsolePath))
	}
	sv.Pool.Adopt(vm.ID, ep, c)
	return nil
}

// WaitListening is WaitReady for a create that asks only that the
// guest's sshd accept connections (api.ReadyListening): it waits until a
// TCP connection to the guest's SSH port is accepted, and closes it. The
// guest's sshd starts once the guest is set up (banger-init, or the
// setup unit ordered before ssh.service), so that proves the set-up done
// without the handshake and command a session costs a guest under
// emulation. No connection joins the pool: the first SSH use dials.
func (sv *Service) WaitListening(ctx context.Context, vm model.VM, vmmAlive func() bool) error {
	ep, err := sv.endpoint(ctx, vm)
	if err != nil {
		return err
	}
	addr := net.JoinHostPort(ep.Host, strconv.Itoa(ep.Port))
	wctx, cancel := context.WithTimeout(ctx, sshTimeout)
	defer cancel()
	var last error
	for {
		d := net.Dialer{Timeout: listenProbeTimeout}
		c, err := d.DialContext(wctx, "tcp", addr)
		if err == nil {
			c.Close()
			return nil
		}
		last = err
		if !vmmAlive() {
			return fmt.Errorf("the vmm exited during boot; %s", tailFile(vm.LogPath, vm.ConsolePath))
		}
		select {
		case <-wctx.Done():
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("guest sshd did not listen on %s within %s: %v; %s", addr, sshTimeout, last, tailFile(vm.ConsolePath))
		case <-time.After(listenProbeEvery):
		}
	}
}

// How long one probe of WaitListening may take, and how often it probes.
const (
	listenProbeTimeout = 500 * time.Millisecond
	listenProbeEvery   = 50 * time.Millisecond
)

// Unpark takes back the SSH connection a pause parked once the resumed
// guest answers on it within ctx (guest.Pool.Unpark); an error when there
// is none or it does not answer, and then the guest is dialled anew.
func (sv *Service) Unpark(ctx context.Context, vm model.VM) error {
	if sv.Pool == nil {
		return errdefs.Errorf(errdefs.CodeUnavailable, "guest access is not configured")
	}
	ep, err := sv.endpoint(ctx, vm)
	if err != nil {
		return err
	}
	return sv.Pool.Unpark(ctx, vm.ID, ep)
}

// LookupDNS answers <name>.<suffix> for running VMs (those a user can
// name: not the warm pool's spares).
func (sv *Service) LookupDNS(host string) (netip.Addr, bool) {
	vm, err := sv.VMs.Resolve(context.Background(), host)
	if err != nil || vm.Name != host || !sv.VMs.Alive(vm) {
		return netip.Addr{}, false
	}
	ip, err := netip.ParseAddr(vm.GuestIP)
	return ip, err == nil
}

// Exec runs a command in a running VM over the daemon's SSH connection.
func (sv *Service) Exec(ctx context.Context, ref string, req api.ExecRequest, stdout, stderr io.Writer) (int, error) {
	if len(req.Command) == 0 {
		return -1, errdefs.Errorf(errdefs.CodeInvalid, "no command given: put it after --")
	}
	vm, err := sv.VMs.Running(ctx, ref)
	if err != nil {
		return -1, err
	}
	cmd, err := ExecCommand(req)
	if err != nil {
		return -1, errdefs.Invalid(err)
	}
	c, err := sv.Dial(ctx, vm)
	if err != nil {
		return -1, fmt.Errorf("connect to %s: %w", vm.Name, err)
	}
	return c.Run(ctx, cmd, nil, stdout, stderr)
}

// DefaultTerm is the TERM of a terminal exec that names none.
const DefaultTerm = "xterm-256color"

// defaultSize is the size of a terminal whose client gave none.
var defaultSize = api.WindowSize{Cols: 80, Rows: 24}

// ExecAttached runs a command in a running VM with its stdin streamed from
// aio.Stdin and, with req.TTY, on a pseudo-terminal whose size follows
// aio.Resize. Without a terminal the command's stdout and stderr stay
// apart; with one, all output is the terminal's and goes to aio.Stdout.
func (sv *Service) ExecAttached(ctx context.Context, ref string, req api.ExecRequest, aio api.AttachIO) (int, error) {
	if len(req.Command) == 0 {
		return -1, errdefs.Errorf(errdefs.CodeInvalid, "no command given: put it after --")
	}
	pty, err := terminalOf(req)
	if err != nil {
		return -1, errdefs.Invalid(err)
	}
	vm, err := sv.VMs.Running(ctx, ref)
	if err != nil {
		return -1, err
	}
	cmd, err := ExecCommand(req)
	if err != nil {
		return -1, errdefs.Invalid(err)
	}
	c, err := sv.Dial(ctx, vm)
	if err != nil {
		return -1, fmt.Errorf("connect to %s: %w", vm.Name, err)
	}
	if !req.TTY {
		return c.Run(ctx, cmd, aio.Stdin, aio.Stdout, aio.Stderr)
	}
	t, ok := c.(guest.Terminal)
	if !ok {
		return -1, errdefs.Errorf(errdefs.CodeUnavailable, "the connection to vm %s cannot open terminals", vm.Name)
	}
	var resize chan guest.WindowSize
	if aio.Resize != nil {
		resize = make(chan guest.WindowSize)
		rctx, cancel := context.WithCancel(ctx)
		defer cancel()
		go func() {
			for {
				select {
				case <-rctx.Done():
					return
				case ws := <-aio.Resize:
					select {
					case resize <- guest.WindowSize{Cols: ws.Cols, Rows: ws.Rows}:
					case <-rctx.Done():
						return
					}
				}
			}
		}()
	}
	return t.RunTerminal(ctx, cmd, pty, aio.Stdin, aio.Stdout, resize)
}

// terminalOf checks a terminal request's TERM and size and fills in the
// defaults.
func terminalOf(req api.ExecRequest) (guest.PTY, error) {
	if !req.TTY {
		return guest.PTY{}, nil
	}
	term := req.Term
	if term == "" {
		term = DefaultTerm
	}
	if err := validTerm(term); err != nil {
		return guest.PTY{}, err
	}
	size := defaultSize
	if req.Size != nil {
		if !req.Size.Valid() {
			return guest.PTY{}, fmt.Errorf("invalid terminal size %dx%d: each side must be 1 to %d", req.Size.Cols, req.Size.Rows, api.MaxWindowSide)
		}
		size = *req.Size
	}
	return guest.PTY{Term: term, Cols: size.Cols, Rows: size.Rows}, nil
}

// validTerm accepts terminal type names: letters, digits and ._+- , at
// most 64 bytes.
func validTerm(term string) error {
	ok := len(term) <= 64
	for _, r := range term {
		ok = ok && (r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("._+-", r))
	}
	if !ok {
		return fmt.Errorf("invalid terminal type %q: use a name such as xterm-256color (letters, digits and ._+-, at most 64 bytes)", term)
	}
	return nil
}

// ExecCommand renders an exec request as one guest shell line: every value
// quoted, env keys checked.
func ExecCommand(req api.ExecRequest) (string, error) {
	var b strings.Builder
	if req.Cwd != "" {
		b.WriteString("cd " + shell.Quote(req.Cwd) + " && ")
	}
	keys := make([]string, 0, len(req.Env))
	for k := range req.Env {
		if !shell.ValidEnvKey(k) {
			return "", fmt.Errorf("invalid environment variable name %q: use letters, digits and '_', not starting with a digit", k)
		}
		keys = append(keys, k)
	}
	sort.Strings(keys)
	if len(keys) > 0 {
		b.WriteString("env")
		for _, k := range keys {
			b.WriteString(" " + shell.Quote(k+"="+req.Env[k]))
		}
		b.WriteString(" ")
	}
	b.WriteString(shell.Command(req.Command))
	return b.String(), nil
}

// Logs writes a VM's serial console and/or VMM log.
func (sv *Service) Logs(ctx context.Context, ref string, req api.LogsRequest, w io.Writer) error {
	vm, err := sv.VMs.Resolve(ctx, ref)
	if err != nil {
		return err
	}
	var paths []string
	switch req.Source {
	case "", model.LogConsole:
		paths = []string{vm.ConsolePath}
	case model.LogVMM:
		paths = []string{vm.LogPath}
	case model.LogAll:
		paths = []string{vm.LogPath, vm.ConsolePath}
	default:
		return errdefs.Invalid(model.ValidateLogSource(req.Source))
	}
	if req.Tail < 0 {
		return errdefs.Errorf(errdefs.CodeInvalid, "invalid tail %d: use a positive number of lines", req.Tail)
	}
	offsets := make([]int64, len(paths))
	for i, p := range paths {
		b, size, err := tail.End(p, maxLogRead)
		if err != nil && !os.IsNotExist(err) {
			return err
		}
		offsets[i] = size
		if req.Tail > 0 {
			b = tail.Lines(b, req.Tail)
		}
		if _, err := w.Write(b); err != nil {
			return err
		}
	}
	if !req.Follow {
		return nil
	}
	flush(w)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(300 * time.Millisecond):
		}
		for i, p := range paths {
			f, err := os.Open(p)
			if err != nil {
				continue
			}
			st, _ := f.Stat()
			if st != nil && st.Size() < offsets[i] {
				offsets[i] = 0 // a new boot truncated it
			}
			if _, err := f.Seek(offsets[i], io.SeekStart); err == nil {
				n, _ := io.Copy(w, f)
				offsets[i] += n
			}
			f.Close()
		}
		flush(w)
		if cur, err := sv.Store.GetVM(ctx, vm.ID); err != nil || !sv.VMs.Alive(cur) && cur.State != model.VMStarting {
			return nil
		}
	}
}

func flush(w io.Writer) {
	if f, ok := w.(interface{ Flush() }); ok {
		f.Flush()
	}
}

// SSHInfo tells the CLI how to exec the system ssh into a VM.
func (sv *Service) SSHInfo(ctx context.Context, ref string) (api.SSHInfo, error) {
	vm, err := sv.VMs.Running(ctx, ref)
	if err != nil {
		return api.SSHInfo{}, err
	}
	return api.SSHInfo{
		Host: vm.GuestIP, User: "root", Port: sv.sshPort(),
		KeyPath:        sv.KeyPath,
		KnownHostsPath: filepath.Join(vm.Dir, "known_hosts"),
		Netns:          sv.Netns,
	}, nil
}

// Hosts renders /etc/hosts lines for running VMs.
func (sv *Service) Hosts(ctx context.Context) (string, error) {
	vms, err := sv.Store.ListVMs(ctx)
	if err != nil {
		return "", err
	}
	m := map[string]netip.Addr{}
	for _, vm := range vms {
		if !sv.VMs.Alive(vm) {
			continue
		}
		if ip, err := netip.ParseAddr(vm.GuestIP); err == nil {
			m[vm.Name] = ip
		}
	}
	return hostnet.HostsLines(sv.DNSSuffix, m), nil
}

// maxLogRead bounds what `vm logs` reads of a log before following it: the
// guest writes the console, and the watcher caps it well below this.
const maxLogRead = 16 << 20

// tailFile returns the last lines of the first file whose end is not blank,
// for errors. Guests write these logs: only their last 64 KiB are read.
func tailFile(paths ...string) string {
	for _, p := range paths {
		s, err := tail.File(p, 64<<10, 8)
		if err != nil || len(strings.TrimSpace(s)) == 0 {
			continue
		}
		return fmt.Sprintf("last lines of %s:\n%s", p, s)
	}
	return "no log output"
}
