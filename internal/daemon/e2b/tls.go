package e2b

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// The CA's files in the control plane's directory (Deps.Dir).
const (
	caCertFile = "ca.pem"
	caKeyFile  = "ca-key.pem"
)

// caLifetime and leafLifetime bound the certificates banger makes; a
// leaf is made again when less than leafRenew of it is left.
const (
	caLifetime   = 10 * 365 * 24 * time.Hour
	leafLifetime = 30 * 24 * time.Hour
	leafRenew    = 24 * time.Hour
)

// maxLeaves bounds the cache of serving certificates: a client picks the
// name it asks for, so the cache is emptied when it is full.
const maxLeaves = 512

// CA is the control plane's own certificate authority: made once, its
// certificate is what clients trust (NODE_EXTRA_CA_CERTS, SSL_CERT_FILE);
// its key (0600) never leaves the host.
type CA struct {
	Cert *x509.Certificate
	Key  crypto.Signer
	PEM  []byte // the certificate
	Path string // where the certificate is
}

// LoadOrCreateCA reads the CA of dir, making it (key first, each file
// written whole and renamed in place) when neither file exists. One file
// without the other is an error naming both: nothing is overwritten.
func LoadOrCreateCA(dir string, now time.Time) (*CA, error) {
	certPath, keyPath := filepath.Join(dir, caCertFile), filepath.Join(dir, caKeyFile)
	certPEM, cerr := os.ReadFile(certPath)
	keyPEM, kerr := os.ReadFile(keyPath)
	switch {
	case cerr == nil && kerr == nil:
		return parseCA(certPEM, keyPEM, certPath)
	case errors.Is(cerr, os.ErrNotExist) && errors.Is(kerr, os.ErrNotExist):
	case errors.Is(cerr, os.ErrNotExist) || errors.Is(kerr, os.ErrNotExist):
		return nil, fmt.Errorf("e2b CA: %s and %s must both exist or both be absent (remove the other to make a new CA)", certPath, keyPath)
	default:
		return nil, fmt.Errorf("e2b CA: %w", errors.Join(cerr, kerr))
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("e2b CA: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("e2b CA key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "banger e2b local CA", Organization: []string{"banger"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(caLifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("e2b CA certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	keyPEM = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	certPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	if err := writeFileAtomic(keyPath, keyPEM, 0o600); err != nil {
		return nil, fmt.Errorf("e2b CA key: %w", err)
	}
	if err := writeFileAtomic(certPath, certPEM, 0o644); err != nil {
		return nil, fmt.Errorf("e2b CA certificate: %w", err)
	}
	return parseCA(certPEM, keyPEM, certPath)
}

func parseCA(certPEM, keyPEM []byte, path string) (*CA, error) {
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("e2b CA %s: %w", path, err)
	}
	cert, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return nil, fmt.Errorf("e2b CA %s: %w", path, err)
	}
	signer, ok := pair.PrivateKey.(crypto.Signer)
	if !ok || !cert.IsCA {
		return nil, fmt.Errorf("e2b CA %s: not a CA certificate with a signing key", path)
	}
	return &CA{Cert: cert, Key: signer, PEM: certPEM, Path: path}, nil
}

func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, mode); err != nil {
		return err
	}
	if err := os.Chmod(tmp, mode); err != nil {
		os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic("crypto/rand failed: " + err.Error())
	}
	return n
}

// issuer makes the listener's serving certificates, signed by the CA, as
// clients ask for them: a client's server name (SNI) under the domain
// gets a certificate for exactly that name (so "<port>-<id>.localhost"
// works, where clients refuse a wildcard over a single label); every
// certificate also names the domain, "*.<domain>", localhost and the
// address the client connected to.
type issuer struct {
	ca     *CA
	domain string // host names' suffix, without a port
	now    func() time.Time
	key    *ecdsa.PrivateKey // every leaf's key

	mu     sync.Mutex
	leaves map[string]*tls.Certificate
}

func newIssuer(ca *CA, domain string, now func() time.Time) (*issuer, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	return &issuer{ca: ca, domain: strings.ToLower(stripPort(domain)), now: now, key: key, leaves: map[string]*tls.Certificate{}}, nil
}

// tlsConfig is the listener's TLS configuration.
func (i *issuer) tlsConfig() *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: i.certificate}
}

// certificate answers a client hello with a leaf for the names in Names.
func (i *issuer) certificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	var local net.IP
	if hello.Conn != nil {
		if a, ok := hello.Conn.LocalAddr().(*net.TCPAddr); ok {
			local = a.IP
		}
	}
	dns, ips := i.names(hello.ServerName, local)
	cacheKey := strings.Join(dns, ",") + "|" + fmt.Sprint(ips)
	i.mu.Lock()
	defer i.mu.Unlock()
	now := i.now()
	if c, ok := i.leaves[cacheKey]; ok && c.Leaf != nil && c.Leaf.NotAfter.Sub(now) > leafRenew {
		return c, nil
	}
	c, err := i.issue(dns, ips, now)
	if err != nil {
		return nil, err
	}
	if len(i.leaves) >= maxLeaves {
		clear(i.leaves)
	}
	i.leaves[cacheKey] = c
	return c, nil
}

// names are the DNS names and addresses a leaf for server name sni,
// reached at local, carries.
func (i *issuer) names(sni string, local net.IP) (dns []string, ips []net.IP) {
	dns = []string{"localhost"}
	if i.domain != "" {
		if ip := net.ParseIP(i.domain); ip != nil {
			ips = append(ips, ip)
		} else if i.domain != "localhost" {
			dns = append(dns, i.domain)
		}
		if net.ParseIP(i.domain) == nil {
			dns = append(dns, "*."+i.domain)
		}
	}
	sni = strings.ToLower(strings.TrimSuffix(sni, "."))
	if i.domain != "" && strings.HasSuffix(sni, "."+i.domain) && validDNSName(sni) {
		dns = append(dns, sni)
	}
	if local != nil && !local.IsUnspecified() {
		ips = append(ips, local)
	} else {
		ips = append(ips, net.IPv4(127, 0, 0, 1), net.IPv6loopback)
	}
	return dns, ips
}

func validDNSName(s string) bool {
	if len(s) > 253 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '.') {
			return false
		}
	}
	return true
}

func (i *issuer) issue(dns []string, ips []net.IP, now time.Time) (*tls.Certificate, error) {
	end := now.Add(leafLifetime)
	if end.After(i.ca.Cert.NotAfter) {
		end = i.ca.Cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: dns[len(dns)-1]},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     end,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     dns,
		IPAddresses:  ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, i.ca.Cert, &i.key.PublicKey, i.ca.Key)
	if err != nil {
		return nil, fmt.Errorf("e2b serving certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: i.key, Leaf: leaf}, nil
}
