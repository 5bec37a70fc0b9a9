package provider

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	corev1listers "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	vkapi "github.com/virtual-kubelet/virtual-kubelet/node/api"

	"github.com/banger/banger/internal/api"
	"github.com/banger/banger/internal/errdefs"
	"github.com/banger/banger/internal/kube/podvm"
	"github.com/banger/banger/internal/model"
	"github.com/banger/banger/internal/progress"
)

// fakeBanger is an in-memory bangerd for the provider's edge cases: the
// calls it gets and the VMs and sessions it holds. The real daemon is
// exercised by the e2e tests (test/e2e/kube_test.go).
type fakeBanger struct {
	mu       sync.Mutex
	images   map[string]bool
	vms      map[string]*model.VM
	sessions map[string][]model.Session
	calls    []string
	// failStarts makes the next StartSession calls fail (not a launch
	// failure: no session is recorded).
	failStarts int
	// createGate, when set, holds CreateVM until it is closed.
	createGate chan struct{}
	// startGate, when set, holds StartSession until it is closed.
	startGate chan struct{}
	// quickExit makes every started session end (exit 0) right after
	// its start answered, as `true` does; the answer says starting (the
	// start read the state while the runner was recording the exit).
	quickExit bool
	// execOut is what ExecVM writes to stdout; guestPort the address
	// DialVM reaches for port 8000.
	execOut   string
	guestPort string
}

func newFake() *fakeBanger {
	return &fakeBanger{images: map[string]bool{"default": true}, vms: map[string]*model.VM{}, sessions: map[string][]model.Session{}}
}

func (f *fakeBanger) call(s string) { f.calls = append(f.calls, s) }

func (f *fakeBanger) count(prefix string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, c := range f.calls {
		if strings.HasPrefix(c, prefix) {
			n++
		}
	}
	return n
}

func (f *fakeBanger) Health(context.Context) error { return nil }

