package provider

import (
	"context"
	"io"
	"time"

	vkerrdefs "github.com/virtual-kubelet/virtual-kubelet/errdefs"
	"github.com/virtual-kubelet/virtual-kubelet/node"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/tools/cache"

	"github.com/banger/banger/internal/api"
	"github.com/banger/banger/internal/kube/podvm"
	"github.com/banger/banger/internal/model"
)

// Pod statuses are pushed (the provider is a node.PodNotifier): a pod's
// status is read again and pushed when it changed, at once when
// something happened to it (its VM was made, one of its sessions
// ended), and every sweepEvery for every pod as a safety net (a VM
// stopped behind banger-vk's back, a watch that could not start). A
// sweep reads the VM from bangerd but its sessions from the guest only
// when an unfinished one is not watched or the last read is old (status).
//
// A session's end is seen by following its log through bangerd: the
// follow ends when the session's monitor does, a round trip to the
// guest that costs nothing while the session runs.

const (
	sweepEvery = 5 * time.Second
	// resendEvery forgets what was pushed, so that an update the pod
	// controller lost is pushed again.
	resendEvery = time.Minute
	// watchRetry spaces the follows of a session whose follow ended at
	// once (its log is missing, bangerd is away).
	watchRetry = time.Second
	kickQueue  = 256
)

// NotifyPods registers the pod controller's callback and starts pushing
// statuses until ctx ends. It does not block.
func (p *Provider) NotifyPods(ctx context.Context, f func(*corev1.Pod)) {
	p.mu.Lock()
	p.notify = f
	p.loopCtx = ctx
	p.mu.Unlock()
	go p.statusLoop(ctx)
}

// kick asks for a pod's status to be read and pushed now: full, its
// sessions read from the guest; else as status allows.
type kick struct {
	key  string
	full bool
}

// poke asks for the pod's status to be read (its sessions from the
// guest) and pushed now (a no-op before NotifyPods; a full queue leaves
// it to the next sweep).
func (p *Provider) poke(k string) {
	select {
	case p.kick <- kick{key: k, full: true}:
	default:
	}
}

// pokeCached is poke for a pod whose sessions were just read or started
// (cacheSessions) and are watched: the read may use them.
func (p *Provider) pokeCached(k string) {
	select {
	case p.kick <- kick{key: k}:
	default:
	}
}

func (p *Provider) statusLoop(ctx context.Context) {
	sweep := time.NewTicker(sweepEvery)
	defer sweep.Stop()
	resend := time.NewTicker(resendEvery)
	defer resend.Stop()
	for {
		select {
		case <-ctx.Done():
			p.stopWatches()
			return
		case k := <-p.kick:
			p.refreshAsync(ctx, k.key, k.full)
		case <-sweep.C:
			pods, err := p.pods.List(labels.Everything())
			if err != nil {
				continue
			}
			live := map[string]bool{}
			for _, pod := range pods {
				k := key(pod.Namespace, pod.Name)
				live[k] = true
				p.refreshAsync(ctx, k, false)
			}
			p.mu.Lock()
			for k := range p.deleted {
				if !live[k] {
					delete(p.deleted, k)
				}
			}
			for k := range p.sent {
				if !live[k] {
					delete(p.sent, k)
				}
			}
			p.mu.Unlock()
		case <-resend.C:
			p.mu.Lock()
			clear(p.sent)
			p.mu.Unlock()
		}
	}
}

// refreshAsync reads and pushes a pod's status in the background (full:
// its sessions read from the guest, else as status allows); a refresh of
// the same pod asked while one runs runs once more after it, full if
// either was.
func (p *Provider) refreshAsync(ctx context.Context, k string, full bool) {
	p.mu.Lock()
	if _, busy := p.inflight[k]; busy {
		p.again[k] = p.again[k] || full
		p.mu.Unlock()
		return
	}
	p.inflight[k] = true
	p.mu.Unlock()
	go func() {
		for {
			p.refresh(ctx, k, full)
			p.mu.Lock()
			next, ok := p.again[k]
			delete(p.again, k)
			if !ok || ctx.Err() != nil {
				delete(p.inflight, k)
				p.mu.Unlock()
				return
			}
			p.mu.Unlock()
			full = next
		}
	}()
}

// refresh reads one pod's status and pushes it when it differs from the
// last one pushed. It follows virtual-kubelet's own status poller: a
// finished pod is left alone, and a pod this node does not know is
// reported gone only once it ran or is a minute old (unless DeletePod
// removed it).
func (p *Provider) refresh(ctx context.Context, k string, full bool) {
	ns, name, err := cache.SplitMetaNamespaceKey(k)
	if err != nil {
		return
	}
	pod, err := p.pods.Pods(ns).Get(name)
	if err != nil || pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		return
	}
	t := p.timer(k)
	st, err := p.status(ctx, ns, name, full)
	t.mark("read")
	switch {
	case err == nil:
	case !vkerrdefs.IsNotFound(err):
		p.log.Debug("pod status", "pod", k, "err", err)
		return
	default:
		p.mu.Lock()
		deleted := p.deleted[k]
		p.mu.Unlock()
		if deleted || (pod.Status.Phase != corev1.PodRunning && p.now().Sub(pod.CreationTimestamp.Time) <= time.Minute) {
			return
		}
		st = notFoundStatus(pod, p.now())
	}
	if p.push(pod, st) {
		t.done("pushed pod status", "phase", st.Phase, "full", full)
	}
}

