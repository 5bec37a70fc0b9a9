package guest

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// keyComment is written into the daemon's key and its authorized_keys line so
// a guest's authorized_keys says who put it there.
const keyComment = "banger"

// LoadOrCreateKey loads the daemon's ed25519 private key from path (OpenSSH
// PEM format) or, when path does not exist, creates one there with mode 0600
// in a directory of mode 0700. It refuses a key readable by others, a key of
// another type, and a passphrase-protected key, saying which. Two processes
// creating the key at once end up with the same key: the file appears
// atomically and the loser loads the winner's.
func LoadOrCreateKey(path string) (ssh.Signer, error) {
	if path == "" {
		return nil, errors.New("ssh key path is empty")
	}
	s, err := loadKey(path)
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		return s, err
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create ssh key directory: %w", err)
	}
	// MkdirAll leaves an existing directory's mode alone; the key's directory
	// is banger's own, so it is made private whatever it was.
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, fmt.Errorf("make ssh key directory private: %w", err)
	}
	if err := createKey(path); err != nil {
		return nil, err
	}
	return loadKey(path)
}

func loadKey(path string) (ssh.Signer, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("ssh key %s has mode %04o: it must be readable by its owner only (0600)", path, perm)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	s, err := ssh.ParsePrivateKey(data)
	if err != nil {
		var pm *ssh.PassphraseMissingError
		if errors.As(err, &pm) {
			return nil, fmt.Errorf("ssh key %s is passphrase-protected: banger needs an unencrypted ed25519 key", path)
		}
		return nil, fmt.Errorf("ssh key %s: %w (expected an OpenSSH ed25519 private key)", path, err)
	}
	if t := s.PublicKey().Type(); t != ssh.KeyAlgoED25519 {
		return nil, fmt.Errorf("ssh key %s is of type %s: banger needs %s", path, t, ssh.KeyAlgoED25519)
	}
	return s, nil
}

// createKey writes a new key to path unless a file appeared there meanwhile,
// which is then kept.
func createKey(path string) error {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return fmt.Errorf("generate ssh key: %w", err)
	}
	block, err := ssh.MarshalPrivateKey(priv, keyComment)
	if err != nil {
		return fmt.Errorf("encode ssh key: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".id_ed25519-*")
	if err != nil {
		return fmt.Errorf("create ssh key: %w", err)
	}
	defer os.Remove(tmp.Name())
	// CreateTemp makes the file 0600 already; the chmod states the intent
	// and guards against a future change there.
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return fmt.Errorf("create ssh key: %w", err)
	}
	if _, err := tmp.Write(pem.EncodeToMemory(block)); err != nil {
		tmp.Close()
		return fmt.Errorf("write ssh key: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("write ssh key: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write ssh key: %w", err)
	}
	// A hard link fails when path exists, so a concurrent creator's key is
	// never replaced; the complete file appears in one step.
	if err := os.Link(tmp.Name(), path); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("install ssh key at %s: %w", path, err)
	}
	return nil
}

// HostKey is an SSH host key made for one VM: its guest's sshd serves it
// and the daemon pins its public half.
type HostKey struct {
	Private []byte // OpenSSH PEM, as sshd reads a HostKey file
	Public  string // authorized_keys format without comment: "ssh-ed25519 AAAA…"
}

// NewHostKey makes a fresh ed25519 host key. Each VM has its own, so that
// no guest knows a sibling's private key or can pass for it.
func NewHostKey() (HostKey, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return HostKey{}, fmt.Errorf("generate ssh host key: %w", err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		return HostKey{}, fmt.Errorf("encode ssh host key: %w", err)
	}
	pk, err := ssh.NewPublicKey(pub)
	if err != nil {
		return HostKey{}, fmt.Errorf("encode ssh host key: %w", err)
	}
	return HostKey{
		Private: pem.EncodeToMemory(block),
		Public:  strings.TrimSpace(string(ssh.MarshalAuthorizedKey(pk))),
	}, nil
}

// AuthorizedKey is the authorized_keys line of s's public key, commented
// "banger": "ssh-ed25519 AAAA… banger".
func AuthorizedKey(s ssh.Signer) string {
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(s.PublicKey()))) + " " + keyComment
}

// KnownHostsLine is the known_hosts line pinning hostKey (authorized_keys
// format) for host ("ip", or "ip:port" for a port other than 22), for the
// UserKnownHostsFile of `vm ssh`. When hostKey cannot be parsed the line is a
// comment, so that ssh knows no key for the host and, with
// StrictHostKeyChecking=yes, refuses to connect rather than trust anything.
func KnownHostsLine(host string, hostKey string) string {
	pk, _, _, _, err := ssh.ParseAuthorizedKey([]byte(hostKey))
	if err != nil {
		return "# banger: no valid host key for " + strings.Map(printable, host)
	}
	return knownhosts.Line([]string{host}, pk)
}

// printable drops control characters so a bad host cannot break the file.
func printable(r rune) rune {
	if r < 0x20 || r == 0x7f {
		return -1
	}
	return r
}

// ParseHostKey parses a pinned host key in authorized_keys format.
func ParseHostKey(hostKey string) (ssh.PublicKey, error) {
	if strings.TrimSpace(hostKey) == "" {
		return nil, errors.New("no host key pinned: banger never trusts a guest's key on first use")
	}
	pk, _, _, _, err := ssh.ParseAuthorizedKey([]byte(hostKey))
	if err != nil {
		return nil, fmt.Errorf("pinned host key %q is not in authorized_keys format (\"ssh-ed25519 AAAA…\"): %w", abbreviate(hostKey), err)
	}
	return pk, nil
}

func abbreviate(s string) string {
	if len(s) > 40 {
		return s[:40] + "…"
	}
	return s
}
