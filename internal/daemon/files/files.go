// Package files is the daemon side of file operations in a running VM's
// guest: read (streamed, optionally a byte range), atomic write, stat,
// list, mkdir, move, remove and tar archives of directories, each one
// shell script run over the pooled SSH connection. The reads (read, stat,
// list, archive) also answer for a stopped VM, from its work disk through
// storage's reader (offline.go).
//
// The guest is hostile: file contents are streamed and never held, and
// what is parsed (stat and listings, NUL-separated) is bounded by
// guest.MaxAnswer and MaxEntries. It owns nothing durable and must not
// touch VM lifecycle (it asks vms.Lookup whether a VM runs), the VMM or
// host networking.
package files

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"path"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/banger/banger/internal/api"
	"github.com/banger/banger/internal/daemon/vms"
	"github.com/banger/banger/internal/errdefs"
	"github.com/banger/banger/internal/guest"
	"github.com/banger/banger/internal/model"
	"github.com/banger/banger/internal/shell"
	"github.com/banger/banger/internal/tail"
)

// Deps are what a Service is made of.
type Deps struct {
	VMs vms.Lookup
	// Dial returns a (pooled) SSH client to a running VM's guest.
	Dial func(ctx context.Context, vm model.VM) (guest.Client, error)
	// TempDir is where a stopped VM's tree is copied to be archived
	// ("" for the system's); CopyLimits bound that copy (zero values:
	// storage.DefaultCopyLimits).
	TempDir string
	// DialData connects to a port a running guest listens on, for the
	// data channel writes take (nil: writes take the SSH session);
	// Transport says which the daemon's configuration wants (TransportTCP
	// or TransportSSH; nil means TCP).
	DialData  func(ctx context.Context, vm model.VM, port int) (net.Conn, error)
	Transport func() string
	// Budget bounds each read out of a guest (zero values:
	// DefaultBudget's); a stopped VM's archive is bounded by it too.
	Budget Budget
}

// Service runs file operations in guests.
type Service struct {
	Deps
}

// New makes a Service.
func New(deps Deps) *Service { return &Service{Deps: deps} }

// MaxEntries bounds a listing: past it the daemon stops parsing rather
// than keep what a guest could make endless.
const MaxEntries = 100_000

// MaxDepth bounds a listing's depth.
const MaxDepth = 64

// Home is what relative guest paths are relative to.
const Home = "/root"

// Exit codes the scripts use for the failures they check before acting;
// anything else is told apart by the tools' messages (guestError).
const (
	exitNotFound = 70
	exitNotDir   = 71
	exitIsDir    = 72
)

// GuestPath makes p absolute (relative to Home) and clean, refusing what
// no guest path can be.
func GuestPath(p string) (string, error) {
	if p == "" {
		return "", errdefs.Errorf(errdefs.CodeInvalid, "no path given: give a guest path (absolute, or relative to %s)", Home)
	}
	if strings.IndexByte(p, 0) >= 0 {
		return "", errdefs.Errorf(errdefs.CodeInvalid, "guest path %q holds a NUL byte", p)
	}
	if !path.IsAbs(p) {
		p = path.Join(Home, p)
	}
	return path.Clean(p), nil
}

// prelude sets the script's variables and the checks every operation
// shares: $p exists (not following a final symlink).
func prelude(vars map[string]string) string {
	keys := make([]string, 0, len(vars))
	for k := range vars {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%s=%s\n", k, shell.Quote(vars[k]))
	}
	fmt.Fprintf(&b, "exists() { [ -e \"$1\" ] || [ -L \"$1\" ] || { printf 'no such file or directory: %%s\\n' \"$1\" >&2; exit %d; }; }\n", exitNotFound)
	fmt.Fprintf(&b, "notdir() { [ ! -d \"$1\" ] || { printf 'is a directory: %%s\\n' \"$1\" >&2; exit %d; }; }\n", exitIsDir)
	fmt.Fprintf(&b, "isdir() { [ -d \"$1\" ] || { printf 'not a directory: %%s\\n' \"$1\" >&2; exit %d; }; }\n", exitNotDir)
	return b.String()
}

// run runs script in vm's guest, streaming stdout to out (which the caller
// bounds when it keeps it) and mapping a failure to an error kind.
func (sv *Service) run(ctx context.Context, vm model.VM, what, script string, stdin io.Reader, out io.Writer) error {
	cli, err := sv.Dial(ctx, vm)
	if err != nil {
		return err
	}
	stderr := &tail.Buffer{Max: 16 << 10}
	code, err := cli.Run(ctx, script, stdin, out, stderr)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return errdefs.Errorf(errdefs.CodeUnavailable, "%s in vm %s: %v", what, vm.Name, err)
	}
	if code != 0 {
		return guestError(vm.Name, what, code, stderr.String())
	}
	return nil
}

