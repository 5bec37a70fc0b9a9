package image

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/banger/banger/internal/guestinit"
	"github.com/banger/banger/internal/hostnet"
	"github.com/banger/banger/internal/progress"
	"github.com/banger/banger/internal/shell"
)

// DefaultSize is the image size when BuildOptions.SizeBytes is 0.
const DefaultSize int64 = 2 << 30

// BuildOptions are the inputs of an image build.
type BuildOptions struct {
	Name       string   // shown in progress only
	Suite      string   // Debian suite; "bookworm" when empty
	Packages   []string // added to BasePackages
	SizeBytes  int64    // ext4 size; DefaultSize when 0
	Init       string   // InitFast (default) or InitSystemd
	Scripts    []Script // run in the new root after packages, in order
	Copies     []Copy   // put into the root before the scripts run
	InitBinary string   // path of the banger-init binary to install (required)
	CacheDir   string   // build cache root; no cache when empty
	NoCache    bool     // rebuild even when the cache holds this recipe
	Mirror     string   // Debian mirror URL; the host's configured one when empty
}

// Result describes a built image.
type Result struct {
	Path       string `json:"path"`
	SizeBytes  int64  `json:"size_bytes"`
	Checksum   string `json:"checksum"` // "sha256:<hex>" of the ext4 file
	HostKey    string `json:"host_key"` // guest sshd's public key, "ssh-ed25519 AAAA…"
	Init       string `json:"init"`
	RecipeJSON string `json:"recipe"`
	RecipeKey  string `json:"recipe_key"`
	Cached     bool   `json:"cached"` // true when reused from the cache
}

// Build makes an ext4 root filesystem image at destPath from Debian packages
// and returns what to record about it. destPath must not exist.
//
// With a CacheDir, an earlier build of the same recipe
// (CacheDir/images/<key>.ext4 and its .json sidecar) is hard-linked (or
// copied) to destPath in constant time, unless NoCache. Otherwise the image
// is built in a temporary directory next to destPath, which is removed on
// any failure or when ctx is cancelled; the finished file is renamed into
// place. No mount is made by Build itself (mmdebstrap's hooks mount and
// unmount /dev, /proc, /sys inside the tree around scripts).
//
// Progress phases: recipe, mmdebstrap (its output lines), customise, mkfs,
// checksum, cache.
func Build(ctx context.Context, opts BuildOptions, destPath string, onProgress progress.Func) (Result, error) {
	start := time.Now()
	report := func(phase, format string, args ...any) {
		if onProgress != nil {
			onProgress(progress.Event{Phase: phase, Message: fmt.Sprintf(format, args...), Elapsed: time.Since(start).Seconds()})
		}
	}
	if _, err := os.Lstat(destPath); err == nil {
		return Result{}, fmt.Errorf("image file %s already exists; remove it first", destPath)
	}
	recipe, err := NewRecipe(opts)
	if err != nil {
		return Result{}, err
	}
	key := recipe.Key()
	report("recipe", "recipe %s: %s %s, %d packages, init %s", key[:12], recipe.Distro, recipe.Suite, len(recipe.Packages), recipe.Init)

	var cacheImg string
	if opts.CacheDir != "" {
		cacheImg = filepath.Join(opts.CacheDir, "images", key+".ext4")
		if !opts.NoCache {
			if res, err := fromCache(cacheImg, destPath); err == nil {
				report("cache", "reusing the cached image %s", key[:12])
				return res, nil
			}
		}
	}

	if err := os.MkdirAll(filepath.Dir(destPath), 0o755); err != nil {
		return Result{}, err
	}
	work, err := os.MkdirTemp(filepath.Dir(destPath), ".build-"+filepath.Base(destPath)+"-")
	if err != nil {
		return Result{}, err
	}
	defer removeWork(work)

	res, err := buildIn(ctx, work, opts, recipe, report)
	if err != nil {
		return Result{}, err
	}
	res.RecipeJSON, res.RecipeKey = recipe.JSON(), key
	if err := os.Rename(res.Path, destPath); err != nil {
		return Result{}, fmt.Errorf("move image into %s: %w", destPath, err)
	}
	res.Path = destPath
	if cacheImg != "" {
		report("cache", "storing the image in the cache")
		if err := toCache(res, cacheImg); err != nil {
			// The image is fine; only its reuse is lost.
			report("cache", "not cached: %v", err)
		} else if err := pruneCache(filepath.Dir(cacheImg), cacheKeep); err != nil {
			report("cache", "pruning old cache entries: %v", err)
		}
	}
	return res, nil
}

