package workspace

import (
	"fmt"
	"path"
	"strings"

	"github.com/banger/banger/internal/guestinit"
	"github.com/banger/banger/internal/shell"
	"github.com/banger/banger/internal/transfer"
)

// DefaultGuestPath is where a workspace goes when none is given.
const DefaultGuestPath = "/root/repo"

// Exit codes of ExportScript other than 0 (success) and 1 (other failure).
const (
	ExitNothingToExport = 3 // no commits and no changes since the base
	ExitNoWorkspace     = 4 // nothing at the guest path
	ExitNotRepo         = 5 // the guest path is not a git repository
	ExitBadBase         = 6 // the base commit is missing or not an ancestor of HEAD
)

// Export formats.
const (
	FormatBundle = "bundle"
	FormatPatch  = "patch"
)

// ValidateFormat checks an export format; empty means FormatBundle.
func ValidateFormat(format string) error {
	switch format {
	case "", FormatBundle, FormatPatch:
		return nil
	}
	return fmt.Errorf("export format %q is not allowed: use %q or %q", format, FormatBundle, FormatPatch)
}

// ValidateGuestPath checks a workspace's guest path: absolute, strictly
// under /root (the VM's persistent work disk), clean (no "." or ".."
// components, no doubled or trailing slash), printable, and not /root/.ssh
// (which holds the daemon's access to the guest).
func ValidateGuestPath(p string) error {
	const allowed = "an absolute path under /root such as /root/repo"
	if p == "" {
		return fmt.Errorf("guest path is empty: use %s", allowed)
	}
	if !strings.HasPrefix(p, "/") {
		return fmt.Errorf("guest path %q is relative: use %s", p, allowed)
	}
	for _, r := range p {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("guest path %q contains a control character: use %s", p, allowed)
		}
	}
	for _, c := range strings.Split(p[1:], "/") {
		if c == "." || c == ".." {
			return fmt.Errorf("guest path %q contains %q: use %s without . or .. components", p, c, allowed)
		}
		if c == "" {
			return fmt.Errorf("guest path %q has an empty component (doubled or trailing slash): use %s", p, allowed)
		}
	}
	if path.Clean(p) != p || !strings.HasPrefix(p, "/root/") {
		return fmt.Errorf("guest path %q is not under /root: use %s (/root is the VM's persistent work disk)", p, allowed)
	}
	if p == "/root/.ssh" || strings.HasPrefix(p, "/root/.ssh/") {
		return fmt.Errorf("guest path %q is inside /root/.ssh, which holds the guest's SSH access: use another path under /root", p)
	}
	return nil
}

// TempPath is the directory a prepare unpacks into before renaming it to
// guestPath: a hidden sibling, so the rename stays on one filesystem. suffix
// makes it unique (e.g. random hex). PrepareScript removes stale siblings
// of this form left by an interrupted prepare.
func TempPath(guestPath, suffix string) string {
	return path.Join(path.Dir(guestPath), "."+path.Base(guestPath)+".banger-tmp-"+suffix)
}

// headPrefix marks the line of PrepareScript's output carrying the HEAD.
const headPrefix = "banger-head="

// ParsePrepareOutput returns the HEAD commit PrepareScript printed, or ""
// when the workspace has no git repository or no commit.
func ParsePrepareOutput(stdout string) string {
	for _, line := range strings.Split(stdout, "\n") {
		if h, ok := strings.CutPrefix(strings.TrimSpace(line), headPrefix); ok {
			return h
		}
	}
	return ""
}