// guestError maps a script's failure to an error kind: the scripts' own
// exit codes first, then the tools' messages (GNU coreutils, C locale).
func guestError(vmName, what string, code int, stderr string) error {
	msg := strings.TrimSpace(stderr)
	if i := strings.LastIndexByte(msg, '\n'); i >= 0 {
		msg = msg[i+1:] // the last line says what failed
	}
	if msg == "" {
		msg = fmt.Sprintf("exit status %d", code)
	}
	kind := errdefs.CodeInternal
	// GNU tools say "No space left on device", Go's (banger-init recv,
	// writing a stream) "no space left on device".
	stderr = strings.ToLower(stderr)
	switch {
	case code == exitNotFound:
		kind = errdefs.CodeNotFound
	case code == exitNotDir, code == exitIsDir:
		kind = errdefs.CodeInvalid
	case strings.Contains(stderr, "no space left on device"), strings.Contains(stderr, "disk quota exceeded"):
		return errdefs.Errorf(errdefs.CodeConflict, "%s in vm %s: the guest's disk is full: %s", what, vmName, msg)
	case strings.Contains(stderr, "permission denied"), strings.Contains(stderr, "operation not permitted"),
		strings.Contains(stderr, "read-only file system"):
		// The guest's state refuses it (an immutable file, a read-only
		// mount), not the request's shape: a conflict.
		kind = errdefs.CodeConflict
	case strings.Contains(stderr, "no such file or directory"):
		kind = errdefs.CodeNotFound
	case strings.Contains(stderr, "not a directory"), strings.Contains(stderr, "is a directory"):
		kind = errdefs.CodeInvalid
	case strings.Contains(stderr, "directory not empty"), strings.Contains(stderr, "file exists"):
		kind = errdefs.CodeConflict
	}
	return errdefs.Errorf(kind, "%s in vm %s: %s", what, vmName, msg)
}

// running resolves a VM that runs (a conflict naming how to start it
// otherwise) and cleans p.
func (sv *Service) running(ctx context.Context, ref, p string) (model.VM, string, error) {
	gp, err := GuestPath(p)
	if err != nil {
		return model.VM{}, "", err
	}
	vm, err := sv.VMs.Running(ctx, ref)
	if err != nil {
		return model.VM{}, "", err
	}
	return vm, gp, nil
}

// ReadFile streams the bytes of a file (a range when asked) to w.
func (sv *Service) ReadFile(ctx context.Context, ref string, req api.FileReadRequest, w io.Writer) error {
	if req.Offset < 0 || req.Length < 0 {
		return errdefs.Errorf(errdefs.CodeInvalid, "offset and length must be >= 0")
	}
	vm, p, dp, unlock, err := sv.readVM(ctx, ref, req.Path)
	if err != nil {
		return err
	}
	if unlock != nil {
		defer unlock()
		return sv.readOffline(ctx, vm, p, dp, req, w)
	}
	dd := "dd if=\"$p\" bs=65536 status=none iflag=skip_bytes,count_bytes"
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	bw := newByteBudget(w, sv.Budget, "read "+p+" in vm "+vm.Name, cancel)
	if req.Offset > 0 {
		dd += " skip=" + strconv.FormatInt(req.Offset, 10)
	}
	if req.Length > 0 {
		dd += " count=" + strconv.FormatInt(req.Length, 10)
	}
	script := prelude(map[string]string{"p": p}) + "exists \"$p\"\nnotdir \"$p\"\nexec " + dd + "\n"
	err = sv.run(runCtx, vm, "read "+p, script, nil, bw)
	return budgetError(bw.Err(), err)
}

