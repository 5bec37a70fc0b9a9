package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/banger/banger/internal/model"
)

const vmCols = "id, name, image_id, kernel_id, cpus, memory_mib, disk_bytes, desired_state, state, vmm, accel, " +
	"cow_strategy, guest_ip, guest_mac, dns_name, cid, dir, api_socket, vsock_socket, log_path, console_path, " +
	"metrics_path, system_disk, work_disk, last_error, created_at, updated_at, started_at, net_policy, host_key, " +
	"expires_at, expire_action, idle_timeout_s, idle_action, labels"

const vmColCount = 35

func scanVM(r *sql.Rows) (model.VM, error) {
	var vm model.VM
	var created, updated string
	var started sql.NullString
	var cid int64
	var net string
	var expires sql.NullString
	var labels string
	if err := r.Scan(&vm.ID, &vm.Name, &vm.ImageID, &vm.KernelID, &vm.CPUs, &vm.MemoryMiB, &vm.DiskBytes,
		&vm.DesiredState, &vm.State, &vm.VMM, &vm.Accel, &vm.CowStrategy, &vm.GuestIP, &vm.GuestMAC,
		&vm.DNSName, &cid, &vm.Dir, &vm.APISocket, &vm.VsockSocket, &vm.LogPath, &vm.ConsolePath,
		&vm.MetricsPath, &vm.SystemDisk, &vm.WorkDisk, &vm.LastError, &created, &updated, &started, &net,
		&vm.HostKey, &expires, &vm.ExpireAction, &vm.IdleTimeoutSeconds, &vm.IdleAction, &labels); err != nil {
		return vm, err
	}
	vm.CID = uint32(cid)
	var err error
	if labels != "" {
		if err := json.Unmarshal([]byte(labels), &vm.Labels); err != nil {
			return vm, fmt.Errorf("vm %s: labels %q: %w", vm.Name, labels, err)
		}
	}
	if vm.Net, err = parseNetPolicy(net); err != nil {
		return vm, fmt.Errorf("vm %s: %w", vm.Name, err)
	}
	if vm.CreatedAt, err = parseTime(created); err != nil {
		return vm, err
	}
	if vm.UpdatedAt, err = parseTime(updated); err != nil {
		return vm, err
	}
	if vm.StartedAt, err = parseTimePtr(started); err != nil {
		return vm, err
	}
	vm.ExpiresAt, err = parseTimePtr(expires)
	return vm, err
}

// vmArgs are the column values of vm in vmCols order.
func vmArgs(vm model.VM) []any {
	return []any{vm.ID, vm.Name, vm.ImageID, vm.KernelID, vm.CPUs, vm.MemoryMiB, vm.DiskBytes,
		string(vm.DesiredState), string(vm.State), vm.VMM, vm.Accel, vm.CowStrategy, vm.GuestIP, vm.GuestMAC,
		vm.DNSName, int64(vm.CID), vm.Dir, vm.APISocket, vm.VsockSocket, vm.LogPath, vm.ConsolePath,
		vm.MetricsPath, vm.SystemDisk, vm.WorkDisk, vm.LastError, fmtTime(vm.CreatedAt), fmtTime(vm.UpdatedAt),
		fmtTimePtr(vm.StartedAt), fmtNetPolicy(vm.Net), vm.HostKey,
		fmtTimePtr(vm.ExpiresAt), vm.ExpireAction, vm.IdleTimeoutSeconds, vm.IdleAction, fmtLabels(vm.Labels)}
}

// fmtLabels is the labels column of labels (” for none).
func fmtLabels(labels map[string]string) string {
	if len(labels) == 0 {
		return ""
	}
	b, _ := json.Marshal(labels) // a map of strings: cannot fail
	return string(b)
}

// parseNetPolicy reads the net_policy column; empty (a VM made before
// policies) and a missing mode are the default mode.
func parseNetPolicy(s string) (model.NetPolicy, error) {
	var p model.NetPolicy
	if s != "" {
		if err := json.Unmarshal([]byte(s), &p); err != nil {
			return p, fmt.Errorf("network policy %q: %w", s, err)
		}
	}
	if p.Mode == "" {
		p.Mode = model.NetInternet
	}
	return p, nil
}

// fmtNetPolicy is the net_policy column of p (empty for the default).
func fmtNetPolicy(p model.NetPolicy) string {
	if (p.Mode == "" || p.Mode == model.NetInternet) && len(p.Allow)+len(p.Deny)+len(p.AllowVMs) == 0 {
		return ""
	}
	b, _ := json.Marshal(p) // strings and string slices: cannot fail
	return string(b)
}

// CreateVM records a new VM. It returns ErrConflict when its id, name,
// guest IP or CID is taken.
func (s *Store) CreateVM(ctx context.Context, vm model.VM) error {
	_, err := s.db.ExecContext(ctx, "INSERT INTO vms ("+vmCols+") VALUES ("+placeholders(vmColCount)+")", vmArgs(vm)...)
	if err != nil {
		return fmt.Errorf("create vm %q: %w", vm.Name, constraint("vm", err))
	}
	return nil
}

// GetVM finds a VM by id, name or unique id prefix (ErrNotFound,
// ErrAmbiguous).
func (s *Store) GetVM(ctx context.Context, ref string) (model.VM, error) {
	return resolve(ctx, s.db, "vm", "vms", vmCols, ref, "", nil, scanVM)
}

