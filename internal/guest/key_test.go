package guest

import (
	"crypto/rand"
	"crypto/rsa"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

func TestLoadOrCreateKeyCreatesPrivateKey(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state", "ssh")
	path := filepath.Join(dir, "id_ed25519")
	s, err := LoadOrCreateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := s.PublicKey().Type(); got != ssh.KeyAlgoED25519 {
		t.Errorf("key type %s, want %s", got, ssh.KeyAlgoED25519)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("key mode %04o, want 0600", fi.Mode().Perm())
	}
	di, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if di.Mode().Perm() != 0o700 {
		t.Errorf("key dir mode %04o, want 0700", di.Mode().Perm())
	}
	data, _ := os.ReadFile(path)
	if b, _ := pem.Decode(data); b == nil || b.Type != "OPENSSH PRIVATE KEY" {
		t.Errorf("key file is not an OpenSSH PEM key:\n%s", data)
	}
	// No temporary file is left next to it.
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("key dir holds %d entries, want only the key", len(entries))
	}

	again, err := LoadOrCreateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(again.PublicKey().Marshal()) != string(s.PublicKey().Marshal()) {
		t.Error("reloading made a different key")
	}
}

func TestLoadOrCreateKeyTightensExistingDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ssh")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateKey(filepath.Join(dir, "id_ed25519")); err != nil {
		t.Fatal(err)
	}
	di, _ := os.Stat(dir)
	if di.Mode().Perm() != 0o700 {
		t.Errorf("key dir mode %04o, want 0700", di.Mode().Perm())
	}
}

func TestLoadOrCreateKeyConcurrentCreatorsAgree(t *testing.T) {
	path := filepath.Join(t.TempDir(), "id_ed25519")
	const n = 8
	keys := make([]string, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := LoadOrCreateKey(path)
			if err != nil {
				t.Error(err)
				return
			}
			keys[i] = AuthorizedKey(s)
		}()
	}
	wg.Wait()
	for i := 1; i < n; i++ {
		if keys[i] != keys[0] {
			t.Fatalf("creator %d got key %q, creator 0 got %q", i, keys[i], keys[0])
		}
	}
}

func TestLoadOrCreateKeyRefuses(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good")
	if _, err := LoadOrCreateKey(good); err != nil {
		t.Fatal(err)
	}
	goodData, _ := os.ReadFile(good)

	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	rsaBlock, _ := ssh.MarshalPrivateKey(rsaKey, "")
	encBlock, err := ssh.MarshalPrivateKeyWithPassphrase(mustEd25519(t), "", []byte("secret"))
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name    string
		data    []byte
		mode    os.FileMode
		wantErr string
	}{
		{"group readable", goodData, 0o640, "mode 0640"},
		{"world readable", goodData, 0o644, "mode 0644"},
		{"rsa", pem.EncodeToMemory(rsaBlock), 0o600, "type ssh-rsa"},
		{"passphrase", pem.EncodeToMemory(encBlock), 0o600, "passphrase-protected"},
		{"garbage", []byte("not a key\n"), 0o600, "expected an OpenSSH ed25519 private key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(tt.name, " ", "-"))
			if err := os.WriteFile(path, tt.data, tt.mode); err != nil {
				t.Fatal(err)
			}
			os.Chmod(path, tt.mode)
			_, err := LoadOrCreateKey(path)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
			}
			// The bad file is left as it was, never replaced.
			if data, _ := os.ReadFile(path); string(data) != string(tt.data) {
				t.Error("the refused key file was changed")
			}
		})
	}
	if _, err := LoadOrCreateKey(""); err == nil {
		t.Error("empty path accepted")
	}
}

func TestAuthorizedKey(t *testing.T) {
	s, err := ssh.NewSignerFromKey(mustEd25519(t))
	if err != nil {
		t.Fatal(err)
	}
	line := AuthorizedKey(s)
	if !strings.HasPrefix(line, "ssh-ed25519 AAAA") || !strings.HasSuffix(line, " banger") {
		t.Errorf("AuthorizedKey = %q, want \"ssh-ed25519 AAAA… banger\"", line)
	}
	pk, comment, _, _, err := ssh.ParseAuthorizedKey([]byte(line))
	if err != nil {
		t.Fatal(err)
	}
	if comment != "banger" || string(pk.Marshal()) != string(s.PublicKey().Marshal()) {
		t.Errorf("AuthorizedKey does not parse back to the key (comment %q)", comment)
	}
}

