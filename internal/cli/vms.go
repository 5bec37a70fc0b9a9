package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/banger/banger/internal/api"
	"github.com/banger/banger/internal/errdefs"
	"github.com/banger/banger/internal/model"
	"github.com/banger/banger/internal/progress"
	"github.com/banger/banger/internal/workspace"
)

func (a *app) vmCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "vm", Short: "Create, run, inspect and remove microVMs"}
	cmd.AddCommand(a.vmCreateCommand(), a.vmRunCommand(), a.vmExecCommand(), a.vmSSHCommand(), a.vmLogsCommand(),
		a.vmStopCommand(), a.vmNetCommand(), a.workspaceCommand())
	cmd.AddCommand(a.vmTTLCommand())
	cmd.AddCommand(a.vmCpCommand())
	cmd.AddCommand(a.vmPortCommand())
	cmd.AddCommand(a.vmSnapshotCommand(), a.vmForkCommand())

	cmd.AddCommand(&cobra.Command{
		Use: "start VM", Short: "Boot a VM and wait for SSH", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return show(a, cmd, func(c *api.Client, ctx context.Context) (model.VM, error) {
				return c.StartVM(ctx, args[0], progressPrinter(a.stderr))
			}, writeVM)
		},
	})
	cmd.AddCommand(&cobra.Command{
		Use: "pause VM", Short: "Save a running VM's memory to disk and free its host memory", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return show(a, cmd, func(c *api.Client, ctx context.Context) (model.VM, error) {
				return c.PauseVM(ctx, args[0])
			}, writeStopped)
		},
	})
	cmd.AddCommand(&cobra.Command{
		Use: "resume VM", Short: "Run a paused VM again where it stopped", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return show(a, cmd, func(c *api.Client, ctx context.Context) (model.VM, error) {
				return c.ResumeVM(ctx, args[0], progressPrinter(a.stderr))
			}, writeStopped)
		},
	})
	cmd.AddCommand(&cobra.Command{
		Use: "restart VM", Short: "Stop and boot a VM", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return show(a, cmd, func(c *api.Client, ctx context.Context) (model.VM, error) {
				return c.RestartVM(ctx, args[0], progressPrinter(a.stderr))
			}, writeVM)
		},
	})
	var force bool
	del := &cobra.Command{
		Use: "delete VM...", Aliases: []string{"rm"}, Short: "Delete VMs and everything they hold on the host",
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.removeEach(cmd, args, func(c *api.Client, ctx context.Context, ref string) error {
				return c.DeleteVM(ctx, ref, force)
			})
		},
	}
	del.Flags().BoolVarP(&force, "force", "f", false, "stop running VMs first")
	cmd.AddCommand(del)
	var labels []string
	list := &cobra.Command{
		Use: "list", Aliases: []string{"ls"}, Short: "List VMs", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			sel, err := model.ParseLabelSelector(labels)
			if err != nil {
				return errdefs.Invalid(err)
			}
			call := func(c *api.Client, ctx context.Context) ([]model.VM, error) { return c.ListVMsByLabel(ctx, sel) }
			return showList(a, cmd, call, func(w io.Writer, vms []model.VM) error {
				var names artifactNames
				if len(vms) > 0 {
					names = a.artifactNames(cmd.Context())
				}
				return table(w, vmHeader, vmRows(vms, names, time.Now()))
			})
		},
	}
	list.Flags().StringArrayVarP(&labels, "label", "l", nil, "only VMs with this label: KEY=VALUE, or KEY for any value (repeatable; all must match)")
	cmd.AddCommand(list)
	cmd.AddCommand(&cobra.Command{
		Use: "show VM", Short: "Show a VM", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return show(a, cmd, func(c *api.Client, ctx context.Context) (model.VM, error) {
				return c.GetVM(ctx, args[0])
			}, writeVM)
		},
	})
	cmd.AddCommand(&cobra.Command{
		Use: "hosts", Short: "Print /etc/hosts lines for the running VMs", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			// JSON wraps the lines in {"hosts": ...}; the text is the lines.
			return show(a, cmd, func(c *api.Client, ctx context.Context) (map[string]string, error) {
				h, err := c.Hosts(ctx)
				return map[string]string{"hosts": h}, err
			}, func(w io.Writer, m map[string]string) error {
				_, err := io.WriteString(w, m["hosts"])
				return err
			})
		},
	})
	return cmd
}

