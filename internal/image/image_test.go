package image

import (
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/banger/banger/internal/testenv"
)

func baseRecipe() Recipe {
	pk, _ := normalisePackages(nil, InitFast)
	return Recipe{Version: recipeVersion, Distro: "debian", Suite: "bookworm", Mirror: "http://deb.debian.org/debian",
		Packages: pk, Init: InitFast, SizeBytes: DefaultSize, InitBinary: "sha256:aa"}
}

func TestRecipeKey(t *testing.T) {
	a := baseRecipe()
	if a.Key() != baseRecipe().Key() || len(a.Key()) != 64 {
		t.Fatal("key not stable")
	}
	p1, _ := normalisePackages([]string{"curl", "jq"}, InitFast)
	p2, _ := normalisePackages([]string{"jq", "curl", "curl", "bash"}, InitFast)
	if !reflect.DeepEqual(p1, p2) {
		t.Fatalf("package order or duplicates change the list: %v vs %v", p1, p2)
	}
	withPk := func(p []string) Recipe { r := baseRecipe(); r.Packages = p; return r }
	if withPk(p1).Key() != withPk(p2).Key() {
		t.Error("package order changed the key")
	}
	copyFrom := func(src string) Recipe {
		r := baseRecipe()
		r.Copies = []RecipeFile{{Name: "/etc/x", Source: src, SHA256: "sha256:01"}}
		return r
	}
	if copyFrom("/home/a/x").Key() != copyFrom("/tmp/x").Key() {
		t.Error("the source path of a copy (not its content) changed the key")
	}
	changes := map[string]func(*Recipe){
		"script content": func(r *Recipe) { r.Scripts = []RecipeFile{{Name: "s", SHA256: hashBytes([]byte("echo 1"))}} },
		"init":           func(r *Recipe) { r.Init = InitSystemd },
		"size":           func(r *Recipe) { r.SizeBytes = 1 << 30 },
		"suite":          func(r *Recipe) { r.Suite = "trixie" },
		"mirror":         func(r *Recipe) { r.Mirror = "http://other/debian" },
		"banger-init":    func(r *Recipe) { r.InitBinary = "sha256:bb" },
		"packages":       func(r *Recipe) { r.Packages = p1 },
		"copy content":   func(r *Recipe) { r.Copies = []RecipeFile{{Name: "/etc/x", SHA256: "sha256:02"}} },
	}
	for name, change := range changes {
		r := baseRecipe()
		change(&r)
		if r.Key() == a.Key() {
			t.Errorf("changing %s kept the key", name)
		}
	}
	s1, s2 := baseRecipe(), baseRecipe()
	s1.Scripts = []RecipeFile{{Name: "s", SHA256: hashBytes([]byte("echo 1"))}}
	s2.Scripts = []RecipeFile{{Name: "s", SHA256: hashBytes([]byte("echo 2"))}}
	if s1.Key() == s2.Key() {
		t.Error("script content does not change the key")
	}
}

func TestNormalisePackages(t *testing.T) {
	got, err := normalisePackages(nil, InitSystemd)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range append([]string{"systemd-sysv"}, BasePackages...) {
		found := false
		for _, g := range got {
			found = found || g == want
		}
		if !found {
			t.Errorf("%s missing from %v", want, got)
		}
	}
	for _, bad := range []string{"Bad", "a b", "x;rm", "-opt", ""} {
		if _, err := normalisePackages([]string{bad}, InitFast); err == nil || !strings.Contains(err.Error(), "allowed") {
			t.Errorf("package %q: err = %v", bad, err)
		}
	}
}

func TestNewRecipe(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "banger-init")
	os.WriteFile(bin, []byte("binary"), 0o755)
	src := filepath.Join(dir, "tree")
	os.MkdirAll(filepath.Join(src, "sub"), 0o755)
	os.WriteFile(filepath.Join(src, "sub", "f"), []byte("1"), 0o644)
	ok := BuildOptions{InitBinary: bin, Mirror: "http://m/debian", Copies: []Copy{{Src: src, Dst: "/opt/tree"}}}
	r, err := NewRecipe(ok)
	if err != nil {
		t.Fatal(err)
	}
	if r.Suite != "bookworm" || r.Init != InitFast || r.SizeBytes != DefaultSize || r.InitBinary != hashBytes([]byte("binary")) {
		t.Errorf("defaults: %+v", r)
	}
	os.WriteFile(filepath.Join(src, "sub", "f"), []byte("2"), 0o644)
	r2, _ := NewRecipe(ok)
	if r.Key() == r2.Key() {
		t.Error("changing a file inside a copied directory kept the key")
	}
	tests := []struct {
		name    string
		mutate  func(*BuildOptions)
		wantErr string
	}{
		{"suite", func(o *BuildOptions) { o.Suite = "Book Worm" }, "suite"},
		{"init", func(o *BuildOptions) { o.Init = "openrc" }, "allowed: fast, systemd"},
		{"size", func(o *BuildOptions) { o.SizeBytes = 1 << 20 }, "too small"},
		{"package", func(o *BuildOptions) { o.Packages = []string{"BAD"} }, "package name"},
		{"copy dst", func(o *BuildOptions) { o.Copies = []Copy{{Src: src, Dst: "rel"}} }, "copy destination"},
		{"copy src", func(o *BuildOptions) { o.Copies = []Copy{{Src: "/nonexistent", Dst: "/x"}} }, "copy source"},
		{"no init binary", func(o *BuildOptions) { o.InitBinary = "" }, "banger-init"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := ok
			tt.mutate(&o)
			if _, err := NewRecipe(o); err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want %q", err, tt.wantErr)
			}
		})
	}
}