// push hands the pod with status st to the pod controller unless it is
// what was pushed last, and reports whether it did.
func (p *Provider) push(pod *corev1.Pod, st *corev1.PodStatus) bool {
	k := key(pod.Namespace, pod.Name)
	p.mu.Lock()
	if last := p.sent[k]; last != nil && equality.Semantic.DeepEqual(last, st) {
		p.mu.Unlock()
		return false
	}
	p.sent[k] = st.DeepCopy()
	f := p.notify
	p.mu.Unlock()
	if f == nil {
		return false
	}
	out := pod.DeepCopy()
	st.DeepCopyInto(&out.Status)
	f(out)
	return true
}

// notFoundStatus is the status of a pod this node does not run (its VM
// went away with banger-vk's memory of it): Failed, its running
// containers terminated.
func notFoundStatus(pod *corev1.Pod, now time.Time) *corev1.PodStatus {
	st := pod.Status.DeepCopy()
	st.Phase = corev1.PodFailed
	st.Reason = "NotFound"
	st.Message = "the pod is not on this node (its VM is gone)"
	for i, c := range st.ContainerStatuses {
		if c.State.Running == nil {
			continue
		}
		st.ContainerStatuses[i].State.Terminated = &corev1.ContainerStateTerminated{
			ExitCode: 137, Reason: "NotFound", Message: "the container's VM is gone",
			StartedAt: c.State.Running.StartedAt, FinishedAt: metav1.NewTime(now),
		}
		st.ContainerStatuses[i].State.Running = nil
	}
	return st
}

// terminalStatus is what a pod deleted from this node last reports: it
// and its containers terminated.
func terminalStatus(pod *corev1.Pod, now time.Time) *corev1.PodStatus {
	st := pod.Status.DeepCopy()
	st.Phase = corev1.PodSucceeded
	st.Reason = "Terminated"
	for i, c := range st.ContainerStatuses {
		t := &corev1.ContainerStateTerminated{Reason: "Terminated", Message: "the pod was deleted", FinishedAt: metav1.NewTime(now)}
		if c.State.Running != nil {
			t.StartedAt = c.State.Running.StartedAt
		}
		st.ContainerStatuses[i].State = corev1.ContainerState{Terminated: t}
	}
	return st
}

// watch follows each session of the pod's VM that has not finished
// (running, or starting: a start may answer while the runner records a
// quick command's exit) until it ends, then pokes the pod. It is a no-op
// before NotifyPods and for sessions already followed.
func (p *Provider) watch(e *entry, sessions []model.Session) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.loopCtx == nil || e.stopping {
		return
	}
	k := key(e.pod.Namespace, e.pod.Name)
	for _, s := range sessions {
		if done, _ := podvm.Finished(s); done || e.watches[s.ID] != nil {
			continue
		}
		if e.watches == nil {
			e.watches = map[string]context.CancelFunc{}
		}
		ctx, cancel := context.WithCancel(p.loopCtx)
		e.watches[s.ID] = cancel
		go p.follow(ctx, cancel, e, k, s)
	}
}

// follow waits for the session to end by following its log (stdout for
// a terminal session, which has no stderr log; stderr otherwise, the
// quieter one), then pokes the pod. A follow that failed, or that ended
// at once for the second time for this session (a session that ended
// before its watch began ends it at once, once), waits watchRetry first,
// so a follow that cannot stay open does not spin.
func (p *Provider) follow(ctx context.Context, cancel context.CancelFunc, e *entry, k string, s model.Session) {
	defer cancel()
	began := p.now()
	req := api.SessionLogsRequest{Stderr: s.AttachBackend != model.AttachPTY, Tail: 1, Follow: true}
	err := p.b.SessionLogs(ctx, e.vm, s.ID, req, io.Discard)
	if ctx.Err() != nil {
		return
	}
	quick := p.now().Sub(began) < watchRetry
	p.mu.Lock()
	again := e.quickEnds[s.ID]
	if quick {
		if e.quickEnds == nil {
			e.quickEnds = map[string]bool{}
		}
		e.quickEnds[s.ID] = true
	}
	p.mu.Unlock()
	if err != nil || (quick && again) {
		select {
		case <-ctx.Done():
			return
		case <-time.After(watchRetry):
		}
	}
	p.mu.Lock()
	delete(e.watches, s.ID)
	p.mu.Unlock()
	p.poke(k)
}

// unwatch stops following e's sessions. Call with p.mu held.
func (e *entry) unwatch() {
	for id, cancel := range e.watches {
		cancel()
		delete(e.watches, id)
	}
}

func (p *Provider) stopWatches() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, e := range p.run {
		e.unwatch()
	}
}

var _ node.PodNotifier = (*Provider)(nil)
