package cli

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestUnitText(t *testing.T) {
	got := unitText(unitParams{Bangerd: "/opt/banger bin/bangerd", StateDir: "/srv/banger",
		Env: map[string]string{"BANGER_STATE_DIR": "/srv/banger", "BANGER_NETNS": "vms", "BANGER_X": `a "q" $HOME 50%`}})
	for _, want := range []string{
		"\n[Service]\n",
		"\nExecStart=\"/opt/banger bin/bangerd\"\n",
		// Sorted, quoted where needed.
		"\nEnvironment=BANGER_NETNS=vms\nEnvironment=BANGER_STATE_DIR=/srv/banger\nEnvironment=\"BANGER_X=a \\\"q\\\" $$HOME 50%%\"\n",
		"\nStandardOutput=append:/srv/banger/bangerd.log\n",
		"\nStandardError=append:/srv/banger/bangerd.log\n",
		// VMs outlive the service.
		"\nKillMode=process\n",
		"\nRestart=on-failure\n",
		"\nDelegate=yes\n",
		"\nNoNewPrivileges=yes\n",
		"\nProtectSystem=true\n",
		"\nProtectHome=read-only\n",
		"\n[Install]\nWantedBy=multi-user.target\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("unit lacks %q:\n%s", want, got)
		}
	}
	// What would stop bangerd doing its work is not there.
	for _, bad := range []string{"ProtectSystem=full", "ProtectSystem=strict", "PrivateTmp", "ProtectKernelTunables", "ProtectControlGroups", "PrivateNetwork", "User="} {
		if strings.Contains(got, bad) {
			t.Errorf("unit has %q", bad)
		}
	}
}

// fakeSystemd replaces the systemd seams for a test and records the
// systemctl calls.
func fakeSystemd(t *testing.T, booted bool) *[]string {
	t.Helper()
	oldBooted, oldCtl := systemdBooted, systemctl
	t.Cleanup(func() { systemdBooted, systemctl = oldBooted, oldCtl })
	var calls []string
	systemdBooted = func() bool { return booted }
	systemctl = func(args ...string) ([]byte, error) {
		calls = append(calls, strings.Join(args, " "))
		return nil, nil
	}
	return &calls
}

func installApp(t *testing.T) (*app, *bytes.Buffer, *bytes.Buffer, string) {
	state := t.TempDir()
	var out, errb bytes.Buffer
	a := &app{stdout: &out, stderr: &errb, getenv: func(string) string { return "" }}
	return a, &out, &errb, state
}

func TestDaemonInstall(t *testing.T) {
	calls := fakeSystemd(t, true)
	a, _, errb, state := installApp(t)
	bin := filepath.Join(t.TempDir(), "bangerd")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	unit := filepath.Join(t.TempDir(), "bangerd.service")
	if code := a.run([]string{"--state-dir", state, "daemon", "install", "--unit-path", unit, "--bangerd", bin}); code != 0 {
		t.Fatalf("install: exit %d: %s", code, errb)
	}
	b, err := os.ReadFile(unit)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), "ExecStart="+bin+"\n") || !strings.Contains(string(b), "Environment=BANGER_STATE_DIR="+state+"\n") {
		t.Fatalf("unit written:\n%s", b)
	}
	if fi, _ := os.Stat(unit); fi.Mode().Perm() != 0o644 {
		t.Errorf("unit mode %v", fi.Mode())
	}
	if want := []string{"daemon-reload", "enable --now bangerd.service"}; strings.Join(*calls, "|") != strings.Join(want, "|") {
		t.Fatalf("systemctl calls %q, want %q", *calls, want)
	}

	*calls = nil
	if code := a.run([]string{"daemon", "uninstall", "--unit-path", unit}); code != 0 {
		t.Fatalf("uninstall: exit %d: %s", code, errb)
	}
	if _, err := os.Stat(unit); !os.IsNotExist(err) {
		t.Fatalf("unit still there: %v", err)
	}
	if want := []string{"disable --now bangerd.service", "daemon-reload"}; strings.Join(*calls, "|") != strings.Join(want, "|") {
		t.Fatalf("systemctl calls %q, want %q", *calls, want)
	}
	if code := a.run([]string{"daemon", "uninstall", "--unit-path", unit}); code == 0 || !strings.Contains(errb.String(), "nothing to uninstall") {
		t.Fatalf("second uninstall: exit %d: %s", code, errb)
	}
}

// Where systemd is not PID 1 (a container), install refuses and writes
// nothing; --dry-run prints the unit anyway.
func TestDaemonInstallWithoutSystemd(t *testing.T) {
	calls := fakeSystemd(t, false)
	a, out, errb, _ := installApp(t)
	unit := filepath.Join(t.TempDir(), "bangerd.service")
	if code := a.run([]string{"daemon", "install", "--unit-path", unit, "--bangerd", "/usr/bin/true"}); code == 0 || !strings.Contains(errb.String(), "systemd is not running this machine") {
		t.Fatalf("install without systemd: exit %d: %s", code, errb)
	}
	if _, err := os.Stat(unit); !os.IsNotExist(err) || len(*calls) != 0 {
		t.Fatalf("install without systemd wrote %v, ran %q", err, *calls)
	}
	if code := a.run([]string{"daemon", "install", "--dry-run", "--unit-path", unit, "--bangerd", "/usr/bin/bangerd"}); code != 0 || !strings.Contains(out.String(), "ExecStart=/usr/bin/bangerd\n") {
		t.Fatalf("--dry-run: exit %d:\n%s%s", code, out, errb)
	}
	if _, err := os.Stat(unit); !os.IsNotExist(err) {
		t.Fatal("--dry-run wrote the unit")
	}
}
