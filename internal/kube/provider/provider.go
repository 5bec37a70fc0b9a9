// Package provider is banger-vk's virtual-kubelet provider: it runs the
// pods Kubernetes places on this node as VMs of the local bangerd, through
// bangerd's API (the Banger interface, which *api.Client satisfies). What
// a pod becomes and what its status says come from package podvm; this
// package does the calls, keeps the pods it runs in memory, and finds them
// again after a restart from bangerd's VM list (VM names carry pod UIDs).
//
// It must not reach a guest or a VM's files other than through bangerd's
// API, and must never touch a VM whose name does not start with
// podvm.VMPrefix.
package provider

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	vkerrdefs "github.com/virtual-kubelet/virtual-kubelet/errdefs"
	vkapi "github.com/virtual-kubelet/virtual-kubelet/node/api"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	corev1listers "k8s.io/client-go/listers/core/v1"

	"github.com/banger/banger/internal/api"
	"github.com/banger/banger/internal/errdefs"
	"github.com/banger/banger/internal/keyed"
	"github.com/banger/banger/internal/kube/podvm"
	"github.com/banger/banger/internal/model"
	"github.com/banger/banger/internal/progress"
)

// Banger is the part of bangerd's API the provider uses. Errors are
// *errdefs.Error values (a missing VM, image or session is not found).
type Banger interface {
	Health(ctx context.Context) error
	ListVMs(ctx context.Context) ([]model.VM, error)
	GetVM(ctx context.Context, ref string) (model.VM, error)
	CreateVM(ctx context.Context, req api.CreateVMRequest, report progress.Func) (model.VM, error)
	StopVM(ctx context.Context, ref string, req api.StopVMRequest) (model.VM, error)
	DeleteVM(ctx context.Context, ref string, force bool) error
	ListSessions(ctx context.Context, vmRef string) ([]model.Session, error)
	StartSession(ctx context.Context, vmRef string, req api.StartSessionRequest) (model.Session, error)
	StopSession(ctx context.Context, vmRef, ref string, req api.StopSessionRequest) (model.Session, error)
	RemoveSession(ctx context.Context, vmRef, ref string) error
	SessionLogs(ctx context.Context, vmRef, ref string, req api.SessionLogsRequest, w io.Writer) error
	ExecVM(ctx context.Context, ref string, req api.ExecRequest, stdout, stderr io.Writer) (int, error)
	// ExecVMAttached, AttachSession and DialVM are streams: the caller
	// closes what they return.
	ExecVMAttached(ctx context.Context, ref string, req api.ExecRequest) (*api.AttachStream, error)
	AttachSession(ctx context.Context, vmRef, ref string, req api.AttachRequest) (*api.AttachStream, error)
	DialVM(ctx context.Context, ref string, port int) (net.Conn, error)
}

// Provider runs pods as banger VMs. Make it with New; the pod controller
// calls it from several workers, never twice at once for one pod.
type Provider struct {
	b        Banger
	pods     corev1listers.PodLister
	hostIP   string
	nodeName string
	started  time.Time
	log      *slog.Logger
	now      func() time.Time

	lock keyed.Mutex // per pod UID: create, delete, restarts
	mu   sync.Mutex
	run  map[string]*entry // by namespace/name

	// Status pushes (notify.go).
	notify   func(*corev1.Pod)
	loopCtx  context.Context              // NotifyPods' context: the watches live under it
	kick     chan kick                    // pods to look at now
	sent     map[string]*corev1.PodStatus // the last status pushed, by namespace/name; under mu
	deleted  map[string]bool              // pods DeletePod removed, until the API forgets them; under mu
	inflight map[string]bool              // pods whose status is being read; under mu
	again    map[string]bool              // pods to read once more after that; under mu

	// release removes a deleted pod's object from the API server once
	// its VM is gone (SetRelease); nil leaves that to virtual-kubelet.
	release func(ctx context.Context, namespace, name string, uid types.UID) error
}

// SetRelease gives the provider what a kubelet does once a deleted
// pod's containers are gone: remove the pod object from the API server
// at once (grace 0, only that UID). Without it virtual-kubelet removes
// the object only after the pod's whole grace period (30 s by default),
// however fast the VM went.
func (p *Provider) SetRelease(release func(ctx context.Context, namespace, name string, uid types.UID) error) {
	p.release = release
}

