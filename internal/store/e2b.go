package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/banger/banger/internal/model"
)

const e2bKeyCols = "id, name, hash, prefix, created_at, last_used, max_sandboxes"

func scanE2BKey(r *sql.Rows) (model.E2BKey, error) {
	var k model.E2BKey
	var created string
	var used sql.NullString
	if err := r.Scan(&k.ID, &k.Name, &k.Hash, &k.Prefix, &created, &used, &k.MaxSandboxes); err != nil {
		return k, err
	}
	var err error
	if k.CreatedAt, err = parseTime(created); err != nil {
		return k, err
	}
	k.LastUsed, err = parseTimePtr(used)
	return k, err
}

// CreateE2BKey records an API key (its hash); ErrConflict when the name
// is taken.
func (s *Store) CreateE2BKey(ctx context.Context, k model.E2BKey) error {
	_, err := s.db.ExecContext(ctx, "INSERT INTO e2b_keys ("+e2bKeyCols+") VALUES ("+placeholders(7)+")",
		k.ID, k.Name, k.Hash, k.Prefix, fmtTime(k.CreatedAt), fmtTimePtr(k.LastUsed), k.MaxSandboxes)
	if err != nil {
		return fmt.Errorf("create e2b key: %w", constraint("e2b key", err))
	}
	return nil
}

// ListE2BKeys returns every API key, oldest first.
func (s *Store) ListE2BKeys(ctx context.Context) ([]model.E2BKey, error) {
	return list(ctx, s.db, "SELECT "+e2bKeyCols+" FROM e2b_keys ORDER BY created_at, name", nil, scanE2BKey)
}

// E2BKeyByHash finds the key with this hash (ErrNotFound when none).
func (s *Store) E2BKeyByHash(ctx context.Context, hash string) (model.E2BKey, error) {
	keys, err := list(ctx, s.db, "SELECT "+e2bKeyCols+" FROM e2b_keys WHERE hash = ?", []any{hash}, scanE2BKey)
	if err != nil {
		return model.E2BKey{}, err
	}
	if len(keys) == 0 {
		return model.E2BKey{}, fmt.Errorf("e2b key: %w", ErrNotFound)
	}
	return keys[0], nil
}

// TouchE2BKey records that the key was used at t.
func (s *Store) TouchE2BKey(ctx context.Context, id string, t time.Time) error {
	return s.execOne(ctx, "e2b key", id, "UPDATE e2b_keys SET last_used = ? WHERE id = ?", fmtTime(t), id)
}

// DeleteE2BKey removes the key named ref (its name, id or id prefix).
func (s *Store) DeleteE2BKey(ctx context.Context, ref string) (model.E2BKey, error) {
	k, err := resolve(ctx, s.db, "e2b key", "e2b_keys", e2bKeyCols, ref, "", nil, scanE2BKey)
	if err != nil {
		return k, err
	}
	return k, s.execOne(ctx, "e2b key", k.ID, "DELETE FROM e2b_keys WHERE id = ?", k.ID)
}

const e2bSandboxCols = "vm_id, template_id, token, env, created_at, auto_pause, key_id, auto_resume, timeout_secs, traffic_token, mask_host, https_ports"

func scanE2BSandbox(r *sql.Rows) (model.E2BSandbox, error) {
	var sb model.E2BSandbox
	var env, created, https string
	if err := r.Scan(&sb.VMID, &sb.TemplateID, &sb.Token, &env, &created, &sb.AutoPause, &sb.KeyID, &sb.AutoResume, &sb.TimeoutSecs,
		&sb.TrafficToken, &sb.MaskHost, &https); err != nil {
		return sb, err
	}
	if err := json.Unmarshal([]byte(https), &sb.HTTPSPorts); err != nil {
		return sb, fmt.Errorf("stored https ports of %s: %w", sb.VMID, err)
	}
	if len(sb.HTTPSPorts) == 0 {
		sb.HTTPSPorts = nil
	}
	if err := json.Unmarshal([]byte(env), &sb.Env); err != nil {
		return sb, fmt.Errorf("stored env of %s: %w", sb.VMID, err)
	}
	var err error
	sb.CreatedAt, err = parseTime(created)
	return sb, err
}

