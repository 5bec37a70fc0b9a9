package cli

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/banger/banger/internal/api"
)

// defaultUnitPath is where `banger daemon install` writes bangerd's unit.
const defaultUnitPath = "/etc/systemd/system/bangerd.service"

// unitParams is what bangerd's systemd unit is made from.
type unitParams struct {
	Bangerd  string            // absolute path of the bangerd binary
	StateDir string            // where its log is appended
	Env      map[string]string // BANGER_* settings the daemon must share with the CLI
}

// unitText is bangerd's systemd unit. bangerd runs as root: it makes
// taps, bridges and nftables rules, loop and device-mapper devices,
// cgroups for its jails, and starts VMMs that drop to their own user.
// So the hardening is what leaves that work possible: /usr and /boot
// read-only (ProtectSystem=true, not full or strict: it adds its VMM
// user to /etc and writes its state dir), home directories read-only,
// no privilege gained through setuid binaries or file capabilities,
// its cgroup subtree delegated (jails make child cgroups), a private
// umask. It is not given PrivateTmp (image and kernel imports read
// host paths the CLI names) nor ProtectKernelTunables (it turns on IP
// forwarding) nor ProtectControlGroups.
//
// KillMode=process: stopping or restarting the service ends bangerd
// only; its VMMs run on and the next bangerd finds them, as after any
// daemon restart.
func unitText(p unitParams) string {
	var b strings.Builder
	w := func(s string) { b.WriteString(s + "\n") }
	w("# Written by `banger daemon install`; removed by `banger daemon uninstall`.")
	w("[Unit]")
	w("Description=banger microVM daemon (bangerd)")
	w("After=network-online.target")
	w("Wants=network-online.target")
	w("")
	w("[Service]")
	w("Type=simple")
	w("ExecStart=" + systemdQuote(p.Bangerd))
	keys := make([]string, 0, len(p.Env))
	for k := range p.Env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		w("Environment=" + systemdQuote(k+"="+p.Env[k]))
	}
	log := filepath.Join(p.StateDir, "bangerd.log")
	w("StandardOutput=append:" + log)
	w("StandardError=append:" + log)
	w("Restart=on-failure")
	w("RestartSec=2s")
	w("# VMs outlive a stop or restart of the service: only bangerd is ended.")
	w("KillMode=process")
	w("TimeoutStopSec=45s")
	w("# Many forwarded connections and VMM threads.")
	w("LimitNOFILE=65536")
	w("TasksMax=infinity")
	w("# Jails of stopped VMs' disk readers are child cgroups of bangerd's.")
	w("Delegate=yes")
	w("UMask=0077")
	w("NoNewPrivileges=yes")
	w("ProtectSystem=true")
	w("ProtectHome=read-only")
	w("ProtectClock=yes")
	w("ProtectHostname=yes")
	w("RestrictRealtime=yes")
	w("LockPersonality=yes")
	w("")
	w("[Install]")
	w("WantedBy=multi-user.target")
	return b.String()
}

// systemdQuote quotes a word for a unit file's ExecStart or Environment.
func systemdQuote(s string) string {
	if s != "" && !strings.ContainsAny(s, " \t\"'\\$%;") {
		return s
	}
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, `$`, `$$`, `%`, `%%`)
	return `"` + r.Replace(s) + `"`
}

// Seams for tests: whether systemd runs this machine, and systemctl.
var (
	// systemdBooted is sd_booted(3): systemd is PID 1 when it made
	// /run/systemd/system.
	systemdBooted = func() bool {
		fi, err := os.Stat("/run/systemd/system")
		return err == nil && fi.IsDir()
	}
	systemctl = func(args ...string) ([]byte, error) {
		return exec.Command("systemctl", args...).CombinedOutput()
	}
)

// errNoSystemd is the refusal on a machine systemd does not run.
var errNoSystemd = errors.New("systemd is not running this machine (PID 1 is not systemd: no /run/systemd/system), so there is nothing to install bangerd into: banger starts bangerd on demand as it is, or run it yourself (--dry-run prints the unit)")

