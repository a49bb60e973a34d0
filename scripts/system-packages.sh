#!/usr/bin/env bash
# Install the Debian packages homelab-ops calls as programs, once (idempotent, needs root).
set -euo pipefail
need=()
command -v age >/dev/null || need+=(age)
command -v zstd >/dev/null || need+=(zstd)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then echo "please install: ${need[*]}" >&2; exit 1; fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
