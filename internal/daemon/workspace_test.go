package daemon

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/banger/banger/internal/api"
	"github.com/banger/banger/internal/daemon/workspaces"
	"github.com/banger/banger/internal/errdefs"
	"github.com/banger/banger/internal/guest"
	"github.com/banger/banger/internal/model"
	"github.com/banger/banger/internal/storage"
	"github.com/banger/banger/internal/testenv"
	"github.com/banger/banger/internal/workspace"
)

// localGuest runs guest commands on this host in a private mount namespace
// where a temp directory is bind-mounted on /root, so the workspace scripts
// run for real against the paths the daemon gives them without touching the
// host's /root.
type localGuest struct{ root string }

func (g localGuest) Run(ctx context.Context, cmd string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	c := exec.CommandContext(ctx, "unshare", "--mount", "--propagation", "private", "sh", "-c",
		`mount --bind "$WS_ROOT" /root && exec sh -c "$WS_CMD"`)
	c.Env = append(os.Environ(), "WS_ROOT="+g.root, "WS_CMD="+cmd, "HOME=/root")
	c.Stdin, c.Stdout, c.Stderr = stdin, stdout, stderr
	// As the SSH client does: a cancelled command's process group gets
	// SIGTERM.
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	c.Cancel = func() error { return syscall.Kill(-c.Process.Pid, syscall.SIGTERM) }
	c.WaitDelay = 10 * time.Second
	err := c.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), nil
	}
	if err != nil {
		return -1, err
	}
	return 0, nil
}

func (localGuest) Close() error { return nil }

