// Package session holds the pure logic of guest sessions: input
// normalisation and validation, the bash scripts the daemon runs in a guest
// (preflight, runner, launch, state reading, send, logs, attach, stop), the
// parsers of what those scripts print, and the rules that fold an observed
// guest state into a session record.
//
// It does no I/O at all: it neither dials guests nor touches the store or the
// host. The daemon runs the scripts over SSH and persists records. Every value
// that reaches a script is quoted by shell.Quote; the state root is a
// parameter so that tests run the very same scripts on the host in a temp
// directory.
package session

import (
	"fmt"
	"path"
	"regexp"
	"sort"
	"strings"

	"github.com/banger/banger/internal/model"
	"github.com/banger/banger/internal/shell"
)

// DefaultStateRoot is where session state directories live in the guest. It
// is on the work disk (mounted at /root), so the state outlives the VM.
const DefaultStateRoot = "/root/.local/state/banger/sessions"

// WorkDiskStateRoot is DefaultStateRoot as seen from the root of the work
// disk itself (the disk is mounted at /root in the guest).
const WorkDiskStateRoot = "/.local/state/banger/sessions"

// DefaultCwd is the working directory of a session when none is given.
const DefaultCwd = "/root"

// State file names inside a session's state directory.
const (
	FileStatus     = "status"
	FilePID        = "pid"
	FileMonitorPID = "monitor_pid"
	FileKeepalive  = "keepalive_pid"
	FileExitCode   = "exit_code"
	FileError      = "error"
	FileStdout     = "stdout.log"
	FileStderr     = "stderr.log"
	FileStdin      = "stdin.pipe"
	FileRunner     = "runner.sh"
	FileRunnerLog  = "runner.log"
	FileTTY        = "tty" // the terminal's path (/dev/pts/N) of a --tty session
)

// Launch stages named in errors and in Session.LaunchStage.
const (
	StagePreflightCwd     = "preflight_cwd"
	StagePreflightCommand = "preflight_command"
	StageUpload           = "upload"
	StageLaunch           = "launch"
	StageWaitReady        = "wait_ready"
)

// StateDir is the state directory of session id under root.
func StateDir(root, id string) string {
	return path.Join(root, id)
}

// Spec is what a session runs and how; the daemon builds it from a start
// request after Normalize.
type Spec struct {
	ID        string
	Command   string
	Args      []string
	Env       map[string]string
	Cwd       string
	StdinMode string // model.StdinPipe or model.StdinClosed
	Require   []string
	// TTY runs the command on a pseudo-terminal of Cols x Rows, made by
	// util-linux script(1); set with SetTTY.
	TTY        bool
	Cols, Rows int
}

// TTYHelper is the guest command that gives a --tty session its terminal.
const TTYHelper = "script"

// Terminal sizes of a --tty session when none is given, and the bound on
// each side.
const (
	DefaultCols = 80
	DefaultRows = 24
	MaxSide     = 10000
)

// SetTTY makes s run on a terminal of cols x rows (0, 0: the default
// size). Its stdin must be pipe (a terminal takes input); the preflight
// then also requires the terminal helper.
func (s *Spec) SetTTY(cols, rows int) error {
	if s.StdinMode != model.StdinPipe {
		return fmt.Errorf("a --tty session takes its input through its terminal: its stdin must be %q, not %q", model.StdinPipe, s.StdinMode)
	}
	if cols == 0 && rows == 0 {
		cols, rows = DefaultCols, DefaultRows
	}
	if cols < 1 || rows < 1 || cols > MaxSide || rows > MaxSide {
		return fmt.Errorf("invalid terminal size %dx%d: each side must be 1 to %d", cols, rows, MaxSide)
	}
	s.TTY, s.Cols, s.Rows = true, cols, rows
	s.Require = NormalizeRequire(s.Command, append(s.Require, TTYHelper))
	return nil
}

var (
	nameBadRE  = regexp.MustCompile(`[^a-z0-9-]+`)
	dashRunsRE = regexp.MustCompile(`-{2,}`)
	signalRE   = regexp.MustCompile(`^[0-9]{1,2}$`)
)

