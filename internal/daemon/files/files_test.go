package files

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/banger/banger/internal/api"
	"github.com/banger/banger/internal/errdefs"
	"github.com/banger/banger/internal/guest"
	"github.com/banger/banger/internal/model"
)

// hostGuest runs the guest scripts on this host with sh, as sshd would,
// against absolute paths under a test's temp directory.
type hostGuest struct{}

func (hostGuest) Run(ctx context.Context, cmd string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	c := exec.CommandContext(ctx, "sh", "-c", cmd)
	c.Env = append(os.Environ(), "LC_ALL=C")
	c.Stdout, c.Stderr = stdout, stderr
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	c.Cancel = func() error { return syscall.Kill(-c.Process.Pid, syscall.SIGTERM) }
	c.WaitDelay = 10 * time.Second
	var in io.WriteCloser
	stdinErr := make(chan error, 1)
	if stdin != nil {
		var err error
		if in, err = c.StdinPipe(); err != nil {
			return -1, err
		}
	}
	if err := c.Start(); err != nil {
		return -1, err
	}
	if in != nil {
		// As guest.Client.Run does: a failing stdin stops the command
		// (TERM to its group), the session's end closes its stdin, and
		// the run fails whatever the command's exit code.
		go func() {
			rr := &readErr{r: stdin}
			_, _ = io.Copy(in, rr)
			if rr.err != nil {
				// A read error, not the command going away (a write
				// error, which Wait reports as the command's exit).
				stdinErr <- rr.err
				_ = syscall.Kill(-c.Process.Pid, syscall.SIGTERM)
			}
			in.Close()
		}()
	}
	err := c.Wait()
	select {
	case serr := <-stdinErr:
		return -1, fmt.Errorf("reading the command's stdin: %w", serr)
	default:
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), nil
	}
	if err != nil {
		return -1, err
	}
	return 0, nil
}

func (hostGuest) Close() error { return nil }

// readErr keeps the error its reader returned (io.EOF aside).
type readErr struct {
	r   io.Reader
	err error
}

func (r *readErr) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if err != nil && err != io.EOF && r.err == nil {
		r.err = err
	}
	return n, err
}

// fakeVMs knows one VM, "vm", running unless stopped.
type fakeVMs struct {
	stopped bool
	state   model.VMState // recorded state when stopped ("": stopped)
	disk    string        // its work disk
}

func (f fakeVMs) Resolve(_ context.Context, ref string) (model.VM, error) {
	if ref != "vm" {
		return model.VM{}, errdefs.NotFound("vm", ref)
	}
	return model.VM{ID: "vm", Name: "vm", WorkDisk: f.disk, State: f.state}, nil
}

func (f fakeVMs) Running(ctx context.Context, ref string) (model.VM, error) {
	vm, err := f.Resolve(ctx, ref)
	if err == nil && f.stopped {
		err = errdefs.Errorf(errdefs.CodeConflict, "vm %s is not running: start it with banger vm start %s", ref, ref)
	}
	return vm, err
}

func (f fakeVMs) Alive(model.VM) bool { return !f.stopped }

func (f fakeVMs) Lock(ctx context.Context, ref string) (model.VM, func(), error) {
	vm, err := f.Resolve(ctx, ref)
	return vm, func() {}, err
}

func newService(t *testing.T) (*Service, string) {
	t.Helper()
	for _, bin := range []string{"find", "dd", "tar"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("%s is not installed", bin)
		}
	}
	sv := New(Deps{VMs: fakeVMs{}, Dial: func(context.Context, model.VM) (guest.Client, error) { return hostGuest{}, nil }})
	return sv, t.TempDir()
}

func wantCode(t *testing.T, err error, code string) {
	t.Helper()
	if errdefs.CodeOf(err) != code {
		t.Fatalf("err = %v (%s), want code %s", err, errdefs.CodeOf(err), code)
	}
}

