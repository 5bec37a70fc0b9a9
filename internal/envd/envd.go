// Package envd is banger's in-guest implementation of E2B's sandbox API
// ("envd"): the process and filesystem Connect services of
// internal/envd/spec, `GET/POST /files` and `/health`, served over HTTP/1.1
// on the guest's port 49983 by `banger-init envd`.
//
// Every request except `GET /health` must carry the access token the daemon
// set (`X-Access-Token`); `/files` also accepts a signature derived from it.
// The token is never chosen here: the caller passes it in Config. Commands
// run as the account the request names (`Authorization: Basic
// base64("name:")`) or as Config.DefaultUser; background processes outlive
// the stream that started them and can be re-attached by pid or tag.
//
// It owns the processes it starts and the files it is asked to touch; it
// knows nothing of the host, VMs or the control plane, so its tests run it
// as a plain process on 127.0.0.1.
package envd

import (
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"

	"github.com/banger/banger/internal/envd/spec/filesystem/filesystemconnect"
	"github.com/banger/banger/internal/envd/spec/process/processconnect"
)

// Version is the envd API version this package implements, reported to the
// SDK (which turns features on by comparing it): stdin control (0.3.0),
// default user (0.4.0), CloseStdin (0.5.2), octet-stream uploads
// (0.5.7), file metadata (0.6.2), entries in watch events (0.6.3) and
// watching network mounts only when asked (0.6.4).
const Version = "0.6.4"

// Port is the guest port envd listens on.
const Port = 49983

// RunDir is where a guest keeps envd's token, environment, pid and log:
// root's, mode 0700, on tmpfs (nothing of it outlives a boot).
const RunDir = "/run/banger-envd"

// Config is what a Server needs; Token is mandatory.
type Config struct {
	// Token is the access token every request must carry.
	Token string
	// DefaultUser runs commands and owns written files when a request
	// names no user ("user" in banger's images).
	DefaultUser string
	// Env is the default environment of every command (the sandbox's
	// envVars), under the variables a request sets.
	Env map[string]string
	// Keepalive is the longest silence on a stream before a keepalive
	// event; 0 means 30 s. A client's Keepalive-Ping-Interval (seconds)
	// shortens it.
	Keepalive time.Duration
}

// Server serves envd. Close ends the processes it started.
type Server struct {
	cfg   Config
	procs *processes
	fs    *fsService
	mux   *http.ServeMux
	// mu guards cfg.Token and cfg.Env, which Reconfigure replaces.
	mu sync.RWMutex
}

// New validates cfg and returns a server.
func New(cfg Config) (*Server, error) {
	if cfg.Token == "" {
		return nil, errors.New("envd: an access token is required")
	}
	if cfg.DefaultUser == "" {
		cfg.DefaultUser = "user"
	}
	if cfg.Keepalive <= 0 {
		cfg.Keepalive = 30 * time.Second
	}
	s := &Server{cfg: cfg, mux: http.NewServeMux()}
	s.procs = newProcesses(s)
	s.fs = newFS(s)
	path, h := processconnect.NewProcessHandler(s.procs)
	s.mux.Handle(path, s.requireToken(h))
	path, h = filesystemconnect.NewFilesystemHandler(s.fs)
	s.mux.Handle(path, s.requireToken(h))
	s.mux.HandleFunc("GET /health", func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusNoContent)
	})
	s.mux.HandleFunc("GET /files", s.getFile)
	s.mux.HandleFunc("POST /files", s.postFiles)
	s.mux.Handle("/", s.requireToken(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		httpError(w, http.StatusNotFound, "no such envd route: "+r.Method+" "+r.URL.Path)
	})))
	return s, nil
}

// Handler is the HTTP handler of every envd route.
func (s *Server) Handler() http.Handler { return s.mux }

// Reconfigure replaces the access token and the default environment: a
// sandbox made from a snapshot of another gets its own token (the old
// one stops working at once) and its own envVars, while the processes
// the snapshot holds keep running. Requests in flight finish under the
// token they were let in with.
func (s *Server) Reconfigure(token string, env map[string]string) error {
	if token == "" {
		return errors.New("envd: an access token is required")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cfg.Token, s.cfg.Env = token, env
	return nil
}

// token is the access token now.
func (s *Server) token() string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.cfg.Token
}

// defaultEnv is the default environment now (not to be modified).
func (s *Server) defaultEnv() map[string]string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.cfg.Env
}

// Close kills the processes still running and stops the watchers.
func (s *Server) Close() {
	s.procs.closeAll()
	s.fs.closeAll()
}

// TokenOK reports whether got is the access token, in constant time.
func TokenOK(want, got string) bool {
	if want == "" || got == "" {
		return false
	}
	return subtle.ConstantTimeCompare([]byte(want), []byte(got)) == 1
}

func (s *Server) requireToken(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !TokenOK(s.token(), r.Header.Get("X-Access-Token")) {
			httpError(w, http.StatusUnauthorized, "missing or wrong X-Access-Token")
			return
		}
		next.ServeHTTP(w, r)
	})
}

// Signature is the signature of a /files URL: "v1_" and the unpadded
// base64 of sha256("path:operation:user:token[:expiry]"); expiry 0 means
// none.
func Signature(path, operation, username, token string, expiry int64) string {
	raw := path + ":" + operation + ":" + username + ":" + token
	if expiry != 0 {
		raw += ":" + strconv.FormatInt(expiry, 10)
	}
	return "v1_" + base64.RawStdEncoding.EncodeToString(sha256Sum(raw))
}

