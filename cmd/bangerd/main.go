// Command bangerd is banger's daemon: it owns every piece of host state
// (VMs, taps, disks, the store) and serves the API on a unix socket.
//
// This file only wires the process: configuration, the state directory and
// its lock, logging, signals, and the HTTP server over the daemon. The VM
// logic lives in internal/daemon; bangerd must not grow any.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/banger/banger/internal/api"
	"github.com/banger/banger/internal/config"
	"github.com/banger/banger/internal/daemon"
	"github.com/banger/banger/internal/hostnet"
	"github.com/banger/banger/internal/store"
	"github.com/banger/banger/internal/version"
)

// shutdownGrace is how long in-flight requests get to finish on SIGTERM.
const shutdownGrace = 30 * time.Second

func main() {
	os.Exit(run(os.Args[1:], os.Getenv, os.Stderr))
}

func run(args []string, getenv func(string) string, stderr io.Writer) int {
	cfg, showVersion, err := resolveConfig(args, getenv)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(stderr, "bangerd: %v\n", err)
		return 2
	}
	if showVersion {
		v := version.Current()
		fmt.Fprintf(stderr, "bangerd %s %s %s\n", v.Version, v.Commit, v.GoVersion)
		return 0
	}
	if err := serve(cfg, stderr); err != nil {
		fmt.Fprintf(stderr, "bangerd: %v\n", err)
		return 1
	}
	return 0
}

// resolveConfig applies flags over config.Load (defaults, config file,
// environment). --state-dir is fed to Load as BANGER_STATE_DIR so that
// the config file and the derived socket path follow it.
func resolveConfig(args []string, getenv func(string) string) (config.Config, bool, error) {
	fs := flag.NewFlagSet("bangerd", flag.ContinueOnError)
	var (
		stateDir = fs.String("state-dir", "", "state directory (env BANGER_STATE_DIR; default /var/lib/banger)")
		socket   = fs.String("socket", "", "API socket (env BANGER_SOCKET; default <state-dir>/bangerd.sock)")
		netns    = fs.String("netns", "", "network namespace for all VM networking (env BANGER_NETNS)")
		vmm      = fs.String("vmm", "", "VMM for new VMs: auto, firecracker or qemu (env BANGER_VMM)")
		accel    = fs.String("accel", "", "QEMU acceleration: auto, kvm or tcg (env BANGER_ACCEL)")
		logLevel = fs.String("log-level", "", "debug, info, warn or error (env BANGER_LOG_LEVEL)")
		cacheDir = fs.String("cache-dir", "", "build cache directory (env BANGER_CACHE_DIR)")
		version  = fs.Bool("version", false, "print the version and exit")
	)
	if err := fs.Parse(args); err != nil {
		return config.Config{}, false, err
	}
	if fs.NArg() > 0 {
		return config.Config{}, false, fmt.Errorf("unexpected arguments %q: bangerd takes only flags", fs.Args())
	}
	env := getenv
	if *stateDir != "" {
		env = func(k string) string {
			if k == "BANGER_STATE_DIR" {
				return *stateDir
			}
			return getenv(k)
		}
	}
	cfg, err := config.Load(env)
	if err != nil {
		return cfg, false, err
	}
	for _, f := range []struct {
		v   string
		dst *string
	}{
		{*socket, &cfg.Socket}, {*netns, &cfg.Netns}, {*vmm, &cfg.VMM}, {*accel, &cfg.Accel},
		{*logLevel, &cfg.LogLevel}, {*cacheDir, &cfg.CacheDir},
	} {
		if f.v != "" {
			*f.dst = f.v
		}
	}
	if err := cfg.Validate(); err != nil {
		return cfg, false, err
	}
	if _, err := parseLevel(cfg.LogLevel); err != nil {
		return cfg, false, err
	}
	return cfg, *version, nil
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return l, fmt.Errorf("invalid log level %q: use debug, info, warn or error", s)
	}
	return l, nil
}

func serve(cfg config.Config, stderr io.Writer) error {
	// Networking lives in the namespace: move there before anything else,
	// so that the lock, the socket and every child are made from inside.
	if cfg.Netns != "" {
		if err := hostnet.EnterNetns(cfg.Netns); err != nil {
			return err
		}
	}
	perm, gid, err := access(cfg.Group)
	if err != nil {
		return err
	}
	// Everything bangerd and its children create (database, WAL, VM
	// files) is private to root, or to root and the group.
	syscall.Umask(int(0o777 &^ perm.dir))
	if err := prepareStateDir(cfg.StateDir, perm.dir, gid); err != nil {
		return err
	}
	lock, err := acquireLock(cfg.LockPath(), cfg.StateDir)
	if err != nil {
		return err
	}
	defer lock.release()

	log, closeLog, err := newLogger(cfg, stderr, perm.file, gid)
	if err != nil {
		return err
	}
	defer closeLog()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	if err := checkDatabase(cfg); err != nil {
		return err
	}
	st, err := store.Open(cfg.DBPath())
	if err != nil {
		return err
	}
	defer st.Close()
	if err := os.Chmod(cfg.DBPath(), perm.file); err != nil {
		return fmt.Errorf("database permissions: %w", err)
	}

	d, err := daemon.New(cfg, st, log)
	if err != nil {
		return fmt.Errorf("daemon: %w", err)
	}
	if err := d.Start(ctx); err != nil {
		d.Close()
		return fmt.Errorf("daemon start: %w", err)
	}
	defer d.Close()

	ln, err := listen(cfg.Socket, perm.socket, gid)
	if err != nil {
		return err
	}
	defer os.Remove(cfg.Socket)

	srv := &http.Server{
		Handler:           api.NewHandler(d, log),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	log.Info("bangerd ready", "pid", os.Getpid(), "state_dir", cfg.StateDir, "socket", cfg.Socket, "netns", cfg.Netns)

	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	log.Info("bangerd stopping: letting requests finish", "grace", shutdownGrace)
	sctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		log.Warn("requests still running after the grace period: closing them", "err", err)
		srv.Close()
	}
	log.Info("bangerd stopped")
	return nil
}