// entry is a pod this node runs (or failed to run).
type entry struct {
	pod      *corev1.Pod
	vm       string
	failure  *podvm.PlanError
	restarts map[string]int32
	stopping bool // the pod finished: its VM is being (or was) stopped
	creating bool // CreatePod is making its VM
	// starting: CreatePod is starting the sessions of its VM; a status
	// read meanwhile says Pending and leaves the guest to the starts.
	starting bool
	// lastStats is the VM's previous guest sample, for the CPU rate.
	lastStats podvm.GuestStats
	// watches follow the VM's running sessions, by session ID (notify.go).
	watches map[string]context.CancelFunc
	// quickEnds are the sessions whose follow ended at once; under mu.
	quickEnds map[string]bool
	// sessions were read at sessionsAt with the VM in sessionsState.
	sessions      []model.Session
	sessionsAt    time.Time
	sessionsState model.VMState
}

// New returns a provider over bangerd's API. pods lists the pods bound
// to this node (the informer's lister); nodeName and hostIP are the
// node's name and address.
func New(b Banger, pods corev1listers.PodLister, nodeName, hostIP string, log *slog.Logger) *Provider {
	return &Provider{b: b, pods: pods, nodeName: nodeName, hostIP: hostIP, log: log, now: time.Now, started: time.Now(),
		run: map[string]*entry{}, kick: make(chan kick, kickQueue), sent: map[string]*corev1.PodStatus{}, deleted: map[string]bool{},
		inflight: map[string]bool{}, again: map[string]bool{}}
}

func key(namespace, name string) string { return namespace + "/" + name }

func (p *Provider) get(namespace, name string) *entry {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.run[key(namespace, name)]
}

func (p *Provider) put(e *entry) {
	p.mu.Lock()
	defer p.mu.Unlock()
	k := key(e.pod.Namespace, e.pod.Name)
	if old := p.run[k]; old != nil && old != e {
		old.unwatch()
	}
	p.run[k] = e
	delete(p.deleted, k)
}

// ---- start-up ----