func TestGuestPath(t *testing.T) {
	for in, want := range map[string]string{"/a/../b/": "/b", "x/y": "/root/x/y", ".": "/root", "/": "/"} {
		if got, err := GuestPath(in); err != nil || got != want {
			t.Errorf("GuestPath(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "a\x00b"} {
		if _, err := GuestPath(bad); errdefs.CodeOf(err) != errdefs.CodeInvalid {
			t.Errorf("GuestPath(%q): %v, want invalid", bad, err)
		}
	}
}

func TestWriteReadStat(t *testing.T) {
	sv, dir := newService(t)
	ctx := context.Background()
	p := filepath.Join(dir, "sub", "a file\nwith newline")
	mode := uint32(0o750)
	if _, err := sv.WriteFile(ctx, "vm", api.FileWriteRequest{Path: p, Mode: &mode}, strings.NewReader("x")); errdefs.CodeOf(err) != errdefs.CodeNotFound {
		t.Fatalf("write without parents: %v, want not found", err)
	}
	info, err := sv.WriteFile(ctx, "vm", api.FileWriteRequest{Path: p, Mode: &mode, Parents: true}, strings.NewReader("hello world"))
	if err != nil {
		t.Fatal(err)
	}
	if info.Path != p || info.Type != api.FileTypeFile || info.Size != 11 || info.Mode != 0o750 || time.Since(info.MTime) > time.Minute {
		t.Errorf("info = %+v", info)
	}
	// Without a mode, an existing file keeps its own.
	if info, err = sv.WriteFile(ctx, "vm", api.FileWriteRequest{Path: p}, strings.NewReader("hello again")); err != nil || info.Mode != 0o750 {
		t.Fatalf("rewrite: %+v, %v", info, err)
	}
	var buf bytes.Buffer
	if err := sv.ReadFile(ctx, "vm", api.FileReadRequest{Path: p, Offset: 6, Length: 3}, &buf); err != nil || buf.String() != "aga" {
		t.Fatalf("range read = %q, %v", buf.String(), err)
	}
	buf.Reset()
	if err := sv.ReadFile(ctx, "vm", api.FileReadRequest{Path: p}, &buf); err != nil || buf.String() != "hello again" {
		t.Fatalf("read = %q, %v", buf.String(), err)
	}
	ents, _ := os.ReadDir(filepath.Dir(p))
	if len(ents) != 1 {
		t.Errorf("temporary files left: %v", ents)
	}

	wantCode(t, sv.ReadFile(ctx, "vm", api.FileReadRequest{Path: filepath.Join(dir, "missing")}, io.Discard), errdefs.CodeNotFound)
	wantCode(t, sv.ReadFile(ctx, "vm", api.FileReadRequest{Path: dir}, io.Discard), errdefs.CodeInvalid)
	_, err = sv.WriteFile(ctx, "vm", api.FileWriteRequest{Path: dir}, strings.NewReader("x"))
	wantCode(t, err, errdefs.CodeInvalid)
	_, err = sv.WriteFile(ctx, "vm", api.FileWriteRequest{Path: filepath.Join(p, "under-a-file")}, strings.NewReader("x"))
	wantCode(t, err, errdefs.CodeInvalid)
	_, err = sv.StatFile(ctx, "vm", filepath.Join(dir, "missing"))
	wantCode(t, err, errdefs.CodeNotFound)
}

// A body that fails mid-stream leaves the old file and no temporary file.
func TestWriteFailedBodyKeepsFile(t *testing.T) {
	sv, dir := newService(t)
	p := filepath.Join(dir, "keep")
	os.WriteFile(p, []byte("old"), 0o644)
	body := io.MultiReader(strings.NewReader("new data"), errReader{})
	if _, err := sv.WriteFile(context.Background(), "vm", api.FileWriteRequest{Path: p}, body); err == nil {
		t.Fatal("write with a failing body succeeded")
	}
	if b, _ := os.ReadFile(p); string(b) != "old" {
		t.Errorf("file = %q, want old", b)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		ents, _ := os.ReadDir(dir)
		if len(ents) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("temporary file left: %v", ents)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("client went away") }

func TestListHostileNames(t *testing.T) {
	sv, dir := newService(t)
	ctx := context.Background()
	names := []string{"plain", "with space", "new\nline", "bad\xffutf8", "-dash", "tab\there"}
	for _, n := range names {
		if err := os.WriteFile(filepath.Join(dir, n), []byte(n), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	os.Mkdir(filepath.Join(dir, "d"), 0o700)
	os.WriteFile(filepath.Join(dir, "d", "deep"), nil, 0o644)
	os.Symlink("plain", filepath.Join(dir, "link"))

	ents, err := sv.ListFiles(ctx, "vm", dir, 1)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]api.FileInfo{}
	for _, e := range ents {
		got[strings.TrimPrefix(e.Path, dir+"/")] = e
	}
	for _, n := range names {
		e, ok := got[n]
		if !ok || e.Type != api.FileTypeFile || e.Size != int64(len(n)) || e.Mode != 0o600 || e.Name != n {
			t.Errorf("entry %q = %+v (found %v)", n, e, ok)
		}
	}
	if e := got["bad\xffutf8"]; string(e.RawPath) != e.Path {
		t.Errorf("non-UTF-8 entry has raw_path %q", e.RawPath)
	}
	if e := got["link"]; e.Type != api.FileTypeSymlink || e.Target != "plain" {
		t.Errorf("link = %+v", e)
	}
	if _, ok := got["d/deep"]; ok || len(ents) != len(names)+2 {
		t.Errorf("depth 1 listed %d entries", len(ents))
	}
	if ents, err = sv.ListFiles(ctx, "vm", dir, 2); err != nil || len(ents) != len(names)+3 {
		t.Errorf("depth 2: %d entries, %v", len(ents), err)
	}
	_, err = sv.ListFiles(ctx, "vm", filepath.Join(dir, "plain"), 1)
	wantCode(t, err, errdefs.CodeInvalid)
	_, err = sv.ListFiles(ctx, "vm", filepath.Join(dir, "nope"), 1)
	wantCode(t, err, errdefs.CodeNotFound)
	_, err = sv.ListFiles(ctx, "vm", dir, MaxDepth+1)
	wantCode(t, err, errdefs.CodeInvalid)
}

func TestParseEntriesHostile(t *testing.T) {
	ok := "f\x003\x00644\x001700000000.5\x00\x00a\nb\x00"
	infos, err := ParseEntries([]byte(ok), "/x", false)
	if err != nil || len(infos) != 1 || infos[0].Path != "/x/a\nb" || infos[0].MTime != time.Unix(1700000000, 5e8).UTC() {
		t.Fatalf("ParseEntries = %+v, %v", infos, err)
	}
	for name, bad := range map[string]string{
		"no final NUL":  strings.TrimSuffix(ok, "\x00"),
		"short":         "f\x003\x00644\x00",
		"climbs out":    "f\x003\x00644\x001\x00\x00../etc/passwd\x00",
		"absolute":      "f\x003\x00644\x001\x00\x00/etc/passwd\x00",
		"unclean":       "f\x003\x00644\x001\x00\x00a/../../b\x00",
		"bad size":      "f\x00-3\x00644\x001\x00\x00a\x00",
		"bad mode":      "f\x003\x0099999\x001\x00\x00a\x00",
		"bad type":      "ff\x003\x00644\x001\x00\x00a\x00",
		"bad mtime":     "f\x003\x00644\x00x\x00\x00a\x00",
		"empty in list": "f\x003\x00644\x001\x00\x00\x00",
	} {
		if _, err := ParseEntries([]byte(bad), "/x", false); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	many := bytes.Repeat([]byte("f\x000\x00644\x001\x00\x00a\x00"), MaxEntries+1)
	if _, err := ParseEntries(many, "/x", false); err == nil {
		t.Error("more than MaxEntries accepted")
	}
}

func TestMkdirMoveRemove(t *testing.T) {
	sv, dir := newService(t)
	ctx := context.Background()
	d := filepath.Join(dir, "a", "b")
	if info, err := sv.MakeDir(ctx, "vm", d); err != nil || info.Type != api.FileTypeDir {
		t.Fatalf("mkdir: %+v, %v", info, err)
	}
	if _, err := sv.MakeDir(ctx, "vm", d); err != nil {
		t.Fatalf("mkdir of an existing dir: %v", err)
	}
	f := filepath.Join(d, "f")
	os.WriteFile(f, []byte("1"), 0o644)
	_, err := sv.MakeDir(ctx, "vm", f)
	wantCode(t, err, errdefs.CodeInvalid)

	g := filepath.Join(dir, "g")
	if info, err := sv.MoveFile(ctx, "vm", f, g); err != nil || info.Path != g || info.Size != 1 {
		t.Fatalf("move: %+v, %v", info, err)
	}
	_, err = sv.MoveFile(ctx, "vm", f, g)
	wantCode(t, err, errdefs.CodeNotFound)

	wantCode(t, sv.RemoveFile(ctx, "vm", filepath.Join(dir, "a"), false), errdefs.CodeConflict) // not empty
	if err := sv.RemoveFile(ctx, "vm", filepath.Join(dir, "a"), true); err != nil {
		t.Fatal(err)
	}
	if err := sv.RemoveFile(ctx, "vm", g, false); err != nil {
		t.Fatal(err)
	}
	wantCode(t, sv.RemoveFile(ctx, "vm", g, false), errdefs.CodeNotFound)
	wantCode(t, sv.RemoveFile(ctx, "vm", "/", true), errdefs.CodeInvalid)
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("left: %v", ents)
	}
}

func TestArchiveRoundTrip(t *testing.T) {
	sv, dir := newService(t)
	ctx := context.Background()
	src := filepath.Join(dir, "src")
	os.MkdirAll(filepath.Join(src, "sub"), 0o755)
	os.WriteFile(filepath.Join(src, "sub", "run.sh"), []byte("#!/bin/sh\n"), 0o755)
	os.Symlink("sub/run.sh", filepath.Join(src, "link"))
	var tarball bytes.Buffer
	if err := sv.ReadArchive(ctx, "vm", src, &tarball); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, "dst", "deeper")
	if info, err := sv.WriteArchive(ctx, "vm", dst, &tarball); err != nil || info.Type != api.FileTypeDir {
		t.Fatalf("unpack: %+v, %v", info, err)
	}
	if st, err := os.Stat(filepath.Join(dst, "sub", "run.sh")); err != nil || st.Mode().Perm() != 0o755 {
		t.Errorf("run.sh: %v, %v", st, err)
	}
	if l, err := os.Readlink(filepath.Join(dst, "link")); err != nil || l != "sub/run.sh" {
		t.Errorf("link: %q, %v", l, err)
	}
	wantCode(t, sv.ReadArchive(ctx, "vm", filepath.Join(src, "link"), io.Discard), errdefs.CodeInvalid)
}

func TestStoppedVM(t *testing.T) {
	sv := New(Deps{VMs: fakeVMs{stopped: true}})
	ctx := context.Background()
	err := sv.ReadFile(ctx, "vm", api.FileReadRequest{Path: "/etc/hostname"}, io.Discard)
	if errdefs.CodeOf(err) != errdefs.CodeConflict || !strings.Contains(err.Error(), "system disk") || !strings.Contains(err.Error(), "banger vm start vm") {
		t.Errorf("read of the system disk from a stopped VM: %v", err)
	}
	_, err = sv.WriteFile(ctx, "vm", api.FileWriteRequest{Path: "x"}, strings.NewReader("x"))
	if errdefs.CodeOf(err) != errdefs.CodeConflict || !strings.Contains(err.Error(), "not running") {
		t.Errorf("write to a stopped VM: %v", err)
	}
}

// A paused VM's work disk lacks what its guest has not written back: its
// files are refused with how to resume it, not read stale.
func TestPausedVMRefused(t *testing.T) {
	sv := New(Deps{VMs: fakeVMs{stopped: true, state: model.VMPaused, disk: "/nonexistent/work.ext4"}})
	err := sv.ReadFile(context.Background(), "vm", api.FileReadRequest{Path: "/root/x"}, io.Discard)
	if errdefs.CodeOf(err) != errdefs.CodeConflict || !strings.Contains(err.Error(), "vm vm is paused") || !strings.Contains(err.Error(), "banger vm resume vm") {
		t.Errorf("read from a paused VM: %v", err)
	}
}

// TestStoppedVMReads reads a stopped VM's work disk (a real ext4 image)
// through the reads of the API.
func TestStoppedVMReads(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (jails, loop devices)")
	}
	for _, bin := range []string{"mkfs.ext4", "debugfs", "losetup"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("%s is not installed", bin)
		}
	}
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	os.MkdirAll(filepath.Join(src, "out/sub"), 0o755)
	os.WriteFile(filepath.Join(src, "out/sub/run.sh"), []byte("#!/bin/sh\n"), 0o755)
	os.WriteFile(filepath.Join(src, "out/data"), []byte("0123456789"), 0o600)
	os.Symlink("sub/run.sh", filepath.Join(src, "out/link"))
	os.Symlink("/etc", filepath.Join(src, "etc"))
	disk := filepath.Join(dir, "work.ext4")
	if err := os.WriteFile(disk, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	os.Truncate(disk, 32<<20)
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-d", src, disk).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v: %s", err, out)
	}
	sv := New(Deps{VMs: fakeVMs{stopped: true, disk: disk}})
	ctx := context.Background()
	info, err := sv.StatFile(ctx, "vm", "out/sub/run.sh")
	if err != nil || info.Path != "/root/out/sub/run.sh" || info.Type != api.FileTypeFile || info.Mode != 0o755 || info.Size != 10 {
		t.Fatalf("stat = %+v, %v", info, err)
	}
	infos, err := sv.ListFiles(ctx, "vm", "/root/out", 2)
	var got []string
	for _, i := range infos {
		got = append(got, i.Path+":"+i.Type+":"+i.Target)
	}
	if err != nil || strings.Join(got, " ") != "/root/out/data:file: /root/out/link:symlink:sub/run.sh /root/out/sub:dir: /root/out/sub/run.sh:file:" {
		t.Fatalf("list = %v, %v", got, err)
	}
	var b strings.Builder
	if err := sv.ReadFile(ctx, "vm", api.FileReadRequest{Path: "/root/out/data", Offset: 2, Length: 3}, &b); err != nil || b.String() != "234" {
		t.Fatalf("read range = %q, %v", b.String(), err)
	}
	dst := filepath.Join(dir, "dst")
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(sv.ReadArchive(ctx, "vm", "/root/out", pw)) }()
	os.Mkdir(dst, 0o755)
	if out, err := runWith(pr, "tar", "-C", dst, "-xf", "-"); err != nil {
		t.Fatalf("untar: %v: %s", err, out)
	}
	if st, err := os.Stat(filepath.Join(dst, "sub/run.sh")); err != nil || st.Mode().Perm() != 0o755 {
		t.Errorf("archived run.sh: %v, %v", st, err)
	}
	wantCode(t, sv.ReadFile(ctx, "vm", api.FileReadRequest{Path: "/root/nope"}, io.Discard), errdefs.CodeNotFound)
	wantCode(t, sv.ReadFile(ctx, "vm", api.FileReadRequest{Path: "/root/out"}, io.Discard), errdefs.CodeInvalid)
	_, err = sv.StatFile(ctx, "vm", "/root/etc/passwd")
	wantCode(t, err, errdefs.CodeInvalid)
	_, err = sv.ListFiles(ctx, "vm", "/root/out/data", 1)
	wantCode(t, err, errdefs.CodeInvalid)
}