func (f *fakeBanger) ListVMs(context.Context) ([]model.VM, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []model.VM
	for _, vm := range f.vms {
		out = append(out, *vm)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func (f *fakeBanger) GetVM(_ context.Context, ref string) (model.VM, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if vm, ok := f.vms[ref]; ok {
		return *vm, nil
	}
	return model.VM{}, errdefs.Errorf(errdefs.CodeNotFound, "vm %q not found", ref)
}

func (f *fakeBanger) CreateVM(_ context.Context, req api.CreateVMRequest, _ progress.Func) (model.VM, error) {
	if f.createGate != nil {
		<-f.createGate
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.call("create " + req.Name)
	if !f.images[req.Image] {
		return model.VM{}, errdefs.Errorf(errdefs.CodeNotFound, "image %q not found", req.Image)
	}
	if _, ok := f.vms[req.Name]; ok {
		return model.VM{}, errdefs.Errorf(errdefs.CodeConflict, "vm %q exists", req.Name)
	}
	vm := &model.VM{ID: "id-" + req.Name, Name: req.Name, State: model.VMRunning, GuestIP: "172.16.0.9", CPUs: req.CPUs, Labels: req.Labels}
	f.vms[req.Name] = vm
	return *vm, nil
}

func (f *fakeBanger) DeleteVM(_ context.Context, ref string, _ bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.call("delete " + ref)
	if _, ok := f.vms[ref]; !ok {
		return errdefs.Errorf(errdefs.CodeNotFound, "vm %q not found", ref)
	}
	delete(f.vms, ref)
	delete(f.sessions, ref)
	return nil
}

func (f *fakeBanger) ListSessions(_ context.Context, vm string) ([]model.Session, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.call("ls " + vm)
	return append([]model.Session(nil), f.sessions[vm]...), nil
}

func (f *fakeBanger) StartSession(_ context.Context, vm string, req api.StartSessionRequest) (model.Session, error) {
	if f.startGate != nil {
		<-f.startGate
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.call("start " + vm + " " + req.Name)
	if f.failStarts > 0 {
		f.failStarts--
		return model.Session{}, errdefs.Errorf(errdefs.CodeUnavailable, "ssh: connection reset")
	}
	s := model.Session{ID: fmt.Sprintf("s%d", len(f.calls)), Name: req.Name, Status: model.SessionRunning, CreatedAt: time.Now()}
	kept := s
	if f.quickExit {
		code := 0
		kept.Status, kept.ExitCode = model.SessionExited, &code
		s.Status = model.SessionStarting
	}
	f.sessions[vm] = append(f.sessions[vm], kept)
	return s, nil
}

func (f *fakeBanger) setSession(vm, name string, st model.SessionStatus, code int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := range f.sessions[vm] {
		if f.sessions[vm][i].Name == name {
			f.sessions[vm][i].Status = st
			f.sessions[vm][i].ExitCode = &code
		}
	}
}

func (f *fakeBanger) StopSession(_ context.Context, vm, ref string, _ api.StopSessionRequest) (model.Session, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.call("stop " + vm + " " + ref)
	return model.Session{}, nil
}

func (f *fakeBanger) RemoveSession(_ context.Context, vm, ref string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.call("rm " + vm + " " + ref)
	var keep []model.Session
	for _, s := range f.sessions[vm] {
		if s.ID != ref {
			keep = append(keep, s)
		}
	}
	f.sessions[vm] = keep
	return nil
}

func (f *fakeBanger) SessionLogs(ctx context.Context, vm, id string, req api.SessionLogsRequest, w io.Writer) error {
	if req.Follow && req.Tail == 1 {
		// A watch: returns when the session is no longer running.
		for {
			f.mu.Lock()
			running := false
			for _, s := range f.sessions[vm] {
				if s.ID == id && (s.Status == model.SessionRunning || s.Status == model.SessionStarting) {
					running = true
				}
			}
			f.mu.Unlock()
			if !running {
				return nil
			}
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(5 * time.Millisecond):
			}
		}
	}
	if req.Stderr {
		_, err := io.WriteString(w, "err\n")
		return err
	}
	_, err := io.WriteString(w, "hi\n")
	return err
}

func (f *fakeBanger) ExecVM(_ context.Context, _ string, _ api.ExecRequest, stdout, _ io.Writer) (int, error) {
	f.mu.Lock()
	out := f.execOut
	f.mu.Unlock()
	_, err := io.WriteString(stdout, out)
	return 0, err
}

func (f *fakeBanger) ExecVMAttached(context.Context, string, api.ExecRequest) (*api.AttachStream, error) {
	return nil, errdefs.Errorf(errdefs.CodeInternal, "not in the fake")
}

func (f *fakeBanger) AttachSession(context.Context, string, string, api.AttachRequest) (*api.AttachStream, error) {
	return nil, errdefs.Errorf(errdefs.CodeInternal, "not in the fake")
}

func (f *fakeBanger) DialVM(ctx context.Context, ref string, port int) (net.Conn, error) {
	f.mu.Lock()
	addr := f.guestPort
	f.mu.Unlock()
	if addr == "" || port != 8000 {
		return nil, errdefs.Errorf(errdefs.CodeConflict, "nothing listens on port %d of vm %s", port, ref)
	}
	var d net.Dialer
	return d.DialContext(ctx, "tcp", addr)
}

func lister(pods ...*corev1.Pod) corev1listers.PodLister {
	idx := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})
	for _, p := range pods {
		_ = idx.Add(p)
	}
	return corev1listers.NewPodLister(idx)
}

func testPod(name, uid, image string, policy corev1.RestartPolicy) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name, UID: types.UID(uid)},
		Spec: corev1.PodSpec{RestartPolicy: policy, Containers: []corev1.Container{
			{Name: "main", Image: image, Command: []string{"sh", "-c", "exit 3"}},
		}},
	}
}

func newProvider(f *fakeBanger, pods ...*corev1.Pod) *Provider {
	return New(f, lister(pods...), "node", "127.0.0.1", slog.New(slog.NewTextHandler(io.Discard, nil)))
}

