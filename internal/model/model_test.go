package model

import "testing"

func TestPinnedHostKey(t *testing.T) {
	im := Image{HostKey: "ssh-ed25519 AAAAimage"}
	if got := (VM{HostKey: "ssh-ed25519 AAAAvm"}).PinnedHostKey(im); got != "ssh-ed25519 AAAAvm" {
		t.Errorf("a VM with its own key pins %q", got)
	}
	if got := (VM{}).PinnedHostKey(im); got != im.HostKey {
		t.Errorf("a VM made before its own key pins %q, want the image's", got)
	}
}
