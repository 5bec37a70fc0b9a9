package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/banger/banger/internal/model"
	"github.com/banger/banger/internal/testenv/kube"
)

var (
	vkOnce sync.Once
	vkErr  error
)

// buildVK builds cmd/banger-vk into binDir once per run (it carries
// client-go, so only the kube tests pay for it).
func buildVK(t testing.TB) string {
	t.Helper()
	out := filepath.Join(binDir, "banger-vk")
	vkOnce.Do(func() {
		// The flags of `make build`, so the compiled client-go is shared.
		cmd := exec.Command("go", "build", "-buildvcs=false", "-o", out, "./cmd/banger-vk")
		cmd.Dir = "../.."
		if b, err := cmd.CombinedOutput(); err != nil {
			vkErr = fmt.Errorf("build banger-vk: %v\n%s", err, b)
		}
	})
	if vkErr != nil {
		t.Fatal(vkErr)
	}
	return out
}

// kubeNode is a banger host joined to a test control plane: one bangerd
// (the harness's) and one banger-vk.
type kubeNode struct {
	t    testing.TB
	h    *Harness
	cp   *kube.ControlPlane
	name string
	port int
	bin  string
	cmd  *exec.Cmd
	done chan struct{}
	log  string
}

func newKubeNode(t testing.TB) *kubeNode {
	t.Helper()
	h := NewHarness(t)
	cp := kube.Start(t, kube.Bins(t))
	// No controller-manager makes the default service account; the
	// ServiceAccount admission wants it.
	cp.MustKubectl(t, "create", "serviceaccount", "default")
	h.MustRun("vm", "list") // starts bangerd
	n := &kubeNode{t: t, h: h, cp: cp, name: "banger-e2e", port: kube.FreePorts(t, 1)[0], bin: buildVK(t),
		log: filepath.Join(t.TempDir(), "banger-vk.log")}
	n.start()
	t.Cleanup(func() {
		n.stop(syscall.SIGTERM)
		if t.Failed() {
			b, _ := os.ReadFile(n.log)
			if len(b) > 8000 {
				b = b[len(b)-8000:]
			}
			t.Logf("banger-vk log (end):\n%s", b)
		}
	})
	n.waitReady()
	return n
}

func (n *kubeNode) start() {
	n.t.Helper()
	lf, err := os.OpenFile(n.log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		n.t.Fatal(err)
	}
	n.cmd = exec.Command(n.bin,
		"--kubeconfig", n.cp.Kubeconfig,
		"--node-name", n.name, "--node-ip", "127.0.0.1", "--port", strconv.Itoa(n.port),
		"--client-ca", n.cp.ClientCA,
		"--socket", filepath.Join(n.h.StateDir, "bangerd.sock"),
		"--cpus", "2", "--memory", "4G", "--max-pods", "10", "--verbose",
	)
	n.cmd.Stdout, n.cmd.Stderr = lf, lf
	n.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := n.cmd.Start(); err != nil {
		lf.Close()
		n.t.Fatal(err)
	}
	done := make(chan struct{})
	n.done = done
	cmd := n.cmd
	go func() { _ = cmd.Wait(); lf.Close(); close(done) }()
}

func (n *kubeNode) stop(sig syscall.Signal) {
	if n.cmd == nil {
		return
	}
	_ = syscall.Kill(-n.cmd.Process.Pid, sig)
	select {
	case <-n.done:
	case <-time.After(15 * time.Second):
		_ = syscall.Kill(-n.cmd.Process.Pid, syscall.SIGKILL)
		<-n.done
	}
	n.cmd = nil
}

func (n *kubeNode) kubectl(args ...string) string {
	n.t.Helper()
	if len(args) > 0 && args[0] == "delete" {
		// How long a delete waits shows whether the pod object was
		// released when its VM went or only after its grace period.
		defer func(start time.Time) {
			n.t.Logf("kubectl %s: %.1fs", strings.Join(args, " "), time.Since(start).Seconds())
		}(time.Now())
	}
	return n.cp.MustKubectl(n.t, args...)
}

