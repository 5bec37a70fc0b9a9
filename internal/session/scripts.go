package session

import (
	"fmt"
	"path"
	"strconv"
	"strings"

	"github.com/banger/banger/internal/model"
	"github.com/banger/banger/internal/shell"
)

// The scripts print machine-readable lines among whatever else the guest
// says; everything that is not a marker line is raw log for the user.
//
//	@@banger-stage <stage> <ok|fail> <base64 message>
//	@@banger-state <id> <field> <base64 value | =word | ->
//
// A state value of 1 to 63 lowercase letters and digits (a status, a pid,
// an exit code: what the runner writes) is sent as =word, read by the
// shell itself; anything else goes through base64. Under software
// emulation every process a script starts costs tens of milliseconds, so
// the scripts on a session's start path start as few as they can.
const (
	stageMarker = "@@banger-stage"
	stateMarker = "@@banger-state"
)

// Exit codes of the send, logs and attach scripts that the daemon maps to
// clear errors.
const (
	ExitNotRunning   = 3 // the session has finished or its state is gone
	ExitNoStdin      = 4 // the session has no stdin fifo (stdin closed)
	ExitNoLog        = 5 // the log file does not exist
	ExitStillRunning = 6 // remove refused: the command is alive
	ExitNoTTY        = 7 // resize refused: the session has no terminal
)

// ReadyWaitSeconds bounds how long the start script waits for the runner to
// report running. Guests under software emulation are slow; keep it roomy.
const ReadyWaitSeconds = 20

// prelude defines the helpers every script uses: stage markers and the
// state record of one session directory. Values are base64 so that no byte
// of a message or state file can break the line format.
// __bg_opath keeps the guest's PATH: a session's env may replace PATH, and
// the markers still need base64.
const prelude = `__bg_opath=$PATH
__bg_mark() {
	if [ -z "${3:-}" ]; then printf '%s %s %s \n' '` + stageMarker + `' "$1" "$2"; return 0; fi
	printf '%s %s %s %s\n' '` + stageMarker + `' "$1" "$2" "$(printf '%s' "$3" | PATH=$__bg_opath base64 -w0)"
}
__bg_state() {
	local id=$1 d=$2 k p v n
	if [ ! -d "$d" ]; then printf '%s %s missing -\n' '` + stateMarker + `' "$id"; return 0; fi
	printf '%s %s found -\n' '` + stateMarker + `' "$id"
	for k in status pid monitor_pid keepalive_pid exit_code error; do
		if [ -f "$d/$k" ]; then
			v=
			{ IFS= read -r -N 64 v <"$d/$k"; } 2>/dev/null || true
			n=${#v}
			v=${v%$'\n'}
			case $n:$v in
			64:* | *: | *:*[!a-z0-9]*)
				v=$(head -c 4096 -- "$d/$k" | base64 -w0)
				printf '%s %s %s %s\n' '` + stateMarker + `' "$id" "$k" "${v:--}"
				;;
			*) printf '%s %s %s =%s\n' '` + stateMarker + `' "$id" "$k" "$v" ;;
			esac
		fi
	done
	for k in pid monitor_pid; do
		p=
		{ IFS= read -r -N 32 p <"$d/$k"; } 2>/dev/null || true
		p=${p%$'\n'}
		case $p in
		'' | *[!0-9]*) ;;
		*) if kill -0 "$p" 2>/dev/null; then printf '%s %s %s_alive -\n' '` + stateMarker + `' "$id" "$k"; fi ;;
		esac
	done
	return 0
}
`

// envExports renders `export K=V` lines in sorted key order.
func envExports(env map[string]string) string {
	var b strings.Builder
	for _, k := range sortedKeys(env) {
		fmt.Fprintf(&b, "export %s=%s\n", k, shell.Quote(env[k]))
	}
	return b.String()
}

// commandWords renders the command and its arguments as quoted words.
func commandWords(s Spec) string {
	words := []string{shell.Quote(s.Command)}
	for _, a := range s.Args {
		words = append(words, shell.Quote(a))
	}
	return strings.Join(words, " ")
}

// PreflightScript checks, in a subshell with the session's environment, that
// the cwd can be entered (stage preflight_cwd, with the guest's own message)
// and that each command of s.Require resolves with `command -v` from there
// (stage preflight_command). It prints one stage marker: a failure, or
// "preflight ok". It exits 0 either way; the marker is the result.
func PreflightScript(s Spec) string {
	var b strings.Builder
	b.WriteString("#!/bin/bash\n")
	b.WriteString(prelude)
	b.WriteString(preflightBody(s))
	return b.String()
}

