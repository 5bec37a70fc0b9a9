package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/banger/banger/internal/api"
	"github.com/banger/banger/internal/model"
	"github.com/banger/banger/internal/progress"
)

// show asks the daemon with call and prints the answer: as JSON with
// --json, else with render. A method expression such as
// (*api.Client).ListVMs fits call.
func show[T any](a *app, cmd *cobra.Command, call func(*api.Client, context.Context) (T, error), render func(io.Writer, T) error) error {
	c, err := a.client(cmd.Context())
	if err != nil {
		return err
	}
	v, err := call(c, cmd.Context())
	if err != nil {
		return err
	}
	return emit(a, v, render)
}

// showList is show for a list, which is "[]" and never "null" in JSON.
func showList[T any](a *app, cmd *cobra.Command, call func(*api.Client, context.Context) ([]T, error), render func(io.Writer, []T) error) error {
	return show(a, cmd, func(c *api.Client, ctx context.Context) ([]T, error) {
		v, err := call(c, ctx)
		return nonNil(v), err
	}, render)
}

// emit prints v as JSON with --json, else with render.
func emit[T any](a *app, v T, render func(io.Writer, T) error) error {
	if a.json {
		return a.printJSON(v)
	}
	return render(a.stdout, v)
}

// removeEach removes refs in turn with remove, printing each ref once it
// is gone; the first error stops it.
func (a *app) removeEach(cmd *cobra.Command, refs []string, remove func(c *api.Client, ctx context.Context, ref string) error) error {
	c, err := a.client(cmd.Context())
	if err != nil {
		return err
	}
	for _, ref := range refs {
		if err := remove(c, cmd.Context(), ref); err != nil {
			return err
		}
		fmt.Fprintln(a.stdout, ref)
	}
	return nil
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

// table writes aligned columns.
func table(w io.Writer, header []string, rows [][]string) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	return tw.Flush()
}

// kv writes "key: value" lines aligned, skipping empty values.
func kv(w io.Writer, pairs ...string) error {
	tw := tabwriter.NewWriter(w, 0, 4, 1, ' ', 0)
	for i := 0; i+1 < len(pairs); i += 2 {
		if pairs[i+1] == "" {
			continue
		}
		fmt.Fprintf(tw, "%s:\t%s\n", pairs[i], pairs[i+1])
	}
	return tw.Flush()
}

func size(b int64) string {
	if b <= 0 {
		return "-"
	}
	return model.FormatSize(b)
}

func ago(t time.Time, now time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := now.Sub(t)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d.Hours()))
	}
	return fmt.Sprintf("%dd ago", int(d.Hours()/24))
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// formatProgress renders one progress event as a line.
func formatProgress(p progress.Event) string {
	var b strings.Builder
	fmt.Fprintf(&b, "[%6.1fs] %s", p.Elapsed, p.Phase)
	if p.Message != "" {
		b.WriteString(": " + p.Message)
	}
	if p.Total > 0 {
		fmt.Fprintf(&b, " (%d%%)", p.Done*100/p.Total)
	}
	return b.String()
}

// progressPrinter prints progress lines to w; safe for concurrent use.
func progressPrinter(w io.Writer) progress.Func {
	var mu sync.Mutex
	return func(p progress.Event) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintln(w, formatProgress(p))
	}
}

// phasePrinter prints one line per phase to w (the first event of each),
// for output shared with a guest command's, where a line per percentage
// would drown it; safe for concurrent use.
func phasePrinter(w io.Writer) progress.Func {
	var mu sync.Mutex
	last := ""
	return func(p progress.Event) {
		mu.Lock()
		defer mu.Unlock()
		if p.Phase == last {
			return
		}
		last = p.Phase
		p.Done, p.Total = 0, 0 // the phase's start, not its first percentage
		fmt.Fprintln(w, formatProgress(p))
	}
}

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// artifactNames maps image and kernel ids to their names, for tables of
// VMs, whose records hold only the ids.
type artifactNames struct{ images, kernels map[string]string }

// artifactNames asks the daemon for the image and kernel names. It is
// best effort: a table falls back to short ids rather than fail.
func (a *app) artifactNames(ctx context.Context) artifactNames {
	n := artifactNames{images: map[string]string{}, kernels: map[string]string{}}
	c, err := a.connected(ctx)
	if err != nil {
		return n
	}
	if ims, err := c.ListImages(ctx); err == nil {
		for _, im := range ims {
			n.images[im.ID] = im.Name
		}
	}
	if ks, err := c.ListKernels(ctx); err == nil {
		for _, k := range ks {
			if k.Kernel != nil {
				n.kernels[k.Kernel.ID] = k.Kernel.Name
			}
		}
	}
	return n
}

// name is the name of an artifact id in names, else its short id.
func nameOf(names map[string]string, id string) string {
	if n := names[id]; n != "" {
		return n
	}
	return orDash(model.ShortID(id))
}