// Adopt rebuilds what the provider knows from bangerd after a restart of
// banger-vk or bangerd: every pod VM whose pod is bound to this node is
// taken back (no second VM is made for it), and every pod VM whose pod
// is gone is deleted. Call it once the pod lister has synced, before the
// pod controller runs.
func (p *Provider) Adopt(ctx context.Context) error {
	vms, err := p.b.ListVMs(ctx)
	if err != nil {
		return fmt.Errorf("list banger VMs: %w", err)
	}
	pods, err := p.pods.List(labels.Everything())
	if err != nil {
		return fmt.Errorf("list pods: %w", err)
	}
	live := map[types.UID]bool{}
	byUID := map[types.UID]*corev1.Pod{}
	for _, pod := range pods {
		live[pod.UID] = true
		byUID[pod.UID] = pod
	}
	for _, vm := range vms {
		uid, ok := podvm.UIDOf(vm)
		if !ok || !live[uid] {
			continue
		}
		pod := byUID[uid]
		p.put(&entry{pod: pod.DeepCopy(), vm: vm.Name, restarts: restartsOf(pod)})
		p.log.Info("adopted pod vm", "pod", key(pod.Namespace, pod.Name), "vm", vm.Name)
		p.poke(key(pod.Namespace, pod.Name))
	}
	var errs []error
	for _, name := range podvm.Orphans(vms, live) {
		p.log.Info("deleting orphan pod vm", "vm", name)
		if err := p.b.DeleteVM(ctx, name, true); err != nil && !errdefs.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("delete orphan vm %s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

// restartsOf carries the restart counts a pod reported before a restart.
func restartsOf(pod *corev1.Pod) map[string]int32 {
	r := map[string]int32{}
	for _, cs := range pod.Status.ContainerStatuses {
		r[cs.Name] = cs.RestartCount
	}
	return r
}

// ---- node.PodLifecycleHandler ----

// CreatePod makes the pod's VM (booted) and starts one session per
// container. It is idempotent: a VM or session that already exists is
// kept. A pod banger cannot run (unsupported spec, unknown image) is
// remembered as failed, so its status says why, and the error is
// returned so the pod controller records an event.
func (p *Provider) CreatePod(ctx context.Context, pod *corev1.Pod) error {
	unlock := p.lock.Lock(string(pod.UID))
	defer unlock()
	plan, err := podvm.PlanPod(pod)
	if err != nil {
		return p.cannotRun(pod, err)
	}
	// Known (and Pending) while its VM is made: a first boot may build
	// the default image for minutes, and a pod whose status is not found
	// for a minute is failed by the pod controller.
	e := &entry{pod: pod.DeepCopy(), vm: plan.VM.Name, restarts: restartsOf(pod), creating: true}
	p.put(e)
	k := key(pod.Namespace, pod.Name)
	t := p.timer(k)
	defer t.done("create pod timings")
	vm, err := p.b.GetVM(ctx, plan.VM.Name)
	t.mark("lookup")
	made := false
	if errdefs.IsNotFound(err) {
		p.log.Info("creating pod vm", "pod", k, "vm", plan.VM.Name)
		vm, err = p.b.CreateVM(ctx, plan.VM, t.phases)
		t.mark("create_vm")
		switch {
		case errdefs.IsNotFound(err):
			// The only reference the request carries is the image (the
			// kernel is the daemon's default, pulled on first use).
			return p.cannotRun(pod, &podvm.PlanError{Reason: podvm.ReasonUnknownImage,
				Message: fmt.Sprintf("image %q is not a banger image on this node (banger image list shows them): %v", plan.VM.Image, err)})
		case err != nil && errdefs.CodeOf(err) != errdefs.CodeConflict:
			// Forgotten, so the pod controller's retry creates it again.
			p.forget(pod)
			return fmt.Errorf("create vm %s: %w", plan.VM.Name, err)
		}
		// A conflict is a VM made meanwhile: its record is not in hand.
		made = err == nil
	} else if err != nil {
		p.forget(pod)
		return fmt.Errorf("look up vm %s: %w", plan.VM.Name, err)
	}
	// The VM exists: a failed session start from here on is retried
	// through GetPodStatus's restart pass, never by a second VM.
	p.mu.Lock()
	e.creating, e.starting = false, true
	p.mu.Unlock()
	started := func() {
		p.mu.Lock()
		e.starting = false
		p.mu.Unlock()
	}
	// A VM this call made has no sessions yet: asking the guest would
	// cost a round trip for nothing.
	var have []model.Session
	if !made {
		if have, err = p.b.ListSessions(ctx, plan.VM.Name); err != nil {
			started()
			return fmt.Errorf("list sessions of %s: %w", plan.VM.Name, err)
		}
		t.mark("list_sessions")
	}
	got := map[string]bool{}
	for _, s := range have {
		got[s.Name] = true
	}
	var todo []api.StartSessionRequest
	for _, s := range plan.Sessions {
		if !got[s.Name] {
			todo = append(todo, s)
		}
	}
	recs, known, err := p.startSessions(ctx, plan.VM.Name, todo)
	t.mark("start_sessions")
	started()
	if err != nil {
		return err
	}
	// Running now: say so at once. When every session's record is in
	// hand (each start answered with it), the status is made from them
	// and the VM's record without asking the guest again; their watches
	// start here, so the read may use them (status).
	if known && vm.State == model.VMRunning {
		sessions := append(have, recs...)
		p.cacheSessions(e, vm.State, sessions)
		p.watch(e, sessions)
		p.pokeCached(k)
		return nil
	}
	p.poke(k)
	return nil
}

// startSessions starts the sessions at once (each is a round trip to the
// guest) and returns their records. known is false when a start failed
// to launch (the record exists but is not in hand: the container status
// reports it once read); err is the first other failure.
func (p *Provider) startSessions(ctx context.Context, vm string, reqs []api.StartSessionRequest) (started []model.Session, known bool, err error) {
	recs := make([]model.Session, len(reqs))
	errs := make([]error, len(reqs))
	var wg sync.WaitGroup
	for i, req := range reqs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			recs[i], errs[i] = p.b.StartSession(ctx, vm, req)
		}()
	}
	wg.Wait()
	known = true
	for i, err := range errs {
		switch {
		case err == nil:
			started = append(started, recs[i])
		case isLaunchFailure(err):
			known = false
		default:
			return nil, false, fmt.Errorf("start container %s in vm %s: %w", reqs[i].Name, vm, err)
		}
	}
	return started, known, nil
}

// cannotRun remembers a pod that cannot run (err is a *podvm.PlanError)
// as failed, so its status says why and no VM is tried again, and returns
// the error for the pod controller's event.
func (p *Provider) cannotRun(pod *corev1.Pod, err error) error {
	var pe *podvm.PlanError
	if !errors.As(err, &pe) {
		return err
	}
	p.put(&entry{pod: pod.DeepCopy(), failure: pe})
	p.log.Warn("pod cannot run", "pod", key(pod.Namespace, pod.Name), "reason", pe.Reason, "message", pe.Message)
	p.poke(key(pod.Namespace, pod.Name))
	return fmt.Errorf("%s: %s", pe.Reason, pe.Message)
}

// isLaunchFailure is a session that was recorded but failed to launch
// (its command is missing, its cwd cannot be entered): the container
// status reports it, it is not an error of the provider.
func isLaunchFailure(err error) bool {
	return errdefs.CodeOf(err) == errdefs.CodeInvalid
}

// UpdatePod takes the pod's new object (labels, annotations); banger
// cannot change a running VM's containers.
func (p *Provider) UpdatePod(_ context.Context, pod *corev1.Pod) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if e := p.run[key(pod.Namespace, pod.Name)]; e != nil {
		e.pod = pod.DeepCopy()
	}
	return nil
}

