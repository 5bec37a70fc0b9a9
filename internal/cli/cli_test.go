package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/banger/banger/internal/api"
	"github.com/banger/banger/internal/model"
	"github.com/banger/banger/internal/progress"
)

func TestSSHArgv(t *testing.T) {
	base := api.SSHInfo{Host: "172.16.0.2", User: "root", Port: 22, KeyPath: "/s/ssh/id_ed25519", KnownHostsPath: "/s/vms/x/known_hosts"}
	opts := []string{"ssh", "-i", "/s/ssh/id_ed25519", "-o", "UserKnownHostsFile=/s/vms/x/known_hosts",
		"-o", "StrictHostKeyChecking=yes", "-o", "IdentitiesOnly=yes"}
	withNS := base
	withNS.Netns = "banger"
	port := base
	port.Port, port.User = 2222, ""
	for _, tc := range []struct {
		name string
		info api.SSHInfo
		cmd  []string
		want []string
	}{
		{"plain", base, nil, append(append([]string{}, opts...), "root@172.16.0.2")},
		{"command", base, []string{"ls", "-l"}, append(append([]string{}, opts...), "root@172.16.0.2", "--", "ls", "-l")},
		{"netns", withNS, nil, append(append([]string{"ip", "netns", "exec", "banger"}, opts...), "root@172.16.0.2")},
		{"port and default user", port, nil, append(append([]string{}, opts...), "-p", "2222", "root@172.16.0.2")},
	} {
		if got := sshArgv(tc.info, tc.cmd); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: sshArgv = %q\nwant %q", tc.name, got, tc.want)
		}
	}
}

func TestParseCopyAndEnv(t *testing.T) {
	c, err := parseCopy("/etc/hosts:/etc/hosts.host")
	if err != nil || c.Src != "/etc/hosts" || c.Dst != "/etc/hosts.host" {
		t.Fatalf("parseCopy = %+v %v", c, err)
	}
	for _, bad := range []string{"nocolon", ":/x", "a:relative", "a:"} {
		if _, err := parseCopy(bad); err == nil || !strings.Contains(err.Error(), "SRC:DST") {
			t.Errorf("parseCopy(%q) = %v, want an error saying SRC:DST", bad, err)
		}
	}
	env, err := parseEnv([]string{"A=1", "B=x=y", "C="})
	if err != nil || !reflect.DeepEqual(env, map[string]string{"A": "1", "B": "x=y", "C": ""}) {
		t.Fatalf("parseEnv = %v %v", env, err)
	}
	for _, bad := range []string{"A", "=1", "A B=1"} {
		if _, err := parseEnv([]string{bad}); err == nil {
			t.Errorf("parseEnv(%q) accepted", bad)
		}
	}
}

func TestSendData(t *testing.T) {
	for _, tc := range []struct {
		args  []string
		stdin string
		raw   bool
		want  string
	}{
		{nil, "ignored", false, ""},
		{[]string{"hello"}, "ignored", false, "hello\n"},
		{[]string{"hello\n"}, "", false, "hello\n"},
		{[]string{"two\nlines"}, "", false, "two\nlines\n"},
		{[]string{""}, "", false, "\n"},
		{[]string{"hello"}, "", true, "hello"},
		{[]string{"hello\n"}, "", true, "hello\n"},
		{[]string{""}, "", true, ""},
		{[]string{"-"}, "from stdin\n", false, "from stdin\n"},
		{[]string{"-"}, "no newline", false, "no newline"},
		{[]string{"-"}, "", false, ""},
	} {
		got, err := sendData(tc.args, strings.NewReader(tc.stdin), tc.raw)
		if err != nil || string(got) != tc.want {
			t.Errorf("sendData(%q, raw %v) = %q %v, want %q", tc.args, tc.raw, got, err, tc.want)
		}
	}
}

