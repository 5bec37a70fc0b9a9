package store

import (
	"context"
	"database/sql"
	"fmt"
	"strconv"

	"github.com/banger/banger/internal/model"
)

const forwardCols = "vm_id, host_addr, host_port, guest_port, proto, created_at"

func scanForward(r *sql.Rows) (model.Forward, error) {
	var f model.Forward
	var created string
	if err := r.Scan(&f.VMID, &f.HostAddr, &f.HostPort, &f.GuestPort, &f.Proto, &created); err != nil {
		return f, err
	}
	var err error
	f.CreatedAt, err = parseTime(created)
	return f, err
}

// CreateForward records a published port of an existing VM. It returns
// ErrConflict when that host address, port and protocol is published
// already, and ErrNotFound when the VM does not exist.
func (s *Store) CreateForward(ctx context.Context, f model.Forward) error {
	_, err := s.db.ExecContext(ctx, "INSERT INTO forwards ("+forwardCols+") VALUES ("+placeholders(6)+")",
		f.VMID, f.HostAddr, f.HostPort, f.GuestPort, f.Proto, fmtTime(f.CreatedAt))
	if err != nil {
		if isForeignKey(err) {
			return fmt.Errorf("create forward: vm %q: %w", f.VMID, ErrNotFound)
		}
		return fmt.Errorf("create forward: %w", constraint("forward", err))
	}
	return nil
}

// ListForwards returns the published ports of the VM with id vmID, or of
// every VM when vmID is "", by host port.
func (s *Store) ListForwards(ctx context.Context, vmID string) ([]model.Forward, error) {
	if vmID == "" {
		return list(ctx, s.db, "SELECT "+forwardCols+" FROM forwards ORDER BY host_port, host_addr", nil, scanForward)
	}
	return list(ctx, s.db, "SELECT "+forwardCols+" FROM forwards WHERE vm_id = ? ORDER BY host_port, host_addr", []any{vmID}, scanForward)
}

// DeleteForward removes the VM's published port on hostAddr:hostPort
// (ErrNotFound when it has none there).
func (s *Store) DeleteForward(ctx context.Context, vmID, hostAddr string, hostPort int) error {
	return s.execOne(ctx, "forward", strconv.Itoa(hostPort),
		"DELETE FROM forwards WHERE vm_id = ? AND host_addr = ? AND host_port = ?", vmID, hostAddr, hostPort)
}

// DeleteForwards removes every published port of the VM with id vmID.
func (s *Store) DeleteForwards(ctx context.Context, vmID string) error {
	_, err := s.db.ExecContext(ctx, "DELETE FROM forwards WHERE vm_id = ?", vmID)
	return err
}