// WriteFile streams body into p atomically: a temporary file in the same
// directory, renamed over p only once the stream ended and was written
// whole. A failure or a cancel leaves p untouched and removes the
// temporary file.
func (sv *Service) WriteFile(ctx context.Context, ref string, req api.FileWriteRequest, body io.Reader) (api.FileInfo, error) {
	vm, p, err := sv.running(ctx, ref, req.Path)
	if err != nil {
		return api.FileInfo{}, err
	}
	if p == "/" {
		return api.FileInfo{}, errdefs.Errorf(errdefs.CodeInvalid, "cannot write / as a file")
	}
	suffix := make([]byte, 6)
	if _, err := rand.Read(suffix); err != nil {
		return api.FileInfo{}, err
	}
	dir := path.Dir(p)
	vars := map[string]string{"p": p, "d": dir, "t": path.Join(dir, ".banger-write-"+hex.EncodeToString(suffix))}
	var s strings.Builder
	s.WriteString(prelude(vars))
	s.WriteString("notdir \"$p\"\n")
	if req.Parents {
		s.WriteString("mkdir -p -- \"$d\" || exit 1\n")
	}
	s.WriteString("exists \"$d\"\nisdir \"$d\"\n")
	// The stream lands in the temporary file; only once the daemon has
	// read the whole body and the guest's command succeeded does a second
	// command rename it into place. A cancel or a broken body therefore
	// never commits a truncated file, whatever signals the guest's shell
	// did or did not see; the temporary file is removed instead.
	s.WriteString("trap 'rm -f -- \"$t\"' TERM HUP INT PIPE\n")
	s.WriteString("(set -C; umask 077; stream > \"$t\") || { rm -f -- \"$t\"; exit 1; }\n")
	if err := sv.runStream(ctx, vm, "write "+p, s.String(), body); err != nil {
		sv.removeTemp(vm, vars)
		return api.FileInfo{}, err
	}
	var c strings.Builder
	c.WriteString(prelude(vars))
	c.WriteString("trap 'rm -f -- \"$t\"' EXIT\n")
	if req.Mode != nil {
		fmt.Fprintf(&c, "chmod %o -- \"$t\" || exit 1\n", *req.Mode&0o7777)
	} else {
		c.WriteString("if [ -e \"$p\" ]; then chmod --reference=\"$p\" -- \"$t\"; else chmod 644 -- \"$t\"; fi || exit 1\n")
	}
	c.WriteString("mv -f -- \"$t\" \"$p\" || exit 1\n")
	if err := sv.run(ctx, vm, "write "+p, c.String(), nil, nil); err != nil {
		return api.FileInfo{}, err
	}
	return sv.stat(ctx, vm, p)
}

// removeTemp removes a write's temporary file after a failed stream, with
// a context of its own: the request's may be what was cancelled.
func (sv *Service) removeTemp(vm model.VM, vars map[string]string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_ = sv.run(ctx, vm, "remove "+vars["t"], prelude(vars)+"rm -f -- \"$t\"\n", nil, nil)
}

// statFormat is find's record: type, size, mode, mtime, link target and
// path, each ended by NUL (the one byte no name holds).
const statFormat = `%y\0%s\0%m\0%T@\0%l\0%P\0`

const fieldsPerEntry = 6

// StatFile describes p without following a final symlink.
func (sv *Service) StatFile(ctx context.Context, ref, p string) (api.FileInfo, error) {
	vm, gp, dp, unlock, err := sv.readVM(ctx, ref, p)
	if err != nil {
		return api.FileInfo{}, err
	}
	if unlock != nil {
		defer unlock()
		return sv.statOffline(ctx, vm, gp, dp)
	}
	return sv.stat(ctx, vm, gp)
}

func (sv *Service) stat(ctx context.Context, vm model.VM, p string) (api.FileInfo, error) {
	// %P of a starting point is empty; the path is known already.
	script := prelude(map[string]string{"p": p}) + "exists \"$p\"\nexec find \"$p\" -maxdepth 0 -printf " + shell.Quote(statFormat) + "\n"
	infos, err := sv.find(ctx, vm, "stat "+p, script, p, true)
	if err != nil {
		return api.FileInfo{}, err
	}
	if len(infos) != 1 {
		return api.FileInfo{}, errdefs.Errorf(errdefs.CodeInternal, "stat %s in vm %s: the guest gave %d entries for one path", p, vm.Name, len(infos))
	}
	return infos[0], nil
}

// ListFiles lists dir's entries down to depth levels, sorted by path.
func (sv *Service) ListFiles(ctx context.Context, ref, dir string, depth int) ([]api.FileInfo, error) {
	if depth == 0 {
		depth = 1
	}
	if depth < 1 || depth > MaxDepth {
		return nil, errdefs.Errorf(errdefs.CodeInvalid, "invalid depth %d: use 1 to %d", depth, MaxDepth)
	}
	vm, p, dp, unlock, err := sv.readVM(ctx, ref, dir)
	if err != nil {
		return nil, err
	}
	if unlock != nil {
		defer unlock()
		return sv.listOffline(ctx, vm, p, dp, depth)
	}
	// "$p/" makes find start inside a directory p names through a symlink.
	script := prelude(map[string]string{"p": p}) + "exists \"$p\"\nisdir \"$p\"\n" +
		fmt.Sprintf("exec find \"$p/\" -mindepth 1 -maxdepth %d -printf %s\n", depth, shell.Quote(statFormat))
	return sv.find(ctx, vm, "list "+p, script, p, false)
}

