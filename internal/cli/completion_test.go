package cli

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestCompletionScripts: each shell's script is one its shell parses
// (zsh and fish only where installed).
func TestCompletionScripts(t *testing.T) {
	for _, tc := range []struct {
		shell string
		check []string // argv that parses the script file without running it
	}{
		{"bash", []string{"bash", "-n"}},
		{"zsh", []string{"zsh", "-n"}},
		{"fish", []string{"fish", "--no-execute"}},
	} {
		t.Run(tc.shell, func(t *testing.T) {
			stdout, stderr, code := banger("", "", "completion", tc.shell)
			if code != 0 || stderr != "" || !strings.Contains(stdout, "banger") {
				t.Fatalf("banger completion %s: exit %d, stderr %q, %d bytes", tc.shell, code, stderr, len(stdout))
			}
			if _, err := exec.LookPath(tc.check[0]); err != nil {
				t.Skipf("%s is not installed", tc.check[0])
			}
			f := filepath.Join(t.TempDir(), "banger."+tc.shell)
			if err := os.WriteFile(f, []byte(stdout), 0o644); err != nil {
				t.Fatal(err)
			}
			if out, err := exec.Command(tc.check[0], append(tc.check[1:], f)...).CombinedOutput(); err != nil {
				t.Fatalf("%s does not parse the script: %v\n%s", tc.shell, err, out)
			}
		})
	}
	_, stderr, code := banger("", "", "completion", "tcsh")
	if code != 1 || !strings.Contains(stderr, "use bash, zsh, fish") {
		t.Errorf("completion tcsh: exit %d %q", code, stderr)
	}
}

// TestCompleteNames: VM and session arguments complete with the daemon's
// names; without a daemon, with nothing (and none is started).
func TestCompleteNames(t *testing.T) {
	sock := fakeDaemon(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"vm", "show", ""}, "dev\trunning\n"},
		{[]string{"vm", "delete", "dev", ""}, "dev\trunning\n"},
		{[]string{"vm", "workspace", "export", ""}, "dev\trunning\n"},
		{[]string{"session", "send", ""}, "dev\trunning\n"},
		{[]string{"session", "send", "dev", ""}, "server\texited\n"},
		{[]string{"session", "list", "dev", ""}, ":4\n"}, // nothing after the VM
	} {
		stdout, _, code := banger(sock, "", append([]string{"__complete"}, tc.args...)...)
		if code != 0 || !strings.HasPrefix(stdout, tc.want) {
			t.Errorf("complete %q: exit %d, %q, want it to start %q", tc.args, code, stdout, tc.want)
		}
	}
	stdout, _, code := banger(filepath.Join(t.TempDir(), "none.sock"), "", "__complete", "vm", "show", "")
	if code != 0 || stdout != ":4\n" {
		t.Errorf("complete without a daemon: exit %d, %q", code, stdout)
	}
}