func wsGit(t *testing.T, dir string, args ...string) string {
	t.Helper()
	out, err := exec.Command("git", append([]string{"-C", dir}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("git %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// workspaceVM makes a fixture with a running VM "ws" whose guest is a
// localGuest over a temp dir, which it returns, with git isolated from the
// machine's configuration.
func workspaceVM(t *testing.T) (*fixture, model.VM, string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: the fake guest bind-mounts a temp dir on /root in a private mount namespace")
	}
	for _, bin := range []string{"unshare", "git", "bash", "tar"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("%s is not installed", bin)
		}
	}
	home := t.TempDir()
	t.Setenv("HOME", home)
	t.Setenv("GIT_CONFIG_NOSYSTEM", "1")
	for _, k := range []string{"GIT_AUTHOR_NAME", "GIT_COMMITTER_NAME"} {
		t.Setenv(k, "Test")
	}
	for _, k := range []string{"GIT_AUTHOR_EMAIL", "GIT_COMMITTER_EMAIL"} {
		t.Setenv(k, "test@example.com")
	}
	// The guest's banger-init is not this host's: without one, prepare
	// takes the SSH session (tests that want the data channel build one).
	t.Setenv("BANGER_INIT", filepath.Join(t.TempDir(), "no-banger-init"))

	f := newFixture(t)
	ctx := context.Background()
	if _, err := f.d.CreateVM(ctx, api.CreateVMRequest{Name: "ws", Disk: "64M"}, nil); err != nil {
		t.Fatal(err)
	}
	vm, err := f.d.StartVM(ctx, "ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	guestRoot := t.TempDir()
	t.Cleanup(func() { _ = exec.Command("chattr", "-R", "-i", guestRoot).Run() })
	f.d.dialGuest = func(context.Context, model.VM) (guest.Client, error) { return localGuest{guestRoot}, nil }
	return f, vm, guestRoot
}

func TestWorkspacePrepareExport(t *testing.T) {
	f, vm, guestRoot := workspaceVM(t)
	ctx := context.Background()

	repo := t.TempDir()
	wsGit(t, repo, "init", "-q", "-b", "main")
	os.WriteFile(filepath.Join(repo, "a.txt"), []byte("a\n"), 0o644)
	os.WriteFile(filepath.Join(repo, ".gitignore"), []byte("*.log\n"), 0o644)
	wsGit(t, repo, "add", "-A")
	wsGit(t, repo, "commit", "-q", "-m", "one")
	os.WriteFile(filepath.Join(repo, "untracked.txt"), []byte("u\n"), 0o644)
	os.WriteFile(filepath.Join(repo, "x.log"), []byte("ignored\n"), 0o644)
	hostHead := strings.TrimSpace(wsGit(t, repo, "rev-parse", "HEAD"))

	stream := func() io.Reader {
		var buf bytes.Buffer
		if _, err := workspace.WriteTar(ctx, repo, workspace.TarOptions{}, &buf); err != nil {
			t.Fatal(err)
		}
		return &buf
	}
	info, err := f.d.PrepareWorkspace(ctx, "ws", api.WorkspaceRequest{}, stream())
	if err != nil {
		t.Fatal(err)
	}
	if info.GuestPath != "/root/repo" || info.Files != 3 || info.Bytes != 10 || info.Head != hostHead {
		t.Errorf("info = %+v, want /root/repo, 3 files, 10 bytes, head %s", info, hostHead)
	}
	gdir := filepath.Join(guestRoot, "repo")
	if b, err := os.ReadFile(filepath.Join(gdir, "untracked.txt")); err != nil || string(b) != "u\n" {
		t.Errorf("untracked.txt in guest: %q, %v", b, err)
	}
	if _, err := os.Stat(filepath.Join(gdir, "x.log")); err == nil {
		t.Error("ignored x.log reached the guest")
	}
	if b, _ := os.ReadFile(filepath.Join(guestRoot, ".gitconfig")); !strings.Contains(string(b), "directory = /root/repo") {
		t.Errorf("guest safe.directory not set: %s", b)
	}

	// A live session working in the path blocks a new prepare unless forced.
	now := f.d.now()
	if err := f.st.CreateSession(ctx, model.Session{ID: model.NewID(), VMID: vm.ID, Name: "agent", Command: "sh", Cwd: "/root/repo/src", StdinMode: model.StdinPipe, Status: model.SessionRunning, CreatedAt: now, UpdatedAt: now}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.d.PrepareWorkspace(ctx, "ws", api.WorkspaceRequest{}, stream()); errdefs.CodeOf(err) != errdefs.CodeConflict || !strings.Contains(err.Error(), "agent") {
		t.Errorf("prepare under a running session: %v", err)
	}
	if _, err := f.d.PrepareWorkspace(ctx, "ws", api.WorkspaceRequest{GuestPath: "/root/other"}, stream()); err != nil {
		t.Errorf("prepare at another path: %v", err)
	}
	if _, err := f.d.PrepareWorkspace(ctx, "ws", api.WorkspaceRequest{Force: true}, stream()); err != nil {
		t.Errorf("forced prepare: %v", err)
	}

	// The guest works; export brings it back as a branch.
	os.WriteFile(filepath.Join(gdir, "a.txt"), []byte("changed in guest\n"), 0o644)
	var bundle bytes.Buffer
	if err := f.d.ExportWorkspace(ctx, "ws", api.ExportRequest{}, &bundle); err != nil {
		t.Fatal(err)
	}
	bpath := filepath.Join(t.TempDir(), "b.bundle")
	os.WriteFile(bpath, bundle.Bytes(), 0o600)
	statusBefore := wsGit(t, repo, "status", "--porcelain")
	if err := workspace.ImportBundle(ctx, repo, bpath, "agent/1", false); err != nil {
		t.Fatal(err)
	}
	if got := wsGit(t, repo, "log", "-1", "--format=%s", "agent/1"); got != "banger: uncommitted changes from ws\n" {
		t.Errorf("agent/1 tip subject = %q", got)
	}
	if got := wsGit(t, repo, "show", "agent/1:untracked.txt"); got != "u\n" {
		t.Errorf("agent/1:untracked.txt = %q", got)
	}
	if got := wsGit(t, repo, "status", "--porcelain"); got != statusBefore {
		t.Errorf("host status changed: %q, was %q", got, statusBefore)
	}
	var out bytes.Buffer
	if err := f.d.ExportWorkspace(ctx, "ws", api.ExportRequest{Base: strings.TrimSpace(wsGit(t, gdir, "rev-parse", "HEAD"))}, &out); errdefs.CodeOf(err) != errdefs.CodeConflict || !strings.Contains(err.Error(), "nothing to export") || out.Len() != 0 {
		t.Errorf("empty export: %v (%d bytes written)", err, out.Len())
	}
	if err := f.d.ExportWorkspace(ctx, "ws", api.ExportRequest{GuestPath: "/root/none"}, &out); !errdefs.IsNotFound(err) {
		t.Errorf("export of a missing workspace: %v", err)
	}

	// Input errors.
	for name, err := range map[string]error{
		"guest path": func() error {
			_, err := f.d.PrepareWorkspace(ctx, "ws", api.WorkspaceRequest{GuestPath: "/etc"}, stream())
			return err
		}(),
		"mode": func() error {
			_, err := f.d.PrepareWorkspace(ctx, "ws", api.WorkspaceRequest{Mode: "all"}, stream())
			return err
		}(),
		"format": f.d.ExportWorkspace(ctx, "ws", api.ExportRequest{Format: "zip"}, io.Discard),
		"base":   f.d.ExportWorkspace(ctx, "ws", api.ExportRequest{Base: "HEAD~1"}, io.Discard),
		"stream": func() error {
			_, err := f.d.PrepareWorkspace(ctx, "ws", api.WorkspaceRequest{Force: true}, strings.NewReader(strings.Repeat("junk", 300)))
			return err
		}(),
	} {
		if err == nil {
			t.Errorf("%s: accepted", name)
		} else if name != "stream" && errdefs.CodeOf(err) != errdefs.CodeInvalid {
			t.Errorf("%s: %v (code %s), want invalid", name, err, errdefs.CodeOf(err))
		}
	}
	if _, err := os.Stat(filepath.Join(gdir, "a.txt")); err != nil {
		t.Errorf("a failed prepare damaged the workspace: %v", err)
	}
	if _, err := f.d.PrepareWorkspace(ctx, "nope", api.WorkspaceRequest{}, stream()); !errdefs.IsNotFound(err) {
		t.Errorf("unknown vm: %v", err)
	}

	testExportStopped(t, f, vm, guestRoot, repo)
}

// testExportStopped: the guest commits, edits another file and plants
// what would make host git run a program, then the VM stops. Export reads
// the work disk without booting: the branch has both changes, nothing
// planted ran, and the disk is unchanged.
func testExportStopped(t *testing.T, f *fixture, vm model.VM, guestRoot, repo string) {
	for _, bin := range []string{"mkfs.ext4", "debugfs", "losetup"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("offline export: %s is not installed", bin)
		}
	}
	ctx := context.Background()
	gdir := filepath.Join(guestRoot, "repo")
	os.WriteFile(filepath.Join(gdir, "a.txt"), []byte("committed in guest\n"), 0o644)
	wsGit(t, gdir, "add", "-A")
	wsGit(t, gdir, "commit", "-q", "-m", "guest commit")
	os.WriteFile(filepath.Join(gdir, "later.txt"), []byte("left uncommitted\n"), 0o644)
	// The sandbox could not write a marker in a private directory whether
	// or not the program ran: this one is open to it.
	open, err := os.MkdirTemp("", "banger-marker-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(open)
	os.Chmod(open, 0o777)
	marker := filepath.Join(open, "ran")
	os.WriteFile(filepath.Join(gdir, ".git", "hooks", "pre-commit"), []byte("#!/bin/sh\ntouch "+marker+"\n"), 0o755)
	wsGit(t, gdir, "config", "filter.evil.clean", "touch "+marker+"; cat")
	wsGit(t, gdir, "config", "core.fsmonitor", "touch "+marker+"; false")
	os.WriteFile(filepath.Join(gdir, ".gitattributes"), []byte("* filter=evil\n"), 0o644)

	if _, err := f.d.StopVM(ctx, "ws", api.StopVMRequest{}); err != nil {
		t.Fatal(err)
	}
	// The work disk as the guest left it.
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-d", guestRoot, vm.WorkDisk, "64M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	diskBefore, _ := os.ReadFile(vm.WorkDisk)
	tmpdir, _ := os.MkdirTemp("", "banger-tmpdir-")
	defer os.RemoveAll(tmpdir)
	os.Chmod(tmpdir, 0o755)
	t.Setenv("TMPDIR", tmpdir)

	var bundle bytes.Buffer
	if err := f.d.ExportWorkspace(ctx, "ws", api.ExportRequest{}, &bundle); err != nil {
		t.Fatalf("export from a stopped vm: %v", err)
	}
	bpath := filepath.Join(t.TempDir(), "b.bundle")
	os.WriteFile(bpath, bundle.Bytes(), 0o600)
	if err := workspace.ImportBundle(ctx, repo, bpath, "agent/2", false); err != nil {
		t.Fatal(err)
	}
	if got := wsGit(t, repo, "log", "--format=%s", "agent/1..agent/2"); got != "banger: uncommitted changes from ws\nguest commit\n" {
		t.Errorf("agent/2 adds %q, want the guest commit and the uncommitted change", got)
	}
	if got := wsGit(t, repo, "show", "agent/2:later.txt"); got != "left uncommitted\n" {
		t.Errorf("agent/2:later.txt = %q", got)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Error("a program the guest planted in its repository ran on the host")
	}
	if diskAfter, _ := os.ReadFile(vm.WorkDisk); !bytes.Equal(diskBefore, diskAfter) {
		t.Error("the offline export changed the work disk")
	}
	var patch bytes.Buffer
	if err := f.d.ExportWorkspace(ctx, "ws", api.ExportRequest{Format: workspace.FormatPatch}, &patch); err != nil || !strings.Contains(patch.String(), "Subject: [PATCH 2/3] guest commit") || !strings.Contains(patch.String(), "Subject: [PATCH 3/3] banger: uncommitted changes from ws") {
		t.Errorf("offline patch export: %v\n%.300s", err, patch.String())
	}
	if err := f.d.ExportWorkspace(ctx, "ws", api.ExportRequest{GuestPath: "/root/none"}, io.Discard); !errdefs.IsNotFound(err) {
		t.Errorf("offline export of a missing workspace: %v", err)
	}
	if left, _ := filepath.Glob(filepath.Join(tmpdir, "*")); len(left) != 0 {
		t.Errorf("offline export left %v", left)
	}
	if loops, _ := storage.LoopsOf(vm.WorkDisk); len(loops) != 0 {
		t.Errorf("offline export left loop devices %v", loops)
	}
}

// brokenReader gives r's bytes, then fails.
type brokenReader struct{ r io.Reader }

func (b brokenReader) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err == io.EOF {
		return n, errors.New("file changed while it was read")
	}
	return n, err
}

// TestWorkspacePrepareTransports runs prepare over the data channel (a
// banger-init that can receive, reached on loopback) and over the SSH
// session (a guest without one), and breaks the data channel both ways.
func TestWorkspacePrepareTransports(t *testing.T) {
	f, _, guestRoot := workspaceVM(t)
	ctx := context.Background()
	initBin := testenv.BuildInit(t, t.TempDir())
	var dialed []int
	f.d.dialData = func(ctx context.Context, _ model.VM, port int) (net.Conn, error) {
		dialed = append(dialed, port)
		var d net.Dialer
		return d.DialContext(ctx, "tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	}
	repo := t.TempDir()
	wsGit(t, repo, "init", "-q", "-b", "main")
	os.WriteFile(filepath.Join(repo, "a.txt"), bytes.Repeat([]byte("a"), 3<<20), 0o644)
	wsGit(t, repo, "add", "-A")
	wsGit(t, repo, "commit", "-q", "-m", "one")
	var tarball bytes.Buffer
	if _, err := workspace.WriteTar(ctx, repo, workspace.TarOptions{}, &tarball); err != nil {
		t.Fatal(err)
	}
	gdir := filepath.Join(guestRoot, "repo")

	// No banger-init that can receive: the session's stdin.
	info, err := f.d.PrepareWorkspace(ctx, "ws", api.WorkspaceRequest{}, bytes.NewReader(tarball.Bytes()))
	if err != nil || info.Transport != workspaces.TransportSSH || info.Files != 1 || len(dialed) != 0 {
		t.Fatalf("prepare without a receiver: %+v, %v (dialed %v)", info, err, dialed)
	}

	t.Setenv("BANGER_INIT", initBin)
	info, err = f.d.PrepareWorkspace(ctx, "ws", api.WorkspaceRequest{}, bytes.NewReader(tarball.Bytes()))
	if err != nil || info.Transport != workspaces.TransportTCP || info.Files != 1 || info.Bytes != 3<<20 || len(dialed) != 1 {
		t.Fatalf("prepare over the data channel: %+v, %v (dialed %v)", info, err, dialed)
	}
	if fi, err := os.Stat(filepath.Join(gdir, "a.txt")); err != nil || fi.Size() != 3<<20 {
		t.Fatalf("a.txt in the guest: %v", err)
	}

	// Configured for SSH: the session's stdin even though the guest could
	// receive on the data channel.
	f.d.cfg.WorkspaceTransport = workspaces.TransportSSH
	info, err = f.d.PrepareWorkspace(ctx, "ws", api.WorkspaceRequest{}, bytes.NewReader(tarball.Bytes()))
	if err != nil || info.Transport != workspaces.TransportSSH || info.Bytes != 3<<20 || len(dialed) != 1 {
		t.Fatalf("prepare configured for ssh: %+v, %v (dialed %v)", info, err, dialed)
	}
	f.d.cfg.WorkspaceTransport = workspaces.TransportTCP
	os.WriteFile(filepath.Join(gdir, "marker"), []byte("old tree\n"), 0o644)
	oldTreeIntact := func(what string) {
		t.Helper()
		if _, err := os.Stat(filepath.Join(gdir, "marker")); err != nil {
			t.Errorf("%s damaged the old tree: %v", what, err)
		}
		ents, _ := os.ReadDir(guestRoot)
		for _, e := range ents {
			if strings.Contains(e.Name(), "banger-tmp") {
				t.Errorf("%s left %s", what, e.Name())
			}
		}
	}

	// The client's stream breaks half way: that is the error, and the
	// guest keeps its old tree.
	half := io.LimitReader(bytes.NewReader(tarball.Bytes()), int64(tarball.Len()/2))
	_, err = f.d.PrepareWorkspace(ctx, "ws", api.WorkspaceRequest{}, brokenReader{half})
	if err == nil || !strings.Contains(err.Error(), "file changed while it was read") {
		t.Errorf("broken client stream: %v", err)
	}
	oldTreeIntact("a broken client stream")

	// The data channel cannot be reached: a clear error, and the guest
	// side is stopped rather than left waiting for a sender.
	f.d.dialData = func(context.Context, model.VM, int) (net.Conn, error) {
		return nil, errors.New("connection refused")
	}
	start := time.Now()
	_, err = f.d.PrepareWorkspace(ctx, "ws", api.WorkspaceRequest{}, bytes.NewReader(tarball.Bytes()))
	if err == nil || !strings.Contains(err.Error(), "data channel") {
		t.Errorf("unreachable data channel: %v", err)
	}
	if d := time.Since(start); d > 20*time.Second {
		t.Errorf("unreachable data channel took %s: the guest side was left waiting", d)
	}
	oldTreeIntact("an unreachable data channel")
}