func preflightBody(s Spec) string {
	var b strings.Builder
	b.WriteString("if ! (\n")
	fmt.Fprintf(&b, "__bg_cwd=%s\n", shell.Quote(s.Cwd))
	b.WriteString(`if ! __bg_out=$(cd -- "$__bg_cwd" 2>&1); then
	__bg_mark ` + StagePreflightCwd + ` fail "${__bg_out:-cannot enter $__bg_cwd}"
	exit 10
fi
cd -- "$__bg_cwd" || exit 10
`)
	b.WriteString(envExports(s.Env))
	b.WriteString("for __bg_c in")
	for _, c := range s.Require {
		b.WriteString(" " + shell.Quote(c))
	}
	b.WriteString(`; do
	if ! command -v -- "$__bg_c" >/dev/null 2>&1; then
		__bg_mark ` + StagePreflightCommand + ` fail "command not found in the guest: $__bg_c (cwd $__bg_cwd, PATH $PATH)"
		exit 10
	fi
done
exit 0
); then exit 0; fi
__bg_mark preflight ok
`)
	return b.String()
}

// RunnerScript is the script that runs a session in the guest. It is the
// session's monitor: it makes the stdin fifo and its keep-alive writer in
// pipe mode, starts the command in its own process group in the cwd with
// the environment exported in sorted order, records its own pid
// (monitor_pid), the command's pid and status "running" (written under
// .put/, then renamed in that order by one mv: a reader never sees pid
// without monitor_pid, nor running without pid), waits for the command
// (forwarding TERM/INT/HUP to its process group), then kills the
// keep-alive and records exit_code and the final status: "exited" for 0,
// "failed" otherwise. If the runner itself dies early it records status
// "failed" and an error.
func RunnerScript(root string, s Spec) string {
	dir := StateDir(root, s.ID)
	var b strings.Builder
	b.WriteString("#!/bin/bash\n")
	fmt.Fprintf(&b, "# banger session runner for session %s\n", s.ID)
	b.WriteString("set -euo pipefail\n")
	fmt.Fprintf(&b, "__bg_dir=%s\n", shell.Quote(dir))
	fmt.Fprintf(&b, "__bg_cwd=%s\n", shell.Quote(s.Cwd))
	b.WriteString(`cd -- "$__bg_dir"
__bg_put() { printf '%s\n' "$2" >"$__bg_dir/$1.tmp" && mv -f -- "$__bg_dir/$1.tmp" "$__bg_dir/$1"; }
__bg_done=0
__bg_ka=
__bg_exit() {
	if [ "$__bg_done" != 1 ]; then
		if [ -n "$__bg_ka" ]; then kill "$__bg_ka" 2>/dev/null || true; fi
		__bg_put error "the session runner stopped before the command finished: $(tail -c 1000 -- "$__bg_dir/runner.log" 2>/dev/null || true)" || true
		__bg_put status failed || true
	fi
}
trap __bg_exit EXIT
for __bg_f in exit_code error pid keepalive_pid stdin.pipe; do
	if [ -e "$__bg_f" ] || [ -L "$__bg_f" ]; then rm -f -- "$__bg_f"; fi
done
: >>stdout.log
: >>stderr.log
`)
	stdin := "/dev/null"
	if s.StdinMode == model.StdinPipe {
		b.WriteString(`mkfifo -m 0600 -- "$__bg_dir/stdin.pipe"
# The keep-alive holds the write end open so that the command does not see
# end-of-file between two senders.
sleep infinity >"$__bg_dir/stdin.pipe" &
__bg_ka=$!
__bg_put keepalive_pid "$__bg_ka"
`)
		stdin = `"$__bg_dir/stdin.pipe"`
	}
	b.WriteString(envExports(s.Env))
	// The subshell is not a process group leader, so setsid makes the
	// command's own session and process group without forking: $! is the
	// command's pid and its group id.
	command := commandWords(s)
	if s.TTY {
		command = ttyCommand(dir, s)
	}
	fmt.Fprintf(&b, "( cd -- \"$__bg_cwd\" && exec setsid -- %s ) <%s >>\"$__bg_dir/stdout.log\" 2>>\"$__bg_dir/stderr.log\" &\n", command, stdin)
	b.WriteString(`__bg_pid=$!
if [ ! -d .put ]; then mkdir -m 0700 -- .put; fi
printf '%s\n' "$$" >.put/monitor_pid
printf '%s\n' "$__bg_pid" >.put/pid
printf 'running\n' >.put/status
mv -f -- .put/monitor_pid .put/pid .put/status .
__bg_fwd() { kill -"$1" -- "-$__bg_pid" 2>/dev/null || kill -"$1" "$__bg_pid" 2>/dev/null || true; }
trap '__bg_fwd TERM' TERM
trap '__bg_fwd INT' INT
trap '__bg_fwd HUP' HUP
# A trapped signal interrupts wait (status > 128) while the command may
# still run: wait again until it is gone. The status is that of the wait
# that saw it go; a second wait on a reported child gives garbage (-1).
while :; do
	__bg_rc=0
	wait "$__bg_pid" || __bg_rc=$?
	kill -0 "$__bg_pid" 2>/dev/null || break
done
# The command is gone: from here a stop request (which signals this
# monitor too) or the guest shutting down must not cut the recording short.
trap '' TERM INT HUP
if [ -n "$__bg_ka" ]; then kill "$__bg_ka" 2>/dev/null || true; fi
__bg_put exit_code "$__bg_rc"
if [ "$__bg_rc" -eq 0 ]; then __bg_put status exited; else __bg_put status failed; fi
__bg_done=1
`)
	return b.String()
}