// PrepareScript is the guest-side bash script of a prepare. It reads a tar
// stream (WriteTar's) and unpacks it into tmpPath (see TempPath). When
// $BANGER_XFER_TOKEN is set and the guest's banger-init can receive, the
// stream comes over the data channel of internal/transfer, whose port
// banger-init announces on stderr; otherwise the script announces
// transfer.AnnounceStdin on stderr and reads the stream on stdin. It
// sets up git there, and only then swaps it in for guestPath, removing the
// old tree last. On any failure it removes tmpPath and leaves guestPath as
// it was.
//
// ModeFull keeps the .git that came in the stream (a stream without one is
// a plain directory and gets no git set-up). ModeTracked keeps it too (it
// is the snapshot WriteTar made), and makes a fresh repository with one
// commit of the files when the stream has none (a plain directory). The base commit exports are
// measured from is recorded as `git config banger.base`: base when given,
// else the HEAD after unpacking. The path is added to the global git
// safe.directory list. readOnly removes write permission and sets the
// immutable attribute (which stops root too) where the filesystem has it.
// The last line of output carries the HEAD (see ParsePrepareOutput).
func PrepareScript(guestPath, tmpPath string, readOnly bool, mode string, base string) string {
	ro := "0"
	if readOnly {
		ro = "1"
	}
	if mode == "" {
		mode = ModeFull
	}
	return fmt.Sprintf(`set -euo pipefail
umask 022
guest=%s
tmp=%s
mode=%s
readonly_ws=%s
base=%s
fail() { echo "banger: $*" >&2; exit 1; }
command -v tar >/dev/null || fail "tar is not installed in the guest"
parent=$(dirname -- "$guest")
name=$(basename -- "$guest")
mkdir -p -- "$parent"
# Requests on one VM are serialised, so any temp sibling is a leftover.
for stale in "$parent/.$name.banger-tmp-"*; do
	if [ -e "$stale" ] || [ -L "$stale" ]; then
		chattr -R -i -- "$stale" 2>/dev/null || true
		rm -rf -- "$stale"
	fi
done
# tar's messages go off the target disk, which may be what is full.
errf=
cleanup() {
	rc=$?
	if [ -e "$tmp" ]; then rm -rf -- "$tmp"; fi
	if [ -n "$errf" ]; then rm -f -- "$errf"; fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 143' TERM
mkdir -m 0700 -- "$tmp"
errf=$(mktemp 2>/dev/null || echo "$tmp.err")
recv=${BANGER_INIT:-%s}
# 128 KiB reads (-b 256, -B: whole records from a pipe) rather than tar's
# 10 KiB: under emulation each read and context switch is dear.
untar() { tar -x -b 256 -B -f - -C "$tmp" --no-same-owner --same-permissions 2>"$errf"; }
free=$(df -h --output=avail -- "$parent" 2>/dev/null | tail -n 1 | tr -d ' ' || true)
untar_failed() {
	# GNU tar reports a full disk as ENOSPC, or as a short write.
	if grep -qE "No space left on device|Wrote only [0-9]+ of [0-9]+ bytes" -- "$errf"; then
		fail "the guest's disk is full: the workspace did not fit in $parent (${free:-?} was free before it); free space in the VM or give it a larger --disk"
	fi
	fail "unpacking the workspace stream failed: $(tail -n 3 -- "$errf" | tr '\n' ' ')"
}
if [ -n "${%s:-}" ] && [ -x "$recv" ] && "$recv" recv --check >/dev/null 2>&1; then
	# The stream comes over the data channel (banger-init recv announces
	# its port on stderr); the session's stdin carries nothing.
	"$recv" recv | untar || untar_failed
else
	echo %s >&2
	untar || untar_failed
	# Read the stream to its end (tar may stop at its end-of-archive
	# blocks), so the sender knows all of it was taken.
	cat >/dev/null
fi
if [ "$mode" = tracked ] || [ -d "$tmp/.git" ]; then
	command -v git >/dev/null || fail "git is not installed in the guest"
fi
export GIT_AUTHOR_NAME=banger GIT_AUTHOR_EMAIL=banger@localhost GIT_COMMITTER_NAME=banger GIT_COMMITTER_EMAIL=banger@localhost
if [ "$mode" = tracked ] && [ ! -d "$tmp/.git" ]; then
	# A repository's snapshot comes made; a plain directory gets one here.
	git -C "$tmp" init -q -b main
	git -C "$tmp" add -A
	git -C "$tmp" commit -q --allow-empty -m %s
fi
head=
if [ -d "$tmp/.git" ]; then
	# Unpacked files have new inodes and ctimes, which tar cannot carry:
	# compared on those, every entry looks changed and git rehashes the
	# whole tree. Compare on size and mtime seconds (which tar keeps;
	# git's racy-entry check still covers same-second edits), then refresh
	# so status is exact and quick.
	git -C "$tmp" config core.checkStat minimal
	git -C "$tmp" config core.trustctime false
	git -C "$tmp" update-index -q --refresh >/dev/null 2>&1 || true
	head=$(git -C "$tmp" rev-parse --verify -q HEAD || true)
	if [ -z "$base" ]; then base=$head; fi
	if [ -n "$base" ]; then
		git -C "$tmp" cat-file -e "$base^{commit}" 2>/dev/null || fail "base commit $base is not in the workspace's history"
		git -C "$tmp" config banger.base "$base"
	else
		git -C "$tmp" config --unset banger.base 2>/dev/null || true
	fi
	if ! git config --global --get-all safe.directory 2>/dev/null | grep -qxF -- "$guest"; then
		git config --global --add safe.directory "$guest"
	fi
fi
chmod 0755 -- "$tmp"
if [ -e "$guest" ] || [ -L "$guest" ]; then
	old="$tmp.old"
	# A read-only workspace is immutable: lift that so it can be moved and removed.
	chattr -R -i -- "$guest" 2>/dev/null || true
	mv -T -- "$guest" "$old" || fail "cannot move the old $guest aside"
	if ! mv -T -- "$tmp" "$guest"; then
		mv -T -- "$old" "$guest" || true
		fail "cannot rename the new workspace to $guest"
	fi
	rm -rf -- "$old"
else
	mv -T -- "$tmp" "$guest" || fail "cannot rename the new workspace to $guest"
fi
if [ "$readonly_ws" = 1 ]; then
	chmod -R a-w -- "$guest"
	if ! chattr -R +i -- "$guest" 2>/dev/null; then
		echo "banger: warning: cannot make $guest immutable (chattr +i); it is write-protected by permissions only, which root bypasses" >&2
	fi
fi
echo "%s$head"
`, shell.Quote(guestPath), shell.Quote(tmpPath), shell.Quote(mode), ro, shell.Quote(base),
		guestinit.InitPath, transfer.TokenEnv, shell.Quote(transfer.AnnounceStdin), shell.Quote(SnapshotMessage), headPrefix)
}