func TestNewHostKey(t *testing.T) {
	k, err := NewHostKey()
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.ParsePrivateKey(k.Private)
	if err != nil {
		t.Fatalf("private half does not parse: %v\n%s", err, k.Private)
	}
	if b, _ := pem.Decode(k.Private); b == nil || b.Type != "OPENSSH PRIVATE KEY" {
		t.Errorf("private half is not OpenSSH PEM:\n%s", k.Private)
	}
	pinned, err := ParseHostKey(k.Public)
	if err != nil || pinned.Type() != ssh.KeyAlgoED25519 || string(pinned.Marshal()) != string(signer.PublicKey().Marshal()) {
		t.Fatalf("public half %q does not match the private one (%v)", k.Public, err)
	}
	if strings.Count(k.Public, " ") != 1 {
		t.Errorf("public half %q carries a comment", k.Public)
	}
	other, err := NewHostKey()
	if err != nil || other.Public == k.Public {
		t.Fatalf("two host keys are the same: %v", err)
	}
	// OpenSSH (sshd, ssh-keygen) reads the file as banger writes it.
	if _, err := exec.LookPath("ssh-keygen"); err == nil {
		path := filepath.Join(t.TempDir(), "ssh_host_ed25519_key")
		os.WriteFile(path, k.Private, 0o600)
		out, err := exec.Command("ssh-keygen", "-y", "-f", path).Output()
		if err != nil || strings.TrimSpace(string(out)) != k.Public {
			t.Errorf("ssh-keygen -y = %q, %v; want %q", out, err, k.Public)
		}
	}
}

func TestKnownHostsLine(t *testing.T) {
	s, _ := ssh.NewSignerFromKey(mustEd25519(t))
	hostKey := AuthorizedKey(s)
	tests := []struct {
		host, wantPrefix string
	}{
		{"172.16.0.2", "172.16.0.2 ssh-ed25519 AAAA"},
		{"172.16.0.2:22", "172.16.0.2 ssh-ed25519 AAAA"},
		{"127.0.0.1:2222", "[127.0.0.1]:2222 ssh-ed25519 AAAA"},
		{"fd00::2", "fd00::2 ssh-ed25519 AAAA"},
	}
	for _, tt := range tests {
		line := KnownHostsLine(tt.host, hostKey)
		if !strings.HasPrefix(line, tt.wantPrefix) || strings.Contains(line, "banger") || strings.Contains(line, "\n") {
			t.Errorf("KnownHostsLine(%q) = %q, want prefix %q, no comment, one line", tt.host, line, tt.wantPrefix)
		}
	}

	// The line is what x/crypto's known_hosts reader (and OpenSSH) accept.
	file := filepath.Join(t.TempDir(), "known_hosts")
	os.WriteFile(file, []byte(KnownHostsLine("127.0.0.1:2222", hostKey)+"\n"), 0o600)
	cb, err := knownhosts.New(file)
	if err != nil {
		t.Fatal(err)
	}
	addr := fakeAddr("127.0.0.1:2222")
	if err := cb("127.0.0.1:2222", addr, s.PublicKey()); err != nil {
		t.Errorf("known_hosts rejects the pinned key: %v", err)
	}
	other, _ := ssh.NewSignerFromKey(mustEd25519(t))
	if err := cb("127.0.0.1:2222", addr, other.PublicKey()); err == nil {
		t.Error("known_hosts accepts another key")
	}

	for _, bad := range []string{"", "ssh-ed25519", "garbage here"} {
		line := KnownHostsLine("10.0.0.1\nevil", bad)
		if !strings.HasPrefix(line, "#") || strings.Contains(line, "\n") {
			t.Errorf("KnownHostsLine with host key %q = %q, want a one-line comment", bad, line)
		}
	}
}