func vmRows(vms []model.VM, names artifactNames, now time.Time) [][]string {
	rows := [][]string{}
	for _, v := range vms {
		rows = append(rows, []string{model.ShortID(v.ID), v.Name, string(v.State), nameOf(names.images, v.ImageID),
			nameOf(names.kernels, v.KernelID), v.VMM, fmt.Sprint(v.CPUs), size(int64(v.MemoryMiB) << 20), size(v.DiskBytes),
			orDash(v.GuestIP), ago(v.CreatedAt, now), remaining(v, now), orDash(model.FormatLabels(v.Labels))})
	}
	return rows
}

var vmHeader = []string{"ID", "NAME", "STATE", "IMAGE", "KERNEL", "VMM", "CPUS", "MEMORY", "DISK", "IP", "CREATED", "TTL", "LABELS"}

// remaining is a VM's time left before its deadline, e.g. "9m58s" (it is
// deleted then) or "9m58s stop" / "9m58s pause"; "-" without one.
func remaining(vm model.VM, now time.Time) string {
	if vm.ExpiresAt == nil {
		return "-"
	}
	s := model.FormatTTL(vm.ExpiresAt.Sub(now))
	if vm.ExpireAction == model.TTLStop || vm.ExpireAction == model.TTLPause {
		s += " " + vm.ExpireAction
	}
	return s
}

// expires is the deadline line of `vm show`: when, how long from now, and
// what happens then.
func expires(vm model.VM, now time.Time) string {
	if vm.ExpiresAt == nil {
		return ""
	}
	return fmt.Sprintf("%s (in %s, then %s)", vm.ExpiresAt.Local().Format(time.RFC3339),
		model.FormatTTL(vm.ExpiresAt.Sub(now)), vm.ExpireAction)
}

func imageRows(ims []model.Image, now time.Time) [][]string {
	rows := [][]string{}
	for _, im := range ims {
		rows = append(rows, []string{model.ShortID(im.ID), im.Name, size(im.SizeBytes), orDash(im.Source), orDash(im.Init), ago(im.CreatedAt, now)})
	}
	return rows
}

var imageHeader = []string{"ID", "NAME", "SIZE", "SOURCE", "INIT", "CREATED"}

func kernelRows(ks []api.KernelEntry) [][]string {
	rows := [][]string{}
	for _, k := range ks {
		id, version, state := "-", "-", "available"
		if k.Kernel != nil {
			id, version, state = model.ShortID(k.Kernel.ID), orDash(k.Kernel.Version), "installed"
		}
		if !k.Catalog && k.Kernel != nil {
			state = "imported"
		}
		rows = append(rows, []string{id, k.Name, version, state, k.Description})
	}
	return rows
}

var kernelHeader = []string{"ID", "NAME", "VERSION", "STATE", "DESCRIPTION"}

func sessionRows(ss []model.Session, now time.Time) [][]string {
	rows := [][]string{}
	for _, s := range ss {
		exit := "-"
		if s.ExitCode != nil {
			exit = fmt.Sprint(*s.ExitCode)
		}
		cmd := strings.Join(append([]string{s.Command}, s.Args...), " ")
		if len(cmd) > 40 {
			cmd = cmd[:37] + "..."
		}
		rows = append(rows, []string{model.ShortID(s.ID), s.Name, string(s.Status), exit, cmd, ago(s.CreatedAt, now)})
	}
	return rows
}

var sessionHeader = []string{"ID", "NAME", "STATUS", "EXIT", "COMMAND", "CREATED"}

func imageTable(w io.Writer, ims []model.Image) error {
	return table(w, imageHeader, imageRows(ims, time.Now()))
}

func kernelTable(w io.Writer, ks []api.KernelEntry) error {
	return table(w, kernelHeader, kernelRows(ks))
}

func sessionTable(w io.Writer, ss []model.Session) error {
	return table(w, sessionHeader, sessionRows(ss, time.Now()))
}

func writeImage(w io.Writer, im model.Image) error {
	return kv(w, "id", im.ID, "name", im.Name, "path", im.Path, "size", size(im.SizeBytes), "checksum", im.Checksum,
		"source", im.Source, "init", im.Init, "created", im.CreatedAt.Local().Format(time.RFC3339), "recipe", im.Recipe)
}

func writeKernel(w io.Writer, k model.Kernel) error {
	return kv(w, "id", k.ID, "name", k.Name, "version", k.Version, "vmlinux", k.VmlinuxPath, "bzimage", k.BzImagePath,
		"initrd", k.InitrdPath, "cmdline", k.Cmdline, "source", k.Source, "created", k.CreatedAt.Local().Format(time.RFC3339))
}