// ttyCommand runs s's command on a new pseudo-terminal: script(1) (-q no
// banners, -f flush at once, -e its exit status is the command's, its
// typescript thrown away) copies the fifo to the terminal and the
// terminal to stdout.log. Inside, the command's shell records the
// terminal's path (for resizes) and sets its size before exec'ing the
// command. script runs its -c string with $SHELL, which the session's env
// may set to anything: it gets /bin/sh, and the inner string gives the
// command its own SHELL back.
func ttyCommand(dir string, s Spec) string {
	ttyFile := shell.Quote(path.Join(dir, FileTTY))
	inner := fmt.Sprintf(`SHELL=$__bg_shell; unset __bg_shell; tty >%s.tmp && mv -f -- %s.tmp %s; stty rows %d cols %d 2>/dev/null; exec %s`,
		ttyFile, ttyFile, ttyFile, s.Rows, s.Cols, commandWords(s))
	return fmt.Sprintf(`env __bg_shell="${SHELL-}" SHELL=/bin/sh %s -qfec %s /dev/null`, TTYHelper, shell.Quote(inner))
}

// LaunchCommand starts the runner in dir detached from the SSH connection
// that runs it: its own session (setsid), immune to hangups (nohup), every
// fd redirected, in the background; so it outlives the connection.
func LaunchCommand(dir string) string {
	return fmt.Sprintf("cd -- %s && { setsid nohup bash ./%s </dev/null >%s 2>&1 & }", shell.Quote(dir), FileRunner, FileRunnerLog)
}

// StartScript does a whole launch in one round trip: preflight, then the
// upload of the runner script (read from the script's stdin) into the state
// directory (stage upload), the launch (stage launch) and a bounded wait for
// the runner to report running or finished (stage wait_ready), then the
// session's state record. Each stage prints a marker; the first failure ends
// the script. Parse its output with ParseStart.
func StartScript(root string, s Spec) string {
	dir := StateDir(root, s.ID)
	var b strings.Builder
	b.WriteString("#!/bin/bash\n")
	b.WriteString(prelude)
	b.WriteString(preflightBody(s))
	fmt.Fprintf(&b, "__bg_dir=%s\n", shell.Quote(dir))
	fmt.Fprintf(&b, "__bg_id=%s\n", shell.Quote(s.ID))
	// The runner is written in place: the directory is new and nothing
	// runs the runner before the launch below. .put is where the runner
	// stages the files it renames together.
	b.WriteString(`if ! __bg_out=$({ mkdir -p -m 0700 -- "$__bg_dir" "$__bg_dir/.put" && cat >"$__bg_dir/runner.sh"; } 2>&1); then
	__bg_mark ` + StageUpload + ` fail "cannot write the runner to $__bg_dir: $__bg_out"
	exit 0
fi
__bg_mark ` + StageUpload + ` ok
if ! command -v setsid >/dev/null || ! command -v nohup >/dev/null || ! command -v base64 >/dev/null; then
	__bg_out=$(command -v setsid nohup base64)
	__bg_mark ` + StageLaunch + ` fail "the guest lacks setsid, nohup or base64 (util-linux, coreutils): found only: $__bg_out"
	exit 0
fi
if ! __bg_out=$(` + LaunchCommand(dir) + ` 2>&1); then
	__bg_mark ` + StageLaunch + ` fail "cannot start the runner: $__bg_out"
	exit 0
fi
__bg_mark ` + StageLaunch + ` ok
__bg_s=
__bg_i=0
while [ "$__bg_i" -lt ` + strconv.Itoa(ReadyWaitSeconds*20) + ` ]; do
	__bg_s=
	{ IFS= read -r -N 16 __bg_s <"$__bg_dir/status"; } 2>/dev/null || true
	__bg_s=${__bg_s%%$'\n'*}
	case $__bg_s in running | exited | failed) break ;; esac
	sleep 0.05
	__bg_i=$((__bg_i + 1))
done
__bg_state "$__bg_id" "$__bg_dir"
case $__bg_s in
running | exited | failed) __bg_mark ` + StageWaitReady + ` ok ;;
*) __bg_mark ` + StageWaitReady + ` fail "the runner did not report running within ` + strconv.Itoa(ReadyWaitSeconds) + `s (status: ${__bg_s:-none}); runner log: $(tail -c 2000 -- "$__bg_dir/runner.log" 2>/dev/null || true)" ;;
esac
`)
	return b.String()
}

