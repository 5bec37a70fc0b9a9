package session

import (
	"encoding/base64"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/banger/banger/internal/model"
)

// State is what the guest's state files say of one session.
type State struct {
	Known        bool   // a record for this session was printed (or files were read)
	Missing      bool   // its state directory does not exist
	Status       string // content of the status file, trimmed ("" when absent or garbage)
	PID          int    // the command's pid (0 when unknown)
	MonitorPID   int
	KeepalivePID int
	ExitCode     *int   // set when exit_code holds an integer
	Error        string // content of the error file, trimmed
	PIDAlive     bool   // the command's pid answered kill -0
	MonitorAlive bool   // the monitor's pid answered kill -0
}

// StageResult is one stage marker.
type StageResult struct {
	Stage   string
	OK      bool
	Message string
}

// StartResult is what ParseStart makes of a start script's output.
type StartResult struct {
	Stages []StageResult
	// Failed is the first failed stage, nil when none failed.
	Failed *StageResult
	// State is the session's state record, when the script got that far.
	State State
	// Log is the output that is not marker lines: the guest's raw words.
	Log string
}

// ParseStart parses the output of StartScript (or PreflightScript) for
// session id. Lines that are not markers become the raw log; garbage marker
// lines are ignored.
func ParseStart(out, id string) StartResult {
	var r StartResult
	var logLines []string
	states := map[string]State{}
	for _, line := range strings.Split(out, "\n") {
		switch {
		case strings.HasPrefix(line, stageMarker+" "):
			f := strings.Fields(line)
			if len(f) < 3 || (f[2] != "ok" && f[2] != "fail") {
				continue
			}
			sr := StageResult{Stage: f[1], OK: f[2] == "ok"}
			if len(f) >= 4 {
				if b, err := base64.StdEncoding.DecodeString(f[3]); err == nil {
					sr.Message = strings.TrimSpace(string(b))
				}
			}
			r.Stages = append(r.Stages, sr)
			if !sr.OK && r.Failed == nil {
				failed := sr
				r.Failed = &failed
			}
		case strings.HasPrefix(line, stateMarker+" "):
			parseStateLine(line, states)
		default:
			logLines = append(logLines, line)
		}
	}
	r.State = states[id]
	r.Log = strings.TrimSpace(strings.Join(logLines, "\n"))
	return r
}

// ParseStates parses state records (from StatesScript, StateScript or
// SignalScript), keyed by session id. It is tolerant: unknown fields,
// undecodable values and non-numeric pids are ignored.
func ParseStates(out string) map[string]State {
	states := map[string]State{}
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, stateMarker+" ") {
			parseStateLine(line, states)
		}
	}
	return states
}

func parseStateLine(line string, states map[string]State) {
	f := strings.Fields(line)
	if len(f) != 4 {
		return
	}
	id, key, raw := f[1], f[2], f[3]
	st := states[id]
	st.Known = true
	val := ""
	switch {
	case raw == "-":
	case strings.HasPrefix(raw, "="):
		// A plain word the script read itself (scripts.go).
		val = raw[1:]
	default:
		b, err := base64.StdEncoding.DecodeString(raw)
		if err != nil {
			states[id] = st
			return
		}
		val = strings.TrimSpace(string(b))
	}
	applyField(&st, key, val)
	states[id] = st
}

// applyField sets one state field from a state file's content.
func applyField(st *State, key, val string) {
	switch key {
	case "missing":
		st.Missing = true
	case "found":
		st.Missing = false
	case FileStatus:
		switch model.SessionStatus(val) {
		case model.SessionStarting, model.SessionRunning, model.SessionStopping, model.SessionExited, model.SessionFailed:
			st.Status = val
		}
	case FilePID:
		st.PID = posInt(val)
	case FileMonitorPID:
		st.MonitorPID = posInt(val)
	case FileKeepalive:
		st.KeepalivePID = posInt(val)
	case FileExitCode:
		if n, err := strconv.Atoi(val); err == nil && n >= 0 && n <= 255 {
			st.ExitCode = &n
		}
	case FileError:
		st.Error = val
	case "pid_alive":
		st.PIDAlive = true
	case "monitor_pid_alive":
		st.MonitorAlive = true
	}
}