// vmFlags are the shape flags of create and run.
func vmFlags(cmd *cobra.Command, req *api.CreateVMRequest) {
	f := cmd.Flags()
	f.StringVar(&req.Name, "name", "", "VM name (default: generated)")
	f.StringVar(&req.Image, "image", "", "image name or id (default: the default image)")
	f.StringVar(&req.Kernel, "kernel", "", "kernel name or id (default: the default kernel)")
	f.IntVar(&req.CPUs, "cpus", 0, "vCPUs")
	f.StringVar(&req.Memory, "memory", "", "memory, e.g. 1G")
	f.StringVar(&req.Disk, "disk", "", "work disk size, e.g. 4G")
	netFlags(cmd, &req.Net, &req.Allow, &req.Deny, &req.AllowVMs)
}

// netFlags are the network policy flags of create, run and vm net.
func netFlags(cmd *cobra.Command, mode *string, allow, deny, allowVMs *[]string) {
	f := cmd.Flags()
	f.StringVar(mode, "net", "", "what the guest reaches: internet (default: public addresses and DNS, not the host, private ranges or other VMs), open (everything but other VMs) or none")
	f.StringArrayVar(allow, "allow", nil, "also reach CIDR[:PORT[/tcp|udp]], e.g. 10.0.0.5:5432 or 192.168.1.0/24, or with --net none a host name, e.g. api.example.com or *.example.com: every port of what it resolves to (repeatable)")
	f.StringArrayVar(deny, "deny", nil, "never reach CIDR, whatever else allows it (repeatable)")
	f.StringArrayVar(allowVMs, "allow-vm", nil, "open connections to this other VM (repeatable)")
}