// ExportScript is the guest-side bash script of an export. It commits the
// uncommitted changes of the repository at guestPath (ignored files stay
// out) as one commit with message, then writes to stdout the commits since
// the base — $BANGER_BASE when set, else `git config banger.base`, else all
// of history — as a git bundle whose one ref is HEAD (format "bundle") or as
// `git format-patch --stdout` output (format "patch"). Output is made in a
// temp file first, so a failure writes nothing to stdout. Failures exit
// with the Exit* codes and a message on stderr.
func ExportScript(guestPath, format, message string) string {
	// shell.Quote leaves a plain word bare, and shellcheck takes format=patch
	// for a command's output assigned without $(...).
	return fmt.Sprintf(`# shellcheck disable=SC2209
set -euo pipefail
guest=%s
format=%s
message=%s
fail() { code=$1; shift; echo "banger: $*" >&2; exit "$code"; }
if [ ! -e "$guest" ]; then fail %d "no workspace at $guest: prepare one first"; fi
cd -- "$guest"
if [ ! -d .git ]; then fail %d "$guest is not a git repository: prepare it from a git repository to export"; fi
command -v git >/dev/null || fail 1 "git is not installed in the guest"
base=${BANGER_BASE:-$(git config --get banger.base || true)}
# An assignment, so that a failing status stops the export (set -e)
# rather than reading as "no changes".
changes=$(git status --porcelain --untracked-files=all)
if [ -n "$changes" ]; then
	git add -A
	GIT_AUTHOR_NAME=banger GIT_AUTHOR_EMAIL=banger@localhost GIT_COMMITTER_NAME=banger GIT_COMMITTER_EMAIL=banger@localhost \
		git -c commit.gpgsign=false commit -q --no-verify -m "$message"
fi
head=$(git rev-parse --verify -q HEAD) || fail %d "nothing to export: the repository has no commits"
range=HEAD
if [ -n "$base" ]; then
	git cat-file -e "$base^{commit}" 2>/dev/null || fail %d "base commit $base is not in the guest repository"
	if [ "$head" = "$(git rev-parse "$base^{commit}")" ]; then
		fail %d "nothing to export: no commits and no changes since $base"
	fi
	git merge-base --is-ancestor "$base" HEAD || fail %d "the guest's HEAD no longer descends from the base $base (history was rewritten): there is no range to export"
	range="$base..HEAD"
fi
out=$(mktemp)
trap 'rm -f -- "$out"' EXIT
case "$format" in
bundle) git bundle create -q "$out" "$range" ;;
patch)
	if [ "$range" = HEAD ]; then
		git format-patch --stdout --root HEAD >"$out"
	else
		git format-patch --stdout "$range" >"$out"
	fi
	;;
*) fail 1 "export format $format is not allowed: use bundle or patch" ;;
esac
cat -- "$out"
`, shell.Quote(guestPath), shell.Quote(format), shell.Quote(message),
		ExitNoWorkspace, ExitNotRepo, ExitNothingToExport, ExitBadBase, ExitNothingToExport, ExitBadBase)
}
