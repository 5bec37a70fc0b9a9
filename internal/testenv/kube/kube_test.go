package kube

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestControlPlane starts etcd and kube-apiserver and talks to them with
// kubectl at the same version; with the scheduler and the node lifecycle
// controllers started, a pod is bound to a node that reports capacity,
// and that node, which renews no lease, goes Unknown and is tainted
// unreachable.
func TestControlPlane(t *testing.T) {
	cp := Start(t, Bins(t))
	if out := cp.MustKubectl(t, "get", "namespace", "default", "-o", "name"); strings.TrimSpace(out) != "namespace/default" {
		t.Fatalf("kubectl get namespace default: %q", out)
	}
	out := cp.MustKubectl(t, "version")
	if !strings.Contains(out, "Server Version: v1.") {
		t.Fatalf("kubectl version: %q", out)
	}

	cp.StartScheduler(t)
	cp.StartNodeLifecycle(t, NodeLifecycle{MonitorPeriod: time.Second, GracePeriod: 3 * time.Second})
	cp.MustKubectl(t, "create", "serviceaccount", "default")
	manifest := filepath.Join(t.TempDir(), "objects.yaml")
	mustWrite(t, manifest, `apiVersion: v1
kind: Node
metadata: {name: fake-1}
---
apiVersion: v1
kind: Pod
metadata: {name: p}
spec:
  automountServiceAccountToken: false
  containers:
  - {name: main, image: none, resources: {requests: {cpu: "1"}}}
`)
	cp.MustKubectl(t, "create", "-f", manifest)
	now := time.Now().UTC().Format(time.RFC3339)
	cp.MustKubectl(t, "patch", "node", "fake-1", "--subresource=status", "--type=merge", "-p",
		`{"status":{"capacity":{"cpu":"1","memory":"1Gi","pods":"10"},"allocatable":{"cpu":"1","memory":"1Gi","pods":"10"},`+
			`"conditions":[{"type":"Ready","status":"True","reason":"KubeletReady","lastHeartbeatTime":"`+now+`","lastTransitionTime":"`+now+`"}]}}`)
	waitKubectl(t, cp, "fake-1", "get", "pod", "p", "-o", "jsonpath={.spec.nodeName}")
	waitKubectl(t, cp, "Unknown", "get", "node", "fake-1", "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].status}`)
	if taints := cp.MustKubectl(t, "get", "node", "fake-1", "-o", "jsonpath={.spec.taints[*].key}"); !strings.Contains(taints, "node.kubernetes.io/unreachable") {
		t.Fatalf("silent node's taints %q: not unreachable", taints)
	}
}

// waitKubectl polls kubectl for a minute until its output is want (the
// processes' logs are printed when the test fails).
func waitKubectl(t *testing.T, cp *ControlPlane, want string, args ...string) {
	t.Helper()
	last := ""
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(300 * time.Millisecond) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		out, errOut, err := cp.Kubectl(ctx, args...)
		cancel()
		if err == nil && strings.TrimSpace(out) == want {
			return
		}
		last = out + errOut
	}
	t.Fatalf("kubectl %s: want %q, last %q", strings.Join(args, " "), want, last)
}