// StatesScript prints the state record of every session directory under
// root (one round trip for all sessions of a VM). Directory names that are
// not session ids are skipped.
func StatesScript(root string) string {
	return "#!/bin/bash\n" + prelude + fmt.Sprintf(`__bg_root=%s
for __bg_d in "$__bg_root"/*/; do
	[ -d "$__bg_d" ] || continue
	__bg_id=${__bg_d%%/}
	__bg_id=${__bg_id##*/}
	case $__bg_id in '' | *[!0-9a-f]*) continue ;; esac
	__bg_state "$__bg_id" "${__bg_d%%/}"
done
exit 0
`, shell.Quote(root))
}

// StateScript prints the state record of one session ("missing" when its
// directory is absent).
func StateScript(root, id string) string {
	return "#!/bin/bash\n" + prelude + fmt.Sprintf("__bg_state %s %s\n", shell.Quote(id), shell.Quote(StateDir(root, id)))
}

// startedCheck exits ExitNotRunning unless the session's state directory
// and command pid exist (it may have finished since), setting __bg_pid.
const startedCheck = `if [ ! -d "$__bg_dir" ]; then echo "session state directory $__bg_dir is missing" >&2; exit ` + "3" + `; fi
__bg_pid=$(head -c 32 -- "$__bg_dir/pid" 2>/dev/null || true)
case $__bg_pid in '' | *[!0-9]*) echo "session has no running command" >&2; exit 3 ;; esac
`

// runningCheck exits ExitNotRunning unless the session's command is alive.
const runningCheck = startedCheck + `if [ -f "$__bg_dir/exit_code" ] || ! kill -0 "$__bg_pid" 2>/dev/null; then echo "session has finished" >&2; exit 3; fi
`

// SendScript copies the script's stdin to the session's stdin fifo. It exits
// ExitNotRunning when the command is not running and ExitNoStdin when the
// session has no fifo.
func SendScript(root, id string) string {
	return fmt.Sprintf("#!/bin/bash\n__bg_dir=%s\n", shell.Quote(StateDir(root, id))) + runningCheck +
		`if [ ! -p "$__bg_dir/stdin.pipe" ]; then echo "session stdin is closed" >&2; exit 4; fi
exec cat >"$__bg_dir/stdin.pipe"
`
}

// LogsScript prints the last tail lines (all when tail <= 0) of the
// session's stdout (or stderr) log; with follow it keeps printing until the
// session's monitor ends. It exits ExitNoLog when the log does not exist.
func LogsScript(root, id string, stderr bool, tail int, follow bool) string {
	file := FileStdout
	if stderr {
		file = FileStderr
	}
	n := "+1"
	if tail > 0 {
		n = strconv.Itoa(tail)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "#!/bin/bash\n__bg_dir=%s\n__bg_f=\"$__bg_dir\"/%s\n", shell.Quote(StateDir(root, id)), file)
	b.WriteString(`if [ ! -f "$__bg_f" ]; then echo "no log $__bg_f in the guest" >&2; exit 5; fi
`)
	if follow {
		b.WriteString(`__bg_mon=
{ IFS= read -r -N 32 __bg_mon <"$__bg_dir/monitor_pid"; } 2>/dev/null || true
__bg_mon=${__bg_mon%$'\n'}
case $__bg_mon in '' | *[!0-9]*) __bg_mon= ;; esac
if [ -n "$__bg_mon" ] && [ ! -f "$__bg_dir/exit_code" ] && kill -0 "$__bg_mon" 2>/dev/null; then
	exec tail -n ` + n + ` -s 0.2 --pid="$__bg_mon" -f -- "$__bg_f"
fi
`)
	}
	b.WriteString(`exec tail -n ` + n + ` -- "$__bg_f"
`)
	return b.String()
}