// perms are the modes of what bangerd creates: root only, or a group too.
type perms struct {
	dir, file, socket os.FileMode
}

// access resolves the configured group; gid is -1 without one.
func access(group string) (perms, int, error) {
	if group == "" {
		return perms{dir: 0o700, file: 0o600, socket: 0o600}, -1, nil
	}
	gid, err := lookupGroup(group)
	if err != nil {
		return perms{}, 0, err
	}
	return perms{dir: 0o750, file: 0o640, socket: 0o660}, gid, nil
}

// prepareStateDir creates the state directory and forces its mode, also
// when it already existed with a looser one.
func prepareStateDir(dir string, mode os.FileMode, gid int) error {
	if err := os.MkdirAll(dir, mode); err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	if err := os.Chmod(dir, mode); err != nil {
		return fmt.Errorf("state dir %s: %w", dir, err)
	}
	if gid >= 0 {
		if err := os.Chown(dir, -1, gid); err != nil {
			return fmt.Errorf("state dir %s: set group: %w", dir, err)
		}
	}
	return nil
}

// listen opens the API socket. A socket file left by a dead bangerd is
// removed: holding the lock proves nobody serves it.
func listen(path string, mode os.FileMode, gid int) (net.Listener, error) {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale socket %s: %w", path, err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, mode); err != nil {
		ln.Close()
		return nil, fmt.Errorf("socket %s: %w", path, err)
	}
	if gid >= 0 {
		if err := os.Chown(path, -1, gid); err != nil {
			ln.Close()
			return nil, fmt.Errorf("socket %s: set group: %w", path, err)
		}
	}
	return ln, nil
}

// newLogger logs JSON to the state dir's log file and text to stderr,
// unless stderr already is that file (the CLI starts bangerd that way).
func newLogger(cfg config.Config, stderr io.Writer, mode os.FileMode, gid int) (*slog.Logger, func(), error) {
	level, err := parseLevel(cfg.LogLevel)
	if err != nil {
		return nil, nil, err
	}
	f, err := os.OpenFile(cfg.LogPath(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, mode)
	if err != nil {
		return nil, nil, fmt.Errorf("log file: %w", err)
	}
	_ = f.Chmod(mode)
	if gid >= 0 {
		_ = f.Chown(-1, gid)
	}
	opts := &slog.HandlerOptions{Level: level}
	handlers := []slog.Handler{slog.NewJSONHandler(f, opts)}
	if !sameFile(stderr, f) {
		handlers = append(handlers, slog.NewTextHandler(stderr, opts))
	}
	return slog.New(slog.NewMultiHandler(handlers...)), func() { f.Close() }, nil
}

func sameFile(w io.Writer, f *os.File) bool {
	wf, ok := w.(*os.File)
	if !ok {
		return false
	}
	a, err1 := wf.Stat()
	b, err2 := f.Stat()
	return err1 == nil && err2 == nil && os.SameFile(a, b)
}

func lookupGroup(name string) (int, error) {
	g, err := userLookupGroup(name)
	if err != nil {
		return 0, fmt.Errorf("group %q: %w: create it or unset group in the config", name, err)
	}
	return g, nil
}

// checkDatabase refuses to start over a state directory that holds VMs,
// images or kernels but no database: opening would make an empty one, and
// the daemon would then account for none of them. A missing database is
// only normal in a fresh state directory.
func checkDatabase(cfg config.Config) error {
	if _, err := os.Stat(cfg.DBPath()); !errors.Is(err, os.ErrNotExist) {
		return nil
	}
	for _, dir := range []string{cfg.VMsDir(), cfg.ImagesDir(), cfg.KernelsDir()} {
		entries, err := os.ReadDir(dir)
		if err == nil && len(entries) > 0 {
			return fmt.Errorf("the database %s is missing but %s holds %d entries: restore the database, or move %s aside to start afresh (bangerd never deletes what it cannot account for)",
				cfg.DBPath(), dir, len(entries), cfg.StateDir)
		}
	}
	return nil
}
