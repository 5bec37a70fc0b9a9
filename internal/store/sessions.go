package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"time"

	"github.com/banger/banger/internal/model"
)

const sessionCols = "id, vm_id, name, command, args, env, cwd, stdin_mode, require, status, guest_pid, exit_code, " +
	"attachable, reattachable, attach_mode, attach_backend, launch_stage, launch_error, launch_log, error, " +
	"state_dir, created_at, updated_at, started_at, ended_at"

const sessionColCount = 25

func scanSession(r *sql.Rows) (model.Session, error) {
	var ss model.Session
	var args, env, require, created, updated string
	var exit sql.NullInt64
	var started, ended sql.NullString
	if err := r.Scan(&ss.ID, &ss.VMID, &ss.Name, &ss.Command, &args, &env, &ss.Cwd, &ss.StdinMode, &require,
		&ss.Status, &ss.GuestPID, &exit, &ss.Attachable, &ss.Reattachable, &ss.AttachMode, &ss.AttachBackend,
		&ss.LaunchStage, &ss.LaunchError, &ss.LaunchLog, &ss.Error, &ss.StateDir, &created, &updated,
		&started, &ended); err != nil {
		return ss, err
	}
	for _, f := range []struct {
		text string
		dst  any
	}{{args, &ss.Args}, {env, &ss.Env}, {require, &ss.Require}} {
		if err := json.Unmarshal([]byte(f.text), f.dst); err != nil {
			return ss, fmt.Errorf("session %s: stored JSON %q: %w", ss.ID, f.text, err)
		}
	}
	if exit.Valid {
		c := int(exit.Int64)
		ss.ExitCode = &c
	}
	var err error
	if ss.CreatedAt, err = parseTime(created); err != nil {
		return ss, err
	}
	if ss.UpdatedAt, err = parseTime(updated); err != nil {
		return ss, err
	}
	if ss.StartedAt, err = parseTimePtr(started); err != nil {
		return ss, err
	}
	ss.EndedAt, err = parseTimePtr(ended)
	return ss, err
}

func sessionArgs(ss model.Session) ([]any, error) {
	args, err := json.Marshal(ss.Args)
	if err != nil {
		return nil, err
	}
	env, err := json.Marshal(ss.Env)
	if err != nil {
		return nil, err
	}
	require, err := json.Marshal(ss.Require)
	if err != nil {
		return nil, err
	}
	var exit any
	if ss.ExitCode != nil {
		exit = *ss.ExitCode
	}
	return []any{ss.ID, ss.VMID, ss.Name, ss.Command, string(args), string(env), ss.Cwd, ss.StdinMode,
		string(require), string(ss.Status), ss.GuestPID, exit, ss.Attachable, ss.Reattachable, ss.AttachMode,
		ss.AttachBackend, ss.LaunchStage, ss.LaunchError, ss.LaunchLog, ss.Error, ss.StateDir,
		fmtTime(ss.CreatedAt), fmtTime(ss.UpdatedAt), fmtTimePtr(ss.StartedAt), fmtTimePtr(ss.EndedAt)}, nil
}

// CreateSession records a new session of an existing VM. It returns
// ErrConflict when the VM already has a session of that name (or the id is
// taken), and ErrNotFound when the VM does not exist.
func (s *Store) CreateSession(ctx context.Context, ss model.Session) error {
	args, err := sessionArgs(ss)
	if err != nil {
		return fmt.Errorf("create session %q: %w", ss.Name, err)
	}
	_, err = s.db.ExecContext(ctx, "INSERT INTO sessions ("+sessionCols+") VALUES ("+placeholders(sessionColCount)+")", args...)
	if err != nil {
		if isForeignKey(err) {
			return fmt.Errorf("create session %q: vm %q: %w", ss.Name, ss.VMID, ErrNotFound)
		}
		return fmt.Errorf("create session %q: %w", ss.Name, constraint("session", err))
	}
	return nil
}

// GetSession finds a session of the VM with id vmID by session id, name or
// unique id prefix (ErrNotFound, ErrAmbiguous).
func (s *Store) GetSession(ctx context.Context, vmID, ref string) (model.Session, error) {
	return resolve(ctx, s.db, "session", "sessions", sessionCols, ref, "vm_id = ?", []any{vmID}, scanSession)
}

// ListSessions returns the sessions of the VM with id vmID, oldest first.
func (s *Store) ListSessions(ctx context.Context, vmID string) ([]model.Session, error) {
	return list(ctx, s.db, "SELECT "+sessionCols+" FROM sessions WHERE vm_id = ? ORDER BY created_at, id", []any{vmID}, scanSession)
}

// UpdateSession replaces the whole record with ss.ID, setting UpdatedAt to
// now. ErrNotFound when there is no such id; ErrConflict on a name clash.
func (s *Store) UpdateSession(ctx context.Context, ss model.Session) error {
	ss.UpdatedAt = time.Now()
	args, err := sessionArgs(ss)
	if err != nil {
		return fmt.Errorf("update session %q: %w", ss.Name, err)
	}
	query := "UPDATE sessions SET vm_id=?, name=?, command=?, args=?, env=?, cwd=?, stdin_mode=?, require=?, " +
		"status=?, guest_pid=?, exit_code=?, attachable=?, reattachable=?, attach_mode=?, attach_backend=?, " +
		"launch_stage=?, launch_error=?, launch_log=?, error=?, state_dir=?, created_at=?, updated_at=?, " +
		"started_at=?, ended_at=? WHERE id = ?"
	if err := s.execOne(ctx, "session", ss.ID, query, append(args[1:], ss.ID)...); err != nil {
		return fmt.Errorf("update session: %w", err)
	}
	return nil
}

// DeleteSession removes the session with this exact id (ErrNotFound).
func (s *Store) DeleteSession(ctx context.Context, id string) error {
	return s.execOne(ctx, "session", id, "DELETE FROM sessions WHERE id = ?", id)
}