// find runs a find script and parses its records, keeping at most
// guest.MaxAnswer bytes and MaxEntries entries.
func (sv *Service) find(ctx context.Context, vm model.VM, what, script, base string, single bool) ([]api.FileInfo, error) {
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	var out bytes.Buffer
	answer := &guest.Answer{W: &out, Max: guest.MaxAnswer, Over: cancel}
	err := sv.run(runCtx, vm, what, script, nil, answer)
	if answer.Overflowed() {
		return nil, errdefs.Errorf(errdefs.CodeInvalid, "%s in vm %s: the listing is larger than %d MiB: list less depth", what, vm.Name, guest.MaxAnswer>>20)
	}
	if err != nil {
		return nil, err
	}
	infos, err := ParseEntries(out.Bytes(), base, single)
	if err != nil {
		return nil, errdefs.Errorf(errdefs.CodeInternal, "%s in vm %s: %v", what, vm.Name, err)
	}
	return infos, nil
}

// ParseEntries parses find -printf statFormat output: records of six
// NUL-ended fields, the path relative to base (empty for base itself when
// single). It refuses what find cannot have printed (relative paths
// climbing out of base, bad numbers) and more than MaxEntries entries.
func ParseEntries(b []byte, base string, single bool) ([]api.FileInfo, error) {
	if len(b) == 0 {
		return []api.FileInfo{}, nil
	}
	if b[len(b)-1] != 0 {
		return nil, fmt.Errorf("malformed listing: it does not end with NUL")
	}
	fields := bytes.Split(b[:len(b)-1], []byte{0})
	if len(fields)%fieldsPerEntry != 0 {
		return nil, fmt.Errorf("malformed listing: %d fields, not a multiple of %d", len(fields), fieldsPerEntry)
	}
	n := len(fields) / fieldsPerEntry
	if n > MaxEntries {
		return nil, fmt.Errorf("more than %d entries: list less depth", MaxEntries)
	}
	infos := make([]api.FileInfo, 0, n)
	for i := 0; i < len(fields); i += fieldsPerEntry {
		f := fields[i : i+fieldsPerEntry]
		info, err := parseEntry(f, base, single)
		if err != nil {
			return nil, fmt.Errorf("malformed entry %d: %w", i/fieldsPerEntry, err)
		}
		infos = append(infos, info)
	}
	sort.Slice(infos, func(i, j int) bool { return infos[i].Path < infos[j].Path })
	return infos, nil
}

func parseEntry(f [][]byte, base string, single bool) (api.FileInfo, error) {
	var info api.FileInfo
	if len(f[0]) != 1 {
		return info, fmt.Errorf("type %q", f[0])
	}
	switch f[0][0] {
	case 'f':
		info.Type = api.FileTypeFile
	case 'd':
		info.Type = api.FileTypeDir
	case 'l':
		info.Type = api.FileTypeSymlink
	default:
		info.Type = api.FileTypeOther
	}
	size, err := strconv.ParseInt(string(f[1]), 10, 64)
	if err != nil || size < 0 {
		return info, fmt.Errorf("size %q", f[1])
	}
	info.Size = size
	mode, err := strconv.ParseUint(string(f[2]), 8, 32)
	if err != nil || mode > 0o7777 {
		return info, fmt.Errorf("mode %q", f[2])
	}
	info.Mode = uint32(mode)
	mt, err := parseMTime(string(f[3]))
	if err != nil {
		return info, err
	}
	info.MTime = mt
	if info.Type == api.FileTypeSymlink {
		info.Target = string(f[4])
	}
	rel := string(f[5])
	switch {
	case single && rel != "":
		return info, fmt.Errorf("path %q for a single stat", rel)
	case !single && (rel == "" || path.IsAbs(rel) || path.Clean(rel) != rel || rel == ".." || strings.HasPrefix(rel, "../")):
		return info, fmt.Errorf("path %q is not below the listed directory", rel)
	}
	info.Path = path.Join(base, rel)
	info.Name = path.Base(info.Path)
	if !utf8.ValidString(info.Path) {
		info.RawPath = []byte(info.Path)
	}
	return info, nil
}

// parseMTime parses find's %T@, seconds with a fraction.
func parseMTime(s string) (time.Time, error) {
	sec, frac, _ := strings.Cut(s, ".")
	secs, err := strconv.ParseInt(sec, 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("mtime %q", s)
	}
	var nsec int64
	if frac != "" {
		if len(frac) > 9 {
			frac = frac[:9]
		}
		frac += strings.Repeat("0", 9-len(frac))
		if nsec, err = strconv.ParseInt(frac, 10, 64); err != nil || nsec < 0 {
			return time.Time{}, fmt.Errorf("mtime %q", s)
		}
	}
	return time.Unix(secs, nsec).UTC(), nil
}