// removeWork deletes the work directory, first detaching any mount a killed
// mmdebstrap left in the tree (/dev/shm is a bind of the host's): a
// recursive delete must never reach through one.
func removeWork(work string) {
	if mounts, err := mountsUnder(work); err != nil || !detachAll(mounts) {
		return // leave it rather than delete the host's files
	}
	os.RemoveAll(work)
}

// mountsUnder lists the mount points below dir, deepest first.
func mountsUnder(dir string) ([]string, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 4 {
			if mp := unescapeMountinfo(f[4]); strings.HasPrefix(mp, dir+"/") {
				out = append(out, mp)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	return out, nil
}

// detachAll lazily unmounts each mount point and reports whether all are gone.
func detachAll(mounts []string) bool {
	ok := true
	for _, mp := range mounts {
		if err := syscall.Unmount(mp, syscall.MNT_DETACH); err != nil {
			ok = false
		}
	}
	return ok
}

// unescapeMountinfo undoes the octal escapes (\040 for a space) of
// /proc/self/mountinfo paths.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// NewRecipe validates opts and computes the recipe: it reads the scripts,
// copies and banger-init binary to hash them, and the host's apt sources
// when no mirror is given.
func NewRecipe(opts BuildOptions) (Recipe, error) {
	r := Recipe{Version: recipeVersion, Distro: "debian", Suite: opts.Suite, Init: opts.Init, SizeBytes: opts.SizeBytes, Mirror: opts.Mirror}
	if r.Suite == "" {
		r.Suite = "bookworm"
	}
	if !suiteRE.MatchString(r.Suite) {
		return Recipe{}, fmt.Errorf("suite %q invalid (allowed: a Debian codename such as bookworm)", r.Suite)
	}
	if r.Init == "" {
		r.Init = InitFast
	}
	if r.Init != InitFast && r.Init != InitSystemd {
		return Recipe{}, fmt.Errorf("init %q invalid (allowed: fast, systemd)", r.Init)
	}
	if r.SizeBytes == 0 {
		r.SizeBytes = DefaultSize
	}
	if r.SizeBytes < 256<<20 {
		return Recipe{}, fmt.Errorf("image size %d bytes too small (allowed: at least 256M)", r.SizeBytes)
	}
	var err error
	if r.Packages, err = normalisePackages(opts.Packages, r.Init); err != nil {
		return Recipe{}, err
	}
	if r.Mirror == "" {
		if r.Mirror, err = HostMirror(); err != nil {
			return Recipe{}, err
		}
	}
	for i, s := range opts.Scripts {
		name := s.Name
		if name == "" {
			name = fmt.Sprintf("script-%d", i+1)
		}
		r.Scripts = append(r.Scripts, RecipeFile{Name: name, SHA256: hashBytes(s.Content)})
	}
	for _, c := range opts.Copies {
		if !filepath.IsAbs(c.Dst) || filepath.Clean(c.Dst) == "/" {
			return Recipe{}, fmt.Errorf("copy destination %q invalid (allowed: an absolute path below /)", c.Dst)
		}
		sum, err := hashFile(c.Src)
		if err != nil {
			return Recipe{}, fmt.Errorf("copy source %s: %w", c.Src, err)
		}
		r.Copies = append(r.Copies, RecipeFile{Name: filepath.Clean(c.Dst), Source: c.Src, SHA256: sum})
	}
	if opts.InitBinary == "" {
		return Recipe{}, errors.New("no banger-init binary given (it is installed in every image)")
	}
	b, err := os.ReadFile(opts.InitBinary)
	if err != nil {
		return Recipe{}, fmt.Errorf("banger-init binary: %w", err)
	}
	r.InitBinary = hashBytes(b)
	return r, nil
}

// buildIn does the work inside work and returns the image at work/image.ext4.
func buildIn(ctx context.Context, work string, opts BuildOptions, r Recipe, report func(string, string, ...any)) (Result, error) {
	overlay := filepath.Join(work, "overlay")
	tree := filepath.Join(work, "rootfs")
	img := filepath.Join(work, "image.ext4")

	report("customise", "preparing banger's files")
	hostKey, err := writeOverlay(ctx, overlay, opts, r)
	if err != nil {
		return Result{}, err
	}
	var scripts []string
	for i, s := range opts.Scripts {
		p := filepath.Join(work, fmt.Sprintf("script-%d", i+1))
		if err := os.WriteFile(p, s.Content, 0o755); err != nil {
			return Result{}, err
		}
		scripts = append(scripts, p)
	}
	hook := filepath.Join(work, "customize.sh")
	if err := os.WriteFile(hook, []byte(customizeScript(overlay, r.Init, r.Scripts, scripts)), 0o755); err != nil {
		return Result{}, err
	}

	tool, args, err := bootstrapCommand(r, tree, hook)
	if err != nil {
		return Result{}, err
	}
	report(tool, "%s %s into a new root (packages: %s)", tool, r.Suite, strings.Join(r.Packages, " "))
	if err := runStreaming(ctx, tool, args, func(line string) { report(tool, "%s", line) }); err != nil {
		return Result{}, err
	}
	if tool == "debootstrap" { // debootstrap has no hooks: customise now
		if err := runStreaming(ctx, "sh", []string{hook, tree}, func(line string) { report("customise", "%s", line) }); err != nil {
			return Result{}, err
		}
	}

	report("mkfs", "writing %s ext4 (%d MiB) from the tree", filepath.Base(img), r.SizeBytes>>20)
	if err := mkfs(ctx, tree, img, r.SizeBytes); err != nil {
		return Result{}, err
	}
	report("checksum", "hashing the image")
	sum, err := fileChecksum(ctx, img)
	if err != nil {
		return Result{}, err
	}
	return Result{Path: img, SizeBytes: r.SizeBytes, Checksum: sum, HostKey: hostKey, Init: r.Init}, nil
}

// bootstrapCommand picks mmdebstrap (with hooks) or debootstrap.
func bootstrapCommand(r Recipe, tree, hook string) (string, []string, error) {
	include := "--include=" + strings.Join(r.Packages, ",")
	if _, err := exec.LookPath("mmdebstrap"); err == nil {
		return "mmdebstrap", []string{
			"--variant=minbase", "--mode=root", "--format=directory", include,
			"--customize-hook=sh " + shell.Quote(hook) + ` "$1"`,
			r.Suite, tree, r.Mirror,
		}, nil
	}
	if _, err := exec.LookPath("debootstrap"); err == nil {
		return "debootstrap", []string{"--variant=minbase", include, r.Suite, tree, r.Mirror}, nil
	}
	return "", nil, errors.New("neither mmdebstrap nor debootstrap is installed (apt-get install mmdebstrap)")
}

// runStreaming runs a command, passing each output line to line, and on
// failure returns an error carrying the last lines. The command gets its own
// process group and cancelling ctx sends SIGTERM to all of it, as Ctrl-C in
// a terminal would: mmdebstrap ignores the signal itself and waits for its
// apt and dpkg to die of it, then unmounts what it mounted in the tree.
// Whatever of the group outlives the command is killed.
func runStreaming(ctx context.Context, name string, args []string, line func(string)) error {
	cmd := hostnet.HostCommand(ctx, name, args...) // downloads need the host's network
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM) }
	cmd.WaitDelay = 30 * time.Second
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	var tail []string
	var mu sync.Mutex
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			l := sc.Text()
			mu.Lock()
			tail = append(tail, l)
			if len(tail) > 25 {
				tail = tail[1:]
			}
			mu.Unlock()
			line(l)
		}
		_, _ = io.Copy(io.Discard, pr)
	}()
	err := cmd.Run()
	if cmd.Process != nil {
		// Strays of the group (the leader killed after WaitDelay); ESRCH
		// when none is left.
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	pw.Close()
	<-done
	if ctx.Err() != nil {
		return fmt.Errorf("%s cancelled: %w", name, ctx.Err())
	}
	if err != nil {
		mu.Lock()
		defer mu.Unlock()
		return fmt.Errorf("%s failed (%v); its last output:\n%s", name, err, strings.Join(tail, "\n"))
	}
	return nil
}