func writeVM(w io.Writer, vm model.VM) error {
	started := ""
	if vm.StartedAt != nil {
		started = vm.StartedAt.Local().Format(time.RFC3339)
	}
	return kv(w, "id", vm.ID, "name", vm.Name, "state", string(vm.State), "desired", string(vm.DesiredState),
		"image", artifactText(vm.ImageName, vm.ImageID), "kernel", artifactText(vm.KernelName, vm.KernelID), "vmm", vm.VMM, "accel", vm.Accel, "cpus", fmt.Sprint(vm.CPUs),
		"memory", size(int64(vm.MemoryMiB)<<20), "disk", size(vm.DiskBytes), "ip", vm.GuestIP, "mac", vm.GuestMAC,
		"dns", vm.DNSName, "net", vm.Net.String(), "cid", fmt.Sprint(vm.CID), "storage", vm.CowStrategy, "dir", vm.Dir, "host key", vm.HostKey,
		"created", vm.CreatedAt.Local().Format(time.RFC3339), "started", started,
		"expires", expires(vm, time.Now()), "idle timeout", idleText(vm, time.Now()), "ports", portsText(vm.Ports),
		"labels", model.FormatLabels(vm.Labels), "last error", vm.LastError)
}

// artifactText is an image's or kernel's name with its short id, or the
// id alone when the name is not known.
func artifactText(name, id string) string {
	if name == "" {
		return id
	}
	return name + " (" + model.ShortID(id) + ")"
}

// idleText is the idle timeout line of `vm show`: the timeout, what
// happens then, and when it falls as the daemon counts now.
func idleText(vm model.VM, now time.Time) string {
	if vm.IdleTimeoutSeconds <= 0 {
		return ""
	}
	s := model.FormatTTL(time.Duration(vm.IdleTimeoutSeconds)*time.Second) + ", then " + vm.IdleAction
	if vm.IdleDeadline != nil {
		s += fmt.Sprintf(" (idle in %s)", model.FormatTTL(vm.IdleDeadline.Sub(now)))
	}
	return s
}

// writeTTL is the answer of `vm ttl`: the VM's deadline and idle
// timeout, or that it has neither.
func writeTTL(w io.Writer, vm model.VM) error {
	if vm.ExpiresAt == nil && vm.IdleTimeoutSeconds <= 0 {
		_, err := fmt.Fprintf(w, "%s has no deadline\n", vm.Name)
		return err
	}
	return kv(w, "vm", vm.Name, "expires", expires(vm, time.Now()), "idle timeout", idleText(vm, time.Now()))
}

// writeNet shows a network policy, one part a line.
func writeNet(w io.Writer, p model.NetPolicy) error {
	mode := p.Mode
	if mode == "" {
		mode = model.NetInternet
	}
	return kv(w, "mode", mode, "allow", strings.Join(p.Allow, ", "), "deny", strings.Join(p.Deny, ", "),
		"allow-vm", strings.Join(p.AllowVMs, ", "))
}

func writeSession(w io.Writer, s model.Session) error {
	exit := ""
	if s.ExitCode != nil {
		exit = fmt.Sprint(*s.ExitCode)
	}
	return kv(w, "id", s.ID, "name", s.Name, "vm", s.VMID, "status", string(s.Status),
		"command", strings.Join(append([]string{s.Command}, s.Args...), " "), "cwd", s.Cwd, "stdin", s.StdinMode,
		"guest pid", map[bool]string{true: fmt.Sprint(s.GuestPID)}[s.GuestPID > 0], "exit code", exit,
		"launch stage", s.LaunchStage, "launch error", s.LaunchError, "error", s.Error,
		"created", s.CreatedAt.Local().Format(time.RFC3339), "launch log", s.LaunchLog)
}

func writeWorkspace(w io.Writer, info api.WorkspaceInfo) error {
	return kv(w, "guest path", info.GuestPath, "files", fmt.Sprint(info.Files), "bytes", size(info.Bytes), "head", info.Head, "transport", info.Transport)
}

func writeInfo(w io.Writer, info api.DaemonInfo) error {
	return kv(w, "status", "running", "pid", fmt.Sprint(info.PID), "version", info.Version.Version,
		"state dir", info.StateDir, "socket", info.Socket, "log", info.LogPath, "netns", info.Netns, "started", info.Started)
}

func writeDoctor(w io.Writer, r api.DoctorReport) error {
	kv(w, "vmm", r.VMM, "accel", r.Accel, "cow strategy", r.CowStrategy, "network", r.NetworkMode)
	fmt.Fprintln(w)
	rows := [][]string{}
	for _, ch := range r.Checks {
		ok := "ok"
		if !ch.OK {
			ok = "MISSING"
		}
		rows = append(rows, []string{ch.Name, ok, ch.Detail, ch.Fix})
	}
	return table(w, []string{"CHECK", "RESULT", "DETAIL", "FIX"}, rows)
}
