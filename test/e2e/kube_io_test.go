package e2e

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/banger/banger/internal/shell"
	"github.com/banger/banger/internal/testenv/kube"
)

// sleeperManifest is the long-running pod of TestKubeLongRunningExecRestart:
// its main container sleeps, its "echo" container (stdin: true) echoes
// what it reads, for kubectl attach -i.
func (n *kubeNode) sleeperManifest() string {
	return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: sleeper
spec:
  nodeName: %s
  restartPolicy: Always
  automountServiceAccountToken: false
  tolerations:
  - key: banger.dev/vm
    operator: Exists
    effect: NoSchedule
  containers:
  - name: main
    image: default
    command: [sleep, "3600"]
    resources:
      limits: {cpu: "1", memory: 512Mi}
  - name: echo
    image: default
    stdin: true
    command: [sh, -c, 'while read -r l; do echo "echo:$l"; done']
`, n.name)
}

// applyManifest applies a pod manifest and returns the pod's UID.
func (n *kubeNode) applyManifest(name, manifest string) string {
	n.t.Helper()
	path := filepath.Join(n.t.TempDir(), name+".yaml")
	if err := os.WriteFile(path, []byte(manifest), 0o600); err != nil {
		n.t.Fatal(err)
	}
	n.kubectl("apply", "-f", path)
	return strings.TrimSpace(n.kubectl("get", "pod", name, "-o", "jsonpath={.metadata.uid}"))
}

// kubectlCmd is a kubectl command of the control plane, not started.
func (n *kubeNode) kubectlCmd(ctx context.Context, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, filepath.Join(n.cp.Bins, "kubectl"), append([]string{"--kubeconfig", n.cp.Kubeconfig}, args...)...)
}

// kubeletGet GETs path from the node's kubelet API with the API server's
// client certificate.
func (n *kubeNode) kubeletGet(t *testing.T, path string) string {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(n.cp.KubeletClientCert, n.cp.KubeletClientKey)
	if err != nil {
		t.Fatal(err)
	}
	// The node's certificate is self-signed (banger-vk made it).
	hc := &http.Client{Timeout: time.Minute, Transport: &http.Transport{TLSClientConfig: &tls.Config{
		Certificates: []tls.Certificate{cert}, InsecureSkipVerify: true}}}
	resp, err := hc.Get(fmt.Sprintf("https://127.0.0.1:%d%s", n.port, path))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s from the kubelet API: %s %v\n%s", path, resp.Status, err, b)
	}
	return string(b)
}

// kubeIO checks the kubelet API's streams and statistics on the running
// pod "sleeper" (sleeperManifest), whose VM is vm.
func (n *kubeNode) kubeIO(t *testing.T, vm string) {
	t.Run("ExecTTY", func(t *testing.T) {
		// A real terminal (tmux) runs kubectl exec -it: the guest shell
		// is on a terminal of the pane's size, follows a resize, reads
		// what is typed, and its exit code is kubectl's.
		line := shell.Command([]string{"env", "TERM=xterm-256color", filepath.Join(n.cp.Bins, "kubectl"), "--kubeconfig", n.cp.Kubeconfig,
			"exec", "-it", "sleeper", "-c", "main", "--", "sh"})
		tm := newTmux(t, 100, 30, line)
		tm.keys("tty; stty size; echo in-$((6*7))", "Enter")
		s := tm.waitFor("in-42")
		if !strings.Contains(s, "/dev/pts/") || !strings.Contains(s, "30 100") {
			t.Fatalf("the shell is not on a 100x30 terminal:\n%s", s)
		}
		tm.resize(120, 40)
		tm.keys("stty size", "Enter")
		tm.waitFor("40 120")
		tm.keys("exit 5", "Enter")
		tm.waitFor("[exit 5]")
	})

	t.Run("ExecStdin", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		cmd := n.kubectlCmd(ctx, "exec", "-i", "sleeper", "-c", "main", "--", "sh", "-c", "cat; echo end; exit 4")
		cmd.Stdin = strings.NewReader("one\ntwo\n")
		out, err := cmd.Output()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 4 {
			t.Fatalf("kubectl exec -i: %v (%s)", err, out)
		}
		if string(out) != "one\ntwo\nend\n" {
			t.Fatalf("kubectl exec -i: %q, want the input, then end (its EOF reached the command)", out)
		}
	})

	t.Run("Attach", func(t *testing.T) {
		// kubectl attach -i to the stdin container: what it is sent is
		// echoed back through the attachment.
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		cmd := n.kubectlCmd(ctx, "attach", "-i", "sleeper", "-c", "echo")
		stdin, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		var errb strings.Builder
		cmd.Stderr = &errb
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
		lines := make(chan string, 16)
		go func() {
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				lines <- sc.Text()
			}
			close(lines)
		}()
		// Until the attachment is up, what is sent may reach the
		// container before the output is followed: send again.
		tick := time.NewTicker(2 * time.Second)
		defer tick.Stop()
		_, _ = io.WriteString(stdin, "hello\n")
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatalf("kubectl attach ended: %s", errb.String())
				}
				if l == "echo:hello" {
					return
				}
			case <-tick.C:
				_, _ = io.WriteString(stdin, "hello\n")
			case <-ctx.Done():
				t.Fatalf("kubectl attach never showed echo:hello: %s", errb.String())
			}
		}
	})

	t.Run("PortForward", func(t *testing.T) {
		// Two guest servers: one on the guest's loopback only (reached
		// over SSH), one on every address (reached over plain TCP). They
		// end with the pod's VM.
		n.h.MustRun("vm", "exec", vm, "--", "sh", "-c", "mkdir -p /root/www && cd /root/www && echo from-the-pod > hi.txt && "+
			"(setsid python3 -m http.server --bind 127.0.0.1 8000 </dev/null >/dev/null 2>&1 &) && "+
			"(setsid python3 -m http.server --bind 0.0.0.0 8001 </dev/null >/dev/null 2>&1 &) && "+
			// Listening (ports 0x1F40, 0x1F41) before kubectl connects:
			// kubectl port-forward exits when a connection is refused.
			"for i in $(seq 300); do grep -q ':1F40 .* 0A ' /proc/net/tcp && grep -q ':1F41 .* 0A ' /proc/net/tcp && exit 0; sleep 0.2; done; exit 1")
		ports := kube.FreePorts(t, 2)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		// kubectl listens on 127.0.0.1 of the test's own namespace.
		cmd := n.kubectlCmd(ctx, "port-forward", "--address", "127.0.0.1", "pod/sleeper",
			fmt.Sprintf("%d:8000", ports[0]), fmt.Sprintf("%d:8001", ports[1]))
		var out strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &out
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM); _ = cmd.Wait() }()
		for i, p := range ports {
			url := fmt.Sprintf("http://127.0.0.1:%d/hi.txt", p)
			if body := fetch(t, url, 90*time.Second); strings.TrimSpace(body) != "from-the-pod" {
				t.Fatalf("GET %s through kubectl port-forward (guest port %d) = %q\n%s", url, 8000+i, body, out.String())
			}
		}
	})

	t.Run("Stats", func(t *testing.T) {
		var summary struct {
			Node struct {
				Memory struct{ WorkingSetBytes uint64 }
			}
			Pods []struct {
				PodRef struct{ Name string }
				CPU    struct{ UsageCoreNanoSeconds uint64 }
				Memory struct{ WorkingSetBytes uint64 }
			}
		}
		// The kubelet API directly, as the API server calls it (it does
		// not proxy to a node on 127.0.0.1).
		raw := n.kubeletGet(t, "/stats/summary")
		if err := json.Unmarshal([]byte(raw), &summary); err != nil {
			t.Fatalf("stats summary: %v\n%s", err, raw)
		}
		if len(summary.Pods) != 1 || summary.Pods[0].PodRef.Name != "sleeper" || summary.Pods[0].Memory.WorkingSetBytes == 0 ||
			summary.Pods[0].CPU.UsageCoreNanoSeconds == 0 || summary.Node.Memory.WorkingSetBytes == 0 {
			t.Fatalf("stats summary without the pod's use:\n%s", raw)
		}
		t.Logf("sleeper uses %d MiB, %.1f CPU s", summary.Pods[0].Memory.WorkingSetBytes>>20, float64(summary.Pods[0].CPU.UsageCoreNanoSeconds)/1e9)
		metrics := n.kubeletGet(t, "/metrics/resource")
		if !strings.Contains(metrics, `container_memory_working_set_bytes{container="main",namespace="default",pod="sleeper"}`) {
			t.Fatalf("resource metrics without the pod:\n%s", metrics)
		}
	})
}