// SignatureOK checks a /files request's signature against the token:
// path, operation and user as the request names them, expiry (unix
// seconds, 0 for none) not passed at now.
func SignatureOK(token, sig, path, operation, username string, expiry int64, now time.Time) bool {
	if token == "" || !strings.HasPrefix(sig, "v1_") {
		return false
	}
	if expiry != 0 && now.Unix() > expiry {
		return false
	}
	want := Signature(path, operation, username, token, expiry)
	return subtle.ConstantTimeCompare([]byte(want), []byte(sig)) == 1
}

// account is a guest user commands run as.
type account struct {
	name     string
	uid, gid uint32
	groups   []uint32
	home     string
}

// requestUser is the user a request names: Authorization Basic "name:",
// else the default user.
func (s *Server) requestUser(h http.Header) (string, error) {
	auth := h.Get("Authorization")
	if auth == "" {
		return s.cfg.DefaultUser, nil
	}
	name, err := basicUser(auth)
	if err != nil {
		return "", err
	}
	if name == "" {
		return s.cfg.DefaultUser, nil
	}
	return name, nil
}

// basicUser returns the user name of an "Authorization: Basic" value.
func basicUser(v string) (string, error) {
	const prefix = "Basic "
	if !strings.HasPrefix(v, prefix) {
		return "", fmt.Errorf("authorization header: want Basic, got %q", strings.SplitN(v, " ", 2)[0])
	}
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(v[len(prefix):]))
	if err != nil {
		return "", fmt.Errorf("authorization header: %w", err)
	}
	name, _, _ := strings.Cut(string(raw), ":")
	return name, nil
}

// lookupAccount finds a guest user by name in the guest's passwd/group.
func lookupAccount(name string) (account, error) {
	u, err := user.Lookup(name)
	if err != nil {
		return account{}, fmt.Errorf("user %q: %w", name, err)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err1 != nil || err2 != nil {
		return account{}, fmt.Errorf("user %q: non-numeric uid/gid", name)
	}
	a := account{name: name, uid: uint32(uid), gid: uint32(gid), home: u.HomeDir}
	if ids, err := u.GroupIds(); err == nil {
		for _, id := range ids {
			if g, err := strconv.ParseUint(id, 10, 32); err == nil {
				a.groups = append(a.groups, uint32(g))
			}
		}
	}
	if a.home == "" {
		a.home = "/"
	}
	return a, nil
}

// resolve turns a request path into an absolute one: relative paths and
// "~" are under the user's home.
func resolve(p string, a account) string {
	switch {
	case p == "" || p == "~":
		return a.home
	case strings.HasPrefix(p, "~/"):
		return filepath.Join(a.home, p[2:])
	case !filepath.IsAbs(p):
		return filepath.Join(a.home, p)
	}
	return filepath.Clean(p)
}

// chown gives path to the account when envd runs as root; elsewhere (tests
// as an ordinary user) ownership stays as made.
func chown(path string, a account) {
	if os.Geteuid() == 0 {
		_ = os.Lchown(path, int(a.uid), int(a.gid))
	}
}

// mkdirAs makes dir and its missing parents, each new one owned by a.
func mkdirAs(dir string, a account) error {
	if fi, err := os.Stat(dir); err == nil {
		if !fi.IsDir() {
			return fmt.Errorf("%s is not a directory", dir)
		}
		return nil
	}
	if parent := filepath.Dir(dir); parent != dir {
		if err := mkdirAs(parent, a); err != nil {
			return err
		}
	}
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	chown(dir, a)
	return nil
}

// httpError writes the {code, message} error body of envd's HTTP routes.
func httpError(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"code": status, "message": msg})
}

// connectErr maps a file system error to a Connect error code.
func connectErr(err error) error {
	switch {
	case errors.Is(err, os.ErrNotExist):
		return connect.NewError(connect.CodeNotFound, err)
	case errors.Is(err, os.ErrExist):
		return connect.NewError(connect.CodeAlreadyExists, err)
	case errors.Is(err, os.ErrPermission):
		return connect.NewError(connect.CodePermissionDenied, err)
	}
	var ce *connect.Error
	if errors.As(err, &ce) {
		return err
	}
	return connect.NewError(connect.CodeInternal, err)
}

// keepaliveEvery is how often a stream sends a keepalive: the server's
// setting, shortened by the client's Keepalive-Ping-Interval (seconds).
func (s *Server) keepaliveEvery(h http.Header) time.Duration {
	d := s.cfg.Keepalive
	if v, err := strconv.Atoi(h.Get("Keepalive-Ping-Interval")); err == nil && v > 0 {
		if c := time.Duration(v) * time.Second; c < d {
			d = c
		}
	}
	return d
}

// userFor resolves the account of a Connect request.
func (s *Server) userFor(h http.Header) (account, error) {
	name, err := s.requestUser(h)
	if err != nil {
		return account{}, connect.NewError(connect.CodeUnauthenticated, err)
	}
	a, err := lookupAccount(name)
	if err != nil {
		return account{}, connect.NewError(connect.CodePermissionDenied, err)
	}
	return a, nil
}