// DefaultName is the name a session gets when none is given:
// <basename(command)>-<shortid>, sanitised to the name rule.
func DefaultName(command, id string) string {
	base := strings.ToLower(path.Base(command))
	base = nameBadRE.ReplaceAllString(base, "-")
	base = dashRunsRE.ReplaceAllString(base, "-")
	base = strings.Trim(base, "-")
	if base == "" || base == "." {
		base = "session"
	}
	short := model.ShortID(id)
	if max := 63 - 1 - len(short); len(base) > max {
		base = strings.TrimRight(base[:max], "-")
	}
	return base + "-" + short
}

// NormalizeRequire returns the commands a preflight checks: the session's
// command first, then the required ones, without duplicates or empty
// entries, in the order given.
func NormalizeRequire(command string, require []string) []string {
	out := []string{command}
	seen := map[string]bool{command: true}
	for _, r := range require {
		if r == "" || seen[r] {
			continue
		}
		seen[r] = true
		out = append(out, r)
	}
	return out
}

// Normalize validates a start request and fills in defaults (cwd, stdin
// mode, name). It returns the spec the scripts are generated from and the
// session name. id is the new session's id.
func Normalize(id, name, command string, args []string, env map[string]string, cwd, stdin string, require []string) (Spec, string, error) {
	if command == "" {
		return Spec{}, "", fmt.Errorf("session command is empty: give the command after --")
	}
	if strings.ContainsRune(command, 0) {
		return Spec{}, "", fmt.Errorf("session command contains a NUL byte, which no guest command can hold")
	}
	for _, a := range args {
		if strings.ContainsRune(a, 0) {
			return Spec{}, "", fmt.Errorf("session argument %q contains a NUL byte, which no guest command can hold", a)
		}
	}
	if name == "" {
		name = DefaultName(command, id)
	}
	if err := model.ValidateName("session", name); err != nil {
		return Spec{}, "", err
	}
	switch stdin {
	case "":
		stdin = model.StdinPipe
	case model.StdinPipe, model.StdinClosed:
	default:
		return Spec{}, "", fmt.Errorf("invalid stdin mode %q: use %q or %q", stdin, model.StdinPipe, model.StdinClosed)
	}
	if cwd == "" {
		cwd = DefaultCwd
	}
	if !strings.HasPrefix(cwd, "/") || strings.ContainsRune(cwd, 0) {
		return Spec{}, "", fmt.Errorf("invalid cwd %q: use an absolute guest path such as /root/repo", cwd)
	}
	if err := ValidateEnv(env); err != nil {
		return Spec{}, "", err
	}
	for _, r := range require {
		if strings.ContainsRune(r, 0) {
			return Spec{}, "", fmt.Errorf("required command %q contains a NUL byte", r)
		}
	}
	return Spec{
		ID:        id,
		Command:   command,
		Args:      append([]string(nil), args...),
		Env:       env,
		Cwd:       cwd,
		StdinMode: stdin,
		Require:   NormalizeRequire(command, require),
	}, name, nil
}

// ValidateEnv checks environment variable names (and that values can be
// held by a process environment).
func ValidateEnv(env map[string]string) error {
	for _, k := range sortedKeys(env) {
		if !shell.ValidEnvKey(k) {
			return fmt.Errorf("invalid environment variable name %q: use letters, digits and '_', not starting with a digit", k)
		}
		if strings.ContainsRune(env[k], 0) {
			return fmt.Errorf("environment variable %s holds a NUL byte, which no environment can hold", k)
		}
	}
	return nil
}

// ParseSignal normalises a signal name ("TERM", "SIGTERM", "term", "9") to
// the form kill(1) takes. Empty gives def.
func ParseSignal(sig, def string) (string, error) {
	if sig == "" {
		return def, nil
	}
	s := strings.TrimPrefix(strings.ToUpper(sig), "SIG")
	if signalRE.MatchString(s) {
		return s, nil
	}
	switch s {
	case "TERM", "KILL", "INT", "HUP", "QUIT", "USR1", "USR2", "STOP", "CONT", "ALRM", "WINCH":
		return s, nil
	}
	return "", fmt.Errorf("invalid signal %q: use a name such as TERM, KILL, INT, HUP, QUIT, USR1, USR2 or a number", sig)
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// StepError formats a launch failure for the user: the stage, the guest's
// message and, when there is one, the raw guest output.
func StepError(stage, msg, log string) string {
	s := fmt.Sprintf("session launch failed at %s: %s", stage, msg)
	if l := strings.TrimSpace(log); l != "" {
		s += "\n--- guest output ---\n" + l
	}
	return s
}
