package workspace

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
)

var missingPrereq = regexp.MustCompile(`[0-9a-f]{40,64}`)

// ImportBundle fetches the bundle at bundlePath (made by ExportScript; its
// one ref is HEAD) into refs/heads/<branch> of the repository at repoDir.
// It only adds or moves that ref: it checks nothing out and leaves the
// working tree, the index, HEAD and FETCH_HEAD alone. An existing branch is
// refused unless force, and the checked-out branch is always refused. A
// bundle whose base commit the repository lacks is refused with a message
// saying so. Every object it brings is checked (git fsck's rules, as with
// transfer.fsckObjects): a malformed one is refused and nothing changes.
func ImportBundle(ctx context.Context, repoDir, bundlePath, branch string, force bool) error {
	top, err := repoTop(ctx, repoDir)
	if err != nil {
		return err
	}
	if fi, err := os.Stat(bundlePath); err != nil {
		return fmt.Errorf("bundle: %w", err)
	} else if !fi.Mode().IsRegular() {
		return fmt.Errorf("bundle %s is not a regular file", bundlePath)
	}
	if branch == "" || strings.HasPrefix(branch, "-") || strings.HasPrefix(branch, "refs/") {
		return fmt.Errorf("branch name %q is not allowed: give a short branch name such as agent/1", branch)
	}
	ref := "refs/heads/" + branch
	if _, err := gitOutput(ctx, top, "check-ref-format", ref); err != nil {
		return fmt.Errorf("branch name %q is not a valid git branch name (see git check-ref-format): give one such as agent/1", branch)
	}
	if _, err := gitOutput(ctx, top, "show-ref", "--verify", "--quiet", ref); err == nil {
		if !force {
			return fmt.Errorf("branch %s already exists in %s: choose another name, or force to overwrite it", branch, top)
		}
		if cur, err := gitOutput(ctx, top, "symbolic-ref", "-q", "HEAD"); err == nil && strings.TrimSpace(string(cur)) == ref {
			return fmt.Errorf("branch %s is checked out in %s: banger never moves the checked-out branch; choose another name", branch, top)
		}
	}
	if _, err := gitOutput(ctx, top, "bundle", "verify", bundlePath); err != nil {
		if strings.Contains(err.Error(), "lacks these prerequisite") || strings.Contains(err.Error(), "requires") {
			missing := missingPrereq.FindString(err.Error())
			return fmt.Errorf("the exported changes build on commit %s, which %s does not have: import into the repository the workspace was prepared from (a workspace prepared in tracked mode has its own history: export it as a patch)", missing, top)
		}
		return fmt.Errorf("bundle %s: %w", bundlePath, err)
	}
	// git takes objects from a bundle unchecked whatever fetch.fsckObjects
	// says (before git 2.46): so the bundle goes into a scratch repository
	// that borrows this one's objects, and this one fetches from it with
	// every incoming object checked.
	scratch, err := os.MkdirTemp("", "banger-import-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(scratch)
	if _, err := gitOutput(ctx, scratch, "init", "--quiet", "--bare", scratch); err != nil {
		return err
	}
	objects, err := gitOutput(ctx, top, "rev-parse", "--path-format=absolute", "--git-path", "objects")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(scratch, "objects", "info", "alternates"), objects, 0o644); err != nil {
		return err
	}
	if _, err := gitOutput(ctx, scratch, "fetch", "--quiet", "--no-tags", "--no-write-fetch-head", bundlePath, "HEAD:refs/heads/import"); err != nil {
		return fmt.Errorf("bundle %s: %w", bundlePath, err)
	}
	spec := "refs/heads/import:" + ref
	if force {
		spec = "+" + spec
	}
	if _, err := gitOutput(ctx, top, "-c", "transfer.fsckObjects=true", "-c", "fetch.fsckObjects=true",
		"fetch", "--quiet", "--no-tags", "--no-write-fetch-head", "--no-recurse-submodules", scratch, spec); err != nil {
		return fmt.Errorf("import into branch %s: %w", branch, err)
	}
	return nil
}