func runWith(stdin io.Reader, name string, args ...string) ([]byte, error) {
	cmd := exec.Command(name, args...)
	cmd.Stdin = stdin
	return cmd.CombinedOutput()
}

func TestGuestErrorKinds(t *testing.T) {
	for stderr, code := range map[string]string{
		"cat: write error: No space left on device\n":                              errdefs.CodeConflict,
		"banger: recv: write stream: write /dev/stdout: no space left on device\n": errdefs.CodeConflict,
		"mv: cannot move: Permission denied":                                       errdefs.CodeConflict,
		"rm: cannot remove 'x': No such file":                                      errdefs.CodeInternal,
		"mv: cannot stat 'x': No such file or directory":                           errdefs.CodeNotFound,
	} {
		err := guestError("vm", "write /x", 1, stderr)
		if errdefs.CodeOf(err) != code {
			t.Errorf("%q: %v (%s), want %s", stderr, err, errdefs.CodeOf(err), code)
		}
	}
	if err := guestError("vm", "write /x", 1, "No space left on device"); !strings.Contains(err.Error(), "disk is full") {
		t.Errorf("full disk not named: %v", err)
	}
}

// endlessGuest answers every command with output that never ends, until
// the command is cancelled.
type endlessGuest struct{}

func (endlessGuest) Run(ctx context.Context, cmd string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	chunk := bytes.Repeat([]byte("f\x000\x00644\x001\x00\x00a\x00"), 4096)
	for ctx.Err() == nil {
		if _, err := stdout.Write(chunk); err != nil {
			return -1, err
		}
	}
	return -1, ctx.Err()
}

func (endlessGuest) Close() error { return nil }

func TestListEndlessAnswer(t *testing.T) {
	sv := New(Deps{VMs: fakeVMs{}, Dial: func(context.Context, model.VM) (guest.Client, error) { return endlessGuest{}, nil }})
	_, err := sv.ListFiles(context.Background(), "vm", "/root", 1)
	if errdefs.CodeOf(err) != errdefs.CodeInvalid || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("endless listing: %v", err)
	}
}