// waitFor polls a kubectl jsonpath until it equals want.
func (n *kubeNode) waitFor(timeout time.Duration, want string, args ...string) {
	n.t.Helper()
	deadline := time.Now().Add(timeout)
	last := ""
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		out, errOut, err := n.cp.Kubectl(ctx, args...)
		cancel()
		last = strings.TrimSpace(out + errOut)
		if err == nil && strings.TrimSpace(out) == want {
			n.t.Logf("%s after %.1fs: kubectl %s", want, timeout.Seconds()-time.Until(deadline).Seconds(), strings.Join(args, " "))
			return
		}
		time.Sleep(time.Second)
	}
	desc, _, _ := n.cp.Kubectl(context.Background(), "describe", "pods")
	n.t.Fatalf("kubectl %s: want %q, last %q after %s\n%s", strings.Join(args, " "), want, last, timeout, desc)
}

func (n *kubeNode) waitReady() {
	n.t.Helper()
	n.waitFor(2*time.Minute, "True", "get", "node", n.name, "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].status}`)
}

// applyPod creates a pod bound to the node (there is no scheduler) and
// returns its UID.
func (n *kubeNode) applyPod(name, image, restart string, command ...string) string {
	n.t.Helper()
	return n.applyPodMem(name, image, restart, "512Mi", command...)
}

// applyPodMem is applyPod with a memory limit.
func (n *kubeNode) applyPodMem(name, image, restart, memory string, command ...string) string {
	n.t.Helper()
	return n.applyManifest(name, n.podManifest(name, image, restart, memory, command...))
}

// podManifest is a one-container pod bound to the node.
func (n *kubeNode) podManifest(name, image, restart, memory string, command ...string) string {
	var cmd strings.Builder
	for i, c := range command {
		if i > 0 {
			cmd.WriteString(", ")
		}
		cmd.WriteString(strconv.Quote(c))
	}
	return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: %s
spec:
  nodeName: %s
  restartPolicy: %s
  automountServiceAccountToken: false
  tolerations:
  - key: banger.dev/vm
    operator: Exists
    effect: NoSchedule
  containers:
  - name: main
    image: %s
    command: [%s]
    resources:
      limits: {cpu: "1", memory: %s}
`, name, n.name, restart, image, cmd.String(), memory)
}

// createPod creates a pod in one kubectl call (the bench's clock runs
// from before it) and returns its UID.
func (n *kubeNode) createPod(name, manifest string) string {
	n.t.Helper()
	path := filepath.Join(n.t.TempDir(), name+".yaml")
	if err := os.WriteFile(path, []byte(manifest), 0o600); err != nil {
		n.t.Fatal(err)
	}
	return strings.TrimSpace(n.kubectl("create", "-f", path, "-o", "jsonpath={.metadata.uid}"))
}

func (n *kubeNode) podVMs() []model.VM {
	n.t.Helper()
	var vms, out []model.VM
	n.h.JSON(&vms, "vm", "list")
	for _, vm := range vms {
		if strings.HasPrefix(vm.Name, "k8s-") {
			out = append(out, vm)
		}
	}
	return out
}

// waitNoVM waits for a VM to be deleted.
func (n *kubeNode) waitNoVM(name string) {
	n.t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		if _, _, code := n.h.Run("vm", "show", name); code != 0 {
			return
		}
		time.Sleep(time.Second)
	}
	n.t.Fatalf("vm %s still exists two minutes after its pod was deleted", name)
}

// TestKubePodExitCodeLogsAndDelete: a pod whose command prints and exits
// 3 runs in a banger VM named after its UID, ends Failed with exit code 3,
// kubectl logs shows its output, and deleting the pod deletes the VM
// without leaving anything on the host.
func TestKubePodExitCodeLogsAndDelete(t *testing.T) {
	n := newKubeNode(t)
	uid := n.applyPod("hi", "default", "Never", "sh", "-c", "echo hi; exit 3")
	n.waitFor(5*time.Minute, "Failed", "get", "pod", "hi", "-o", "jsonpath={.status.phase}")
	if code := n.kubectl("get", "pod", "hi", "-o", "jsonpath={.status.containerStatuses[0].state.terminated.exitCode}"); code != "3" {
		t.Fatalf("exit code %q, want 3", code)
	}
	if out := n.kubectl("logs", "hi"); out != "hi\n" {
		t.Fatalf("kubectl logs: %q, want \"hi\\n\"", out)
	}
	vm := n.h.VM("k8s-" + uid)
	if vm.Labels["banger.dev/pod-uid"] != uid || vm.Labels["banger.dev/pod-name"] != "hi" || vm.Labels["banger.dev/pod-namespace"] != "default" {
		t.Errorf("pod VM labels %v", vm.Labels)
	}
	if ip := n.kubectl("get", "pod", "hi", "-o", "jsonpath={.status.podIP}"); ip != vm.GuestIP {
		t.Errorf("pod IP %q, VM address %q", ip, vm.GuestIP)
	}
	// A finished pod's VM is stopped; its logs are then read from its disk.
	deadline := time.Now().Add(2 * time.Minute)
	for vm.State != model.VMStopped && time.Now().Before(deadline) {
		time.Sleep(time.Second)
		vm = n.h.VM(vm.Name)
	}
	if vm.State != model.VMStopped {
		t.Fatalf("the finished pod's VM is %s, want stopped", vm.State)
	}
	if out := n.kubectl("logs", "hi"); out != "hi\n" {
		t.Fatalf("kubectl logs of a stopped VM: %q, want \"hi\\n\"", out)
	}
	n.kubectl("delete", "pod", "hi", "--wait=true", "--timeout=2m")
	n.waitNoVM(vm.Name)
	if vms := n.podVMs(); len(vms) != 0 {
		t.Fatalf("pod VMs left: %+v", vms)
	}
	n.h.AssertNoLeaks()
}

// TestKubeLongRunningExecRestart: a long-running pod is Running, kubectl
// exec runs in its VM (and exec -it, exec -i, attach, port-forward and
// the stats summary work: kubeIO), killing and restarting banger-vk keeps the same VM
// (no second one), stopping bangerd makes the node NotReady until it is
// back; deleting the pod then deletes the VM.
func TestKubeLongRunningExecRestart(t *testing.T) {
	n := newKubeNode(t)
	uid := n.applyManifest("sleeper", n.sleeperManifest())
	n.waitFor(5*time.Minute, "Running", "get", "pod", "sleeper", "-o", "jsonpath={.status.phase}")
	vm := n.h.VM("k8s-" + uid)
	if out := n.kubectl("exec", "sleeper", "--", "hostname"); strings.TrimSpace(out) != vm.Name {
		t.Fatalf("kubectl exec hostname: %q, want %q", out, vm.Name)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	_, _, err := n.cp.Kubectl(ctx, "exec", "sleeper", "--", "sh", "-c", "exit 7")
	cancel()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 7 {
		t.Fatalf("kubectl exec exit 7: %v", err)
	}
	n.kubeIO(t, vm.Name)

	n.stop(syscall.SIGKILL)
	n.start()
	n.waitReady()
	// The restarted banger-vk reports the pod from the VM it found.
	time.Sleep(12 * time.Second)
	n.waitFor(time.Minute, "Running", "get", "pod", "sleeper", "-o", "jsonpath={.status.phase}")
	vms := n.podVMs()
	if len(vms) != 1 || vms[0].ID != vm.ID {
		t.Fatalf("after restarting banger-vk: pod VMs %+v, want only %s", vms, vm.ID)
	}
	if out := n.kubectl("exec", "sleeper", "--", "echo", "again"); out != "again\n" {
		t.Fatalf("kubectl exec after restart: %q", out)
	}

	// bangerd going away makes the node NotReady; back, Ready again, and
	// the pod still runs in the same VM (bangerd keeps VMs across its
	// restarts).
	n.h.MustRun("daemon", "stop")
	n.waitFor(time.Minute, "False", "get", "node", n.name, "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].status}`)
	if reason := n.kubectl("get", "node", n.name, "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].reason}`); reason != "BangerdUnreachable" {
		t.Fatalf("NotReady reason %q", reason)
	}
	n.h.MustRun("vm", "list") // starts bangerd again
	n.waitReady()
	if out := n.kubectl("exec", "sleeper", "--", "echo", "back"); out != "back\n" {
		t.Fatalf("kubectl exec after restarting bangerd: %q", out)
	}
	if vms := n.podVMs(); len(vms) != 1 || vms[0].ID != vm.ID {
		t.Fatalf("after restarting bangerd: pod VMs %+v, want only %s", vms, vm.ID)
	}

	n.kubectl("delete", "pod", "sleeper", "--wait=true", "--timeout=2m")
	n.waitNoVM(vm.Name)
	n.h.AssertNoLeaks()
}

