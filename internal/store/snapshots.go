package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/banger/banger/internal/model"
)

const snapshotCols = "id, name, vm_id, vm_name, image_id, kernel_id, cpus, memory_mib, disk_bytes, vmm, cow_strategy, guest_ip, guest_mac, dir, size_bytes, state, created_at, template_key, template_inputs, net_policy, base_id"

func scanSnapshot(r *sql.Rows) (model.Snapshot, error) {
	var s model.Snapshot
	var created, net string
	var base sql.NullString
	if err := r.Scan(&s.ID, &s.Name, &s.VMID, &s.VMName, &s.ImageID, &s.KernelID, &s.CPUs, &s.MemoryMiB, &s.DiskBytes,
		&s.VMM, &s.CowStrategy, &s.GuestIP, &s.GuestMAC, &s.Dir, &s.SizeBytes, &s.State, &created, &s.Template, &s.TemplateInputs, &net, &base); err != nil {
		return s, err
	}
	s.BaseID = model.SnapshotBaseUnknown
	if base.Valid {
		s.BaseID = base.String
	}
	var err error
	if s.Net, err = parseNetPolicy(net); err != nil {
		return s, err
	}
	s.CreatedAt, err = parseTime(created)
	return s, err
}

// CreateSnapshot records a snapshot; ErrConflict when its name is taken.
func (s *Store) CreateSnapshot(ctx context.Context, sn model.Snapshot) error {
	var base any = sn.BaseID
	if sn.BaseID == model.SnapshotBaseUnknown {
		base = nil
	}
	_, err := s.db.ExecContext(ctx, "INSERT INTO snapshots ("+snapshotCols+") VALUES ("+placeholders(21)+")",
		sn.ID, sn.Name, sn.VMID, sn.VMName, sn.ImageID, sn.KernelID, sn.CPUs, sn.MemoryMiB, sn.DiskBytes,
		sn.VMM, sn.CowStrategy, sn.GuestIP, sn.GuestMAC, sn.Dir, sn.SizeBytes, string(sn.State), fmtTime(sn.CreatedAt), sn.Template, sn.TemplateInputs, fmtNetPolicy(sn.Net), base)
	if err != nil {
		return fmt.Errorf("create snapshot: %w", constraint("snapshot", err))
	}
	return nil
}

// UpdateSnapshot stores a snapshot's size and state.
func (s *Store) UpdateSnapshot(ctx context.Context, sn model.Snapshot) error {
	return s.execOne(ctx, "snapshot", sn.ID, "UPDATE snapshots SET size_bytes = ?, state = ? WHERE id = ?", sn.SizeBytes, string(sn.State), sn.ID)
}

// SetSnapshotBase records the snapshot its system disk reads through
// ("" for none: the image).
func (s *Store) SetSnapshotBase(ctx context.Context, id, base string) error {
	return s.execOne(ctx, "snapshot", id, "UPDATE snapshots SET base_id = ? WHERE id = ?", base, id)
}

// GetSnapshot finds a snapshot by id, name or unique id prefix.
func (s *Store) GetSnapshot(ctx context.Context, ref string) (model.Snapshot, error) {
	return resolve(ctx, s.db, "snapshot", "snapshots", snapshotCols, ref, "", nil, scanSnapshot)
}

// ListSnapshots returns every snapshot, oldest first.
func (s *Store) ListSnapshots(ctx context.Context) ([]model.Snapshot, error) {
	return list(ctx, s.db, "SELECT "+snapshotCols+" FROM snapshots ORDER BY created_at, id", nil, scanSnapshot)
}

// DeleteSnapshot removes the snapshot record with this exact id
// (ErrNotFound); ErrConflict while a VM made from it exists (callers
// check SnapshotUsers first for a better message).
func (s *Store) DeleteSnapshot(ctx context.Context, id string) error {
	return s.execOne(ctx, "snapshot", id, "DELETE FROM snapshots WHERE id = ?", id)
}