func TestParseMirror(t *testing.T) {
	deb822 := `Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
`
	tests := []struct {
		name            string
		oneLine, deb822 []string
		want, wantErr   string
	}{
		{"deb822", nil, []string{deb822}, "http://deb.debian.org/debian", ""},
		{"one-line with options", []string{"# c\ndeb-src http://src/debian bookworm main\ndeb [arch=amd64 signed-by=/k.gpg] https://mirror.example/debian/ bookworm main\n"}, nil, "https://mirror.example/debian", ""},
		{"third-party only", []string{"deb https://packages.cloud.google.com/apt cloud-sdk-bookworm main\n"},
			[]string{"Types: deb\nURIs: https://deb.nodesource.com/node_20.x\nSuites: nodistro\n"}, "", "no Debian archive"},
		{"disabled stanza", nil, []string{"Types: deb\nEnabled: no\nURIs: http://a/debian\n\n" + deb822}, "http://deb.debian.org/debian", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseMirror(tt.oneLine, tt.deb822)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v", err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("got %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

func TestCustomizeScript(t *testing.T) {
	scripts := []RecipeFile{{Name: "it's mine"}}
	fast := customizeScript("/w/overlay", InitFast, scripts, []string{"/w/script-1"})
	sysd := customizeScript("/w/overlay", InitSystemd, nil, nil)
	for _, tt := range []struct {
		script  string
		want    []string
		wantNot []string
	}{
		{fast, []string{`cp -a /w/overlay/. "$root"/`, `ln -sf /usr/local/sbin/banger-init "$root"/sbin/init`,
			`chroot "$root" /bin/sh /tmp/banger-script`, `'it'\''s mine'`, "ssh_host_rsa_key", "user:x:1000:1000::/home/user:/bin/bash",
			"/etc/sudoers.d/banger-user"}, []string{"systemd"}},
		{sysd, []string{"sysinit.target.wants/banger-setup.service", "sysinit.target.wants/banger-power.service", `ln -sf /dev/null "$root"/etc/systemd/system/apt-daily.timer`,
			"/etc/sudoers.d/banger-user"},
			[]string{"sbin/init", "chroot"}},
	} {
		for _, w := range tt.want {
			if !strings.Contains(tt.script, w) {
				t.Errorf("script lacks %q:\n%s", w, tt.script)
			}
		}
		for _, w := range tt.wantNot {
			if strings.Contains(tt.script, w) {
				t.Errorf("script has %q:\n%s", w, tt.script)
			}
		}
		if _, err := exec.LookPath("shellcheck"); err == nil {
			cmd := exec.Command("shellcheck", "-s", "sh", "-")
			cmd.Stdin = strings.NewReader(tt.script)
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Errorf("shellcheck: %v\n%s", err, out)
			}
		}
	}
	for _, u := range maskedUnits {
		if strings.HasPrefix(u, "banger") || strings.HasPrefix(u, "ssh") {
			t.Errorf("%s must not be masked", u)
		}
	}
	if !strings.Contains(systemdFiles()["/etc/systemd/system/banger-setup.service"], "Before=sysinit.target network.target ssh.service") {
		t.Error("setup unit not ordered before ssh")
	}
	if !strings.Contains(systemdFiles()["/etc/systemd/system/banger-power.service"], "banger-init watch-power") {
		t.Error("power unit does not run watch-power")
	}
}

func TestIsExt4(t *testing.T) {
	sb := make([]byte, 1024)
	if isExt4(sb) {
		t.Error("zeros taken for ext4")
	}
	binary.LittleEndian.PutUint16(sb[0x38:], 0xEF53)
	if isExt4(sb) {
		t.Error("ext2 (no extents) taken for ext4")
	}
	binary.LittleEndian.PutUint32(sb[0x60:], 0x40|0x2)
	if !isExt4(sb) {
		t.Error("ext4 superblock not recognised")
	}
}

func TestInspectNotExt4(t *testing.T) {
	p := filepath.Join(t.TempDir(), "junk")
	os.WriteFile(p, make([]byte, 8192), 0o644)
	r, err := Inspect(p)
	if err != nil || r.Ext4 || len(r.Missing) == 0 {
		t.Fatalf("got %+v, %v", r, err)
	}
	if _, err := Inspect(p + "-missing"); err == nil {
		t.Error("missing file gave no error")
	}
}

func TestInspectEmptyExt4(t *testing.T) {
	testenv.RequireBinary(t, "mkfs.ext4")
	dir := t.TempDir()
	tree := filepath.Join(dir, "tree")
	os.MkdirAll(filepath.Join(tree, "usr/bin"), 0o755)
	os.WriteFile(filepath.Join(tree, "usr/bin/bash"), []byte("x"), 0o755)
	img := filepath.Join(dir, "img.ext4")
	if err := mkfs(t.Context(), tree, img, 64<<20); err != nil {
		t.Fatal(err)
	}
	r, err := Inspect(img)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"sshd", "banger-init at /usr/local/sbin/banger-init", "ed25519 host key"}
	if !r.Ext4 || !r.HasBash || r.HasSSHD || !reflect.DeepEqual(r.Missing, want) {
		t.Fatalf("got %+v, want missing %v", r, want)
	}
}
