package kernel

import (
	"bytes"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/banger/banger/internal/hostnet"
	"github.com/banger/banger/internal/progress"
	"github.com/banger/banger/internal/tail"
)

// Artifacts are the files of a pulled kernel and what to record about them.
type Artifacts struct {
	Version   string            `json:"version"`   // kernel release, as `uname -r` prints it
	Vmlinux   string            `json:"vmlinux"`   // uncompressed ELF (Firecracker, QEMU)
	BzImage   string            `json:"bzimage"`   // the package's compressed image (QEMU)
	Initrd    string            `json:"initrd"`    // busybox initrd with the entry's modules
	Cmdline   string            `json:"cmdline"`   // default command line
	Source    string            `json:"source"`    // "catalog:<entry> (<package> <version>)"
	Checksums map[string]string `json:"checksums"` // file base name -> "sha256:<hex>"
}

// File names inside a pulled kernel's directory.
const (
	vmlinuxName   = "vmlinux"
	bzImageName   = "bzImage"
	initrdName    = "initrd.img"
	artifactsName = "artifacts.json"
	// pullVersion changes whenever Pull makes different files from the same
	// package, so old cache entries are not reused.
	pullVersion = "kernel-pull-v1"
)

// BusyboxPath is the static busybox put into initrds (Debian's
// busybox-static package). A variable so tests can point elsewhere.
var BusyboxPath = "/bin/busybox"

// Pull fetches and prepares the entry into destDir (created; removed on
// failure), reusing cacheDir/kernels/<key> when it holds a finished pull of
// the same entry and package version. cacheDir may be empty (no cache).
//
// The package is resolved and downloaded with the host's apt configuration
// (apt-get download; nothing is installed) and unpacked with dpkg-deb.
// destDir must not exist yet. Cancelling ctx stops the work and removes
// what was made. Progress phases: resolve, download, extract, vmlinux,
// initrd, cache.
func Pull(ctx context.Context, e Entry, destDir, cacheDir string, onProgress progress.Func) (Artifacts, error) {
	start := time.Now()
	report := func(phase, format string, args ...any) {
		if onProgress != nil {
			onProgress(progress.Event{Phase: phase, Message: fmt.Sprintf(format, args...), Elapsed: time.Since(start).Seconds()})
		}
	}
	if _, err := os.Lstat(destDir); err == nil {
		return Artifacts{}, fmt.Errorf("kernel directory %s already exists; remove it first", destDir)
	}
	report("resolve", "resolving %s with apt", e.Package)
	pkg, version, err := aptResolve(ctx, e.Package)
	if err != nil {
		return Artifacts{}, err
	}
	busybox, err := os.ReadFile(BusyboxPath)
	if err != nil {
		return Artifacts{}, fmt.Errorf("read busybox for the initrd: %w (install busybox-static)", err)
	}
	if err := checkStatic(busybox); err != nil {
		return Artifacts{}, fmt.Errorf("%s: %w (install busybox-static)", BusyboxPath, err)
	}
	key := pullKey(e, pkg, version, busybox)
	source := fmt.Sprintf("catalog:%s (%s %s)", e.Name, pkg, version)

	var cached string
	if cacheDir != "" {
		cached = filepath.Join(cacheDir, "kernels", key)
		if a, err := readArtifacts(cached); err == nil {
			report("cache", "reusing %s %s from the cache", pkg, version)
			return installDir(cached, destDir, a)
		}
	}

	parent := filepath.Dir(destDir)
	if cached != "" {
		parent = filepath.Dir(cached)
	}
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return Artifacts{}, err
	}
	work, err := os.MkdirTemp(parent, ".pull-*")
	if err != nil {
		return Artifacts{}, err
	}
	defer os.RemoveAll(work)
	dl := filepath.Join(work, "download")
	out := filepath.Join(work, "out")
	for _, d := range []string{dl, out} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return Artifacts{}, err
		}
	}

	report("download", "downloading %s %s", pkg, version)
	if b, err := run(ctx, dl, "apt-get", "-q", "-o", "APT::Sandbox::User=root", "download", pkg+"="+version); err != nil {
		return Artifacts{}, fmt.Errorf("apt-get download %s=%s: %v: %s", pkg, version, err, lastLines(b, 5))
	}
	debs, _ := filepath.Glob(filepath.Join(dl, "*.deb"))
	if len(debs) != 1 {
		return Artifacts{}, fmt.Errorf("apt-get download %s: want one .deb, found %d", pkg, len(debs))
	}
	report("extract", "unpacking %s", filepath.Base(debs[0]))
	tree := filepath.Join(work, "tree")
	if b, err := run(ctx, work, "dpkg-deb", "-x", debs[0], tree); err != nil {
		return Artifacts{}, fmt.Errorf("dpkg-deb -x %s: %v: %s", filepath.Base(debs[0]), err, lastLines(b, 5))
	}
	vmlinuzs, _ := filepath.Glob(filepath.Join(tree, "boot", "vmlinuz-*"))
	if len(vmlinuzs) != 1 {
		return Artifacts{}, fmt.Errorf("package %s: want one boot/vmlinuz-*, found %d", pkg, len(vmlinuzs))
	}
	release := strings.TrimPrefix(filepath.Base(vmlinuzs[0]), "vmlinuz-")
	bz, err := os.ReadFile(vmlinuzs[0])
	if err != nil {
		return Artifacts{}, err
	}

	report("vmlinux", "extracting the ELF vmlinux from %s", filepath.Base(vmlinuzs[0]))
	vmlinux, err := ExtractVmlinux(bz)
	if err != nil {
		return Artifacts{}, fmt.Errorf("package %s: %w", pkg, err)
	}
	if err := ctx.Err(); err != nil {
		return Artifacts{}, err
	}

	report("initrd", "building the initrd with %s", strings.Join(e.Modules, ", "))
	initrd, err := initrdFromTree(filepath.Join(tree, "lib", "modules", release), e.Modules, busybox)
	if err != nil {
		return Artifacts{}, fmt.Errorf("package %s: %w", pkg, err)
	}

	a := Artifacts{Version: release, Cmdline: e.Cmdline, Source: source, Checksums: map[string]string{}}
	for name, data := range map[string][]byte{vmlinuxName: vmlinux, bzImageName: bz, initrdName: initrd} {
		if err := os.WriteFile(filepath.Join(out, name), data, 0o644); err != nil {
			return Artifacts{}, err
		}
		sum := sha256.Sum256(data)
		a.Checksums[name] = "sha256:" + hex.EncodeToString(sum[:])
	}
	meta, _ := json.MarshalIndent(a, "", "  ")
	// artifacts.json is written last: its presence marks a finished pull.
	if err := os.WriteFile(filepath.Join(out, artifactsName), meta, 0o644); err != nil {
		return Artifacts{}, err
	}
	if err := ctx.Err(); err != nil {
		return Artifacts{}, err
	}
	if cached == "" {
		return finish(out, destDir, a)
	}
	_ = os.RemoveAll(cached) // an unfinished entry (no artifacts.json)
	if err := os.Rename(out, cached); err != nil {
		return Artifacts{}, fmt.Errorf("store kernel in cache: %w", err)
	}
	report("cache", "stored %s in the cache", release)
	return installDir(cached, destDir, a)
}