func TestParseDetachKeys(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []byte
	}{
		{"ctrl-p,ctrl-q", []byte{0x10, 0x11}},
		{DefaultDetachKeys, []byte{0x10, 0x11}},
		{"CTRL-A", []byte{0x01}},
		{"ctrl-],x", []byte{0x1d, 'x'}},
		{"ctrl-@,ctrl-[,ctrl-\\,ctrl-^,ctrl-_", []byte{0, 0x1b, 0x1c, 0x1e, 0x1f}},
		{" a , b ", []byte{'a', 'b'}},
	} {
		got, err := parseDetachKeys(tc.in)
		if err != nil || !bytes.Equal(got, tc.want) {
			t.Errorf("parseDetachKeys(%q) = %v %v, want %v", tc.in, got, err, tc.want)
		}
	}
	for _, bad := range []string{"", " ", "ctrl-", "ctrl-1", "ctrl-pq", "ab", "a,,b", "ctrl-p,", "\x7f", "é"} {
		if got, err := parseDetachKeys(bad); err == nil {
			t.Errorf("parseDetachKeys(%q) = %v, want an error", bad, got)
		}
	}
	if got := keyNames([]byte{0x10, 0x11, 'x'}); got != "Ctrl-P Ctrl-Q x" {
		t.Errorf("keyNames = %q", got)
	}
}

func TestDetachFilter(t *testing.T) {
	keys := []byte{0x10, 0x11} // Ctrl-P Ctrl-Q
	for _, tc := range []struct {
		name   string
		chunks []string
		sent   string
		detach bool
	}{
		{"plain", []string{"hello"}, "hello", false},
		{"whole", []string{"ab\x10\x11cd"}, "ab", true},
		{"split across reads", []string{"ab\x10", "\x11cd"}, "ab", true},
		{"held then released", []string{"a\x10", "b"}, "a\x10b", false},
		{"repeated first key", []string{"\x10\x10\x11"}, "\x10", true},
		{"held at the end stays held", []string{"a\x10"}, "a", false},
	} {
		f := detachFilter{keys: keys}
		var sent []byte
		detach := false
		for _, c := range tc.chunks {
			out, d := f.feed([]byte(c))
			sent = append(sent, out...)
			if d {
				detach = true
				break
			}
		}
		if string(sent) != tc.sent || detach != tc.detach {
			t.Errorf("%s: sent %q detach %v, want %q %v", tc.name, sent, detach, tc.sent, tc.detach)
		}
	}
	// One key; and none (stdin is not a terminal): everything passes.
	f := detachFilter{keys: []byte{0x1d}}
	if out, d := f.feed([]byte("ab\x1dc")); string(out) != "ab" || !d {
		t.Errorf("one key: %q %v", out, d)
	}
	var w bytes.Buffer
	if copyInput(&w, strings.NewReader("ab\x10\x11cd"), nil) || w.String() != "ab\x10\x11cd" {
		t.Errorf("no keys: sent %q", w.String())
	}
	w.Reset()
	if !copyInput(&w, strings.NewReader("ab\x10\x11cd"), keys) || w.String() != "ab" {
		t.Errorf("keys: sent %q", w.String())
	}
}

func TestFormatProgress(t *testing.T) {
	for _, tc := range []struct {
		p    progress.Event
		want string
	}{
		{progress.Event{Phase: "boot", Elapsed: 1.25}, "[   1.2s] boot"},
		{progress.Event{Phase: "mkfs", Message: "writing", Done: 1, Total: 4, Elapsed: 12}, "[  12.0s] mkfs: writing (25%)"},
	} {
		if got := formatProgress(tc.p); got != tc.want {
			t.Errorf("formatProgress(%+v) = %q, want %q", tc.p, got, tc.want)
		}
	}
}

