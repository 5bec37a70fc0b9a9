package e2b

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestLoadOrCreateCA: the CA is made once (key 0600), read back the same
// afterwards, and half a CA is refused rather than replaced.
func TestLoadOrCreateCA(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "e2b")
	now := time.Now()
	ca, err := LoadOrCreateCA(dir, now)
	if err != nil {
		t.Fatal(err)
	}
	if !ca.Cert.IsCA || ca.Path != filepath.Join(dir, caCertFile) {
		t.Fatalf("CA = %+v", ca.Cert)
	}
	fi, err := os.Stat(filepath.Join(dir, caKeyFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v, %v", fi, err)
	}
	again, err := LoadOrCreateCA(dir, now.Add(time.Hour))
	if err != nil || !again.Cert.Equal(ca.Cert) {
		t.Fatalf("second load made another CA (%v)", err)
	}
	if err := os.Remove(filepath.Join(dir, caKeyFile)); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateCA(dir, now); err == nil || !strings.Contains(err.Error(), "both") {
		t.Fatalf("certificate without key: %v", err)
	}
	if b, _ := os.ReadFile(ca.Path); string(b) != string(ca.PEM) {
		t.Fatal("the certificate was overwritten")
	}
}

// TestTLSListener: with TLS the listener serves the control plane and
// Host-routed sandbox URLs (<port>-<id>.localhost, where clients refuse a
// wildcard over one label) to a client that trusts only banger's CA, and
// a client without the CA is refused.
func TestTLSListener(t *testing.T) {
	fx := newFixtureTLS(t, true)
	if !strings.HasPrefix(fx.url, "https://") || !fx.svc.Status().TLS {
		t.Fatalf("status %+v", fx.svc.Status())
	}
	code, body, _ := fx.do(t, "POST", "/v2/sandboxes", `{"templateID":"base"}`)
	if code != http.StatusCreated {
		t.Fatalf("create = %d %s", code, body)
	}
	var sb sandboxJSON
	if err := json.Unmarshal([]byte(body), &sb); err != nil {
		t.Fatal(err)
	}
	ca, err := fx.svc.CA()
	if err != nil {
		t.Fatal(err)
	}

	// A getHost name, dialled at the listener as wildcard DNS would.
	host := "49983-" + sb.SandboxID + "." + fx.svc.Status().Domain
	tr := fx.client.Transport.(*http.Transport).Clone()
	tr.DialContext = func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, fx.addr)
	}
	resp, err := (&http.Client{Transport: tr}).Get("https://" + host + "/health")
	if err != nil {
		t.Fatalf("GET https://%s/health: %v", host, err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("envd health by Host = %d", resp.StatusCode)
	}
	names := resp.TLS.PeerCertificates[0].DNSNames
	if err := resp.TLS.PeerCertificates[0].VerifyHostname(strings.Split(host, ":")[0]); err != nil {
		t.Fatalf("certificate names %v: %v", names, err)
	}

	// The raw TLS handshake by IP verifies against the CA alone.
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca.PEM)
	c, err := tls.Dial("tcp", fx.addr, &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"})
	if err != nil {
		t.Fatalf("handshake by IP: %v", err)
	}
	c.Close()

	// Without the CA: refused.
	_, err = (&http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: x509.NewCertPool()}}}).Get(fx.url + "/health")
	var unknown x509.UnknownAuthorityError
	if !errors.As(err, &unknown) {
		t.Fatalf("client without the CA: %v, want an unknown authority", err)
	}
}

// TestIssuerNames: what a serving certificate names.
func TestIssuerNames(t *testing.T) {
	iss := &issuer{domain: "sb.example"}
	dns, ips := iss.names("8000-e2babc.sb.example", net.ParseIP("10.1.2.3"))
	want := []string{"localhost", "sb.example", "*.sb.example", "8000-e2babc.sb.example"}
	if strings.Join(dns, ",") != strings.Join(want, ",") || len(ips) != 1 || !ips[0].Equal(net.ParseIP("10.1.2.3")) {
		t.Fatalf("names = %v %v", dns, ips)
	}
	// A name outside the domain is not signed; an unspecified address
	// becomes loopback.
	dns, ips = iss.names("evil.example.com", net.IPv4zero)
	if strings.Contains(strings.Join(dns, ","), "evil") || len(ips) != 2 {
		t.Fatalf("names = %v %v", dns, ips)
	}
}