// LogSizesScript prints the sizes of the session's stdout and stderr logs
// ("<stdout bytes> <stderr bytes>"): where an attachment begins. It exits
// ExitNotRunning when the session is not running. Parse with
// ParseLogSizes.
func LogSizesScript(root, id string) string {
	return fmt.Sprintf("#!/bin/bash\n__bg_dir=%s\n", shell.Quote(StateDir(root, id))) + runningCheck +
		`__bg_size() { local n; n=$(stat -c %s -- "$__bg_dir/$1" 2>/dev/null || true); case $n in '' | *[!0-9]*) n=0 ;; esac; printf '%s' "$n"; }
printf '%s %s\n' "$(__bg_size stdout.log)" "$(__bg_size stderr.log)"
`
}

// ParseLogSizes reads LogSizesScript's answer.
func ParseLogSizes(out string) (stdout, stderr int64, err error) {
	f := strings.Fields(out)
	if len(f) != 2 {
		return 0, 0, fmt.Errorf("log sizes: want two numbers, got %q", truncate(out, 80))
	}
	if stdout, err = strconv.ParseInt(f[0], 10, 64); err == nil {
		stderr, err = strconv.ParseInt(f[1], 10, 64)
	}
	if err != nil || stdout < 0 || stderr < 0 {
		return 0, 0, fmt.Errorf("log sizes: want two byte counts, got %q", truncate(out, 80))
	}
	return stdout, stderr, nil
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

// AttachOutputScript streams the session's stdout (to stdout) and stderr (to
// stderr) until the session's monitor ends, each from its offset on (0:
// the first byte; LogSizesScript's answer: where the attachment began).
// Each log is followed by one tail from that offset, so every byte past it
// arrives once and in order, however long after the offset was taken the
// tail starts. It exits ExitNotRunning at once when the session's state
// is missing or it never started; a session that has finished since
// gets what it wrote past the offsets, and the script ends.
func AttachOutputScript(root, id string, stdoutOffset, stderrOffset int64) string {
	// Not runningCheck: the attachment began at offsets taken while the
	// session ran, so a session that ended since (its last input may have
	// come through the attachment) still owes what it wrote after them,
	// and tail stops at once when the monitor is gone.
	return fmt.Sprintf("#!/bin/bash\n__bg_dir=%s\n", shell.Quote(StateDir(root, id))) + startedCheck +
		`__bg_mon=$(head -c 32 -- "$__bg_dir/monitor_pid" 2>/dev/null || true)
case $__bg_mon in '' | *[!0-9]*) __bg_mon=$__bg_pid ;; esac
` + fmt.Sprintf(`tail -c +%d -s 0.2 --pid="$__bg_mon" -f -- "$__bg_dir/stdout.log" &
__bg_t1=$!
tail -c +%d -s 0.2 --pid="$__bg_mon" -f -- "$__bg_dir/stderr.log" >&2 &
`, max(stdoutOffset, 0)+1, max(stderrOffset, 0)+1) + `__bg_t2=$!
trap 'kill $__bg_t1 $__bg_t2 2>/dev/null' EXIT
wait $__bg_t1 $__bg_t2
`
}

// ResizeScript sets the size of a --tty session's terminal (the command
// gets SIGWINCH). It exits ExitNotRunning when the session is not running
// and ExitNoTTY when it has no terminal.
func ResizeScript(root, id string, cols, rows int) string {
	return fmt.Sprintf("#!/bin/bash\n__bg_dir=%s\n", shell.Quote(StateDir(root, id))) + runningCheck +
		`__bg_tty=$(head -c 64 -- "$__bg_dir/` + FileTTY + `" 2>/dev/null || true)
case ${__bg_tty#/dev/pts/} in '' | *[!0-9]*) echo "session has no terminal" >&2; exit 7 ;; esac
` + fmt.Sprintf("stty -F \"$__bg_tty\" rows %d cols %d\n", rows, cols)
}

// SignalScript sends sig to the session command's process group and stops
// the stdin keep-alive; when sig is not KILL the monitor gets it too (it
// forwards it to the group and lives on to record the exit). It then waits
// up to waitSeconds for the runner to record the exit. With escalate, a
// command still alive by then gets KILL (group, keep-alive, and after a
// grace the monitor; if the monitor is gone too, the script records exit
// code 137 and status failed itself). It ends with the session's state
// record. sig must come from ParseSignal.
func SignalScript(root, id, sig string, waitSeconds int, escalate bool) string {
	if waitSeconds < 0 {
		waitSeconds = 0
	}
	var b strings.Builder
	b.WriteString("#!/bin/bash\n" + prelude)
	fmt.Fprintf(&b, "__bg_dir=%s\n__bg_id=%s\n__bg_sig=%s\n", shell.Quote(StateDir(root, id)), shell.Quote(id), shell.Quote(sig))
	b.WriteString(`__bg_num() { local v; v=$(head -c 32 -- "$__bg_dir/$1" 2>/dev/null || true); case $v in '' | *[!0-9]*) v= ;; esac; printf '%s' "$v"; }
__bg_put() { printf '%s\n' "$2" >"$__bg_dir/$1.tmp" && mv -f -- "$__bg_dir/$1.tmp" "$__bg_dir/$1"; }
__bg_pid=$(__bg_num pid)
__bg_mon=$(__bg_num monitor_pid)
__bg_ka=$(__bg_num keepalive_pid)
# __bg_wait waits up to $1 tenths of a second for the exit to be recorded
# and the monitor to be gone.
__bg_wait() {
	local i=0
	while [ "$i" -lt "$1" ]; do
		if [ -f "$__bg_dir/exit_code" ] && { [ -z "$__bg_mon" ] || ! kill -0 "$__bg_mon" 2>/dev/null; }; then return 0; fi
		sleep 0.1
		i=$((i + 1))
	done
	[ -f "$__bg_dir/exit_code" ]
}
if [ -d "$__bg_dir" ] && [ ! -f "$__bg_dir/exit_code" ]; then
	if [ -n "$__bg_pid" ]; then kill -"$__bg_sig" -- "-$__bg_pid" 2>/dev/null || kill -"$__bg_sig" "$__bg_pid" 2>/dev/null || true; fi
	if [ -n "$__bg_ka" ]; then kill "$__bg_ka" 2>/dev/null || true; fi
	if [ -n "$__bg_mon" ] && [ "$__bg_sig" != KILL ] && [ "$__bg_sig" != 9 ]; then kill -"$__bg_sig" "$__bg_mon" 2>/dev/null || true; fi
`)
	fmt.Fprintf(&b, "\tif ! __bg_wait %d && [ %t = true ]; then\n", waitSeconds*10, escalate)
	b.WriteString(`		if [ -n "$__bg_pid" ]; then kill -KILL -- "-$__bg_pid" 2>/dev/null || kill -KILL "$__bg_pid" 2>/dev/null || true; fi
		if [ -n "$__bg_ka" ]; then kill -KILL "$__bg_ka" 2>/dev/null || true; fi
		if ! __bg_wait 30; then
			if [ -n "$__bg_mon" ]; then kill -KILL "$__bg_mon" 2>/dev/null || true; fi
			__bg_put exit_code 137
			__bg_put error "killed: the session did not end after SIG$__bg_sig and its runner did not record the exit"
			__bg_put status failed
		fi
	fi
fi
__bg_state "$__bg_id" "$__bg_dir"
`)
	return b.String()
}

// RemoveScript deletes a finished session's state directory. It refuses
// with ExitStillRunning while the command is alive and has not recorded its
// exit.
func RemoveScript(root, id string) string {
	return fmt.Sprintf("#!/bin/bash\n__bg_dir=%s\n", shell.Quote(StateDir(root, id))) + `for __bg_k in pid monitor_pid; do
	__bg_p=$(head -c 32 -- "$__bg_dir/$__bg_k" 2>/dev/null || true)
	case $__bg_p in '' | *[!0-9]*) continue ;; esac
	if [ ! -f "$__bg_dir/exit_code" ] && kill -0 "$__bg_p" 2>/dev/null; then echo "session is still running" >&2; exit 6; fi
done
rm -rf -- "$__bg_dir"
`
}
