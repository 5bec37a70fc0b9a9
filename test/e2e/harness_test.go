// Package e2e holds banger's end-to-end tests: the real banger CLI and
// bangerd, real QEMU guests under TCG, real SSH, real taps — all of the
// daemon's networking inside a network namespace each test makes and
// deletes. They run when BANGER_E2E=1 and skip otherwise.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/banger/banger/internal/model"
	"github.com/banger/banger/internal/testenv"
)

// binDir holds banger, bangerd and banger-init built once for the package.
var binDir string

func TestMain(m *testing.M) {
	if os.Getenv("BANGER_E2E") != "1" || os.Geteuid() != 0 {
		os.Exit(m.Run()) // every test skips itself with the reason
	}
	dir, err := os.MkdirTemp("", "banger-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	for _, b := range []struct{ out, pkg string }{
		{"banger", "./cmd/banger"}, {"bangerd", "./cmd/bangerd"}, {"banger-init", "./cmd/banger-init"},
	} {
		// The same flags as `make build` for banger-init: the image recipe
		// key hashes it, so every build path must give the same bytes.
		cmd := exec.Command("go", "build", "-trimpath", "-buildvcs=false", "-o", filepath.Join(dir, b.out), b.pkg)
		cmd.Dir = "../.."
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "build %s: %v\n%s", b.pkg, err, out)
			os.Exit(1)
		}
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// Harness is one bangerd (started by the CLI on demand) with its own state
// directory, whose networking lives in a test network namespace.
type Harness struct {
	t        testing.TB
	StateDir string
	Netns    string
	env      []string
	// The E2B listener and API key, once e2bNode started them.
	e2bURL, e2bKey string
}

// NewHarness makes a state dir and a network namespace, and registers the
// clean-up that deletes every VM, stops the daemon and checks that nothing
// leaked. env adds KEY=VALUE settings for the daemon (e.g. BANGER_VMM).
func NewHarness(t testing.TB, env ...string) *Harness {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireE2E(t)
	ns := testenv.Netns(t)
	// Short: the socket path must fit in a sockaddr_un.
	state, err := os.MkdirTemp("", "bgs-")
	if err != nil {
		t.Fatal(err)
	}
	return newHarness(t, ns, state, env)
}

// NewHarnessAt is NewHarness with the daemon's state in stateDir, an
// empty directory the test made (on a filesystem of its choosing); the
// clean-up removes it as NewHarness's.
func NewHarnessAt(t testing.TB, stateDir string, env ...string) *Harness {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireE2E(t)
	return newHarness(t, testenv.Netns(t), stateDir, env)
}

func newHarness(t testing.TB, ns, state string, env []string) *Harness {
	h := &Harness{t: t, StateDir: state, Netns: ns}
	h.env = append(os.Environ(),
		"BANGER_STATE_DIR="+state,
		"BANGER_NETNS="+ns,
		"BANGER_SOCKET=",
		"BANGER_CONFIG=",
		// Guests' lookups never leave for the host's resolvers (which
		// may be private addresses); a test that wants forwarding names
		// a resolver of its own namespace.
		"BANGER_DNS_UPSTREAMS=none",
	)
	h.env = append(h.env, env...)
	t.Cleanup(func() { h.cleanup() })
	return h
}

// Run runs the banger CLI and returns its output and exit code.
func (h *Harness) Run(args ...string) (stdout, stderr string, code int) {
	return h.RunInput(nil, args...)
}

// RunInput is Run with stdin.
func (h *Harness) RunInput(stdin []byte, args ...string) (stdout, stderr string, code int) {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "banger"), args...)
	cmd.Env = h.env
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	err := cmd.Run()
	code = 0
	if err != nil {
		code = -1
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		}
	}
	return o.String(), e.String(), code
}

// Command returns an unstarted banger CLI command with the harness env, for
// tests that drive stdin/stdout themselves.
func (h *Harness) Command(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "banger"), args...)
	cmd.Env = h.env
	return cmd
}

