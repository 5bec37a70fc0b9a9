package guestinit

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const (
	imagePriv = "-----BEGIN OPENSSH PRIVATE KEY-----\nimage\n-----END OPENSSH PRIVATE KEY-----\n"
	imagePub  = "ssh-ed25519 AAAAimage root@build\n"
	vmPriv    = "-----BEGIN OPENSSH PRIVATE KEY-----\nvm\n-----END OPENSSH PRIVATE KEY-----\n"
	vmPub     = "ssh-ed25519 AAAAvm\n"
)

// guestRoot is a guest tree holding the image's host key and, when vmKey,
// the VM's on its work disk (as the daemon writes it: 0700 dir, 0600 key).
func guestRoot(t *testing.T, vmKey bool) string {
	t.Helper()
	root := t.TempDir()
	write := func(rel, content string, mode os.FileMode) {
		p := filepath.Join(root, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
	}
	write(HostKeyPath, imagePriv, 0o600)
	write(HostKeyPath+".pub", imagePub, 0o644)
	if vmKey {
		write(filepath.Join(WorkMount, WorkHostKey), vmPriv, 0o600)
		write(filepath.Join(WorkMount, WorkHostKey)+".pub", vmPub, 0o644)
	}
	return root
}

func checkFile(t *testing.T, path, want string, mode os.FileMode) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil || string(got) != want {
		t.Fatalf("%s = %q, %v; want %q", path, got, err, want)
	}
	fi, _ := os.Stat(path)
	if fi.Mode().Perm() != mode {
		t.Fatalf("%s has mode %04o, want %04o", path, fi.Mode().Perm(), mode)
	}
}

func TestInstallHostKey(t *testing.T) {
	root := guestRoot(t, true)
	ok, err := InstallHostKey(root)
	if err != nil || !ok {
		t.Fatalf("InstallHostKey = %v, %v; want true", ok, err)
	}
	dst := filepath.Join(root, HostKeyPath)
	checkFile(t, dst, vmPriv, 0o600)
	checkFile(t, dst+".pub", vmPub, 0o644)
	// setup may run twice (the systemd unit after a PID 1 restart): same result.
	if ok, err := InstallHostKey(root); err != nil || !ok {
		t.Fatalf("second InstallHostKey = %v, %v", ok, err)
	}
	checkFile(t, dst, vmPriv, 0o600)
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(dst), "*.banger-tmp")); len(left) != 0 {
		t.Fatalf("temporary files left: %v", left)
	}
	// The sshd drop-in names the key that was replaced.
	if !strings.Contains(SSHDConfig(), "HostKey "+HostKeyPath+"\n") {
		t.Fatalf("sshd config does not serve %s:\n%s", HostKeyPath, SSHDConfig())
	}
}

func TestInstallHostKeyFallsBackToImageKey(t *testing.T) {
	root := guestRoot(t, false)
	ok, err := InstallHostKey(root)
	if err != nil || ok {
		t.Fatalf("InstallHostKey without a VM key = %v, %v; want false, nil", ok, err)
	}
	checkFile(t, filepath.Join(root, HostKeyPath), imagePriv, 0o600)
	checkFile(t, filepath.Join(root, HostKeyPath)+".pub", imagePub, 0o644)
}

func TestInstallHostKeyRefusesHalfAKey(t *testing.T) {
	for name, mutate := range map[string]func(src string){
		"no public half":    func(src string) { os.Remove(src + ".pub") },
		"not ed25519":       func(src string) { os.WriteFile(src+".pub", []byte("ssh-rsa AAAA\n"), 0o644) },
		"empty private key": func(src string) { os.WriteFile(src, nil, 0o600) },
		"directory":         func(src string) { os.Remove(src); os.Mkdir(src, 0o700) },
	} {
		t.Run(name, func(t *testing.T) {
			root := guestRoot(t, true)
			mutate(filepath.Join(root, WorkMount, WorkHostKey))
			if ok, err := InstallHostKey(root); err == nil || ok {
				t.Fatalf("InstallHostKey = %v, %v; want an error", ok, err)
			}
			checkFile(t, filepath.Join(root, HostKeyPath), imagePriv, 0o600)
			checkFile(t, filepath.Join(root, HostKeyPath)+".pub", imagePub, 0o644)
		})
	}
}
