#!/usr/bin/env bash
# Builds the Kubernetes control plane the kube tests start (etcd,
# kube-apiserver, kube-scheduler, kube-controller-manager, kubectl) from the wrapper modules under test/kube/tools,
# once per version: the binaries are cached under
# ${BANGER_CACHE:-/var/cache/banger}/kube/<version>-<hash of the wrappers>/,
# outside the clone. Heavy builds run under nice so they share the host.
#
#   scripts/kube-bins.sh          build what is missing, print the directory
#   scripts/kube-bins.sh --dir    print the directory only (no build)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/local/go/bin:$PATH"
export GOWORK=off GOFLAGS=-buildvcs=false

tools=test/kube/tools
k8s_version=$(sed -nE 's/^(require)?[[:space:]]*k8s\.io\/kubernetes (v[^ ]+).*/\2/p' "$tools/k8s/go.mod" | head -n1)
[ -n "$k8s_version" ] || { echo "kube-bins: no k8s.io/kubernetes version in $tools/k8s/go.mod" >&2; exit 1; }
# Any change to a wrapper (a version, a replace line) gives a new directory.
hash=$(find "$tools" -type f \( -name '*.go' -o -name go.mod -o -name go.sum \) -print0 |
  LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-12)
dir="${BANGER_CACHE:-/var/cache/banger}/kube/$k8s_version-$hash"

if [ "${1:-}" = "--dir" ]; then
  echo "$dir"
  exit 0
fi

bins=(etcd kube-apiserver kube-scheduler kube-controller-manager kubectl)
complete() {
  local b
  for b in "${bins[@]}"; do [ -x "$dir/$b" ] || return 1; done
}
if complete; then
  echo "$dir"
  exit 0
fi

mkdir -p "$dir"
exec 9>"$dir.lock"
flock 9
if complete; then
  echo "$dir"
  exit 0
fi

tmp=$(mktemp -d "$dir.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
root=$PWD
# build MODULE PACKAGE NAME [LDFLAGS]
build() {
  [ -x "$dir/$3" ] && return 0
  echo "kube-bins: building $3 ($k8s_version)" >&2
  (cd "$root/$tools/$1" && nice -n 19 go build -trimpath -ldflags "${4:-}" -o "$tmp/$3" "$2")
  mv "$tmp/$3" "$dir/$3"
}
# kubectl cannot parse a server version without these.
ver="-X k8s.io/component-base/version.gitVersion=$k8s_version"
ver="$ver -X k8s.io/component-base/version.gitMajor=$(echo "$k8s_version" | cut -d. -f1 | tr -d v)"
ver="$ver -X k8s.io/component-base/version.gitMinor=$(echo "$k8s_version" | cut -d. -f2)"
build etcd . etcd
build k8s ./kube-apiserver kube-apiserver "$ver"
build k8s ./kube-scheduler kube-scheduler "$ver"
build k8s ./kube-controller-manager kube-controller-manager "$ver"
build k8s ./kubectl kubectl "$ver"
echo "$dir"
