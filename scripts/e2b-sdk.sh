#!/usr/bin/env bash
# Installs the pinned versions of E2B's npm SDK (`e2b`) that banger's
# compatibility tests run, each into its own npm prefix under
# ${BANGER_CACHE_DIR:-/var/cache/banger}/npm/e2b@VERSION, outside the clone.
# Does nothing for a version already there. Needs node and npm.
set -euo pipefail

versions=(2.51.0 2.50.0)
cache="${BANGER_CACHE_DIR:-/var/cache/banger}/npm"

if ! command -v npm >/dev/null 2>&1; then
  echo "e2b-sdk: npm is required (Debian: apt-get install nodejs npm)" >&2
  exit 1
fi
for v in "${versions[@]}"; do
  dir="$cache/e2b@$v"
  if [ -f "$dir/node_modules/e2b/package.json" ]; then
    continue
  fi
  echo "e2b-sdk: installing e2b@$v into $dir" >&2
  tmp="$dir.tmp.$$"
  rm -rf "$tmp"
  mkdir -p "$tmp"
  echo '{"private":true}' >"$tmp/package.json"
  (cd "$tmp" && npm install --no-audit --no-fund --silent "e2b@$v" >/dev/null)
  rm -rf "$dir"
  mv "$tmp" "$dir"
done