func TestTables(t *testing.T) {
	now := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	var b bytes.Buffer
	if err := table(&b, vmHeader, vmRows(nil, artifactNames{}, now)); err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(b.String()) != strings.Join(strings.Fields(strings.Join(vmHeader, " ")), "  ") {
		t.Fatalf("empty table: %q", b.String())
	}
	b.Reset()
	vm := model.VM{ID: "0123456789abcdef", Name: "dev", State: model.VMRunning, ImageID: "fedcba9876543210", KernelID: "aaaabbbbccccdddd",
		VMM: "qemu", CPUs: 2, MemoryMiB: 1024, DiskBytes: 4 << 30, GuestIP: "172.16.0.2", CreatedAt: now.Add(-90 * time.Second)}
	names := artifactNames{images: map[string]string{vm.ImageID: "default"}, kernels: map[string]string{vm.KernelID: "debian-cloud-bookworm"}}
	table(&b, vmHeader, vmRows([]model.VM{vm}, names, now))
	line := strings.Fields(strings.Split(b.String(), "\n")[1])
	want := []string{"01234567", "dev", "running", "default", "debian-cloud-bookworm", "qemu", "2", "1G", "4G", "172.16.0.2", "1m", "ago", "-", "-"}
	if !reflect.DeepEqual(line, want) {
		t.Fatalf("row = %q, want %q", line, want)
	}
	// The time left before a deadline, and the action when it is not delete.
	for action, tail := range map[string][]string{model.TTLDelete: {"9m30s", "-"}, model.TTLStop: {"9m30s", "stop", "-"}, model.TTLPause: {"9m30s", "pause", "-"}} {
		b.Reset()
		dl := now.Add(9*time.Minute + 30*time.Second)
		v := vm
		v.ExpiresAt, v.ExpireAction = &dl, action
		table(&b, vmHeader, vmRows([]model.VM{v}, names, now))
		line = strings.Fields(strings.Split(b.String(), "\n")[1])
		if got := line[12:]; !reflect.DeepEqual(got, tail) {
			t.Fatalf("ttl cells (%s) = %q, want %q", action, got, tail)
		}
	}
	// Ids the lists do not name (an answer that failed, a removed kernel)
	// show as short ids.
	b.Reset()
	table(&b, vmHeader, vmRows([]model.VM{vm}, artifactNames{}, now))
	line = strings.Fields(strings.Split(b.String(), "\n")[1])
	if line[3] != "fedcba98" || line[4] != "aaaabbbb" {
		t.Fatalf("row without names = %q, want short ids", line)
	}
}

// TestUnknownSubcommand: a word that is none of a group's commands fails
// with cobra's message at every level, not only at the root; the group
// alone still shows its help.
func TestUnknownSubcommand(t *testing.T) {
	var groups [][]string
	var walk func(c *cobra.Command, path []string)
	walk = func(c *cobra.Command, path []string) {
		if c.HasSubCommands() {
			groups = append(groups, path)
		}
		for _, sub := range c.Commands() {
			walk(sub, append(append([]string{}, path...), sub.Name()))
		}
	}
	walk((&app{}).rootCommand(), nil)
	if len(groups) < 7 {
		t.Fatalf("found only the groups %q", groups)
	}
	for _, g := range groups {
		stdout, stderr, code := banger("", "", append(append([]string{}, g...), "frobnicate")...)
		want := fmt.Sprintf("banger: unknown command \"frobnicate\" for %q\n", strings.Join(append([]string{"banger"}, g...), " "))
		if code != 1 || stderr != want || stdout != "" {
			t.Errorf("banger %s frobnicate: exit %d, stderr %q, stdout %q; want exit 1 and %q", strings.Join(g, " "), code, stderr, stdout, want)
		}
		for _, help := range [][]string{g, append(append([]string{}, g...), "--help")} {
			stdout, stderr, code = banger("", "", help...)
			if code != 0 || !strings.Contains(stdout, "Available Commands:") || stderr != "" {
				t.Errorf("banger %s: exit %d, stderr %q, stdout %q; want its help", strings.Join(help, " "), code, stderr, stdout)
			}
		}
	}
	_, stderr, code := banger("", "", "vm", "lst")
	if code != 1 || !strings.Contains(stderr, "unknown command \"lst\" for \"banger vm\"") || !strings.Contains(stderr, "Did you mean this?\n") || !strings.Contains(stderr, "\tlist\n") {
		t.Errorf("banger vm lst: exit %d, stderr %q; want the error and the suggestion list", code, stderr)
	}
}