// MakeDir makes p and its missing parents.
func (sv *Service) MakeDir(ctx context.Context, ref, p string) (api.FileInfo, error) {
	vm, gp, err := sv.running(ctx, ref, p)
	if err != nil {
		return api.FileInfo{}, err
	}
	script := prelude(map[string]string{"p": gp}) + "if [ -e \"$p\" ]; then isdir \"$p\"; fi\nexec mkdir -p -- \"$p\"\n"
	if err := sv.run(ctx, vm, "mkdir "+gp, script, nil, nil); err != nil {
		return api.FileInfo{}, err
	}
	return sv.stat(ctx, vm, gp)
}

// MoveFile renames from to to; to names the new path (mv -T), replacing a
// file or an empty directory there.
func (sv *Service) MoveFile(ctx context.Context, ref, from, to string) (api.FileInfo, error) {
	vm, src, err := sv.running(ctx, ref, from)
	if err != nil {
		return api.FileInfo{}, err
	}
	dst, err := GuestPath(to)
	if err != nil {
		return api.FileInfo{}, err
	}
	if src == "/" || dst == "/" {
		return api.FileInfo{}, errdefs.Errorf(errdefs.CodeInvalid, "cannot move / or onto /")
	}
	script := prelude(map[string]string{"s": src, "t": dst}) + "exists \"$s\"\nexec mv -T -f -- \"$s\" \"$t\"\n"
	if err := sv.run(ctx, vm, "move "+src+" to "+dst, script, nil, nil); err != nil {
		return api.FileInfo{}, err
	}
	return sv.stat(ctx, vm, dst)
}

// RemoveFile removes a file, a symlink or an empty directory; recursive
// removes a whole tree.
func (sv *Service) RemoveFile(ctx context.Context, ref, p string, recursive bool) error {
	vm, gp, err := sv.running(ctx, ref, p)
	if err != nil {
		return err
	}
	if gp == "/" {
		return errdefs.Errorf(errdefs.CodeInvalid, "refusing to remove /")
	}
	script := prelude(map[string]string{"p": gp}) + "exists \"$p\"\n"
	if recursive {
		script += "exec rm -rf -- \"$p\"\n"
	} else {
		script += "if [ -d \"$p\" ] && [ ! -L \"$p\" ]; then exec rmdir -- \"$p\"; fi\nexec rm -f -- \"$p\"\n"
	}
	return sv.run(ctx, vm, "remove "+gp, script, nil, nil)
}

// ReadArchive streams a tar of dir's contents (names relative to it) to w.
func (sv *Service) ReadArchive(ctx context.Context, ref, dir string, w io.Writer) error {
	vm, p, dp, unlock, err := sv.readVM(ctx, ref, dir)
	if err != nil {
		return err
	}
	if unlock != nil {
		defer unlock()
		return sv.archiveOffline(ctx, vm, p, dp, w)
	}
	script := prelude(map[string]string{"p": p}) + "exists \"$p\"\nisdir \"$p\"\nexec tar -C \"$p\" -b 256 -cf - .\n"
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	tb := newTarBudget(w, sv.Budget, "archive "+p+" in vm "+vm.Name, cancel)
	err = sv.run(runCtx, vm, "archive "+p, script, nil, tb)
	return budgetError(tb.Close(), err)
}

// WriteArchive unpacks a tar stream into dir (made when missing), keeping
// modes, mtimes and symlinks; files are owned by the guest's root.
func (sv *Service) WriteArchive(ctx context.Context, ref, dir string, tar io.Reader) (api.FileInfo, error) {
	vm, p, err := sv.running(ctx, ref, dir)
	if err != nil {
		return api.FileInfo{}, err
	}
	// 128 KiB reads (-b 256, -B: whole records from a pipe) rather than
	// tar's 10 KiB: under emulation each read and context switch is dear.
	script := prelude(map[string]string{"p": p}) + "if [ -e \"$p\" ]; then isdir \"$p\"; fi\nmkdir -p -- \"$p\" || exit 1\n" +
		"stream | tar -C \"$p\" -x -b 256 -B -pf - --no-same-owner || exit 1\n" +
		"cat >/dev/null\n" // the rest (tar may stop at its end blocks), so the sender finishes
	if err := sv.runStream(ctx, vm, "unpack into "+p, script, tar); err != nil {
		return api.FileInfo{}, err
	}
	return sv.stat(ctx, vm, p)
}
