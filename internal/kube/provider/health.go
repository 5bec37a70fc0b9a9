package provider

import (
	"context"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Health is the node's side of virtual-kubelet's node controller: the
// node is Ready while bangerd answers its health check, and NotReady
// (reason BangerdUnreachable, with bangerd's error) while it does not.
// Ping answers for banger-vk itself, so the lease is renewed while
// banger-vk runs: a failing ping would make the node controller drop
// status updates, and the NotReady condition would never be written. The
// cluster's node lifecycle controller treats NotReady like a lost kubelet
// (the not-ready taint, then eviction); a dead banger-vk stops the lease.
type Health struct {
	b        Banger
	interval time.Duration
	now      func() time.Time

	mu   sync.Mutex
	node *corev1.Node
}

// NewHealth follows bangerd's health every interval for node (the object
// registered; Health keeps its own copy).
func NewHealth(b Banger, node *corev1.Node, interval time.Duration) *Health {
	return &Health{b: b, interval: interval, now: time.Now, node: node.DeepCopy()}
}

// Ping answers that banger-vk runs.
func (h *Health) Ping(context.Context) error { return nil }

// NotifyNodeStatus checks bangerd at once and then every interval until
// ctx ends, calling cb with the node whenever its Ready condition changes.
func (h *Health) NotifyNodeStatus(ctx context.Context, cb func(*corev1.Node)) {
	check := func() {
		cctx, cancel := context.WithTimeout(ctx, h.interval)
		err := h.b.Health(cctx)
		cancel()
		if ctx.Err() != nil {
			return
		}
		h.mu.Lock()
		changed := SetReady(h.node, err, h.now())
		n := h.node.DeepCopy()
		h.mu.Unlock()
		if changed {
			cb(n)
		}
	}
	go func() {
		check()
		t := time.NewTicker(h.interval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				check()
			}
		}
	}()
}

// SetReady sets the node's Ready condition from bangerd's health (err nil:
// healthy) and its phase, and says whether the condition's status or
// message changed.
func SetReady(node *corev1.Node, err error, now time.Time) bool {
	want := corev1.NodeCondition{
		Type: corev1.NodeReady, Status: corev1.ConditionTrue,
		Reason: "KubeletReady", Message: "bangerd answers",
	}
	if err != nil {
		want.Status, want.Reason, want.Message = corev1.ConditionFalse, "BangerdUnreachable", "bangerd does not answer: "+err.Error()
	}
	t := metav1.NewTime(now)
	want.LastHeartbeatTime, want.LastTransitionTime = t, t
	node.Status.Phase = corev1.NodeRunning
	for i, c := range node.Status.Conditions {
		if c.Type != corev1.NodeReady {
			continue
		}
		if c.Status == want.Status && c.Message == want.Message {
			node.Status.Conditions[i].LastHeartbeatTime = t
			return false
		}
		if c.Status == want.Status {
			want.LastTransitionTime = c.LastTransitionTime
		}
		node.Status.Conditions[i] = want
		return true
	}
	node.Status.Conditions = append(node.Status.Conditions, want)
	return true
}
