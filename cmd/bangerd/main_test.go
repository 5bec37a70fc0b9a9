package main

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/banger/banger/internal/config"
)

func TestResolveConfigPrecedence(t *testing.T) {
	dir := t.TempDir()
	fileDir := filepath.Join(dir, "fromflag")
	if err := os.MkdirAll(fileDir, 0o700); err != nil {
		t.Fatal(err)
	}
	// The config file in the flag's state dir is read.
	if err := os.WriteFile(filepath.Join(fileDir, "config.json"), []byte(`{"vmm":"qemu","accel":"tcg","log_level":"warn"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"BANGER_STATE_DIR": filepath.Join(dir, "fromenv"), "BANGER_ACCEL": "kvm"}
	getenv := func(k string) string { return env[k] }

	cfg, _, err := resolveConfig([]string{"--state-dir", fileDir, "--log-level", "debug"}, getenv)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ name, got, want string }{
		{"state dir (flag over env)", cfg.StateDir, fileDir},
		{"socket follows the state dir", cfg.Socket, filepath.Join(fileDir, "bangerd.sock")},
		{"vmm (file)", cfg.VMM, "qemu"},
		{"accel (env over file)", cfg.Accel, "kvm"},
		{"log level (flag over file)", cfg.LogLevel, "debug"},
	} {
		if c.got != c.want {
			t.Errorf("%s = %q, want %q", c.name, c.got, c.want)
		}
	}

	cfg, _, err = resolveConfig([]string{"--accel", "tcg", "--socket", "/run/b.sock", "--netns", "ns1"}, getenv)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.StateDir != env["BANGER_STATE_DIR"] || cfg.Accel != "tcg" || cfg.Socket != "/run/b.sock" || cfg.Netns != "ns1" {
		t.Errorf("env state dir with flags: %+v", cfg)
	}

	for _, tc := range []struct {
		args []string
		msg  string
	}{
		{[]string{"--vmm", "xen"}, "invalid vmm"},
		{[]string{"--log-level", "loud"}, "invalid log level"},
		{[]string{"--state-dir", "rel/dir"}, "absolute"},
		{[]string{"extra"}, "unexpected arguments"},
		{[]string{"--bogus"}, "bogus"},
	} {
		_, _, err := resolveConfig(tc.args, func(string) string { return "" })
		if err == nil || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("resolveConfig(%q) = %v, want an error with %q", tc.args, err, tc.msg)
		}
	}
}

func TestLockIsExclusive(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "bangerd.lock")
	l, err := acquireLock(path, dir)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(path)
	if strings.TrimSpace(string(b)) != itoa(os.Getpid()) {
		t.Fatalf("lock file holds %q, want our pid", b)
	}
	_, err = acquireLock(path, dir)
	want := "another bangerd (pid " + itoa(os.Getpid()) + ") is already running on state dir " + dir
	if err == nil || err.Error() != want {
		t.Fatalf("second lock: %v, want %q", err, want)
	}
	l.release()
	l2, err := acquireLock(path, dir)
	if err != nil {
		t.Fatalf("lock after release: %v", err)
	}
	l2.release()
}

func TestStateDirModes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	p, gid, err := access("")
	if err != nil || gid != -1 || p.dir != 0o700 || p.socket != 0o600 {
		t.Fatalf("access(\"\") = %+v %d %v", p, gid, err)
	}
	if err := prepareStateDir(dir, p.dir, gid); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(dir)
	if fi.Mode().Perm() != 0o700 {
		t.Fatalf("state dir mode %v, want 0700 (a looser existing mode is tightened)", fi.Mode().Perm())
	}
	sock := filepath.Join(dir, "s.sock")
	if err := os.WriteFile(sock, nil, 0o644); err != nil { // a stale leftover
		t.Fatal(err)
	}
	ln, err := listen(sock, p.socket, gid)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	fi, _ = os.Stat(sock)
	if fi.Mode().Perm() != 0o600 || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("socket mode %v, want a 0600 socket", fi.Mode())
	}
	p, gid, err = access("root")
	if err != nil || gid != 0 || p.dir != 0o750 || p.socket != 0o660 {
		t.Fatalf("access(root) = %+v %d %v", p, gid, err)
	}
	if _, _, err := access("no-such-group-banger"); err == nil || !strings.Contains(err.Error(), "no-such-group-banger") {
		t.Fatalf("unknown group: %v", err)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

// A state directory with VMs but no database is refused: opening would make
// an empty database that accounts for none of them.
func TestMissingDatabase(t *testing.T) {
	cfg := config.Defaults()
	cfg.StateDir = t.TempDir()
	cfg.Finish()
	if err := checkDatabase(cfg); err != nil {
		t.Fatalf("fresh state dir: %v", err)
	}
	if err := os.MkdirAll(filepath.Join(cfg.VMsDir(), "0123abcd"), 0o700); err != nil {
		t.Fatal(err)
	}
	err := checkDatabase(cfg)
	if err == nil || !strings.Contains(err.Error(), "database") || !strings.Contains(err.Error(), cfg.VMsDir()) {
		t.Fatalf("vms without a database: %v, want a refusal naming both", err)
	}
	if err := os.WriteFile(cfg.DBPath(), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := checkDatabase(cfg); err != nil {
		t.Fatalf("with a database: %v", err)
	}
}
