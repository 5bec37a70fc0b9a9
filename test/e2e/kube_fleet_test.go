package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/banger/banger/internal/testenv/kube"
)

// joinKubeNode starts a banger host of its own (a harness: bangerd with
// its own state dir in its own network namespace; the image cache under
// /var/cache/banger is shared) and its banger-vk joined to cp as node
// name, with 2 CPUs, 4G and 10 pods of capacity. It does not wait for the
// node to be Ready, so several hosts join at once.
func joinKubeNode(t testing.TB, cp *kube.ControlPlane, name string) *kubeNode {
	t.Helper()
	h := NewHarness(t)
	h.MustRun("vm", "list") // starts bangerd
	n := &kubeNode{t: t, h: h, cp: cp, name: name, port: kube.FreePorts(t, 1)[0], bin: buildVK(t),
		log: filepath.Join(t.TempDir(), name+".log")}
	n.start()
	t.Cleanup(func() {
		n.stop(syscall.SIGTERM)
		if t.Failed() {
			b, _ := os.ReadFile(n.log)
			if len(b) > 8000 {
				b = b[len(b)-8000:]
			}
			t.Logf("%s banger-vk log (end):\n%s", name, b)
		}
	})
	return n
}

// fleetPods is count pods for the scheduler (no nodeName): each requests
// 1 CPU and 256Mi, tolerates the banger.dev/vm taint, and tolerates a
// not-ready or unreachable node for 2 s only, so eviction is quick.
func fleetPods(prefix string, count int) string {
	var b strings.Builder
	for i := range count {
		fmt.Fprintf(&b, `---
apiVersion: v1
kind: Pod
metadata:
  name: %s-%d
spec:
  restartPolicy: Never
  automountServiceAccountToken: false
  terminationGracePeriodSeconds: 2
  nodeSelector: {banger.dev/vm: "true"}
  tolerations:
  - {key: banger.dev/vm, operator: Exists, effect: NoSchedule}
  - {key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 2}
  - {key: node.kubernetes.io/not-ready, operator: Exists, effect: NoExecute, tolerationSeconds: 2}
  containers:
  - name: main
    image: default
    command: [sleep, "3600"]
    resources:
      requests: {cpu: "1", memory: 256Mi}
      limits: {cpu: "1", memory: 256Mi}
`, prefix, i)
	}
	return b.String()
}

// waitUntil polls cond every second until it holds, failing the test
// with what after timeout; it returns how long it took.
func waitUntil(t testing.TB, timeout time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for time.Since(start) < timeout {
		if cond() {
			t.Logf("%s after %.1fs", what, time.Since(start).Seconds())
			return time.Since(start)
		}
		time.Sleep(time.Second)
	}
	t.Fatalf("not %s after %s", what, timeout)
	return 0
}