func TestCreatePodIsIdempotent(t *testing.T) {
	f := newFake()
	pod := testPod("a", "aaaa-1", "default", corev1.RestartPolicyNever)
	p := newProvider(f, pod)
	ctx := context.Background()
	for range 2 {
		if err := p.CreatePod(ctx, pod); err != nil {
			t.Fatal(err)
		}
	}
	if f.count("create ") != 1 || f.count("start ") != 1 {
		t.Fatalf("calls %v: want one VM and one session", f.calls)
	}
	// A fresh provider (banger-vk restarted) adopts, never creates again.
	p2 := newProvider(f, pod)
	if err := p2.Adopt(ctx); err != nil {
		t.Fatal(err)
	}
	if got, err := p2.GetPod(ctx, "default", "a"); err != nil || got.UID != pod.UID {
		t.Fatalf("GetPod after adopt: %v, %v", got, err)
	}
	if err := p2.CreatePod(ctx, pod); err != nil {
		t.Fatal(err)
	}
	if f.count("create ") != 1 || f.count("start ") != 1 {
		t.Fatalf("calls %v after restart: want no second VM or session", f.calls)
	}
	f.setSession("k8s-aaaa-1", "main", model.SessionFailed, 3)
	st, err := p2.GetPodStatus(ctx, "default", "a")
	if err != nil {
		t.Fatal(err)
	}
	if st.Phase != corev1.PodFailed || st.ContainerStatuses[0].State.Terminated.ExitCode != 3 || st.PodIP != "172.16.0.9" {
		t.Fatalf("status %+v", st)
	}
}