// DeletePod stops the pod's sessions (TERM, then KILL after the pod's
// grace period, at most 30s) and deletes its VM. A pod or VM already gone
// is not an error.
func (p *Provider) DeletePod(ctx context.Context, pod *corev1.Pod) error {
	unlock := p.lock.Lock(string(pod.UID))
	defer unlock()
	name, err := podvm.VMName(pod.UID)
	if err != nil {
		p.forget(pod)
		return nil
	}
	grace := 30
	if g := pod.Spec.TerminationGracePeriodSeconds; g != nil && *g < int64(grace) {
		grace = int(*g)
	}
	if sessions, err := p.b.ListSessions(ctx, name); err == nil {
		for _, s := range sessions {
			if done, _ := podvm.Finished(s); done {
				continue
			}
			if _, err := p.b.StopSession(ctx, name, s.ID, api.StopSessionRequest{TimeoutSeconds: max(grace, 1)}); err != nil && !errdefs.IsNotFound(err) {
				p.log.Warn("stop container", "vm", name, "session", s.Name, "err", err)
			}
		}
	}
	if err := p.b.DeleteVM(ctx, name, true); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("delete vm %s: %w", name, err)
	}
	p.log.Info("deleted pod vm", "pod", key(pod.Namespace, pod.Name), "vm", name)
	p.forget(pod)
	k := key(pod.Namespace, pod.Name)
	p.mu.Lock()
	p.deleted[k] = true
	p.mu.Unlock()
	if pod.Status.Phase != corev1.PodSucceeded && pod.Status.Phase != corev1.PodFailed {
		p.push(pod, terminalStatus(pod, p.now()))
	}
	if p.release != nil {
		if err := p.release(ctx, pod.Namespace, pod.Name, pod.UID); err != nil {
			// virtual-kubelet removes it after the grace period.
			p.log.Warn("remove a deleted pod's object", "pod", k, "err", err)
		}
	}
	return nil
}

func (p *Provider) forget(pod *corev1.Pod) {
	p.mu.Lock()
	defer p.mu.Unlock()
	k := key(pod.Namespace, pod.Name)
	if e := p.run[k]; e != nil {
		e.unwatch()
	}
	delete(p.run, k)
}

// GetPod is the pod as this node runs it, or a not-found error.
func (p *Provider) GetPod(_ context.Context, namespace, name string) (*corev1.Pod, error) {
	e := p.get(namespace, name)
	if e == nil {
		return nil, vkerrdefs.NotFoundf("pod %s/%s is not on this node", namespace, name)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return e.pod.DeepCopy(), nil
}

// GetPods lists the pods this node runs.
func (p *Provider) GetPods(_ context.Context) ([]*corev1.Pod, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]*corev1.Pod, 0, len(p.run))
	for _, e := range p.run {
		out = append(out, e.pod.DeepCopy())
	}
	return out, nil
}

// GetPodStatus reads the pod's VM and sessions from bangerd and maps them
// (podvm.PodStatus). Containers that ended and are due a restart under
// the pod's restartPolicy are started again here (the status is pushed
// when something happened, and swept: notify.go), and so are containers
// whose start failed.
func (p *Provider) GetPodStatus(ctx context.Context, namespace, name string) (*corev1.PodStatus, error) {
	return p.status(ctx, namespace, name, true)
}

// sessionsMaxAge is how long a sweep may use the sessions read before
// instead of asking the guest again, while every unfinished one is watched.
const sessionsMaxAge = 30 * time.Second

