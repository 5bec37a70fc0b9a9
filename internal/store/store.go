// Package store is banger's durable memory: one SQLite file holding images,
// kernels, VMs and guest sessions, exactly the fields of the model types.
// It owns the schema and its migrations.
//
// It must not hold anything that is only momentarily true on the host (PIDs,
// taps, loop devices: those are model.VMHandles, kept by the daemon), and it
// does no other I/O than its database file.
package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// Errors returned wrapped with the object they concern, e.g.
// fmt.Errorf("vm %q: %w", ref, ErrNotFound); test them with errors.Is.
var (
	ErrNotFound  = errors.New("not found")
	ErrConflict  = errors.New("already exists")
	ErrAmbiguous = errors.New("ambiguous: matches several, use more of the id")
)

// minPrefix is the shortest id prefix accepted as a reference; shorter ones
// would match too much by accident.
const minPrefix = 4

// timeFormat is RFC 3339 with a fixed-width fraction, so that the text
// sorts in time order (RFC3339Nano trims trailing zeros and does not).
const timeFormat = "2006-01-02T15:04:05.000000000Z07:00"

// Store is an open banger database. It is safe for concurrent use.
type Store struct {
	db *sql.DB
}

// Open opens (creating if needed) the database at path and brings its schema
// to the latest version. It refuses a database made by a newer banger.
func Open(path string) (*Store, error) {
	return openAt(path, len(migrations))
}

// openAt opens and migrates up to version upTo; tests use it to make
// databases of older schema versions.
func openAt(path string, upTo int) (*Store, error) {
	q := url.Values{}
	q.Add("_pragma", "busy_timeout(5000)")
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "foreign_keys(1)")
	// Every write carries intent (a VM exists, a session started): FULL syncs
	// the WAL at each commit, so a power loss never forgets one.
	q.Add("_pragma", "synchronous(FULL)")
	// Write transactions take the write lock at BEGIN, so two writers wait
	// on the busy timeout instead of failing on a lock upgrade.
	q.Set("_txlock", "immediate")
	db, err := sql.Open("sqlite", "file:"+path+"?"+q.Encode())
	if err != nil {
		return nil, fmt.Errorf("open database %s: %w", path, err)
	}
	s := &Store{db: db}
	if err := s.migrate(context.Background(), upTo); err != nil {
		db.Close()
		return nil, fmt.Errorf("database %s: %w", path, err)
	}
	return s, nil
}

// Close closes the database.
func (s *Store) Close() error { return s.db.Close() }

// SchemaVersion returns the schema version of the open database.
func (s *Store) SchemaVersion(ctx context.Context) (int, error) {
	var v int
	err := s.db.QueryRowContext(ctx, "PRAGMA user_version").Scan(&v)
	return v, err
}

func fmtTime(t time.Time) string { return t.UTC().Format(timeFormat) }

func fmtTimePtr(t *time.Time) any {
	if t == nil {
		return nil
	}
	return fmtTime(*t)
}

func parseTime(s string) (time.Time, error) {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return t, fmt.Errorf("stored time %q: %w", s, err)
	}
	return t.UTC(), nil
}

func parseTimePtr(s sql.NullString) (*time.Time, error) {
	if !s.Valid {
		return nil, nil
	}
	t, err := parseTime(s.String)
	if err != nil {
		return nil, err
	}
	return &t, nil
}

// constraint turns a UNIQUE/PRIMARY KEY violation into ErrConflict naming
// the column that clashed, and passes other errors through.
func constraint(kind string, err error) error {
	var se *sqlite.Error
	if !errors.As(err, &se) {
		return err
	}
	switch se.Code() {
	case sqlite3.SQLITE_CONSTRAINT_UNIQUE, sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY:
		// The message is "UNIQUE constraint failed: vms.name" (or
		// "vms.vm_id, vms.name"): keep the column names.
		msg := se.Error()
		cols := msg
		if i := strings.LastIndex(msg, "failed: "); i >= 0 {
			cols = msg[i+len("failed: "):]
		}
		if i := strings.Index(cols, " ("); i >= 0 {
			cols = cols[:i]
		}
		var names []string
		for _, c := range strings.Split(cols, ",") {
			c = strings.TrimSpace(c)
			if i := strings.IndexByte(c, '.'); i >= 0 {
				c = c[i+1:]
			}
			names = append(names, c)
		}
		return fmt.Errorf("%s with this %s: %w", kind, strings.Join(names, " and "), ErrConflict)
	}
	return err
}

// querier is what both *sql.DB and *sql.Tx offer.
type querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

// resolve finds the one row of table matching ref: a full id, else a name
// (within scope), else a unique id prefix of at least minPrefix characters.
// where/args restrict the search (e.g. to one VM's sessions).
func resolve[T any](ctx context.Context, q querier, kind, table, cols, ref, where string, args []any, scan func(*sql.Rows) (T, error)) (T, error) {
	var zero T
	if ref == "" {
		return zero, fmt.Errorf("%s reference is empty: %w", kind, ErrNotFound)
	}
	base := "SELECT " + cols + " FROM " + table + " WHERE "
	if where != "" {
		base += where + " AND "
	}
	try := func(cond string, extra ...any) ([]T, error) {
		return list(ctx, q, base+cond+" LIMIT 2", append(append([]any{}, args...), extra...), scan)
	}
	for _, step := range []struct {
		cond  string
		extra []any
		ok    bool
	}{
		{"id = ?", []any{ref}, true},
		{"name = ?", []any{ref}, true},
		{"substr(id, 1, length(?)) = ?", []any{ref, ref}, len(ref) >= minPrefix},
	} {
		if !step.ok {
			continue
		}
		got, err := try(step.cond, step.extra...)
		if err != nil {
			return zero, fmt.Errorf("%s %q: %w", kind, ref, err)
		}
		switch len(got) {
		case 0:
			continue
		case 1:
			return got[0], nil
		default:
			return zero, fmt.Errorf("%s %q: %w", kind, ref, ErrAmbiguous)
		}
	}
	return zero, fmt.Errorf("%s %q: %w", kind, ref, ErrNotFound)
}

// list runs query and scans every row; no row gives an empty, non-nil
// slice.
func list[T any](ctx context.Context, q querier, query string, args []any, scan func(*sql.Rows) (T, error)) ([]T, error) {
	rows, err := q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []T{}
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

// execOne runs a statement that must touch exactly one row.
func (s *Store) execOne(ctx context.Context, kind, id, query string, args ...any) error {
	res, err := s.db.ExecContext(ctx, query, args...)
	if err != nil {
		return constraint(kind, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return err
	}
	if n == 0 {
		return fmt.Errorf("%s %q: %w", kind, id, ErrNotFound)
	}
	return nil
}

func placeholders(n int) string {
	return strings.TrimSuffix(strings.Repeat("?, ", n), ", ")
}

func isForeignKey(err error) bool {
	var se *sqlite.Error
	return errors.As(err, &se) && se.Code() == sqlite3.SQLITE_CONSTRAINT_FOREIGNKEY
}
