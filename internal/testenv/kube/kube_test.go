package kube

import (
	"strings"
	"testing"
)

// TestControlPlane starts etcd and kube-apiserver and talks to them with
// kubectl at the same version.
func TestControlPlane(t *testing.T) {
	cp := Start(t, Bins(t))
	if out := cp.MustKubectl(t, "get", "namespace", "default", "-o", "name"); strings.TrimSpace(out) != "namespace/default" {
		t.Fatalf("kubectl get namespace default: %q", out)
	}
	out := cp.MustKubectl(t, "version")
	if !strings.Contains(out, "Server Version: v1.") {
		t.Fatalf("kubectl version: %q", out)
	}
}