// ListVMs returns all VMs, oldest first.
func (s *Store) ListVMs(ctx context.Context) ([]model.VM, error) {
	return list(ctx, s.db, "SELECT "+vmCols+" FROM vms ORDER BY created_at, id", nil, scanVM)
}

// UpdateVM replaces the whole record with vm.ID, setting UpdatedAt to now
// (the caller's UpdatedAt is ignored), but for the deadline and the idle
// timeout, which only SetVMExpiry and SetVMIdle write, and the labels,
// which are set at create: a save by a boot
// that read the record minutes ago must not put back an older one. ErrNotFound when there is no such
// id; ErrConflict when the new name, IP or CID is taken by another VM.
func (s *Store) UpdateVM(ctx context.Context, vm model.VM) error {
	vm.UpdatedAt = time.Now()
	args := vmArgs(vm)
	// SET every column but id, the deadline's, the idle timeout's and
	// the labels, then WHERE id = ?.
	query := "UPDATE vms SET name=?, image_id=?, kernel_id=?, cpus=?, memory_mib=?, disk_bytes=?, " +
		"desired_state=?, state=?, vmm=?, accel=?, cow_strategy=?, guest_ip=?, guest_mac=?, dns_name=?, cid=?, " +
		"dir=?, api_socket=?, vsock_socket=?, log_path=?, console_path=?, metrics_path=?, system_disk=?, " +
		"work_disk=?, last_error=?, created_at=?, updated_at=?, started_at=?, net_policy=?, host_key=? WHERE id = ?"
	if err := s.execOne(ctx, "vm", vm.ID, query, append(args[1:vmColCount-5], vm.ID)...); err != nil {
		return fmt.Errorf("update vm: %w", err)
	}
	return nil
}

// ReplaceVM writes every column of the VM with vm's exact id, its
// deadline, idle timeout and labels too, in one step (ErrNotFound): a
// warm pool's spare made into a create's VM, whose record must never
// be seen half renamed.
func (s *Store) ReplaceVM(ctx context.Context, vm model.VM) error {
	vm.UpdatedAt = time.Now()
	cols := strings.Split(vmCols, ",")
	set := make([]string, 0, len(cols)-1)
	for _, c := range cols[1:] {
		set = append(set, strings.TrimSpace(c)+"=?")
	}
	query := "UPDATE vms SET " + strings.Join(set, ", ") + " WHERE id = ?"
	if err := s.execOne(ctx, "vm", vm.ID, query, append(vmArgs(vm)[1:], vm.ID)...); err != nil {
		return fmt.Errorf("replace vm: %w", err)
	}
	return nil
}

// SetVMExpiry sets (at non-nil) or clears the deadline of the VM with this
// exact id and what to do then (ErrNotFound).
func (s *Store) SetVMExpiry(ctx context.Context, id string, at *time.Time, action string) error {
	if at == nil {
		action = ""
	}
	query := "UPDATE vms SET expires_at=?, expire_action=?, updated_at=? WHERE id = ?"
	if err := s.execOne(ctx, "vm", id, query, fmtTimePtr(at), action, fmtTime(time.Now()), id); err != nil {
		return fmt.Errorf("set vm deadline: %w", err)
	}
	return nil
}

// SetVMIdle sets (seconds > 0) or clears the idle timeout of the VM with
// this exact id and what to do when it passes (ErrNotFound).
func (s *Store) SetVMIdle(ctx context.Context, id string, seconds int, action string) error {
	if seconds <= 0 {
		seconds, action = 0, ""
	}
	query := "UPDATE vms SET idle_timeout_s=?, idle_action=?, updated_at=? WHERE id = ?"
	if err := s.execOne(ctx, "vm", id, query, seconds, action, fmtTime(time.Now()), id); err != nil {
		return fmt.Errorf("set vm idle timeout: %w", err)
	}
	return nil
}

// DeleteVM removes the VM with this exact id and its sessions (ErrNotFound).
func (s *Store) DeleteVM(ctx context.Context, id string) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	// The foreign key cascades too; deleting explicitly keeps this true
	// whatever the connection's foreign_keys setting.
	if _, err := tx.ExecContext(ctx, "DELETE FROM sessions WHERE vm_id = ?", id); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, "DELETE FROM forwards WHERE vm_id = ?", id); err != nil {
		return err
	}
	res, err := tx.ExecContext(ctx, "DELETE FROM vms WHERE id = ?", id)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("vm %q: %w", id, ErrNotFound)
	}
	return tx.Commit()
}

// VMsUsingImage returns the VMs made from the image with this id, oldest
// first.
func (s *Store) VMsUsingImage(ctx context.Context, imageID string) ([]model.VM, error) {
	return list(ctx, s.db, "SELECT "+vmCols+" FROM vms WHERE image_id = ? ORDER BY created_at, id", []any{imageID}, scanVM)
}

// VMsUsingKernel returns the VMs booting the kernel with this id, oldest
// first.
func (s *Store) VMsUsingKernel(ctx context.Context, kernelID string) ([]model.VM, error) {
	return list(ctx, s.db, "SELECT "+vmCols+" FROM vms WHERE kernel_id = ? ORDER BY created_at, id", []any{kernelID}, scanVM)
}
