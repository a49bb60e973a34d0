#!/usr/bin/env bash
# Install n8n@VERSION from npm into a cache outside the repo (idempotent) and print its executable.
#
#   scripts/n8n-install.sh 1.123.0   ->  /var/cache/homelab-ops/n8n/1.123.0/node_modules/.bin/n8n
#
# n8n's xlsx dependency points at a CDN tarball that is not reachable here; the override pins the
# last npm release of xlsx instead. A finished install is marked by `.installed`; an interrupted one
# (no marker) is thrown away and redone, so a killed run never leaves a half install that looks done.
# Progress goes to stderr; stdout is only the executable's path.
set -euo pipefail
# A cache every user and image reads: not the private umask of a caller (homelab_ops sets 077).
umask 022
# In a function: bash reads it whole before running, so editing this file mid-install is safe.
main() {
  version=${1:?usage: n8n-install.sh VERSION}
  if ! [[ $version =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]]; then
    echo "n8n-install: version must look like 1.123.0, got '$version'" >&2
    return 2
  fi
  root=${HOMELAB_OPS_N8N_CACHE:-/var/cache/homelab-ops/n8n}
  dir="$root/$version"
  bin="$dir/node_modules/.bin/n8n"
  if [[ -f $dir/.installed && -x $bin ]]; then
    echo "$bin"
    return 0
  fi

  need=$(npm view "n8n@$version" engines.node 2>/dev/null || true)
  echo "n8n-install: n8n@$version needs node $need, this is $(node --version)" >&2

  mkdir -p "$root"
  # One installer per version at a time (parallel test sessions share the cache).
  exec 9>"$root/.$version.lock"
  flock 9
  if [[ -f $dir/.installed && -x $bin ]]; then
    echo "$bin"
    return 0
  fi
  # Under the lock no other install of this version runs: earlier killed attempts go.
  find "$root" -maxdepth 1 -type d -name ".$version.*" -exec rm -rf {} +
  tmp=$(mktemp -d "$root/.$version.XXXXXX")
  chmod 755 "$tmp"
  trap 'rm -rf "$tmp"' EXIT
  cat >"$tmp/package.json" <<EOF
  {
    "name": "homelab-ops-n8n-$version",
    "private": true,
    "dependencies": {"n8n": "$version"},
    "overrides": {"xlsx": "npm:xlsx@0.18.5"}
  }
EOF
  start=$(date +%s)
  (cd "$tmp" && npm install --no-audit --no-fund --loglevel=error >&2)
  "$tmp/node_modules/.bin/n8n" --version >/dev/null
  touch "$tmp/.installed"
  rm -rf "$dir"
  mv "$tmp" "$dir"
  trap - EXIT
  echo "n8n-install: n8n@$version installed in $(( $(date +%s) - start ))s at $dir" >&2
  echo "$bin"
}
main "$@"