func TestExitStatus(t *testing.T) {
	sigint, sigterm := interrupt{syscall.SIGINT}, interrupt{syscall.SIGTERM}
	wrapped := fmt.Errorf("read stream: %w", sigint)
	for _, tc := range []struct {
		name     string
		err      error
		cause    error
		left     string
		wantCode int
		wantLine string
	}{
		{"success", nil, nil, "", 0, ""},
		{"error", errors.New("vm \"x\" not found"), nil, "", 1, `banger: vm "x" not found`},
		{"guest exit code", exitCode(7), nil, "", 7, ""},
		{"cancel without a signal is an error", context.Canceled, context.Canceled, "", 1, "banger: context canceled"},
		{"ctrl-c hides the request's error", wrapped, sigint, "deleted vm run-1", 130, "banger: interrupted; deleted vm run-1"},
		{"ctrl-c with nothing to say", nil, sigint, "", 130, "banger: interrupted"},
		{"ctrl-c wins over the guest's code", exitCode(143), sigint, "", 130, "banger: interrupted"},
		{"sigterm", errors.New("boom"), sigterm, "vm dev is kept", 143, "banger: terminated; vm dev is kept"},
	} {
		code, line := exitStatus(tc.err, tc.cause, tc.left)
		if code != tc.wantCode || line != tc.wantLine {
			t.Errorf("%s: exitStatus = %d %q, want %d %q", tc.name, code, line, tc.wantCode, tc.wantLine)
		}
	}
	if !errors.Is(wrapped, context.Canceled) {
		t.Errorf("an interrupt is not context.Canceled to errors.Is")
	}
}

func TestPhasePrinter(t *testing.T) {
	var b bytes.Buffer
	p := phasePrinter(&b)
	for _, e := range []progress.Event{
		{Phase: "kernel", Message: "downloading", Done: 1, Total: 4, Elapsed: 0.5},
		{Phase: "kernel", Message: "downloading", Done: 3, Total: 4, Elapsed: 1},
		{Phase: "disks", Elapsed: 2},
		{Phase: "boot", Elapsed: 3},
		{Phase: "boot", Message: "waiting for ssh", Elapsed: 4},
	} {
		p(e)
	}
	want := "[   0.5s] kernel: downloading\n[   2.0s] disks\n[   3.0s] boot\n"
	if b.String() != want {
		t.Fatalf("phasePrinter wrote %q, want %q", b.String(), want)
	}
	if isTerminal(&b) {
		t.Fatal("a buffer is a terminal")
	}
}

// interruptedExec is the fake daemon with a guest command that runs until
// its request goes away, and that records deletes.
type interruptedExec struct {
	fakeService
	running chan struct{}
	deleted chan string
}

func (f interruptedExec) ExecVM(ctx context.Context, _ string, _ api.ExecRequest, _, _ io.Writer) (int, error) {
	close(f.running)
	<-ctx.Done()
	return -1, ctx.Err()
}

func (f interruptedExec) DeleteVM(_ context.Context, ref string, _ bool) error {
	f.deleted <- ref
	return nil
}

// TestVMRunInterrupted: Ctrl-C during `vm run --rm` deletes the VM, exits
// 130 and says so on one line, without the cancelled request's error.
func TestVMRunInterrupted(t *testing.T) {
	f := interruptedExec{running: make(chan struct{}), deleted: make(chan string, 1)}
	sock := serveFake(t, f)
	go func() {
		<-f.running
		// run has caught SIGINT by now: it cancels instead of killing us.
		syscall.Kill(os.Getpid(), syscall.SIGINT)
	}()
	stdout, stderr, code := banger(sock, "", "vm", "run", "--rm", "--", "sleep", "30")
	if code != 130 || stdout != "" || stderr != "banger: interrupted; deleted vm dev\n" {
		t.Fatalf("exit %d, stdout %q, stderr %q; want 130 and one line", code, stdout, stderr)
	}
	if ref := <-f.deleted; ref != fakeVM.ID {
		t.Fatalf("deleted %q, want the VM's id", ref)
	}
}
