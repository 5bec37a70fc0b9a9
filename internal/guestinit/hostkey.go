package guestinit

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// maxHostKeyFile bounds what InstallHostKey copies: an ed25519 key in
// OpenSSH format is about 400 bytes.
const maxHostKeyFile = 64 << 10

// InstallHostKey makes the VM's own SSH host key, which the daemon wrote
// onto its work disk at create (WorkHostKey under WorkMount), the key sshd
// serves (HostKeyPath, mode 0600, with its .pub), all under root ("/" in
// the guest). It must run after the work disk is mounted and before sshd
// starts. It returns false and changes nothing when the work disk holds no
// key (a VM made before VMs had their own): the image's key stays, and is
// what the daemon pins for such a VM. A key without its public half, or a
// public half that is not ed25519, is an error and changes nothing either.
func InstallHostKey(root string) (bool, error) {
	src := filepath.Join(root, WorkMount, WorkHostKey)
	priv, err := readSmallFile(src)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	pub, err := readSmallFile(src + ".pub")
	if err != nil {
		return false, err
	}
	if !strings.HasPrefix(string(pub), "ssh-ed25519 ") {
		return false, fmt.Errorf("%s.pub is not an ed25519 public key", src)
	}
	dst := filepath.Join(root, HostKeyPath)
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return false, err
	}
	// The private half first: sshd reads only it, and until the public
	// half follows, the pair on disk is at worst mismatched, never absent.
	if err := writeFileAtomic(dst, priv, 0o600); err != nil {
		return false, err
	}
	if err := writeFileAtomic(dst+".pub", pub, 0o644); err != nil {
		return false, err
	}
	return true, nil
}

// readSmallFile reads a regular file of at most maxHostKeyFile bytes.
func readSmallFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxHostKeyFile+1))
	if err != nil {
		return nil, err
	}
	if len(b) == 0 || len(b) > maxHostKeyFile {
		return nil, fmt.Errorf("%s is %d bytes: not an SSH key", path, len(b))
	}
	return b, nil
}

// writeFileAtomic replaces path with data at mode through a rename, so
// sshd never reads half a key.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	tmp := path + ".banger-tmp"
	_ = os.Remove(tmp)
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		// The umask may have narrowed the mode; state it.
		err = f.Chmod(mode)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
