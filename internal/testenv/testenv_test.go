package testenv

import (
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseTSCkHz(t *testing.T) {
	tests := []struct {
		name, dmesg, cpuinfo string
		want                 int
		wantErr              bool
	}{
		{"refined wins", "tsc: Detected 2096.008 MHz processor\ntsc: Refined TSC clocksource calibration: 2095.999 MHz\n", "cpu MHz\t\t: 2000.000\n", 2095999, false},
		{"detected", "[0.000295] tsc: Detected 2096.008 MHz processor\n", "", 2096008, false},
		{"cpuinfo fallback", "", "processor\t: 0\ncpu MHz\t\t: 2096.008\n", 2096008, false},
		{"nothing", "", "", 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseTSCkHz(tt.dmesg, tt.cpuinfo)
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Fatalf("got %d, %v; want %d (err %v)", got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func TestNetns(t *testing.T) {
	RequireRoot(t)
	RequireBinary(t, "ip")
	var name string
	t.Run("create", func(t *testing.T) {
		name = Netns(t)
		out, err := exec.Command("ip", "-n", name, "link", "show", "lo").CombinedOutput()
		if err != nil || !strings.Contains(string(out), "UP") {
			t.Fatalf("lo in %s: %v: %s", name, err, out)
		}
	})
	out, _ := exec.Command("ip", "netns", "list").Output()
	if strings.Contains(string(out), name) {
		t.Fatalf("namespace %s left after the test", name)
	}
}

func TestModuleRoot(t *testing.T) {
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	mod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil || !strings.Contains(string(mod), "module github.com/banger/banger") {
		t.Fatalf("%s is not banger's module root: %v", root, err)
	}
}

// TestImportsNoBangerPackage keeps testenv usable from the tests of every
// banger package: importing one of them would make an import cycle there.
func TestImportsNoBangerPackage(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		parsed, err := parser.ParseFile(token.NewFileSet(), f, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range parsed.Imports {
			if path := strings.Trim(imp.Path.Value, `"`); strings.HasPrefix(path, "github.com/banger/banger/") {
				t.Errorf("%s imports %s", f, path)
			}
		}
	}
}