// status is GetPodStatus. Without full, the sessions read last are used
// when nothing can have changed unseen: the VM is in the same state,
// every unfinished session is watched (its end pokes a full read), and the
// read is recent. Reading sessions is a round trip to the guest.
func (p *Provider) status(ctx context.Context, namespace, name string, full bool) (*corev1.PodStatus, error) {
	e := p.get(namespace, name)
	if e == nil {
		return nil, vkerrdefs.NotFoundf("pod %s/%s is not on this node", namespace, name)
	}
	p.mu.Lock()
	pod := e.pod.DeepCopy()
	failure, creating, starting := e.failure, e.creating, e.starting
	p.mu.Unlock()
	obs := podvm.Observed{HostIP: p.hostIP, Now: p.now(), Failure: failure}
	if failure == nil {
		vm, err := p.b.GetVM(ctx, e.vm)
		switch {
		case errdefs.IsNotFound(err) && creating:
			// Pending: the VM is being made.
		case errdefs.IsNotFound(err):
			obs.Failure = &podvm.PlanError{Reason: podvm.ReasonVMGone, Message: fmt.Sprintf("vm %s no longer exists", e.vm)}
		case err != nil:
			return nil, fmt.Errorf("look up vm %s: %w", e.vm, err)
		default:
			obs.VM = &vm
			fresh := false
			switch vm.State {
			case model.VMRunning, model.VMStopped, model.VMFailed:
				if starting {
					// Pending until every start answered (CreatePod
					// pushes then): a read now would compete with the
					// starts for the guest and could say Running with
					// only some containers started.
					break
				}
				if cached, ok := p.cachedSessions(e, vm.State, full); ok {
					obs.Sessions = cached
					break
				}
				// A stopped VM's sessions are read from its work disk.
				if obs.Sessions, err = p.b.ListSessions(ctx, e.vm); err != nil {
					return nil, fmt.Errorf("list sessions of %s: %w", e.vm, err)
				}
				fresh = true
				p.cacheSessions(e, vm.State, obs.Sessions)
			}
			if fresh && vm.State == model.VMRunning && p.restart(ctx, e, pod, obs.Sessions) {
				if obs.Sessions, err = p.b.ListSessions(ctx, e.vm); err != nil {
					return nil, fmt.Errorf("list sessions of %s: %w", e.vm, err)
				}
				p.cacheSessions(e, vm.State, obs.Sessions)
			}
			if fresh && vm.State == model.VMRunning {
				p.watch(e, obs.Sessions)
			}
		}
	}
	p.mu.Lock()
	obs.Restarts = map[string]int32{}
	for k, v := range e.restarts {
		obs.Restarts[k] = v
	}
	p.mu.Unlock()
	st := podvm.PodStatus(pod, obs)
	if (st.Phase == corev1.PodSucceeded || st.Phase == corev1.PodFailed) && obs.VM != nil && obs.VM.State == model.VMRunning {
		p.stopFinished(e, pod.UID)
	}
	return &st, nil
}

// cachedSessions are the sessions read last, when a status that is not
// full may use them (see status).
func (p *Provider) cachedSessions(e *entry, state model.VMState, full bool) ([]model.Session, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if full || e.sessionsAt.IsZero() || e.sessionsState != state || p.now().Sub(e.sessionsAt) > sessionsMaxAge {
		return nil, false
	}
	for _, s := range e.sessions {
		if done, _ := podvm.Finished(s); !done && e.watches[s.ID] == nil {
			return nil, false
		}
	}
	return e.sessions, true
}

func (p *Provider) cacheSessions(e *entry, state model.VMState, sessions []model.Session) {
	p.mu.Lock()
	defer p.mu.Unlock()
	e.sessions, e.sessionsAt, e.sessionsState = sessions, p.now(), state
}

// stopFinished stops the VM of a pod that has finished (no container runs
// or will restart), in the background: it then holds no memory or CPU,
// its disks stay until the pod is deleted, and its logs are read from the
// work disk.
func (p *Provider) stopFinished(e *entry, uid types.UID) {
	p.mu.Lock()
	if e.stopping {
		p.mu.Unlock()
		return
	}
	e.stopping = true
	p.mu.Unlock()
	go func() {
		unlock := p.lock.Lock(string(uid))
		defer unlock()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if _, err := p.b.StopVM(ctx, e.vm, api.StopVMRequest{TimeoutSeconds: 10}); err != nil && !errdefs.IsNotFound(err) {
			p.log.Warn("stop the vm of a finished pod", "vm", e.vm, "err", err)
			p.mu.Lock()
			e.stopping = false
			p.mu.Unlock()
			return
		}
		p.log.Info("stopped the vm of a finished pod", "vm", e.vm)
	}()
}