// mkfs writes the tree into a new ext4 file of the given size.
func mkfs(ctx context.Context, tree, img string, size int64) error {
	f, err := os.OpenFile(img, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	err = f.Truncate(size)
	f.Close()
	if err != nil {
		return fmt.Errorf("size %s: %w", img, err)
	}
	out, err := exec.CommandContext(ctx, "mkfs.ext4", "-q", "-F", "-d", tree, "-L", "banger-root", img).CombinedOutput()
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err != nil {
		return fmt.Errorf("mkfs.ext4 -d: %v: %s (is the image size big enough for the packages?)", err, strings.TrimSpace(string(out)))
	}
	return nil
}

func fileChecksum(ctx context.Context, path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	buf := make([]byte, 4<<20)
	for {
		if err := ctx.Err(); err != nil {
			return "", err
		}
		n, err := f.Read(buf)
		h.Write(buf[:n])
		if err == io.EOF {
			break
		}
		if err != nil {
			return "", err
		}
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), nil
}

// writeOverlay lays out the files banger puts into every image and returns
// the new sshd host public key.
func writeOverlay(ctx context.Context, overlay string, opts BuildOptions, r Recipe) (string, error) {
	files := map[string]string{
		guestinit.SSHDConfigPath: guestinit.SSHDConfig(),
		"/etc/machine-id":        randomHex(16) + "\n",
	}
	if r.Init == InitSystemd {
		for path, content := range systemdFiles() {
			files[path] = content
		}
	}
	for path, content := range files {
		p := filepath.Join(overlay, path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return "", err
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			return "", err
		}
	}
	bin := filepath.Join(overlay, guestinit.InitPath)
	if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
		return "", err
	}
	if out, err := exec.CommandContext(ctx, "cp", opts.InitBinary, bin).CombinedOutput(); err != nil {
		return "", fmt.Errorf("copy banger-init: %v: %s", err, out)
	}
	if err := os.Chmod(bin, 0o755); err != nil {
		return "", err
	}
	keyPath := filepath.Join(overlay, "etc/ssh/ssh_host_ed25519_key")
	if out, err := exec.CommandContext(ctx, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "banger-image", "-f", keyPath).CombinedOutput(); err != nil {
		return "", fmt.Errorf("ssh-keygen for the host key: %v: %s (install openssh-client)", err, out)
	}
	pub, err := os.ReadFile(keyPath + ".pub")
	if err != nil {
		return "", err
	}
	f := strings.Fields(string(pub))
	if len(f) < 2 {
		return "", fmt.Errorf("ssh-keygen wrote an unreadable public key")
	}
	for _, c := range opts.Copies {
		dst := filepath.Join(overlay, filepath.Clean(c.Dst))
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return "", err
		}
		if out, err := exec.CommandContext(ctx, "cp", "-a", "--", c.Src, dst).CombinedOutput(); err != nil {
			return "", fmt.Errorf("copy %s to %s: %v: %s", c.Src, c.Dst, err, out)
		}
	}
	if err := openOverlayDirs(overlay, opts.Copies); err != nil {
		return "", err
	}
	return f[0] + " " + f[1], nil
}