// TestKubeTwoHostsScheduleEvict: two banger hosts (two bangerds in their
// own namespaces, each with its banger-vk offering 2 CPUs) join one
// cluster with kube-scheduler and the node lifecycle controllers; four
// pods requesting 1 CPU each are placed two and two by the scheduler and
// run as VMs of their node's bangerd. Killing one host's banger-vk makes
// its node Unknown (its lease stops) and its pods are evicted while the
// other host's keep running; when that banger-vk comes back it deletes
// the evicted pods' VMs, and nothing is left on either host (the
// harnesses check both after the test).
func TestKubeTwoHostsScheduleEvict(t *testing.T) {
	cp := kube.Start(t, kube.Bins(t))
	// No service account controller runs; the ServiceAccount admission
	// wants the default one.
	cp.MustKubectl(t, "create", "serviceaccount", "default")
	cp.StartScheduler(t)
	cp.StartNodeLifecycle(t, kube.NodeLifecycle{MonitorPeriod: 2 * time.Second, GracePeriod: 20 * time.Second})
	a := joinKubeNode(t, cp, "banger-e2e-a")
	b := joinKubeNode(t, cp, "banger-e2e-b")
	a.waitReady()
	b.waitReady()
	// The not-ready taint the API server puts on a new node is lifted by
	// the node lifecycle controller on its next pass after Ready (every
	// 2 s here), not at once: wait for it rather than race it.
	for _, n := range []*kubeNode{a, b} {
		n.waitFor(time.Minute, "2 banger.dev/vm", "get", "node", n.name, "-o", "jsonpath={.status.allocatable.cpu} {.spec.taints[*].key}")
	}

	manifest := filepath.Join(t.TempDir(), "pods.yaml")
	if err := os.WriteFile(manifest, []byte(fleetPods("fleet", 4)), 0o600); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	a.kubectl("apply", "-f", manifest)
	a.waitFor(10*time.Minute, "Running Running Running Running", "get", "pods", "-o", "jsonpath={.items[*].status.phase}")
	t.Logf("4 pods on 2 hosts Running in %.1fs", time.Since(start).Seconds())

	// The scheduler filled each node's 2 CPUs: two pods each, each pod a
	// VM of its own node's bangerd.
	placed := map[string][]string{} // node -> pod names
	vmOf := map[string]string{}     // pod name -> VM name
	for _, line := range strings.Split(strings.TrimSpace(a.kubectl("get", "pods", "-o",
		`jsonpath={range .items[*]}{.metadata.name} {.spec.nodeName} {.metadata.uid}{"\n"}{end}`)), "\n") {
		f := strings.Fields(line)
		if len(f) != 3 {
			t.Fatalf("pod line %q", line)
		}
		placed[f[1]] = append(placed[f[1]], f[0])
		vmOf[f[0]] = "k8s-" + f[2]
	}
	for _, n := range []*kubeNode{a, b} {
		var want, got []string
		for _, pod := range placed[n.name] {
			want = append(want, vmOf[pod])
		}
		for _, vm := range n.podVMs() {
			got = append(got, vm.Name)
		}
		slices.Sort(want)
		slices.Sort(got)
		if len(want) != 2 || !slices.Equal(want, got) {
			t.Fatalf("node %s: pods %v (VMs %v), its bangerd's pod VMs %v; want 2 pods, each with its VM on that host", n.name, placed[n.name], want, got)
		}
	}

	// Host b's banger-vk dies: its lease stops, the node goes Unknown and
	// is tainted unreachable, and its pods are evicted (marked for
	// deletion; nobody on b confirms). Host a's pods are untouched. b's
	// VMs keep running: bangerd does not know about Kubernetes.
	b.stop(syscall.SIGKILL)
	killed := time.Now()
	b.waitFor(2*time.Minute, "Unknown", "get", "node", b.name, "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].status}`)
	// The controller taints the node from a queue of its own, a moment
	// after it marks the node Unknown.
	waitUntil(t, time.Minute, "node "+b.name+" tainted unreachable", func() bool {
		return strings.Contains(b.kubectl("get", "node", b.name, "-o", "jsonpath={.spec.taints[*].key}"), "node.kubernetes.io/unreachable")
	})
	waitUntil(t, 2*time.Minute, "evicted pods marked for deletion", func() bool {
		for _, pod := range placed[b.name] {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			out, _, err := cp.Kubectl(ctx, "get", "pod", pod, "-o", "jsonpath={.metadata.deletionTimestamp}")
			cancel()
			if err != nil || out == "" {
				return false
			}
		}
		return true
	})
	t.Logf("host b's pods evicted %.1fs after its banger-vk died", time.Since(killed).Seconds())
	for _, pod := range placed[a.name] {
		if out := a.kubectl("get", "pod", pod, "-o", "jsonpath={.status.phase} {.metadata.deletionTimestamp}"); out != "Running " {
			t.Fatalf("pod %s on the healthy node: %q, want Running and not deleted", pod, out)
		}
	}
	if vms := b.podVMs(); len(vms) != 2 {
		t.Fatalf("host b's pod VMs while its node is away: %d, want its 2 still running", len(vms))
	}

	// b's banger-vk comes back: it takes the evicted pods back, deletes
	// their VMs and confirms the deletions.
	b.start()
	b.waitReady()
	for _, pod := range placed[b.name] {
		b.waitNoVM(vmOf[pod])
	}
	b.waitFor(2*time.Minute, strings.Join(placed[a.name], " "), "get", "pods", "-o", "jsonpath={.items[*].metadata.name}")
	t.Logf("host b's evicted pods and VMs gone %.1fs after its banger-vk died", time.Since(killed).Seconds())
	b.h.AssertNoLeaks()
	// Host a's pods still run; its harness deletes their VMs (after its
	// banger-vk stopped) and checks that nothing is left.
	for _, pod := range placed[a.name] {
		if out := a.kubectl("get", "pod", pod, "-o", "jsonpath={.status.phase}"); out != "Running" {
			t.Fatalf("pod %s on the healthy node: %q after the other node came back", pod, out)
		}
	}
}
