// Package kube is the test kit for a real Kubernetes control plane: etcd
// and kube-apiserver built from their Go modules by scripts/kube-bins.sh
// (cached under /var/cache/banger/kube), started on 127.0.0.1 with free
// ports, temp directories, a service-account key, a static admin token and
// a CA for the kubelet API's client certificate, and stopped when the test
// ends; on request kube-scheduler and kube-controller-manager's node
// lifecycle controllers against it.
//
// It imports no banger package and starts nothing but those processes;
// everything it makes lives in the test's temp directory.
package kube

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Bins is the directory holding etcd, kube-apiserver, kube-scheduler,
// kube-controller-manager and kubectl, as
// scripts/kube-bins.sh names it. When they are missing the test fails in
// CI (CI=true: .ci/run builds them) and skips elsewhere, saying how to
// build them.
func Bins(t testing.TB) string {
	t.Helper()
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("bash", filepath.Join(root, "scripts", "kube-bins.sh"), "--dir").Output()
	if err != nil {
		t.Fatalf("scripts/kube-bins.sh --dir: %v", err)
	}
	dir := strings.TrimSpace(string(out))
	for _, b := range []string{"etcd", "kube-apiserver", "kube-scheduler", "kube-controller-manager", "kubectl"} {
		if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
			msg := fmt.Sprintf("needs the Kubernetes control plane in %s (build it with scripts/kube-bins.sh, ~20 min once)", dir)
			if os.Getenv("CI") != "" {
				t.Fatal(msg)
			}
			t.Skip(msg)
		}
	}
	return dir
}

// ControlPlane is a running etcd and kube-apiserver.
type ControlPlane struct {
	Bins       string // directory of the binaries
	Dir        string // temp directory: data, certificates, logs
	Server     string // https://127.0.0.1:PORT
	Token      string // bearer token of an admin (system:masters)
	Kubeconfig string // a kubeconfig for that admin
	// ClientCA is the CA (PEM file) that signed the API server's
	// certificate for calling kubelets: a kubelet API trusts it.
	ClientCA string
	// KubeletClientCert and KubeletClientKey are the API server's
	// certificate for calling kubelets (PEM files): a test calls a
	// kubelet API with them as the API server does.
	KubeletClientCert, KubeletClientKey string
}