// TestKubeUnknownImageAndOrphan: a pod naming an image the host does not
// have fails with reason UnknownImage and an event, without a VM; a pod
// deleted while banger-vk is down has its VM deleted when it comes back.
func TestKubeUnknownImageAndOrphan(t *testing.T) {
	n := newKubeNode(t)
	n.applyPod("bad", "no-such-image", "Always", "true")
	n.waitFor(3*time.Minute, "Failed", "get", "pod", "bad", "-o", "jsonpath={.status.phase}")
	if r := n.kubectl("get", "pod", "bad", "-o", "jsonpath={.status.reason}"); r != "UnknownImage" {
		t.Fatalf("reason %q, want UnknownImage", r)
	}
	if msg := n.kubectl("get", "pod", "bad", "-o", "jsonpath={.status.message}"); !strings.Contains(msg, `"no-such-image"`) {
		t.Fatalf("message %q does not name the image", msg)
	}
	events := ""
	for range 30 {
		events = n.kubectl("get", "events", "--field-selector", "involvedObject.name=bad", "-o", "jsonpath={.items[*].message}")
		if strings.Contains(events, "UnknownImage") {
			break
		}
		time.Sleep(2 * time.Second)
	}
	if !strings.Contains(events, "UnknownImage") || !strings.Contains(events, "no-such-image") {
		t.Fatalf("no event names the unknown image: %q", events)
	}
	if vms := n.podVMs(); len(vms) != 0 {
		t.Fatalf("a pod with an unknown image made VMs: %+v", vms)
	}
	n.kubectl("delete", "pod", "bad", "--wait=true", "--timeout=2m")

	uid := n.applyPod("gone", "default", "Always", "sleep", "3600")
	n.waitFor(5*time.Minute, "Running", "get", "pod", "gone", "-o", "jsonpath={.status.phase}")
	vm := n.h.VM("k8s-" + uid)
	n.stop(syscall.SIGKILL)
	// Nobody confirms the deletion while the node is away: force it.
	n.kubectl("delete", "pod", "gone", "--grace-period=0", "--force")
	n.start()
	n.waitReady()
	n.waitNoVM(vm.Name)
	n.h.AssertNoLeaks()
}