// MustRun runs the CLI and fails the test unless it exits 0.
func (h *Harness) MustRun(args ...string) string {
	h.t.Helper()
	out, errOut, code := h.Run(args...)
	if code != 0 {
		h.t.Fatalf("banger %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

// JSON runs a read command with --json and decodes it into v.
func (h *Harness) JSON(v any, args ...string) {
	h.t.Helper()
	out := h.MustRun(append(args, "--json")...)
	if err := json.Unmarshal([]byte(out), v); err != nil {
		h.t.Fatalf("banger %s --json: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// VM shows a VM.
func (h *Harness) VM(name string) model.VM {
	h.t.Helper()
	var vm model.VM
	h.JSON(&vm, "vm", "show", name)
	return vm
}

// StartVM creates and boots a VM with the default image and kernel.
func (h *Harness) StartVM(name string, extra ...string) model.VM {
	h.t.Helper()
	start := time.Now()
	h.MustRun(append([]string{"vm", "create", "--name", name}, extra...)...)
	h.MustRun("vm", "start", name)
	h.t.Logf("vm %s up in %.1fs", name, time.Since(start).Seconds())
	return h.VM(name)
}

// DaemonPID is the running daemon's PID.
func (h *Harness) DaemonPID() int {
	h.t.Helper()
	var info struct {
		PID int `json:"pid"`
	}
	h.JSON(&info, "daemon", "status")
	return info.PID
}

// InNetns runs a command inside the harness's network namespace.
func (h *Harness) InNetns(args ...string) (string, error) {
	out, err := exec.Command("ip", append([]string{"netns", "exec", h.Netns}, args...)...).CombinedOutput()
	return string(out), err
}

// Leaks lists what banger left on the host for this state dir: VMM
// processes, taps with their guards and policies, loop devices, VM
// directories.
func (h *Harness) Leaks() []string {
	var leaks []string
	// Processes whose argv names the state dir (VMMs, stray daemons).
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		cmd := strings.ReplaceAll(string(b), "\x00", " ")
		if strings.Contains(cmd, h.StateDir+"/vms/") {
			leaks = append(leaks, fmt.Sprintf("process %d: %s", pid, cmd))
		}
	}
	if out, err := h.InNetns("ip", "-o", "link", "show", "type", "tun"); err == nil {
		for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
			if strings.TrimSpace(l) != "" {
				leaks = append(leaks, "tap: "+l)
			}
		}
	}
	if out, err := h.InNetns("nft", "list", "tables", "bridge"); err == nil {
		for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
			if strings.HasPrefix(strings.TrimSpace(l), "table bridge banger-") {
				leaks = append(leaks, "tap guard: "+l)
			}
		}
	}
	if out, err := h.InNetns("nft", "list", "tables", "ip"); err == nil {
		for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
			if strings.HasPrefix(strings.TrimSpace(l), "table ip banger-") {
				leaks = append(leaks, "tap policy: "+l)
			}
		}
	}
	if out, err := exec.Command("losetup", "-a").CombinedOutput(); err == nil {
		for _, l := range strings.Split(string(out), "\n") {
			if strings.Contains(l, h.StateDir) {
				leaks = append(leaks, "loop: "+l)
			}
		}
	}
	if ents, err := os.ReadDir(filepath.Join(h.StateDir, "vms")); err == nil {
		for _, e := range ents {
			leaks = append(leaks, "vm dir: "+e.Name())
		}
	}
	if ents, err := os.ReadDir(filepath.Join(h.StateDir, "snapshots")); err == nil {
		for _, e := range ents {
			leaks = append(leaks, "snapshot dir: "+e.Name())
		}
	}
	return leaks
}

// AssertNoLeaks fails the test if anything is left.
// AssertStopsClean fails the test when a graceful stop timed out and the
// daemon killed the VM's VMM (its log says so): a guest's clean shutdown
// must end its VMM by itself.
func (h *Harness) AssertStopsClean() {
	h.t.Helper()
	b, err := os.ReadFile(filepath.Join(h.StateDir, "bangerd.log"))
	if err != nil {
		h.t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, "vm did not stop within its timeout") {
			h.t.Errorf("a graceful stop ended in a kill: %s", l)
		}
	}
}

func (h *Harness) AssertNoLeaks() {
	h.t.Helper()
	if l := h.Leaks(); len(l) > 0 {
		h.t.Fatalf("leaked host resources:\n%s", strings.Join(l, "\n"))
	}
}

func (h *Harness) cleanup() {
	var vms []model.VM
	out, _, code := h.Run("vm", "list", "--json")
	if code == 0 {
		_ = json.Unmarshal([]byte(out), &vms)
	}
	for _, vm := range vms {
		if _, e, c := h.Run("vm", "delete", "--force", vm.ID); c != 0 {
			h.t.Errorf("cleanup: delete %s: %s", vm.Name, e)
		}
	}
	var snaps []model.Snapshot
	if out, _, code := h.Run("vm", "snapshot", "list", "--json"); code == 0 {
		_ = json.Unmarshal([]byte(out), &snaps)
	}
	for _, sn := range snaps {
		if _, e, c := h.Run("vm", "snapshot", "rm", sn.ID); c != 0 {
			h.t.Errorf("cleanup: remove snapshot %s: %s", sn.Name, e)
		}
	}
	if !h.t.Failed() {
		if l := h.Leaks(); len(l) > 0 {
			h.t.Errorf("leaked host resources after deleting every vm:\n%s", strings.Join(l, "\n"))
		}
	} else {
		// Keep the daemon log of a failed test in the test output.
		if b, err := os.ReadFile(filepath.Join(h.StateDir, "bangerd.log")); err == nil {
			lines := strings.Split(string(b), "\n")
			if len(lines) > 60 {
				lines = lines[len(lines)-60:]
			}
			h.t.Logf("bangerd.log (tail):\n%s", strings.Join(lines, "\n"))
		}
	}
	h.Run("daemon", "stop")
	_ = os.RemoveAll(h.StateDir)
}