// restart starts the containers that have no session (a start that
// failed in CreatePod is tried again here) and starts again those whose
// session ended and whose restart is due; it reports whether it started
// any.
func (p *Provider) restart(ctx context.Context, e *entry, pod *corev1.Pod, sessions []model.Session) bool {
	// Statuses are polled one pod after another: never wait here behind
	// a create that is still booting the VM; the next poll tries again.
	unlock, ok := p.lock.TryLock(string(pod.UID))
	if !ok {
		return false
	}
	defer unlock()
	plan, err := podvm.PlanPod(pod)
	if err != nil {
		return false
	}
	byName := map[string]model.Session{}
	for _, s := range sessions {
		if prev, ok := byName[s.Name]; !ok || s.CreatedAt.After(prev.CreatedAt) {
			byName[s.Name] = s
		}
	}
	started := false
	for _, want := range plan.Sessions {
		s, ok := byName[want.Name]
		if !ok {
			if _, err := p.b.StartSession(ctx, e.vm, want); err != nil && !isLaunchFailure(err) {
				p.log.Warn("start container", "vm", e.vm, "session", want.Name, "err", err)
				continue
			}
			started = true
			continue
		}
		done, code := podvm.Finished(s)
		if !done || !podvm.ShouldRestart(pod.Spec.RestartPolicy, code) {
			continue
		}
		if err := p.b.RemoveSession(ctx, e.vm, s.ID); err != nil && !errdefs.IsNotFound(err) {
			p.log.Warn("restart container: remove old session", "vm", e.vm, "session", s.Name, "err", err)
			continue
		}
		if _, err := p.b.StartSession(ctx, e.vm, want); err != nil && !isLaunchFailure(err) {
			p.log.Warn("restart container", "vm", e.vm, "session", s.Name, "err", err)
			continue
		}
		p.mu.Lock()
		if e.restarts == nil {
			e.restarts = map[string]int32{}
		}
		e.restarts[want.Name]++
		p.mu.Unlock()
		started = true
	}
	return started
}

// ---- the kubelet API (logs, exec) ----

// GetContainerLogs streams a container's session output, stdout and
// stderr interleaved as they arrive, following when asked.
func (p *Provider) GetContainerLogs(ctx context.Context, namespace, podName, containerName string, opts vkapi.ContainerLogOpts) (io.ReadCloser, error) {
	e := p.get(namespace, podName)
	if e == nil || e.vm == "" {
		return nil, vkerrdefs.NotFoundf("pod %s/%s has no VM on this node", namespace, podName)
	}
	if opts.Previous {
		return nil, vkerrdefs.InvalidInputf("previous container logs are not kept on banger nodes")
	}
	s, err := p.session(ctx, e.vm, containerName)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	pr, pw := io.Pipe()
	w := &lockedWriter{w: pw}
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, stderr := range []bool{false, true} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = p.b.SessionLogs(ctx, e.vm, s.ID, api.SessionLogsRequest{Stderr: stderr, Tail: opts.Tail, Follow: opts.Follow}, w)
		}()
	}
	go func() {
		wg.Wait()
		cancel()
		pw.CloseWithError(errors.Join(errs...))
	}()
	return &cancelReader{ReadCloser: pr, cancel: cancel}, nil
}

// session is a container's newest session.
func (p *Provider) session(ctx context.Context, vm, container string) (model.Session, error) {
	sessions, err := p.b.ListSessions(ctx, vm)
	if err != nil {
		return model.Session{}, fmt.Errorf("list sessions of %s: %w", vm, err)
	}
	var found *model.Session
	for i := range sessions {
		if sessions[i].Name == container && (found == nil || sessions[i].CreatedAt.After(found.CreatedAt)) {
			found = &sessions[i]
		}
	}
	if found == nil {
		return model.Session{}, vkerrdefs.NotFoundf("container %q has not started in vm %s", container, vm)
	}
	return *found, nil
}

type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

type cancelReader struct {
	io.ReadCloser
	cancel func()
}

func (c *cancelReader) Close() error {
	c.cancel()
	return c.ReadCloser.Close()
}