func posInt(s string) int {
	n, err := strconv.Atoi(s)
	if err != nil || n <= 0 {
		return 0
	}
	return n
}

// StateFromFiles builds a State from state files read without the guest
// (from the work disk of a stopped VM): files maps a file name to its
// content; a nil map means the directory is missing. Nothing is alive.
func StateFromFiles(files map[string][]byte) State {
	st := State{Known: true}
	if files == nil {
		st.Missing = true
		return st
	}
	for _, k := range []string{FileStatus, FilePID, FileMonitorPID, FileKeepalive, FileExitCode, FileError} {
		if b, ok := files[k]; ok {
			applyField(&st, k, strings.TrimSpace(string(b)))
		}
	}
	return st
}

// Reasons recorded in Session.Error by Apply.
const (
	ReasonVMNotRunning = "vm is not running"
	ReasonNoExitCode   = "the session's command and runner ended without recording an exit code"
	ReasonStateMissing = "the session's state directory is missing in the guest"
)

// LaunchGrace is how long a session may stay "starting" without a state
// directory before Apply calls it failed (a daemon that died mid-launch).
const LaunchGrace = 2 * time.Minute

// Apply folds an observed state into a session record and reports whether
// anything observable changed (when it did, UpdatedAt is now). vmRunning
// says whether the VM is alive; when it is not, st may still come from the
// work disk (a command that finished before the VM stopped keeps its exit
// code). A finished record never changes again.
func Apply(rec model.Session, st State, vmRunning bool, now time.Time) (model.Session, bool) {
	if rec.Status.Finished() {
		return rec, false
	}
	out := rec
	end := func(status model.SessionStatus, reason string) {
		out.Status = status
		out.Attachable = false
		out.Reattachable = false
		if reason != "" {
			out.Error = reason
		}
		if out.EndedAt == nil {
			t := now
			out.EndedAt = &t
		}
	}
	if st.PID > 0 {
		out.GuestPID = st.PID
	}
	switch {
	case st.Known && !st.Missing && st.ExitCode != nil:
		code := *st.ExitCode
		out.ExitCode = &code
		reason := st.Error
		if reason == "" && code != 0 && !vmRunning {
			// Still running when last seen, ended by a signal or error
			// with its VM now down: the guest shutting down ended it.
			reason = ReasonVMNotRunning
		}
		switch {
		case rec.Status == model.SessionStopping:
			// Ended while banger was stopping it on request: the TERM's
			// 143 (or a KILL's 137) is the stop working, not a failure.
			end(model.SessionStopped, st.Error)
		case code == 0:
			end(model.SessionExited, st.Error)
		default:
			end(model.SessionFailed, reason)
		}
	case !vmRunning:
		// Before the runner's own "failed": a guest shutting down TERMs the
		// runner, which records failed with no exit code, but the cause
		// is the VM stopping.
		end(model.SessionFailed, ReasonVMNotRunning)
	case st.Known && !st.Missing && st.Status == string(model.SessionFailed):
		reason := st.Error
		if reason == "" {
			reason = ReasonNoExitCode
		}
		end(model.SessionFailed, reason)
	case !st.Known:
		// Nothing observed (no answer for this session): keep the record.
	case st.Missing:
		if rec.Status != model.SessionStarting || now.Sub(rec.CreatedAt) > LaunchGrace {
			end(model.SessionFailed, ReasonStateMissing)
		}
	case st.PIDAlive:
		if rec.Status != model.SessionStopping {
			out.Status = model.SessionRunning
		}
		out.Attachable = rec.StdinMode == model.StdinPipe
		out.Reattachable = out.Attachable
		if out.StartedAt == nil {
			t := now
			out.StartedAt = &t
		}
	case st.PID > 0 && !st.MonitorAlive:
		// The command is gone and so is the runner that would have
		// recorded its exit.
		end(model.SessionFailed, ReasonNoExitCode)
	default:
		// Launching, or the runner is writing the exit right now.
	}
	cmp := out
	cmp.UpdatedAt = rec.UpdatedAt
	if reflect.DeepEqual(cmp, rec) {
		return rec, false
	}
	out.UpdatedAt = now
	return out, true
}