func TestAdoptDeletesOrphansOnly(t *testing.T) {
	f := newFake()
	podVM := func(uid string) *model.VM {
		return &model.VM{Name: "k8s-" + uid, State: model.VMRunning, Labels: map[string]string{podvm.LabelPodUID: uid}}
	}
	f.vms["k8s-live"] = podVM("live")
	f.vms["k8s-gone"] = podVM("gone")
	f.vms["mine"] = &model.VM{Name: "mine", State: model.VMRunning}
	// Named like a pod VM but without the label: the user's, never deleted.
	f.vms["k8s-test"] = &model.VM{Name: "k8s-test", State: model.VMRunning}
	p := newProvider(f, testPod("live", "live", "default", corev1.RestartPolicyNever))
	if err := p.Adopt(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, ok := f.vms["k8s-gone"]; ok {
		t.Error("orphan VM kept")
	}
	if _, ok := f.vms["k8s-live"]; !ok {
		t.Error("live pod's VM deleted")
	}
	if _, ok := f.vms["mine"]; !ok {
		t.Error("a VM that runs no pod was touched")
	}
	if _, ok := f.vms["k8s-test"]; !ok {
		t.Error("a user's VM named like a pod VM was deleted")
	}
}

func TestUnknownImageFailsWithoutVM(t *testing.T) {
	f := newFake()
	pod := testPod("bad", "bbbb", "nope", corev1.RestartPolicyAlways)
	p := newProvider(f, pod)
	ctx := context.Background()
	err := p.CreatePod(ctx, pod)
	if err == nil || !strings.Contains(err.Error(), "UnknownImage") || !strings.Contains(err.Error(), `"nope"`) {
		t.Fatalf("CreatePod: %v", err)
	}
	st, err := p.GetPodStatus(ctx, "default", "bad")
	if err != nil {
		t.Fatal(err)
	}
	if st.Phase != corev1.PodFailed || st.Reason != "UnknownImage" {
		t.Fatalf("status %+v", st)
	}
	// The pod controller retries: the known failure is kept, no VM made.
	if _, err := p.GetPod(ctx, "default", "bad"); err != nil {
		t.Fatal(err)
	}
	if len(f.vms) != 0 {
		t.Fatalf("VMs made: %v", f.vms)
	}
}

func TestRestartPolicyRestartsFailedContainer(t *testing.T) {
	f := newFake()
	pod := testPod("r", "rrrr", "default", corev1.RestartPolicyOnFailure)
	p := newProvider(f, pod)
	ctx := context.Background()
	if err := p.CreatePod(ctx, pod); err != nil {
		t.Fatal(err)
	}
	f.setSession("k8s-rrrr", "main", model.SessionFailed, 3)
	st, err := p.GetPodStatus(ctx, "default", "r")
	if err != nil {
		t.Fatal(err)
	}
	if f.count("start ") != 2 || f.count("rm ") != 1 {
		t.Fatalf("calls %v: want the failed session removed and started again", f.calls)
	}
	cs := st.ContainerStatuses[0]
	if st.Phase != corev1.PodRunning || cs.RestartCount != 1 || cs.State.Running == nil {
		t.Fatalf("status %+v", st)
	}
	f.setSession("k8s-rrrr", "main", model.SessionExited, 0)
	st, _ = p.GetPodStatus(ctx, "default", "r")
	if st.Phase != corev1.PodSucceeded || f.count("start ") != 2 {
		t.Fatalf("status %+v, calls %v: an exit 0 under OnFailure ends the pod", st, f.calls)
	}
}

func TestDeletePodStopsSessionsAndDeletesVM(t *testing.T) {
	f := newFake()
	pod := testPod("d", "dddd", "default", corev1.RestartPolicyNever)
	p := newProvider(f, pod)
	// Once the VM is gone the pod object is released at once, as a
	// kubelet does; a failed release is only logged.
	var released []string
	p.SetRelease(func(_ context.Context, ns, name string, uid types.UID) error {
		if len(f.vms) != 0 {
			t.Errorf("released %s/%s before its VM was deleted", ns, name)
		}
		released = append(released, ns+"/"+name+"/"+string(uid))
		return errors.New("api server away")
	})
	ctx := context.Background()
	if err := p.CreatePod(ctx, pod); err != nil {
		t.Fatal(err)
	}
	if err := p.DeletePod(ctx, pod); err != nil {
		t.Fatal(err)
	}
	if f.count("stop k8s-dddd") != 1 || f.count("delete k8s-dddd") != 1 || len(f.vms) != 0 {
		t.Fatalf("calls %v", f.calls)
	}
	if len(released) != 1 || released[0] != "default/d/"+string(pod.UID) {
		t.Fatalf("released %v", released)
	}
	if _, err := p.GetPod(ctx, "default", "d"); err == nil {
		t.Fatal("deleted pod still known")
	}
	// Deleting again (a retry) is not an error.
	if err := p.DeletePod(ctx, pod); err != nil {
		t.Fatal(err)
	}
}

func TestContainerLogsCarryBothStreams(t *testing.T) {
	f := newFake()
	pod := testPod("l", "llll", "default", corev1.RestartPolicyNever)
	p := newProvider(f, pod)
	ctx := context.Background()
	if err := p.CreatePod(ctx, pod); err != nil {
		t.Fatal(err)
	}
	rc, err := p.GetContainerLogs(ctx, "default", "l", "main", vkLogOpts())
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		t.Fatal(err)
	}
	if s := string(b); !strings.Contains(s, "hi\n") || !strings.Contains(s, "err\n") {
		t.Fatalf("logs %q", s)
	}
	if _, err := p.GetContainerLogs(ctx, "default", "l", "other", vkLogOpts()); err == nil {
		t.Fatal("logs of a container that does not exist")
	}
}

func TestNodeSpec(t *testing.T) {
	n := Node(NodeConfig{Name: "h1", IP: "127.0.0.1", Port: 10250, CPUs: 2, MemoryMiB: 4096, Pods: 10, Version: "banger-vk-dev"})
	if len(n.Spec.Taints) != 1 || n.Spec.Taints[0].Key != "banger.dev/vm" || n.Spec.Taints[0].Effect != corev1.TaintEffectNoSchedule {
		t.Errorf("taints %+v", n.Spec.Taints)
	}
	if c := n.Status.Capacity[corev1.ResourceCPU]; c.Value() != 2 {
		t.Errorf("cpu %v", c)
	}
	if m := n.Status.Capacity[corev1.ResourceMemory]; m.Value() != 4096<<20 {
		t.Errorf("memory %v", m)
	}
	if pods := n.Status.Allocatable[corev1.ResourcePods]; pods.Value() != 10 {
		t.Errorf("pods %v", pods)
	}
	if n.Status.DaemonEndpoints.KubeletEndpoint.Port != 10250 || n.Status.Addresses[0].Address != "127.0.0.1" {
		t.Errorf("endpoint %+v %+v", n.Status.DaemonEndpoints, n.Status.Addresses)
	}
}

