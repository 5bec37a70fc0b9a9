#!/usr/bin/env bash
# Installs what banger needs on a Debian host: the packages it runs and the
# tools its tests and lint use. Does nothing that is already done.
set -euo pipefail

packages=(
  qemu-system-x86 qemu-utils mmdebstrap debootstrap busybox-static
  nftables iptables e2fsprogs openssh-client openssh-server iproute2 git
  lz4 zstd cpio xfsprogs kmod dmsetup shellcheck ca-certificates tmux
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "deps: need root to install: ${missing[*]}" >&2
    exit 1
  fi
  echo "deps: installing ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
  export PATH="/usr/local/go/bin:$PATH"
fi
command -v go >/dev/null 2>&1 || { echo "deps: Go 1.26 is required (https://go.dev/dl)" >&2; exit 1; }
go mod download

# E2B's npm SDK for the compatibility tests (skipped without node).
if command -v npm >/dev/null 2>&1; then
  "$(dirname "$0")/e2b-sdk.sh"
else
  echo "deps: no npm: the E2B SDK tests will be skipped" >&2
fi

# The Kubernetes control plane the kube tests start (etcd, kube-apiserver,
# kube-scheduler, kube-controller-manager, kubectl), built from Go modules
# once per version and cached outside the clone; ~20 minutes on 2 cores
# the first time, nothing after.
"$(dirname "$0")/kube-bins.sh" >/dev/null
