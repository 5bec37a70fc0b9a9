package hostnet

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"github.com/vishvananda/netns"
)

// inNetnsEnv carries the name of the test namespace into a test binary
// re-executed inside it.
const inNetnsEnv = "BANGER_TEST_IN_NETNS"

// enterHelperEnv turns the test binary into a helper that calls EnterNetns.
const enterHelperEnv = "BANGER_TEST_ENTER_HELPER"

func TestMain(m *testing.M) {
	if name := os.Getenv(enterHelperEnv); name != "" {
		if err := EnterNetns(name); err != nil {
			fmt.Println("error:", err)
			os.Exit(2)
		}
		in, err := InNetns(name)
		fmt.Printf("in=%v pid=%d err=%v\n", in, os.Getpid(), err)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func randomName(prefix string) string {
	b := make([]byte, 4)
	rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

func requireRoot(t *testing.T, tools ...string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces, links and firewall rules")
	}
	for _, tool := range append([]string{"ip"}, tools...) {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s on PATH", tool)
		}
	}
}

// addNetns creates a named network namespace deleted at cleanup.
func addNetns(t *testing.T, prefix string) string {
	t.Helper()
	name := randomName(prefix)
	sh(t, "ip", "netns", "add", name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("delete netns %s: %v: %s", name, err, out)
		}
	})
	return name
}

func sh(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// insideTestNetns makes the calling test run in a fresh network namespace.
// The first call, in the plain test process, creates the namespace, runs
// this same test again in a test binary under "ip netns exec", reports its
// output and returns false: the caller returns. In the re-executed binary it
// returns true and the test does its work, every link, rule and socket
// landing in the namespace, which is deleted afterwards.
func insideTestNetns(t *testing.T, tools ...string) bool {
	t.Helper()
	if os.Getenv(inNetnsEnv) != "" {
		return true
	}
	requireRoot(t, tools...)
	ns := addNetns(t, "banger-test-")
	cmd := exec.Command("ip", "netns", "exec", ns, os.Args[0],
		"-test.run", "^"+t.Name()+"$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), inNetnsEnv+"="+ns)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	t.Logf("in netns %s:\n%s", ns, out.String())
	if err != nil {
		t.Fatalf("test in netns %s failed: %v", ns, err)
	}
	if !strings.Contains(out.String(), "--- PASS: "+t.Name()) {
		t.Fatalf("test in netns %s did not pass", ns)
	}
	return false
}

// inNamedNetns runs fn on an OS thread switched into the named namespace.
// Sockets made by fn stay in that namespace after it returns.
func inNamedNetns(t *testing.T, name string, fn func()) {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatalf("get own netns: %v", err)
	}
	defer orig.Close()
	target, err := netns.GetFromName(name)
	if err != nil {
		t.Fatalf("open netns %s: %v", name, err)
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		t.Fatalf("enter netns %s: %v", name, err)
	}
	defer func() {
		if err := netns.Set(orig); err != nil {
			// The thread is in the wrong namespace: let it die with the goroutine.
			runtime.LockOSThread()
			t.Errorf("return from netns %s: %v", name, err)
		}
	}()
	fn()
}

func TestEnterNetns(t *testing.T) {
	requireRoot(t)
	name := randomName("banger-test-")
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	if in, err := InNetns(name); err != nil || in {
		t.Fatalf("InNetns(%s) before creation = %v, %v; want false", name, in, err)
	}
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), enterHelperEnv+"="+name)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("helper: %v: %s", err, out.String())
	}
	want := fmt.Sprintf("in=true pid=%d err=<nil>", cmd.Process.Pid)
	if strings.TrimSpace(out.String()) != want {
		t.Fatalf("helper said %q, want %q (re-exec in the namespace, same pid)", out.String(), want)
	}
	if _, err := os.Stat("/run/netns/" + name); err != nil {
		t.Fatalf("EnterNetns did not create the namespace: %v", err)
	}
	if in, err := InNetns(name); err != nil || in {
		t.Fatalf("InNetns(%s) from the test process = %v, %v; want false", name, in, err)
	}
}

func TestInNetnsRejectsBadName(t *testing.T) {
	if _, err := InNetns("../etc"); err == nil {
		t.Fatal("InNetns accepted a path as a name")
	}
}