// openOverlayDirs makes the overlay's own directories 0755 whatever the
// daemon's umask: `cp -a overlay/. root/` gives their modes to the root's
// /etc, /usr and the rest, and a 0700 /usr leaves every user but root
// unable to run anything. The trees of user copies keep their modes.
func openOverlayDirs(overlay string, copies []Copy) error {
	keep := map[string]bool{}
	for _, c := range copies {
		keep[filepath.Join(overlay, filepath.Clean(c.Dst))] = true
	}
	return filepath.WalkDir(overlay, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if keep[path] {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if d.IsDir() {
			return os.Chmod(path, 0o755)
		}
		return nil
	})
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// fromCache links a cached image to destPath; it fails when the cache has
// no finished entry (image and sidecar).
func fromCache(cacheImg, destPath string) (Result, error) {
	var res Result
	b, err := os.ReadFile(sidecar(cacheImg))
	if err != nil {
		return res, err
	}
	if err := json.Unmarshal(b, &res); err != nil {
		return res, err
	}
	st, err := os.Stat(cacheImg)
	if err != nil || st.Size() != res.SizeBytes {
		return res, fmt.Errorf("cached image incomplete")
	}
	if err := os.MkdirAll(filepath.Dir(destPath), 0o755); err != nil {
		return res, err
	}
	if err := linkOrCopy(cacheImg, destPath); err != nil {
		return res, err
	}
	res.Path, res.Cached = destPath, true
	// Mark the entry as recently used, for pruning.
	now := time.Now()
	_ = os.Chtimes(sidecar(cacheImg), now, now)
	return res, nil
}

// cacheKeep is how many images the cache keeps: every change of a recipe's
// inputs (a package, the banger-init binary) makes a new entry of ~0.5 GB.
const cacheKeep = 6

// pruneCache removes all but the keep most recently used entries (by the
// sidecar's mtime, touched on every hit) from the image cache dir. Images
// registered in a state dir are hard links of their own and survive.
func pruneCache(dir string, keep int) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	type entry struct {
		base string
		used time.Time
	}
	var all []entry
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), ".json") {
			continue
		}
		info, err := e.Info()
		if err != nil {
			continue
		}
		all = append(all, entry{strings.TrimSuffix(e.Name(), ".json"), info.ModTime()})
	}
	sort.Slice(all, func(i, j int) bool { return all[i].used.After(all[j].used) })
	var errs []error
	for i := keep; i < len(all); i++ {
		// Sidecar first: without it the entry is not a cache hit anymore.
		for _, ext := range []string{".json", ".ext4"} {
			if err := os.Remove(filepath.Join(dir, all[i].base+ext)); err != nil && !os.IsNotExist(err) {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// toCache links the finished image into the cache, sidecar last: its
// presence marks a complete entry.
func toCache(res Result, cacheImg string) error {
	if err := os.MkdirAll(filepath.Dir(cacheImg), 0o755); err != nil {
		return err
	}
	tmp := cacheImg + ".tmp"
	_ = os.Remove(tmp)
	if err := linkOrCopy(res.Path, tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, cacheImg); err != nil {
		os.Remove(tmp)
		return err
	}
	side := res
	side.Path, side.Cached = "", false
	b, _ := json.MarshalIndent(side, "", "  ")
	if err := os.WriteFile(sidecar(cacheImg)+".tmp", b, 0o644); err != nil {
		return err
	}
	return os.Rename(sidecar(cacheImg)+".tmp", sidecar(cacheImg))
}

func sidecar(cacheImg string) string { return strings.TrimSuffix(cacheImg, ".ext4") + ".json" }

// linkOrCopy hard-links src to dst (images are never written through), or
// copies it sparsely across file systems.
func linkOrCopy(src, dst string) error {
	if err := os.Link(src, dst); err == nil {
		return nil
	}
	if out, err := exec.Command("cp", "--sparse=always", "--reflink=auto", "--", src, dst).CombinedOutput(); err != nil {
		os.Remove(dst)
		return fmt.Errorf("copy %s to %s: %v: %s", src, dst, err, out)
	}
	return nil
}