// finish moves a finished directory into place and fills in the paths.
func finish(dir, destDir string, a Artifacts) (Artifacts, error) {
	if err := os.Rename(dir, destDir); err != nil {
		return Artifacts{}, fmt.Errorf("move kernel into %s: %w", destDir, err)
	}
	return withPaths(destDir, a), nil
}

// installDir copies (hard-links when possible) a cached pull into destDir.
func installDir(cached, destDir string, a Artifacts) (res Artifacts, err error) {
	tmp := destDir + ".tmp"
	_ = os.RemoveAll(tmp)
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return Artifacts{}, err
	}
	defer func() {
		if err != nil {
			os.RemoveAll(tmp)
		}
	}()
	for _, name := range []string{vmlinuxName, bzImageName, initrdName, artifactsName} {
		if err := linkOrCopy(filepath.Join(cached, name), filepath.Join(tmp, name)); err != nil {
			return Artifacts{}, err
		}
	}
	return finish(tmp, destDir, a)
}

func withPaths(dir string, a Artifacts) Artifacts {
	a.Vmlinux = filepath.Join(dir, vmlinuxName)
	a.BzImage = filepath.Join(dir, bzImageName)
	a.Initrd = filepath.Join(dir, initrdName)
	return a
}

func readArtifacts(dir string) (Artifacts, error) {
	var a Artifacts
	b, err := os.ReadFile(filepath.Join(dir, artifactsName))
	if err != nil {
		return a, err
	}
	if err := json.Unmarshal(b, &a); err != nil {
		return a, err
	}
	for _, name := range []string{vmlinuxName, bzImageName, initrdName} {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			return a, err
		}
	}
	return a, nil
}

