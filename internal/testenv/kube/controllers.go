package kube

import (
	"path/filepath"
	"testing"
	"time"
)

// StartScheduler starts kube-scheduler against the control plane with the
// admin kubeconfig: no leader election and no serving port, so it starts
// in a moment and binds pods as soon as it runs. It is stopped when the
// test ends; its log is DIR/kube-scheduler.log.
func (cp *ControlPlane) StartScheduler(t testing.TB) {
	t.Helper()
	startProc(t, cp.Dir, "kube-scheduler", filepath.Join(cp.Bins, "kube-scheduler"),
		"--kubeconfig", cp.Kubeconfig,
		"--leader-elect=false",
		"--secure-port=0",
	)
}

// NodeLifecycle is how kube-controller-manager's node lifecycle is run by
// StartNodeLifecycle.
type NodeLifecycle struct {
	// MonitorPeriod is how often node health is checked.
	MonitorPeriod time.Duration
	// GracePeriod is how long a node may stay silent (no lease renewal,
	// no status) before it is marked Unknown and tainted unreachable; it
	// must exceed the kubelet's lease renewal interval (virtual-kubelet:
	// 10 s).
	GracePeriod time.Duration
}

// StartNodeLifecycle starts kube-controller-manager with only the
// controllers that watch node health and evict pods from silent nodes
// (node-lifecycle-controller, taint-eviction-controller), with the admin
// kubeconfig, no leader election and no serving port. Pods are evicted
// once their toleration of node.kubernetes.io/unreachable (or not-ready)
// runs out. It is stopped when the test ends; its log is
// DIR/kube-controller-manager.log.
func (cp *ControlPlane) StartNodeLifecycle(t testing.TB, nl NodeLifecycle) {
	t.Helper()
	startProc(t, cp.Dir, "kube-controller-manager", filepath.Join(cp.Bins, "kube-controller-manager"),
		"--kubeconfig", cp.Kubeconfig,
		"--leader-elect=false",
		"--secure-port=0",
		"--controllers=node-lifecycle-controller,taint-eviction-controller",
		"--node-monitor-period="+nl.MonitorPeriod.String(),
		"--node-monitor-grace-period="+nl.GracePeriod.String(),
	)
}
