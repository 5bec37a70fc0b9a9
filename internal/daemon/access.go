package daemon

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/banger/banger/internal/api"
	"github.com/banger/banger/internal/errdefs"
	"github.com/banger/banger/internal/hostnet"
	"github.com/banger/banger/internal/model"
	"github.com/banger/banger/internal/shell"
	"github.com/banger/banger/internal/tail"
)

// runningVM resolves a VM and checks it runs.
func (d *Daemon) runningVM(ctx context.Context, ref string) (model.VM, error) {
	vm, err := d.resolveVM(ctx, ref)
	if err != nil {
		return vm, err
	}
	if !d.vmAlive(vm) {
		return vm, errdefs.Errorf(errdefs.CodeConflict, "vm %s is not running (state %s): start it with `banger vm start %s`", vm.Name, vm.State, vm.Name)
	}
	return vm, nil
}

// ExecVM runs a command in a running VM over the daemon's SSH connection.
func (d *Daemon) ExecVM(ctx context.Context, ref string, req api.ExecRequest, stdout, stderr io.Writer) (int, error) {
	if len(req.Command) == 0 {
		return -1, errdefs.Errorf(errdefs.CodeInvalid, "no command given: put it after --")
	}
	vm, err := d.runningVM(ctx, ref)
	if err != nil {
		return -1, err
	}
	cmd, err := ExecCommand(req)
	if err != nil {
		return -1, errdefs.Invalid(err)
	}
	c, err := d.dialGuest(ctx, vm)
	if err != nil {
		return -1, fmt.Errorf("connect to %s: %w", vm.Name, err)
	}
	return c.Run(ctx, cmd, nil, stdout, stderr)
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

// VMLogs writes a VM's serial console and/or VMM log.
func (d *Daemon) VMLogs(ctx context.Context, ref string, req api.LogsRequest, w io.Writer) error {
	vm, err := d.resolveVM(ctx, ref)
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
		b, err := os.ReadFile(p)
		if err != nil && !os.IsNotExist(err) {
			return err
		}
		offsets[i] = int64(len(b))
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
		if cur, err := d.store.GetVM(ctx, vm.ID); err != nil || !d.vmAlive(cur) && cur.State != model.VMStarting {
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
func (d *Daemon) SSHInfo(ctx context.Context, ref string) (api.SSHInfo, error) {
	vm, err := d.runningVM(ctx, ref)
	if err != nil {
		return api.SSHInfo{}, err
	}
	return api.SSHInfo{
		Host: vm.GuestIP, User: "root", Port: 22,
		KeyPath:        d.cfg.KeyPath(),
		KnownHostsPath: filepath.Join(vm.Dir, "known_hosts"),
		Netns:          d.cfg.Netns,
	}, nil
}

// Hosts renders /etc/hosts lines for running VMs.
func (d *Daemon) Hosts(ctx context.Context) (string, error) {
	vms, err := d.store.ListVMs(ctx)
	if err != nil {
		return "", err
	}
	m := map[string]netip.Addr{}
	for _, vm := range vms {
		if !d.vmAlive(vm) {
			continue
		}
		if ip, err := netip.ParseAddr(vm.GuestIP); err == nil {
			m[vm.Name] = ip
		}
	}
	return hostnet.HostsLines(d.cfg.DNSSuffix, m), nil
}