func vkLogOpts() vkapi.ContainerLogOpts { return vkapi.ContainerLogOpts{} }

func (f *fakeBanger) StopVM(_ context.Context, ref string, _ api.StopVMRequest) (model.VM, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.call("stopvm " + ref)
	vm, ok := f.vms[ref]
	if !ok {
		return model.VM{}, errdefs.Errorf(errdefs.CodeNotFound, "vm %q not found", ref)
	}
	vm.State = model.VMStopped
	return *vm, nil
}

func TestFinishedPodStopsItsVM(t *testing.T) {
	f := newFake()
	pod := testPod("f", "ffff", "default", corev1.RestartPolicyNever)
	p := newProvider(f, pod)
	ctx := context.Background()
	if err := p.CreatePod(ctx, pod); err != nil {
		t.Fatal(err)
	}
	f.setSession("k8s-ffff", "main", model.SessionFailed, 3)
	st, err := p.GetPodStatus(ctx, "default", "f")
	if err != nil || st.Phase != corev1.PodFailed {
		t.Fatalf("status %+v, %v", st, err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for f.count("stopvm k8s-ffff") == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	// The stopped VM's sessions still say how the pod ended.
	st, err = p.GetPodStatus(ctx, "default", "f")
	if err != nil || st.Phase != corev1.PodFailed || st.ContainerStatuses[0].State.Terminated.ExitCode != 3 {
		t.Fatalf("status after stop %+v, %v", st, err)
	}
	if n := f.count("stopvm "); n != 1 {
		t.Fatalf("VM stopped %d times, want once (calls %v)", n, f.calls)
	}
}

func readyOf(n *corev1.Node) corev1.NodeCondition {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c
		}
	}
	return corev1.NodeCondition{}
}

func TestSetReadyFollowsBangerd(t *testing.T) {
	n := Node(NodeConfig{Name: "h1", IP: "127.0.0.1", Port: 10250, CPUs: 1, MemoryMiB: 1, Pods: 1})
	if readyOf(&n).Status != corev1.ConditionFalse {
		t.Fatal("a new node must not be Ready before bangerd answered")
	}
	t0 := time.Unix(1700000000, 0)
	if !SetReady(&n, nil, t0) || readyOf(&n).Status != corev1.ConditionTrue {
		t.Fatalf("healthy: %+v", readyOf(&n))
	}
	if SetReady(&n, nil, t0.Add(time.Second)) {
		t.Fatal("no change reported as a change")
	}
	if !SetReady(&n, fmt.Errorf("dial unix /x.sock: connection refused"), t0.Add(2*time.Second)) {
		t.Fatal("bangerd going away is a change")
	}
	c := readyOf(&n)
	if c.Status != corev1.ConditionFalse || c.Reason != "BangerdUnreachable" || !strings.Contains(c.Message, "connection refused") || !c.LastTransitionTime.Equal(&metav1.Time{Time: t0.Add(2 * time.Second)}) {
		t.Fatalf("unhealthy: %+v", c)
	}
}

type sickBanger struct {
	*fakeBanger
	mu  sync.Mutex
	err error
}