// AddSnapshotUser records that the VM with id vmID was made from the
// snapshot; the record goes with the VM. It is pending until
// IdentifiedSnapshotUser: the VM's guest has not taken its own identity
// yet.
func (s *Store) AddSnapshotUser(ctx context.Context, snapshotID, vmID string) error {
	_, err := s.db.ExecContext(ctx, "INSERT INTO snapshot_users (snapshot_id, vm_id, pending) VALUES (?, ?, 1)", snapshotID, vmID)
	if err != nil {
		if isForeignKey(err) {
			return fmt.Errorf("snapshot user: snapshot %q or vm %q: %w", snapshotID, vmID, ErrNotFound)
		}
		return fmt.Errorf("snapshot user: %w", constraint("snapshot user", err))
	}
	return nil
}

// SetSnapshotReader records that the system disk of the VM with id vmID
// reads through the snapshot's, which was taken of it (its disk was
// overlaid in place: see vms.overlaySystem), replacing the snapshot it
// read through or was made from before; never pending.
func (s *Store) SetSnapshotReader(ctx context.Context, snapshotID, vmID string) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO snapshot_users (snapshot_id, vm_id, pending) VALUES (?, ?, 0)
		ON CONFLICT(vm_id) DO UPDATE SET snapshot_id = excluded.snapshot_id, pending = 0`, snapshotID, vmID)
	if err != nil {
		if isForeignKey(err) {
			return fmt.Errorf("snapshot reader: snapshot %q or vm %q: %w", snapshotID, vmID, ErrNotFound)
		}
		return fmt.Errorf("snapshot reader: %w", err)
	}
	return nil
}

// MoveSnapshotUser records that the VM with id vmID, recorded as using
// the snapshot from, uses the snapshot to instead (none when ""). It
// changes nothing, and says so with ErrNotFound, when the VM's record
// names another snapshot by now.
func (s *Store) MoveSnapshotUser(ctx context.Context, vmID, from, to string) error {
	if to == "" {
		return s.execOne(ctx, "snapshot user", vmID, "DELETE FROM snapshot_users WHERE vm_id = ? AND snapshot_id = ?", vmID, from)
	}
	return s.execOne(ctx, "snapshot user", vmID, "UPDATE snapshot_users SET snapshot_id = ? WHERE vm_id = ? AND snapshot_id = ?", to, vmID, from)
}

// IdentifiedSnapshotUser records that the VM made from a snapshot has
// taken its own identity: it is no longer pending.
func (s *Store) IdentifiedSnapshotUser(ctx context.Context, vmID string) error {
	return s.execOne(ctx, "snapshot user", vmID, "UPDATE snapshot_users SET pending = 0 WHERE vm_id = ?", vmID)
}

// PendingSnapshotUsers returns the ids of the VMs made from a snapshot
// whose guest never took its own identity.
func (s *Store) PendingSnapshotUsers(ctx context.Context) ([]string, error) {
	return list(ctx, s.db, "SELECT vm_id FROM snapshot_users WHERE pending = 1 ORDER BY vm_id", nil,
		func(r *sql.Rows) (string, error) {
			var n string
			return n, r.Scan(&n)
		})
}

// SnapshotOf returns the id of the snapshot the VM with id vmID was made
// from, "" when it was not made from one.
func (s *Store) SnapshotOf(ctx context.Context, vmID string) (string, error) {
	var id string
	err := s.db.QueryRowContext(ctx, "SELECT snapshot_id FROM snapshot_users WHERE vm_id = ?", vmID).Scan(&id)
	if errors.Is(err, sql.ErrNoRows) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("snapshot of vm %s: %w", vmID, err)
	}
	return id, nil
}

// SnapshotUsers returns the names of the VMs made from the snapshot, by
// name.
func (s *Store) SnapshotUsers(ctx context.Context, snapshotID string) ([]string, error) {
	return list(ctx, s.db, "SELECT v.name FROM snapshot_users u JOIN vms v ON v.id = u.vm_id WHERE u.snapshot_id = ? ORDER BY v.name",
		[]any{snapshotID}, func(r *sql.Rows) (string, error) {
			var n string
			return n, r.Scan(&n)
		})
}

// SnapshotsUsingArtifact returns the names of the snapshots (not
// templates) whose disks or state need the image or kernel with this id.
func (s *Store) SnapshotsUsingArtifact(ctx context.Context, id string) ([]string, error) {
	return list(ctx, s.db, "SELECT name FROM snapshots WHERE (image_id = ? OR kernel_id = ?) AND template_key = '' ORDER BY name",
		[]any{id, id}, func(r *sql.Rows) (string, error) {
			var n string
			return n, r.Scan(&n)
		})
}