func (a *app) vmNetCommand() *cobra.Command {
	var mode string
	var allow, deny, allowVMs []string
	var reset bool
	cmd := &cobra.Command{
		Use:   "net VM",
		Short: "Show or change what a VM's guest may reach on the network",
		Long: `Without flags, show the VM's network policy. With flags, change it: a flag
given replaces that part of the policy (an empty value, --allow '', clears
it), the parts not given are kept, and --reset starts from the default
(internet, nothing allowed or denied). A running VM gets the new policy at
once, open connections included; a stopped one at its next start.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			f := cmd.Flags()
			var req api.VMNetRequest
			if f.Changed("net") {
				req.Net = &mode
			}
			for _, l := range []struct {
				flag string
				v    []string
				dst  **[]string
			}{{"allow", allow, &req.Allow}, {"deny", deny, &req.Deny}, {"allow-vm", allowVMs, &req.AllowVMs}} {
				if f.Changed(l.flag) {
					v := []string{} // given: replaces, even when empty
					for _, s := range l.v {
						if strings.TrimSpace(s) != "" {
							v = append(v, s)
						}
					}
					*l.dst = &v
				}
			}
			req.Reset = reset
			change := req.Reset || req.Net != nil || req.Allow != nil || req.Deny != nil || req.AllowVMs != nil
			return show(a, cmd, func(c *api.Client, ctx context.Context) (model.NetPolicy, error) {
				var vm model.VM
				var err error
				if change {
					vm, err = c.SetVMNet(ctx, args[0], req)
				} else {
					vm, err = c.GetVM(ctx, args[0])
				}
				return vm.Net, err
			}, writeNet)
		},
	}
	netFlags(cmd, &mode, &allow, &deny, &allowVMs)
	cmd.Flags().BoolVar(&reset, "reset", false, "start from the default policy (internet) before applying the other flags")
	return cmd
}

func (a *app) vmCreateCommand() *cobra.Command {
	var req api.CreateVMRequest
	var start bool
	cmd := &cobra.Command{
		Use: "create", Short: "Create a VM (and its disks) without booting it", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			r := req
			r.Start = start
			return show(a, cmd, func(c *api.Client, ctx context.Context) (model.VM, error) {
				return c.CreateVM(ctx, r, progressPrinter(a.stderr))
			}, writeVM)
		},
	}
	vmFlags(cmd, &req)
	ttlFlags(cmd, &req)
	cmd.Flags().StringVar(&req.VMM, "vmm", "", "VMM: auto, firecracker or qemu")
	cmd.Flags().BoolVar(&start, "start", false, "boot it and wait for SSH (restored from a fresh warm-start template of its shape, if there is one: banger image warm)")
	cmd.Flags().StringVar(&req.FromSnapshot, "from-snapshot", "", "restore the VM from this snapshot (it runs, with the snapshot's image and sizes) instead of booting it")
	cmd.Flags().BoolVar(&req.Cold, "cold", false, "with --start: boot even when a warm-start template of this shape exists")
	return cmd
}

func (a *app) vmStopCommand() *cobra.Command {
	var req api.StopVMRequest
	var timeout time.Duration
	cmd := &cobra.Command{
		Use: "stop VM...", Short: "Shut VMs down (forcefully after --timeout)", Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			r := req
			r.TimeoutSeconds = int(timeout.Seconds())
			for _, ref := range args {
				vm, err := c.StopVM(cmd.Context(), ref, r)
				if err != nil {
					return err
				}
				if err := emit(a, vm, writeStopped); err != nil {
					return err
				}
			}
			return nil
		},
	}
	cmd.Flags().DurationVar(&timeout, "timeout", 0, "graceful wait before killing (default 30s)")
	cmd.Flags().BoolVarP(&req.Force, "force", "f", false, "kill at once")
	return cmd
}

// writeStopped is the line of one VM stop, pause or resume: its name and
// state.
func writeStopped(w io.Writer, vm model.VM) error {
	_, err := fmt.Fprintf(w, "%s %s\n", vm.Name, vm.State)
	return err
}

func (a *app) vmLogsCommand() *cobra.Command {
	var req api.LogsRequest
	var vmm bool
	cmd := &cobra.Command{
		Use: "logs VM", Short: "Print a VM's serial console (or VMM) log", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			r := req
			if vmm {
				r.Source = model.LogVMM
			}
			err = c.VMLogs(cmd.Context(), args[0], r, a.stdout)
			if r.Follow && errors.Is(err, context.Canceled) {
				return nil
			}
			return err
		},
	}
	cmd.Flags().BoolVar(&vmm, "vmm", false, "the VMM's log instead of the console")
	cmd.Flags().IntVar(&req.Tail, "tail", 0, "only the last N lines")
	cmd.Flags().BoolVarP(&req.Follow, "follow", "f", false, "keep printing new output")
	return cmd
}

func (a *app) vmExecCommand() *cobra.Command {
	var tty int
	var interactive bool
	cmd := &cobra.Command{
		Use:   "exec VM -- CMD [ARGS...]",
		Short: "Run a command in a VM; its exit code becomes banger's",
		Long: "Run a command in a running VM. Its output comes back as it is written and its\n" +
			"exit code becomes banger's.\n\n" +
			"With -i, standard input is sent to the command (its end is the command's EOF).\n" +
			"With -t, the command runs on a terminal in the guest (as ssh -t): your terminal\n" +
			"goes into raw mode, every key (Ctrl-C too) reaches the command, and its window\n" +
			"size follows yours. When stdin is not a terminal, -t is dropped with a note and\n" +
			"stdin is sent as with -i; give -t twice (-tt) to get a guest terminal anyway\n" +
			"(the end of a piped stdin then does not reach the command: a terminal has no EOF).",
		Example: "  banger vm exec dev -- uname -a\n" +
			"  banger vm exec -t dev -- top\n" +
			"  banger vm exec -i dev -- sh -c 'wc -l' < file",
		Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			// The daemon ends the guest command when the request goes away.
			a.leftOnInterrupt = "the command in vm " + args[0] + " was stopped"
			req := api.ExecRequest{Command: args[1:]}
			if _, isTerm := a.terminalFd(); tty == 1 && !isTerm {
				fmt.Fprintln(a.stderr, "banger: stdin is not a terminal, so the command gets none (give -t twice to force one)")
				interactive = true
			} else if tty > 0 {
				req.TTY = true
			}
			var code int
			if req.TTY || interactive {
				code, err = a.execTerminal(cmd.Context(), c, args[0], req)
			} else {
				code, err = c.ExecVM(cmd.Context(), args[0], req, a.stdout, a.stderr)
			}
			if err != nil {
				return err
			}
			if code != 0 {
				return exitCode(code)
			}
			return nil
		},
	}
	cmd.Flags().CountVarP(&tty, "tty", "t", "run the command on a terminal in the guest (twice: even when stdin is not a terminal)")
	cmd.Flags().BoolVarP(&interactive, "interactive", "i", false, "send standard input to the command")
	return cmd
}

// sshArgv is the command line that opens ssh into a VM: the system ssh
// with the daemon's key and pinned host key, under "ip netns exec" when the
// VM network lives in a namespace.
func sshArgv(info api.SSHInfo, command []string) []string {
	user := info.User
	if user == "" {
		user = "root"
	}
	argv := []string{"ssh", "-i", info.KeyPath, "-o", "UserKnownHostsFile=" + info.KnownHostsPath,
		"-o", "StrictHostKeyChecking=yes", "-o", "IdentitiesOnly=yes"}
	if info.Port != 0 && info.Port != 22 {
		argv = append(argv, "-p", fmt.Sprint(info.Port))
	}
	argv = append(argv, user+"@"+info.Host)
	if len(command) > 0 {
		argv = append(append(argv, "--"), command...)
	}
	if info.Netns != "" {
		argv = append([]string{"ip", "netns", "exec", info.Netns}, argv...)
	}
	return argv
}

func (a *app) vmSSHCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "ssh VM [-- CMD...]",
		Short: "Open ssh into a VM (the system ssh, with banger's key)",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			info, err := c.SSHInfo(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			argv := sshArgv(info, args[1:])
			bin, err := exec.LookPath(argv[0])
			if err != nil {
				return fmt.Errorf("%s not found on PATH: install %s", argv[0], map[string]string{"ssh": "openssh-client", "ip": "iproute2"}[argv[0]])
			}
			return syscall.Exec(bin, argv, os.Environ())
		},
	}
}

func (a *app) vmRunCommand() *cobra.Command {
	var req api.CreateVMRequest
	var rm bool
	var wsDir, wsMode string
	var noGit, verbose bool
	cmd := &cobra.Command{
		Use:   "run [flags] -- CMD [ARGS...]",
		Short: "Create and boot a VM, optionally copy a repository in, run a command, return its exit code",
		Long: "Create and boot a VM, optionally copy a repository in, run a command in it and return\n" +
			"its exit code. stdout and stderr are the command's: banger adds one line per boot\n" +
			"phase only with --verbose or when stderr is a terminal, and otherwise prints only\n" +
			"its errors.\n\n" +
			"Ctrl-C (or SIGTERM) stops the command, deletes the VM with --rm, and exits 130\n" +
			"(143) with one line saying what was cleaned up.\n\n" +
			"With --rm the VM lives on a lease the daemon enforces: a deadline 30s ahead that\n" +
			"banger renews every 10s while it runs, so a banger killed outright leaves a VM the\n" +
			"daemon deletes within 30s.",
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			verbose = verbose || isTerminal(a.stderr)
			a.quiet = !verbose
			if wsDir != "" && !noGit {
				// Refuse a source that is not a repository before booting.
				if _, _, err := workspace.ListFiles(ctx, wsDir); err != nil {
					if errors.Is(err, workspace.ErrNotRepo) {
						return fmt.Errorf("%w (--no-git copies it as a plain directory)", err)
					}
					return err
				}
			}
			c, err := a.client(ctx)
			if err != nil {
				return err
			}
			r := req
			r.Start = true
			if rm && r.Name == "" {
				// A name known before the create, so an interrupted boot
				// can still be deleted.
				r.Name = "run-" + model.ShortID(model.NewID())
			} else if rm {
				// --rm deletes by name: never a VM that was there before.
				if old, err := c.GetVM(ctx, r.Name); err == nil {
					return errdefs.Errorf(errdefs.CodeConflict, "vm %q already exists (--rm would delete it): choose another --name", old.Name)
				}
			}
			stopLease := func() {}
			if rm {
				if r.TTL != "" || r.TTLAction != "" {
					return errors.New("--ttl and --ttl-action do not go with --rm: it deletes the VM when the command ends")
				}
				// Renewed from before the create: the deadline counts from
				// the record's insert, and a boot may take minutes.
				r.TTL, r.TTLAction = runLease.String(), model.TTLDelete
				var leaseCtx context.Context
				leaseCtx, stopLease = context.WithCancel(ctx)
				defer stopLease()
				go renewLease(leaseCtx, c, r.Name)
			}
			report := progress.Func(nil)
			if verbose {
				report = phasePrinter(a.stderr)
			}
			ref, name := r.Name, r.Name // the id and the name once known
			if rm {
				// Also after Ctrl-C or SIGTERM, and after a failed or
				// interrupted create (the name is known before it).
				defer func() { stopLease(); a.cleanupRun(ctx, c, ref, name) }()
			}
			vm, err := c.CreateVM(ctx, r, report)
			if err != nil {
				return err
			}
			ref, name = vm.ID, vm.Name
			for _, f := range vm.Ports {
				// Always: a port picked for 0 is known only from here.
				fmt.Fprintf(a.stderr, "banger: published %s\n", forwardText(f))
			}
			if !rm {
				a.leftOnInterrupt = fmt.Sprintf("vm %s is kept (banger vm delete --force %s removes it)", vm.Name, vm.Name)
			}
			exec := api.ExecRequest{Command: args}
			if wsDir != "" {
				if verbose {
					fmt.Fprintf(a.stderr, "banger: copying %s into %s\n", wsDir, vm.Name)
				}
				info, err := a.prepare(ctx, c, vm.ID, wsDir, api.WorkspaceRequest{Mode: wsMode}, noGit)
				if err != nil {
					return err
				}
				exec.Cwd = info.GuestPath // the command runs in the repository
			}
			code, err := c.ExecVM(ctx, vm.ID, exec, a.stdout, a.stderr)
			if err != nil {
				return err
			}
			if code != 0 {
				return exitCode(code)
			}
			return nil
		},
	}
	vmFlags(cmd, &req)
	ttlFlags(cmd, &req)
	cmd.Flags().BoolVar(&req.Cold, "cold", false, "boot even when a warm-start template of this shape exists (banger image warm)")
	cmd.Flags().BoolVar(&rm, "rm", false, "delete the VM afterwards (also on Ctrl-C, and by the daemon within 30s if banger is killed)")
	cmd.Flags().StringVar(&wsDir, "workspace", "", "copy this git repository into the VM first")
	cmd.Flags().StringVar(&wsMode, "workspace-mode", "", "full (with git history, default) or tracked")
	cmd.Flags().BoolVar(&noGit, "no-git", false, "the workspace is a plain directory, not a git repository: copy all of it")
	cmd.Flags().BoolVarP(&verbose, "verbose", "v", false, "print a line per boot phase on stderr (the default when stderr is a terminal)")
	return cmd
}

// cleanupRun deletes the VM of `vm run --rm`. After an interruption it
// only records what it did for run's one line; otherwise a failure is
// printed.
func (a *app) cleanupRun(cmdCtx context.Context, c *api.Client, ref, name string) {
	// cmdCtx is done after Ctrl-C or SIGTERM: delete with a fresh one.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	err := c.DeleteVM(ctx, ref, true)
	switch {
	case err == nil:
		a.leftOnInterrupt = "deleted vm " + name
	case errdefs.IsNotFound(err):
		a.leftOnInterrupt = "no vm was left"
	case cmdCtx.Err() != nil:
		a.leftOnInterrupt = fmt.Sprintf("deleting vm %s failed: %v (banger vm delete --force %s removes it)", name, err, name)
	default:
		fmt.Fprintf(a.stderr, "banger: --rm: delete %s: %v\n", name, err)
	}
}

// errRequestEnded stops the tar writer once the prepare request is over.
var errRequestEnded = errors.New("workspace request ended")

// prepare streams dir as a tar into the VM's workspace.
func (a *app) prepare(ctx context.Context, c *api.Client, ref, dir string, req api.WorkspaceRequest, noGit bool) (api.WorkspaceInfo, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return api.WorkspaceInfo{}, err
	}
	if req.Mode == "" {
		req.Mode = workspace.ModeFull
	}
	if err := workspace.ValidateMode(req.Mode); err != nil {
		return api.WorkspaceInfo{}, err
	}
	pr, pw := io.Pipe()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	tarErr := make(chan error, 1)
	go func() {
		st, err := workspace.WriteTar(ctx, abs, workspace.TarOptions{Mode: req.Mode, NoGit: noGit}, pw)
		for _, w := range st.Warnings {
			fmt.Fprintln(a.stderr, "warning:", w)
		}
		pw.CloseWithError(err)
		tarErr <- err
	}()
	info, err := c.PrepareWorkspace(ctx, ref, req, pr)
	pr.CloseWithError(errRequestEnded)
	cancel()
	// When reading the repository failed, that is the error to show, not
	// how the request ended because of it.
	if terr := <-tarErr; err != nil && terr != nil && !errors.Is(terr, context.Canceled) && !errors.Is(terr, errRequestEnded) {
		return info, fmt.Errorf("read %s: %w", abs, terr)
	}
	return info, err
}

func (a *app) workspaceCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "workspace", Short: "Copy a git repository into a VM and bring its changes back"}
	var src string
	var req api.WorkspaceRequest
	var noGit bool
	prep := &cobra.Command{
		Use: "prepare VM", Short: "Copy a repository (tracked and unignored files, with history) into a VM",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return show(a, cmd, func(c *api.Client, ctx context.Context) (api.WorkspaceInfo, error) {
				return a.prepare(ctx, c, args[0], src, req, noGit)
			}, writeWorkspace)
		},
	}
	prep.Flags().StringVar(&src, "source", ".", "host repository")
	prep.Flags().StringVar(&req.GuestPath, "guest-path", "", "where in the guest (default /root/repo)")
	prep.Flags().BoolVar(&req.ReadOnly, "readonly", false, "make the guest copy read-only")
	prep.Flags().StringVar(&req.Mode, "mode", "", "full (with git history, default) or tracked")
	prep.Flags().BoolVar(&req.Force, "force", false, "replace an existing guest copy")
	prep.Flags().BoolVar(&noGit, "no-git", false, "the source is a plain directory, not a git repository: copy all of it")
	cmd.AddCommand(prep)

	var ereq api.ExportRequest
	var branch, patch, repo string
	var force bool
	exp := &cobra.Command{
		Use:   "export VM (--branch B [--force] | --patch FILE)",
		Short: "Bring the guest repository's changes back as a branch or a patch (the host working tree is never touched)",
		Long: "Bring the guest repository's changes back: its commits since the prepare, plus its uncommitted\n" +
			"changes as one more commit, as a branch of the host repository (nothing checked out) or a patch.\n" +
			"Works on a running VM, and on a stopped one without booting it (read from its work disk; the\n" +
			"guest's uncommitted changes then stay uncommitted in the VM).",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if (branch == "") == (patch == "") {
				return errors.New("give exactly one of --branch B or --patch FILE")
			}
			if force && branch == "" {
				return errors.New("--force only applies to --branch")
			}
			c, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			r := ereq
			if patch != "" {
				r.Format = workspace.FormatPatch
				return a.exportPatch(cmd.Context(), c, args[0], r, patch)
			}
			r.Format = workspace.FormatBundle
			return a.exportBranch(cmd.Context(), c, args[0], r, repo, branch, force)
		},
	}
	exp.Flags().StringVar(&ereq.GuestPath, "guest-path", "", "guest repository (default /root/repo)")
	exp.Flags().StringVar(&ereq.Base, "base", "", "host commit the workspace was prepared from")
	exp.Flags().StringVar(&branch, "branch", "", "host branch to create from the guest's commits")
	exp.Flags().BoolVar(&force, "force", false, "overwrite an existing --branch")
	exp.Flags().StringVar(&patch, "patch", "", "write a patch to this file (- for stdout)")
	exp.Flags().StringVar(&repo, "source", ".", "host repository to import the branch into")
	cmd.AddCommand(exp)
	return cmd
}

func (a *app) exportPatch(ctx context.Context, c *api.Client, ref string, r api.ExportRequest, path string) error {
	if path == "-" {
		return c.ExportWorkspace(ctx, ref, r, a.stdout)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".banger-patch-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := c.ExportWorkspace(ctx, ref, r, tmp); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

func (a *app) exportBranch(ctx context.Context, c *api.Client, ref string, r api.ExportRequest, repo, branch string, force bool) error {
	tmp, err := os.CreateTemp("", "banger-export-*.bundle")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := c.ExportWorkspace(ctx, ref, r, tmp); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := workspace.ImportBundle(ctx, repo, tmp.Name(), branch, force); err != nil {
		return err
	}
	fmt.Fprintf(a.stderr, "banger: branch %s created in %s\n", branch, repo)
	return nil
}