// waitPhase waits until the pods' phase is want (kubectl wait: a watch,
// so the change is seen when the API server has it) and returns how long
// that took from start.
func (n *kubeNode) waitPhase(want string, start time.Time, timeout time.Duration, names ...string) time.Duration {
	n.t.Helper()
	args := []string{"wait", "--for=jsonpath={.status.phase}=" + want, "--timeout=" + timeout.String()}
	for _, name := range names {
		args = append(args, "pod/"+name)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout+time.Minute)
	defer cancel()
	if out, errOut, err := n.cp.Kubectl(ctx, args...); err != nil {
		desc, _, _ := n.cp.Kubectl(context.Background(), "describe", "pods")
		n.t.Fatalf("pods %v not %s after %s: %v\n%s%s\n%s", names, want, timeout, err, out, errOut, desc)
	}
	return time.Since(start)
}

// logTimings logs banger-vk's debug lines on pod starts (--verbose): the
// steps of each CreatePod, bangerd's boot phases and each status push.
func (n *kubeNode) logTimings(t testing.TB) {
	t.Helper()
	b, err := os.ReadFile(n.log)
	if err != nil {
		t.Logf("banger-vk log: %v", err)
		return
	}
	for _, line := range strings.Split(string(b), "\n") {
		for _, m := range []string{`msg="create pod timings"`, `msg="pod vm phase"`, `msg="pushed pod status"`, `msg="creating pod vm"`} {
			if strings.Contains(line, m) {
				t.Log(line)
				break
			}
		}
	}
}