func (s *sickBanger) Health(context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

func TestHealthNotifiesChanges(t *testing.T) {
	b := &sickBanger{fakeBanger: newFake()}
	n := Node(NodeConfig{Name: "h1"})
	h := NewHealth(b, &n, 10*time.Millisecond)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	got := make(chan corev1.ConditionStatus, 10)
	h.NotifyNodeStatus(ctx, func(n *corev1.Node) { got <- readyOf(n).Status })
	if s := <-got; s != corev1.ConditionTrue {
		t.Fatalf("first status %s", s)
	}
	b.mu.Lock()
	b.err = fmt.Errorf("gone")
	b.mu.Unlock()
	if s := <-got; s != corev1.ConditionFalse {
		t.Fatalf("after bangerd went away: %s", s)
	}
	b.mu.Lock()
	b.err = nil
	b.mu.Unlock()
	if s := <-got; s != corev1.ConditionTrue {
		t.Fatalf("after bangerd came back: %s", s)
	}
}

func TestFailedSessionStartIsRetriedByStatus(t *testing.T) {
	f := newFake()
	f.failStarts = 1
	pod := testPod("s", "ssss", "default", corev1.RestartPolicyNever)
	p := newProvider(f, pod)
	ctx := context.Background()
	if err := p.CreatePod(ctx, pod); err == nil {
		t.Fatal("CreatePod hid a failed session start")
	}
	// The pod controller's retry finds the pod known (GetPod) and does
	// not create it again; the status poll starts the missing session.
	if _, err := p.GetPod(ctx, "default", "s"); err != nil {
		t.Fatal(err)
	}
	st, err := p.GetPodStatus(ctx, "default", "s")
	if err != nil {
		t.Fatal(err)
	}
	if f.count("create ") != 1 || f.count("start ") != 2 {
		t.Fatalf("calls %v: want one VM and the session started on the next status", f.calls)
	}
	if st.Phase != corev1.PodRunning || st.ContainerStatuses[0].RestartCount != 0 {
		t.Fatalf("status %+v", st)
	}
}

func TestPodIsPendingWhileItsVMIsMade(t *testing.T) {
	f := newFake()
	f.createGate = make(chan struct{})
	pod := testPod("slow", "slow", "default", corev1.RestartPolicyNever)
	p := newProvider(f, pod)
	ctx := context.Background()
	done := make(chan error, 1)
	go func() { done <- p.CreatePod(ctx, pod) }()
	var st *corev1.PodStatus
	var err error
	for range 500 {
		if st, err = p.GetPodStatus(ctx, "default", "slow"); err == nil {
			break
		}
		time.Sleep(2 * time.Millisecond)
	}
	if err != nil || st.Phase != corev1.PodPending {
		t.Fatalf("status while the VM is made: %+v, %v", st, err)
	}
	close(f.createGate)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if st, err = p.GetPodStatus(ctx, "default", "slow"); err != nil || st.Phase != corev1.PodRunning {
		t.Fatalf("status after: %+v, %v", st, err)
	}
}

// TestPodIsPendingWhileItsSessionsStart: a status read while CreatePod
// starts the sessions says Pending without asking the guest (it would
// compete with the starts, and a half-started pod is not Running).
func TestPodIsPendingWhileItsSessionsStart(t *testing.T) {
	f := newFake()
	f.startGate = make(chan struct{})
	pod := testPod("two", "two", "default", corev1.RestartPolicyNever)
	pod.Spec.Containers = append(pod.Spec.Containers, corev1.Container{Name: "side", Image: "default", Command: []string{"sleep", "9"}})
	p := newProvider(f, pod)
	ctx := context.Background()
	done := make(chan error, 1)
	go func() { done <- p.CreatePod(ctx, pod) }()
	for f.count("create ") == 0 {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(10 * time.Millisecond) // CreatePod is at the starts
	st, err := p.status(ctx, "default", "two", false)
	if err != nil || st.Phase != corev1.PodPending || f.count("ls ") != 0 {
		t.Fatalf("status while starting: %+v, %v; calls %v", st, err, f.calls)
	}
	close(f.startGate)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if st, err = p.GetPodStatus(ctx, "default", "two"); err != nil || st.Phase != corev1.PodRunning {
		t.Fatalf("status after: %+v, %v", st, err)
	}
}