// Start starts etcd and kube-apiserver and waits until the API server is
// ready; both are stopped (and their files removed) when the test ends.
func Start(t testing.TB, bins string) *ControlPlane {
	t.Helper()
	dir := t.TempDir()
	cp := &ControlPlane{Bins: bins, Dir: dir, Kubeconfig: filepath.Join(dir, "kubeconfig")}
	ports := FreePorts(t, 3)
	etcdURL := "http://127.0.0.1:" + strconv.Itoa(ports[0])
	peerURL := "http://127.0.0.1:" + strconv.Itoa(ports[1])
	cp.Server = "https://127.0.0.1:" + strconv.Itoa(ports[2])

	startProc(t, dir, "etcd", filepath.Join(bins, "etcd"),
		"--name", "default",
		"--data-dir", filepath.Join(dir, "etcd"),
		"--listen-client-urls", etcdURL, "--advertise-client-urls", etcdURL,
		"--listen-peer-urls", peerURL, "--initial-advertise-peer-urls", peerURL,
		"--initial-cluster", "default="+peerURL,
		"--unsafe-no-fsync",
	)

	b := make([]byte, 16)
	_, _ = rand.Read(b)
	cp.Token = hex.EncodeToString(b)
	tokens := filepath.Join(dir, "tokens.csv")
	mustWrite(t, tokens, cp.Token+",admin,admin,system:masters\n")
	saKey := filepath.Join(dir, "sa.key")
	writeKey(t, saKey, newKey(t))
	caKey := newKey(t)
	caCert := signCert(t, &x509.Certificate{
		Subject: pkix.Name{CommonName: "banger-test-kubelet-client-ca"}, IsCA: true,
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true,
	}, caKey, nil, nil)
	cp.ClientCA = filepath.Join(dir, "kubelet-client-ca.crt")
	writeCert(t, cp.ClientCA, caCert)
	clientKey := newKey(t)
	clientCert := signCert(t, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "kube-apiserver-kubelet-client", Organization: []string{"system:masters"}},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, clientKey, caCert, caKey)
	writeCert(t, filepath.Join(dir, "kubelet-client.crt"), clientCert)
	writeKey(t, filepath.Join(dir, "kubelet-client.key"), clientKey)
	cp.KubeletClientCert, cp.KubeletClientKey = filepath.Join(dir, "kubelet-client.crt"), filepath.Join(dir, "kubelet-client.key")

	startProc(t, dir, "kube-apiserver", filepath.Join(bins, "kube-apiserver"),
		"--etcd-servers", etcdURL,
		"--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1",
		"--secure-port", strconv.Itoa(ports[2]),
		"--cert-dir", filepath.Join(dir, "serving"),
		"--token-auth-file", tokens,
		"--anonymous-auth=false",
		"--authorization-mode", "RBAC",
		"--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file", saKey,
		"--service-account-signing-key-file", saKey,
		"--service-cluster-ip-range", "10.96.0.0/16",
		"--endpoint-reconciler-type", "none",
		"--kubelet-client-certificate", filepath.Join(dir, "kubelet-client.crt"),
		"--kubelet-client-key", filepath.Join(dir, "kubelet-client.key"),
		"--kubelet-preferred-address-types", "InternalIP",
	)
	mustWrite(t, cp.Kubeconfig, fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: %s
    insecure-skip-tls-verify: true
users:
- name: admin
  user:
    token: %s
contexts:
- name: test
  context: {cluster: test, user: admin}
current-context: test
`, cp.Server, cp.Token))
	start := time.Now()
	cp.waitReady(t)
	t.Logf("kube control plane ready in %.1fs on %s", time.Since(start).Seconds(), cp.Server)
	return cp
}

// Kubectl runs the control plane's kubectl with the admin kubeconfig.
func (cp *ControlPlane) Kubectl(ctx context.Context, args ...string) (stdout, stderr string, err error) {
	cmd := exec.CommandContext(ctx, filepath.Join(cp.Bins, "kubectl"), append([]string{"--kubeconfig", cp.Kubeconfig}, args...)...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.String(), e.String(), err
}

// MustKubectl runs kubectl and fails the test unless it succeeds.
func (cp *ControlPlane) MustKubectl(t testing.TB, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, errOut, err := cp.Kubectl(ctx, args...)
	if err != nil {
		t.Fatalf("kubectl %s: %v\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), err, out, errOut)
	}
	return out
}

// waitReady polls /readyz for a minute, failing with the API server's
// log when it never answers ok.
func (cp *ControlPlane) waitReady(t testing.TB) {
	t.Helper()
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	deadline := time.Now().Add(time.Minute)
	last := ""
	for time.Now().Before(deadline) {
		req, _ := http.NewRequest(http.MethodGet, cp.Server+"/readyz", nil)
		req.Header.Set("Authorization", "Bearer "+cp.Token)
		resp, err := hc.Do(req)
		if err == nil {
			b := make([]byte, 512)
			n, _ := resp.Body.Read(b)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
			last = fmt.Sprintf("%s: %s", resp.Status, b[:n])
		} else {
			last = err.Error()
		}
		time.Sleep(300 * time.Millisecond)
	}
	t.Fatalf("kube-apiserver not ready after a minute (%s)\n%s", last, tailFile(filepath.Join(cp.Dir, "kube-apiserver.log")))
}

// startProc starts a binary in its own process group with its output in
// DIR/NAME.log, and stops it when the test ends (TERM, then KILL after
// 10s), printing the log's end if the test failed.
func startProc(t testing.TB, dir, name, bin string, args ...string) {
	t.Helper()
	logPath := filepath.Join(dir, name+".log")
	lf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		lf.Close()
		t.Fatalf("start %s: %v", name, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); lf.Close(); close(done) }()
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
		if t.Failed() {
			t.Logf("%s log (end):\n%s", name, tailFile(logPath))
		}
	})
}

// FreePorts returns n distinct ports free on 127.0.0.1 a moment ago.
func FreePorts(t testing.TB, n int) []int {
	t.Helper()
	var ports []int
	var ls []net.Listener
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	for _, l := range ls {
		l.Close()
	}
	return ports
}

func tailFile(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

func mustWrite(t testing.TB, path, s string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func writeKey(t testing.TB, path string, k *ecdsa.PrivateKey) {
	t.Helper()
	der, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	mustWrite(t, path, string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})))
}

func writeCert(t testing.TB, path string, c *x509.Certificate) {
	t.Helper()
	mustWrite(t, path, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})))
}

// signCert signs tmpl with parent's key (self-signed when parent is nil).
func signCert(t testing.TB, tmpl *x509.Certificate, key *ecdsa.PrivateKey, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) *x509.Certificate {
	t.Helper()
	serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	tmpl.SerialNumber = serial
	tmpl.NotBefore = time.Now().Add(-time.Hour)
	tmpl.NotAfter = time.Now().Add(24 * time.Hour)
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// moduleRoot walks up from the working directory to the main module's
// go.mod.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && bytes.HasPrefix(b, []byte("module github.com/banger/banger\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no banger go.mod above the test's working directory")
		}
		dir = parent
	}
}
