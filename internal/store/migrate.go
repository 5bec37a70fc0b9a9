package store

import (
	"context"
	"fmt"
)

// migrations are the schema steps; migrations[i] brings a database from
// version i to i+1 (PRAGMA user_version). Never edit a released step: append.
var migrations = []string{
	// 1: the four kinds of record.
	`
CREATE TABLE images (
	id         TEXT PRIMARY KEY,
	name       TEXT NOT NULL UNIQUE,
	path       TEXT NOT NULL,
	size_bytes INTEGER NOT NULL,
	checksum   TEXT NOT NULL,
	source     TEXT NOT NULL,
	init       TEXT NOT NULL,
	recipe     TEXT NOT NULL,
	recipe_key TEXT NOT NULL,
	host_key   TEXT NOT NULL,
	created_at TEXT NOT NULL
);
CREATE TABLE kernels (
	id           TEXT PRIMARY KEY,
	name         TEXT NOT NULL UNIQUE,
	version      TEXT NOT NULL,
	vmlinux_path TEXT NOT NULL,
	bzimage_path TEXT NOT NULL,
	initrd_path  TEXT NOT NULL,
	cmdline      TEXT NOT NULL,
	source       TEXT NOT NULL,
	checksums    TEXT NOT NULL,
	created_at   TEXT NOT NULL
);
CREATE TABLE vms (
	id            TEXT PRIMARY KEY,
	name          TEXT NOT NULL UNIQUE,
	image_id      TEXT NOT NULL,
	kernel_id     TEXT NOT NULL,
	cpus          INTEGER NOT NULL,
	memory_mib    INTEGER NOT NULL,
	disk_bytes    INTEGER NOT NULL,
	desired_state TEXT NOT NULL,
	state         TEXT NOT NULL,
	vmm           TEXT NOT NULL,
	accel         TEXT NOT NULL,
	cow_strategy  TEXT NOT NULL,
	guest_ip      TEXT NOT NULL UNIQUE,
	guest_mac     TEXT NOT NULL,
	dns_name      TEXT NOT NULL,
	cid           INTEGER NOT NULL UNIQUE,
	dir           TEXT NOT NULL,
	api_socket    TEXT NOT NULL,
	vsock_socket  TEXT NOT NULL,
	log_path      TEXT NOT NULL,
	console_path  TEXT NOT NULL,
	metrics_path  TEXT NOT NULL,
	system_disk   TEXT NOT NULL,
	work_disk     TEXT NOT NULL,
	last_error    TEXT NOT NULL,
	created_at    TEXT NOT NULL,
	updated_at    TEXT NOT NULL,
	started_at    TEXT
);
CREATE TABLE sessions (
	id             TEXT PRIMARY KEY,
	vm_id          TEXT NOT NULL REFERENCES vms(id) ON DELETE CASCADE,
	name           TEXT NOT NULL,
	command        TEXT NOT NULL,
	args           TEXT NOT NULL,
	env            TEXT NOT NULL,
	cwd            TEXT NOT NULL,
	stdin_mode     TEXT NOT NULL,
	require        TEXT NOT NULL,
	status         TEXT NOT NULL,
	guest_pid      INTEGER NOT NULL,
	exit_code      INTEGER,
	attachable     INTEGER NOT NULL,
	reattachable   INTEGER NOT NULL,
	attach_mode    TEXT NOT NULL,
	attach_backend TEXT NOT NULL,
	launch_stage   TEXT NOT NULL,
	launch_error   TEXT NOT NULL,
	launch_log     TEXT NOT NULL,
	error          TEXT NOT NULL,
	state_dir      TEXT NOT NULL,
	created_at     TEXT NOT NULL,
	updated_at     TEXT NOT NULL,
	started_at     TEXT,
	ended_at       TEXT,
	UNIQUE (vm_id, name)
);
`,
	// 2: lookups the daemon makes on every image/kernel removal and listing.
	`
CREATE INDEX vms_image_id ON vms(image_id);
CREATE INDEX vms_kernel_id ON vms(kernel_id);
CREATE INDEX vms_created_at ON vms(created_at);
`,
	// 3: each VM's network policy (model.NetPolicy as JSON); '' is the
	// default, internet, which is what VMs made before it get.
	`
ALTER TABLE vms ADD COLUMN net_policy TEXT NOT NULL DEFAULT '';
`,
	// 4: each VM's own SSH host key. VMs made before have none ('') and go
	// on with their image's.
	`
ALTER TABLE vms ADD COLUMN host_key TEXT NOT NULL DEFAULT '';
`,
	// 5: each VM's deadline (UTC, NULL for none) and what to do then
	// (model.TTLDelete or TTLStop). VMs made before have none.
	`
ALTER TABLE vms ADD COLUMN expires_at TEXT;
ALTER TABLE vms ADD COLUMN expire_action TEXT NOT NULL DEFAULT '';
`,
	// 6: published ports of running VMs, re-established at daemon start.
	// A host address and port is published once, whichever VM has it.
	`
CREATE TABLE forwards (
	vm_id      TEXT NOT NULL REFERENCES vms(id) ON DELETE CASCADE,
	host_addr  TEXT NOT NULL,
	host_port  INTEGER NOT NULL,
	guest_port INTEGER NOT NULL,
	proto      TEXT NOT NULL,
	created_at TEXT NOT NULL,
	PRIMARY KEY (host_addr, host_port, proto)
);
CREATE INDEX forwards_vm_id ON forwards(vm_id);
`,
	// 7: each VM's idle timeout in seconds (0 for none) and what to do
	// when it passes (model.TTLDelete or TTLStop). VMs made before have
	// none.
	`
ALTER TABLE vms ADD COLUMN idle_timeout_s INTEGER NOT NULL DEFAULT 0;
ALTER TABLE vms ADD COLUMN idle_action TEXT NOT NULL DEFAULT '';
`,
	// 8: the E2B-compatible control plane: API keys (only their hash),
	// the listener `banger e2b serve` started (served again at daemon
	// start) and what it adds to the VMs it made.
	`
CREATE TABLE e2b_keys (
	id         TEXT PRIMARY KEY,
	name       TEXT NOT NULL UNIQUE,
	hash       TEXT NOT NULL UNIQUE,
	prefix     TEXT NOT NULL,
	created_at TEXT NOT NULL,
	last_used  TEXT
);
CREATE TABLE e2b_listener (
	id         INTEGER PRIMARY KEY CHECK (id = 1),
	listen     TEXT NOT NULL,
	domain     TEXT NOT NULL,
	created_at TEXT NOT NULL
);
CREATE TABLE e2b_sandboxes (
	vm_id       TEXT PRIMARY KEY REFERENCES vms(id) ON DELETE CASCADE,
	template_id TEXT NOT NULL,
	token       TEXT NOT NULL,
	metadata    TEXT NOT NULL,
	env         TEXT NOT NULL,
	created_at  TEXT NOT NULL
);
`,
	// 9: each VM's labels (model.VM.Labels as a JSON object; '' for
	// none). A sandbox's E2B metadata becomes labels "e2b.meta/<key>",
	// the only place it is kept from then on; a sandbox records whether
	// its deadline pauses it (autoPause).
	`
ALTER TABLE vms ADD COLUMN labels TEXT NOT NULL DEFAULT '';
UPDATE vms SET labels = (
	SELECT json_group_object('e2b.meta/' || m.key, m.value)
	FROM e2b_sandboxes sb, json_each(sb.metadata) m WHERE sb.vm_id = vms.id
) WHERE id IN (SELECT vm_id FROM e2b_sandboxes WHERE metadata NOT IN ('', '{}', 'null'));
ALTER TABLE e2b_sandboxes DROP COLUMN metadata;
ALTER TABLE e2b_sandboxes ADD COLUMN auto_pause INTEGER NOT NULL DEFAULT 0;
`,
	// 10: snapshots of running VMs (memory and device state plus a
	// copy-on-write capture of their disks, in their own directory) and
	// which VMs were made from one (a fork's system disk is backed by the
	// snapshot's, so the snapshot is not removed while one exists). The
	// VM a snapshot was taken of may be deleted: it keeps its name.
	`
CREATE TABLE snapshots (
	id           TEXT PRIMARY KEY,
	name         TEXT NOT NULL UNIQUE,
	vm_id        TEXT NOT NULL,
	vm_name      TEXT NOT NULL,
	image_id     TEXT NOT NULL,
	kernel_id    TEXT NOT NULL,
	cpus         INTEGER NOT NULL,
	memory_mib   INTEGER NOT NULL,
	disk_bytes   INTEGER NOT NULL,
	vmm          TEXT NOT NULL,
	cow_strategy TEXT NOT NULL,
	guest_ip     TEXT NOT NULL,
	guest_mac    TEXT NOT NULL,
	dir          TEXT NOT NULL,
	size_bytes   INTEGER NOT NULL,
	state        TEXT NOT NULL,
	created_at   TEXT NOT NULL
);
CREATE INDEX snapshots_image_id ON snapshots(image_id);
CREATE INDEX snapshots_kernel_id ON snapshots(kernel_id);
CREATE TABLE snapshot_users (
	snapshot_id TEXT NOT NULL REFERENCES snapshots(id),
	vm_id       TEXT NOT NULL PRIMARY KEY REFERENCES vms(id) ON DELETE CASCADE
);
CREATE INDEX snapshot_users_snapshot_id ON snapshot_users(snapshot_id);
`,
	// 11: warm-start templates are snapshots the daemon keeps per VM
	// shape (template_key, with the canonical JSON of what made it;
	// '' for a user's snapshot), and a VM made from a snapshot is
	// pending until its guest has taken its own identity (a daemon
	// that dies before deletes it at its next start).
	`
ALTER TABLE snapshots ADD COLUMN template_key TEXT NOT NULL DEFAULT '';
ALTER TABLE snapshots ADD COLUMN template_inputs TEXT NOT NULL DEFAULT '';
CREATE INDEX snapshots_template_key ON snapshots(template_key);
ALTER TABLE snapshot_users ADD COLUMN pending INTEGER NOT NULL DEFAULT 0;
`,
	// 12: the E2B listener's TLS, a per-key cap on sandboxes, and which key
	// made each sandbox ('' for sandboxes made before keys were counted).
	`
ALTER TABLE e2b_listener ADD COLUMN tls INTEGER NOT NULL DEFAULT 0;
ALTER TABLE e2b_keys ADD COLUMN max_sandboxes INTEGER NOT NULL DEFAULT 0;
ALTER TABLE e2b_sandboxes ADD COLUMN key_id TEXT NOT NULL DEFAULT '';
`,
	// 13: a snapshot keeps the network policy of the VM it was taken of
	// (the net_policy column's format; '' for the default), the policy
	// VMs made from it start with unless their create names one.
	`
ALTER TABLE snapshots ADD COLUMN net_policy TEXT NOT NULL DEFAULT '';
`,
	// 14: an E2B sandbox may wake on traffic when paused (autoResume),
	// with the timeout it was made with (seconds; 0: E2B's default).
	`
ALTER TABLE e2b_sandboxes ADD COLUMN auto_resume INTEGER NOT NULL DEFAULT 0;
ALTER TABLE e2b_sandboxes ADD COLUMN timeout_secs INTEGER NOT NULL DEFAULT 0;
`,
	// 15: how requests are relayed to an E2B sandbox's ports: the traffic
	// access token they must carry (allowPublicTraffic false; '' for
	// none), the Host header they reach the guest with (maskRequestHost;
	// '' keeps the client's) and the guest ports reached over TLS
	// (httpsPorts, a JSON list).
	`
ALTER TABLE e2b_sandboxes ADD COLUMN traffic_token TEXT NOT NULL DEFAULT '';
ALTER TABLE e2b_sandboxes ADD COLUMN mask_host TEXT NOT NULL DEFAULT '';
ALTER TABLE e2b_sandboxes ADD COLUMN https_ports TEXT NOT NULL DEFAULT '[]';
`,
	// 16: the snapshot a snapshot's system disk reads through (base_id:
	// the snapshot its VM was made from; '' for none, the VM's image),
	// so a disk is checked against its own lineage. Snapshots taken
	// before get it from their VM's record where that VM still exists;
	// NULL (unknown) otherwise.
	`
ALTER TABLE snapshots ADD COLUMN base_id TEXT;
UPDATE snapshots SET base_id = COALESCE(
	(SELECT u.snapshot_id FROM snapshot_users u WHERE u.vm_id = snapshots.vm_id),
	CASE WHEN EXISTS (SELECT 1 FROM vms v WHERE v.id = snapshots.vm_id) THEN '' END);
`,
	// 17: where the E2B listener also answers DNS for the names under
	// its domain ('' for nowhere).
	`
ALTER TABLE e2b_listener ADD COLUMN dns TEXT NOT NULL DEFAULT '';
`,
}

// migrate applies the steps the database lacks, up to version upTo, each in
// its own transaction together with its version bump.
func (s *Store) migrate(ctx context.Context, upTo int) error {
	for {
		done, err := s.migrateStep(ctx, upTo)
		if err != nil || done {
			return err
		}
	}
}

func (s *Store) migrateStep(ctx context.Context, upTo int) (done bool, err error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return false, fmt.Errorf("migrate: %w", err)
	}
	defer tx.Rollback()
	var v int
	if err := tx.QueryRowContext(ctx, "PRAGMA user_version").Scan(&v); err != nil {
		return false, fmt.Errorf("read schema version: %w", err)
	}
	if v > len(migrations) {
		return false, fmt.Errorf("schema version %d is newer than this banger knows (%d): use a newer bangerd", v, len(migrations))
	}
	if v >= upTo {
		return true, nil
	}
	if _, err := tx.ExecContext(ctx, migrations[v]); err != nil {
		return false, fmt.Errorf("migrate schema to version %d: %w", v+1, err)
	}
	// PRAGMA takes no parameters; v+1 is our own integer.
	if _, err := tx.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version = %d", v+1)); err != nil {
		return false, fmt.Errorf("set schema version %d: %w", v+1, err)
	}
	return false, tx.Commit()
}