// linkOrCopy hard-links src to dst, or copies it across file systems.
func linkOrCopy(src, dst string) error {
	if err := os.Link(src, dst); err == nil {
		return nil
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// pullKey names a pull's cache entry from everything that shapes its files.
func pullKey(e Entry, pkg, version string, busybox []byte) string {
	h := sha256.New()
	ej, _ := json.Marshal(e)
	bb := sha256.Sum256(busybox)
	fmt.Fprintf(h, "%s\n%s\n%s=%s\n%x\n", pullVersion, ej, pkg, version, bb)
	return hex.EncodeToString(h.Sum(nil))[:32]
}

// initrdFromTree reads the wanted modules (and their dependencies) from an
// unpacked lib/modules/<release> tree and builds the initrd.
func initrdFromTree(modDir string, wanted []string, busybox []byte) ([]byte, error) {
	paths := map[string]string{}
	err := filepath.WalkDir(filepath.Join(modDir, "kernel"), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && strings.HasSuffix(p, ".ko") {
			paths[modName(filepath.Base(p))] = p
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list modules: %w", err)
	}
	// Read dependencies lazily: only modules reachable from wanted.
	deps := map[string][]string{}
	kos := map[string][]byte{}
	queue := append([]string(nil), wanted...)
	for len(queue) > 0 {
		m := modName(queue[0])
		queue = queue[1:]
		if _, done := deps[m]; done {
			continue
		}
		p, ok := paths[m]
		if !ok {
			continue // moduleOrder names it
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, err
		}
		d, err := moduleDepends(b)
		if err != nil {
			return nil, fmt.Errorf("module %s: %w", m, err)
		}
		deps[m], kos[m] = d, b
		queue = append(queue, d...)
	}
	order, err := moduleOrder(wanted, deps)
	if err != nil {
		return nil, err
	}
	return buildInitrd(busybox, order, kos)
}

// checkStatic refuses a dynamically linked binary: the initrd has no libc.
func checkStatic(b []byte) error {
	f, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		return fmt.Errorf("not an ELF binary: %w", err)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return errors.New("dynamically linked; the initrd needs a static busybox")
		}
	}
	return nil
}

// aptResolve turns a (meta)package into the versioned kernel package and
// its version, as the host's apt would install them.
func aptResolve(ctx context.Context, pkg string) (name, version string, err error) {
	name = pkg
	for range 3 {
		out, err := run(ctx, "", "apt-cache", "show", "--no-all-versions", name)
		if err != nil {
			return "", "", fmt.Errorf("apt-cache show %s: %v: %s (is the package in this host's apt sources? try apt-get update)", name, err, lastLines(out, 3))
		}
		fields := parseAptStanza(string(out))
		if dep := kernelDependency(fields["Depends"]); dep != "" && dep != name {
			name = dep
			continue
		}
		if fields["Version"] == "" {
			return "", "", fmt.Errorf("apt-cache show %s: no Version field", name)
		}
		return name, fields["Version"], nil
	}
	return "", "", fmt.Errorf("package %s: metapackage chain too long", pkg)
}

// parseAptStanza returns the fields of the first stanza of apt-cache show
// output (continuation lines joined).
func parseAptStanza(out string) map[string]string {
	fields := map[string]string{}
	last := ""
	for _, line := range strings.Split(out, "\n") {
		if strings.TrimSpace(line) == "" {
			if len(fields) > 0 {
				break
			}
			continue
		}
		if line[0] == ' ' || line[0] == '\t' {
			if last != "" {
				fields[last] += "\n" + strings.TrimSpace(line)
			}
			continue
		}
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		last = k
		fields[k] = strings.TrimSpace(v)
	}
	return fields
}

var versionedKernelRE = regexp.MustCompile(`^linux-image-[0-9][^ ]*$`)

// kernelDependency picks the versioned linux-image package out of a
// metapackage's Depends field ("" when there is none).
func kernelDependency(depends string) string {
	for _, alt := range strings.Split(depends, ",") {
		for _, d := range strings.Split(alt, "|") {
			name, _, _ := strings.Cut(strings.TrimSpace(d), " ")
			if versionedKernelRE.MatchString(name) {
				return name
			}
		}
	}
	return ""
}

func run(ctx context.Context, dir, name string, args ...string) ([]byte, error) {
	cmd := hostnet.HostCommand(ctx, name, args...) // downloads need the host's network
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		return out, ctx.Err()
	}
	return out, err
}

func lastLines(b []byte, n int) string {
	return strings.ReplaceAll(string(tail.Lines(bytes.TrimSpace(b), n)), "\n", " | ")
}
