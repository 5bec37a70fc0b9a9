package envd

import (
	"maps"
	"net/http"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestUploadMetadata(t *testing.T) {
	h := func(kv ...string) http.Header {
		out := http.Header{}
		for i := 0; i+1 < len(kv); i += 2 {
			out.Add(kv[i], kv[i+1])
		}
		return out
	}
	for _, c := range []struct {
		name    string
		h       http.Header
		want    map[string]string
		wantErr string
	}{
		{name: "none", h: h("Content-Type", "text/plain")},
		{name: "keys lower-cased", h: h("X-Metadata-Owner", "agent", "x-metadata-build.id", "42"), want: map[string]string{"owner": "agent", "build.id": "42"}},
		{name: "first value wins", h: h("X-Metadata-A", "1", "X-Metadata-A", "2"), want: map[string]string{"a": "1"}},
		{name: "empty value", h: h("X-Metadata-A", ""), want: map[string]string{"a": ""}},
		{name: "no key", h: h("X-Metadata-", "v"), wantErr: "names no key"},
		{name: "control byte", h: h("X-Metadata-A", "a\tb"), wantErr: "printable"},
		{name: "not ASCII", h: h("X-Metadata-A", "é"), wantErr: "printable"},
		{name: "long key", h: h("X-Metadata-"+strings.Repeat("k", maxMetadataKey+1), "v"), wantErr: "longer than"},
		{name: "longest key", h: h("X-Metadata-"+strings.Repeat("k", maxMetadataKey), "v"), want: map[string]string{strings.Repeat("k", maxMetadataKey): "v"}},
		{name: "too much", h: h("X-Metadata-A", strings.Repeat("v", 2100), "X-Metadata-B", strings.Repeat("v", 2100)), wantErr: "at most 4096"},
	} {
		got, err := uploadMetadata(c.h)
		if c.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Errorf("%s: %v, want an error with %q", c.name, err, c.wantErr)
			}
			continue
		}
		if err != nil || !maps.Equal(got, c.want) {
			t.Errorf("%s: %v %v, want %v", c.name, got, err, c.want)
		}
	}
}

func TestNetworkFS(t *testing.T) {
	for _, c := range []struct {
		magic int64
		want  string
	}{
		{unix.NFS_SUPER_MAGIC, "nfs"},
		{unix.CIFS_SUPER_MAGIC, "smb"},
		{unix.SMB2_SUPER_MAGIC, "smb"},
		{unix.FUSE_SUPER_MAGIC, "fuse"},
		{unix.V9FS_MAGIC, "9p"},
		{unix.EXT4_SUPER_MAGIC, ""},
		{unix.TMPFS_MAGIC, ""},
		{unix.OVERLAYFS_SUPER_MAGIC, ""},
	} {
		if got := networkFS(c.magic); got != c.want {
			t.Errorf("networkFS(%#x) = %q, want %q", c.magic, got, c.want)
		}
	}
}
