#!/usr/bin/env bash
# The main job end to end: boot a VM from the default image and kernel
# (built or pulled on first use, then cached) and run a command in it.
#
# Guest networking lives in its own network namespace (BANGER_NETNS,
# default "banger-demo") so guest traffic never touches the host's own
# namespace; the state directory defaults to /var/lib/banger.
set -euo pipefail
cd "$(dirname "$0")/.."
export BANGER_NETNS="${BANGER_NETNS:-banger-demo}"
cmd=("$@")
[ "${#cmd[@]}" -gt 0 ] || cmd=(uname -a)
exec ./bin/banger vm run --rm -- "${cmd[@]}"