func runSystemctl(args ...string) error {
	if out, err := systemctl(args...); err != nil {
		return fmt.Errorf("systemctl %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// unitEnv is the BANGER_* settings of this CLI's environment and flags,
// for the daemon to serve where the CLI looks.
func (a *app) unitEnv() map[string]string {
	env := map[string]string{}
	for _, kv := range os.Environ() {
		if k, v, ok := strings.Cut(kv, "="); ok && strings.HasPrefix(k, "BANGER_") && a.getenv(k) == v && v != "" {
			env[k] = v
		}
	}
	if a.stateDir != "" {
		env["BANGER_STATE_DIR"] = a.stateDir
	}
	if a.socket != "" {
		env["BANGER_SOCKET"] = a.socket
	}
	return env
}

func (a *app) daemonInstallCommand() *cobra.Command {
	var dryRun bool
	var unitPath, bangerd string
	cmd := &cobra.Command{
		Use:   "install",
		Short: "Run bangerd as a systemd service (writes, enables and starts its unit)",
		Long: `Write a systemd unit for bangerd (` + defaultUnitPath + ` unless --unit-path),
then systemctl daemon-reload and enable --now it, so bangerd starts at boot
and is restarted if it fails. The unit carries the BANGER_* settings of
this environment and --state-dir/--socket, appends bangerd's output to
<state-dir>/bangerd.log as before, and ends only bangerd on stop (VMs keep
running). Refused where systemd is not PID 1; --dry-run prints the unit
and changes nothing. Without a service, banger still starts bangerd on
demand.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if bangerd == "" {
				p, err := findBangerd()
				if err != nil {
					return err
				}
				bangerd = p
			}
			abs, err := filepath.Abs(bangerd)
			if err != nil {
				return err
			}
			p := unitParams{Bangerd: abs, StateDir: a.resolvedStateDir(), Env: a.unitEnv()}
			for k, v := range p.Env {
				if strings.ContainsAny(v, "\n\r") {
					return fmt.Errorf("%s holds a line break: it cannot go in a unit", k)
				}
			}
			text := unitText(p)
			if dryRun {
				_, err := fmt.Fprint(a.stdout, text)
				return err
			}
			if !systemdBooted() {
				return errNoSystemd
			}
			if fi, err := os.Stat(abs); err != nil || fi.IsDir() {
				return fmt.Errorf("bangerd %s: not a file (--bangerd names it)", abs)
			}
			unit := filepath.Base(unitPath)
			if !strings.HasSuffix(unit, ".service") {
				return fmt.Errorf("unit path %s: the file name must end in .service", unitPath)
			}
			// A bangerd already running outside the unit would hold the
			// state dir's lock and make the service fail.
			if c, err := a.connected(cmd.Context()); err == nil {
				info, err := c.Info(cmd.Context())
				if err == nil && !a.isUnitPID(unit, info.PID) {
					return fmt.Errorf("bangerd (pid %d) is already running outside systemd: stop it with `banger daemon stop` (VMs keep running), then install again", info.PID)
				}
			} else if !errors.Is(err, api.ErrDaemonUnreachable) {
				return err
			}
			if err := os.MkdirAll(p.StateDir, 0o700); err != nil {
				return fmt.Errorf("state dir: %w", err)
			}
			if err := writeFileAtomic(unitPath, []byte(text), 0o644); err != nil {
				return err
			}
			fmt.Fprintf(a.stderr, "banger: wrote %s\n", unitPath)
			if err := runSystemctl("daemon-reload"); err != nil {
				return err
			}
			if err := runSystemctl("enable", "--now", unit); err != nil {
				return err
			}
			fmt.Fprintf(a.stderr, "banger: enabled and started %s (systemctl status %s)\n", unit, unit)
			return nil
		},
	}
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "print the unit and change nothing")
	cmd.Flags().StringVar(&unitPath, "unit-path", defaultUnitPath, "where to write the unit")
	cmd.Flags().StringVar(&bangerd, "bangerd", "", "the bangerd binary (default: next to banger, else on PATH)")
	return cmd
}

func (a *app) daemonUninstallCommand() *cobra.Command {
	var unitPath string
	cmd := &cobra.Command{
		Use:   "uninstall",
		Short: "Stop, disable and remove bangerd's systemd unit (VMs keep running)",
		Long: `Disable and stop bangerd's systemd unit and remove its file. VMs keep
running; the next banger command starts bangerd on demand again.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			unit := filepath.Base(unitPath)
			if _, err := os.Stat(unitPath); errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("no unit at %s: nothing to uninstall", unitPath)
			}
			if systemdBooted() {
				if err := runSystemctl("disable", "--now", unit); err != nil {
					return err
				}
			}
			if err := os.Remove(unitPath); err != nil {
				return err
			}
			fmt.Fprintf(a.stderr, "banger: removed %s\n", unitPath)
			if systemdBooted() {
				return runSystemctl("daemon-reload")
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&unitPath, "unit-path", defaultUnitPath, "the unit to remove")
	return cmd
}

// isUnitPID says whether pid is the main process of the systemd unit.
func (a *app) isUnitPID(unit string, pid int) bool {
	out, err := systemctl("show", "--property=MainPID", "--value", unit)
	if err != nil {
		return false
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(out)))
	return err == nil && n == pid
}

// writeFileAtomic writes path through a temporary file in its directory.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Chmod(perm); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