// BenchmarkKubePodVsVMRun compares a pod's create to Running (its VM
// booted and its command started as a session) and a pod running `true`
// from create to Succeeded (the same command as the baseline, its end
// pushed to the API server) with `banger vm run --rm -- true` on the same
// host in the same run (the ratios of the medians; goal <= 1.2), then
// times 10 pods created at once until all are Running on the one node.
// A pod's clock runs from before its `kubectl create` until `kubectl
// wait` (a watch) sees the phase; banger-vk's timings of each start
// (--verbose) are logged at the end.
func BenchmarkKubePodVsVMRun(b *testing.B) {
	n := newKubeNode(b)
	n.h.MustRun("vm", "run", "--rm", "--", "true") // the default image and kernel exist from here on
	var pod, done, run []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for j := 0; j < 3; j++ {
			name := fmt.Sprintf("bench-%d-%d", i, j)
			start := time.Now()
			uid := n.createPod(name, n.podManifest(name, "default", "Never", "512Mi", "sleep", "600"))
			pod = append(pod, n.waitPhase("Running", start, 5*time.Minute, name))
			b.Logf("%s created at %s, Running after %.2fs", name, start.Format("15:04:05.000"), pod[len(pod)-1].Seconds())
			b.StopTimer()
			n.kubectl("delete", "pod", name, "--wait=true", "--timeout=2m")
			n.waitNoVM("k8s-" + uid)
			b.StartTimer()

			name = fmt.Sprintf("bench-true-%d-%d", i, j)
			start = time.Now()
			uid = n.createPod(name, n.podManifest(name, "default", "Never", "512Mi", "true"))
			done = append(done, n.waitPhase("Succeeded", start, 5*time.Minute, name))
			b.Logf("%s created at %s, Succeeded after %.2fs", name, start.Format("15:04:05.000"), done[len(done)-1].Seconds())
			b.StopTimer()
			n.kubectl("delete", "pod", name, "--wait=true", "--timeout=2m")
			n.waitNoVM("k8s-" + uid)
			b.StartTimer()

			start = time.Now()
			n.h.MustRun("vm", "run", "--rm", "--", "true")
			run = append(run, time.Since(start))
			b.Logf("vm run started at %s, done after %.2fs", start.Format("15:04:05.000"), run[len(run)-1].Seconds())
		}
	}
	b.StopTimer()
	mp, md, mr := median(pod), median(done), median(run)
	b.ReportMetric(mp.Seconds(), "s/pod-running")
	b.ReportMetric(md.Seconds(), "s/pod-true-succeeded")
	b.ReportMetric(mr.Seconds(), "s/vm-run-true")
	b.ReportMetric(mp.Seconds()/mr.Seconds(), "ratio-pod/vmrun")
	b.ReportMetric(md.Seconds()/mr.Seconds(), "ratio-podtrue/vmrun")
	// On a shared host the load drifts between the rounds; each round's
	// pods and vm run are measured back to back, so the median of the
	// rounds' ratios is steadier than the ratio of the medians.
	var rp, rd []time.Duration
	for i := range run {
		rp = append(rp, time.Duration(float64(time.Second)*pod[i].Seconds()/run[i].Seconds()))
		rd = append(rd, time.Duration(float64(time.Second)*done[i].Seconds()/run[i].Seconds()))
	}
	b.ReportMetric(median(rp).Seconds(), "paired-ratio-pod/vmrun")
	b.ReportMetric(median(rd).Seconds(), "paired-ratio-podtrue/vmrun")

	start := time.Now()
	var names []string
	for i := range 10 {
		name := fmt.Sprintf("many-%d", i)
		names = append(names, name)
		n.createPod(name, n.podManifest(name, "default", "Never", "256Mi", "sleep", "600"))
	}
	all := n.waitPhase("Running", start, 15*time.Minute, names...)
	b.ReportMetric(all.Seconds(), "s/10-pods-running")
	n.logTimings(b)
	n.kubectl("delete", "pods", "--all", "--wait=true", "--timeout=5m")
	for _, vm := range n.podVMs() {
		n.waitNoVM(vm.Name)
	}
}