// CreateE2BSandbox records what the control plane adds to an existing VM
// (ErrNotFound when the VM does not exist). The row goes with the VM.
func (s *Store) CreateE2BSandbox(ctx context.Context, sb model.E2BSandbox) error {
	env, err := json.Marshal(nonNil(sb.Env))
	if err != nil {
		return err
	}
	https, err := json.Marshal(sb.HTTPSPorts)
	if err != nil {
		return err
	}
	if sb.HTTPSPorts == nil {
		https = []byte("[]")
	}
	_, err = s.db.ExecContext(ctx, "INSERT INTO e2b_sandboxes ("+e2bSandboxCols+") VALUES ("+placeholders(12)+")",
		sb.VMID, sb.TemplateID, sb.Token, string(env), fmtTime(sb.CreatedAt), sb.AutoPause, sb.KeyID, sb.AutoResume, sb.TimeoutSecs,
		sb.TrafficToken, sb.MaskHost, string(https))
	if err != nil {
		if isForeignKey(err) {
			return fmt.Errorf("create e2b sandbox: vm %q: %w", sb.VMID, ErrNotFound)
		}
		return fmt.Errorf("create e2b sandbox: %w", constraint("e2b sandbox", err))
	}
	return nil
}

// E2BSandbox returns the sandbox record of the VM with id vmID.
func (s *Store) E2BSandbox(ctx context.Context, vmID string) (model.E2BSandbox, error) {
	got, err := list(ctx, s.db, "SELECT "+e2bSandboxCols+" FROM e2b_sandboxes WHERE vm_id = ?", []any{vmID}, scanE2BSandbox)
	if err != nil {
		return model.E2BSandbox{}, err
	}
	if len(got) == 0 {
		return model.E2BSandbox{}, fmt.Errorf("e2b sandbox %q: %w", vmID, ErrNotFound)
	}
	return got[0], nil
}

// ListE2BSandboxes returns every sandbox record, oldest first.
func (s *Store) ListE2BSandboxes(ctx context.Context) ([]model.E2BSandbox, error) {
	return list(ctx, s.db, "SELECT "+e2bSandboxCols+" FROM e2b_sandboxes ORDER BY created_at, vm_id", nil, scanE2BSandbox)
}

func nonNil(m map[string]string) map[string]string {
	if m == nil {
		return map[string]string{}
	}
	return m
}

// E2BListenerRecord is where the E2B listener serves: address, domain of
// sandbox host names, whether it speaks TLS, and where it answers DNS for
// the domain's names ("" for nowhere).
type E2BListenerRecord struct {
	Listen string
	Domain string
	TLS    bool
	DNS    string
}

// SetE2BListener records where the E2B listener serves, replacing any
// record.
func (s *Store) SetE2BListener(ctx context.Context, l E2BListenerRecord, at time.Time) error {
	_, err := s.db.ExecContext(ctx, "INSERT INTO e2b_listener (id, listen, domain, tls, dns, created_at) VALUES (1, ?, ?, ?, ?, ?) "+
		"ON CONFLICT(id) DO UPDATE SET listen = excluded.listen, domain = excluded.domain, tls = excluded.tls, dns = excluded.dns, created_at = excluded.created_at",
		l.Listen, l.Domain, l.TLS, l.DNS, fmtTime(at))
	return err
}

// E2BListener is the recorded listener; ok is false when there is none.
func (s *Store) E2BListener(ctx context.Context) (l E2BListenerRecord, ok bool, err error) {
	err = s.db.QueryRowContext(ctx, "SELECT listen, domain, tls, dns FROM e2b_listener WHERE id = 1").Scan(&l.Listen, &l.Domain, &l.TLS, &l.DNS)
	if errors.Is(err, sql.ErrNoRows) {
		return l, false, nil
	}
	return l, err == nil, err
}

// ClearE2BListener forgets the recorded listener.
func (s *Store) ClearE2BListener(ctx context.Context) error {
	_, err := s.db.ExecContext(ctx, "DELETE FROM e2b_listener")
	return err
}
