#!/usr/bin/env bash
# Install the Debian packages homelab-ops and its tests call as programs, once (idempotent, needs root):
# age (decrypt backups), zstd, redis-server (redis-cli, redis-check-rdb: the Redis backup source), Docker Engine, and the real binaries the deploy tests put in images.
set -euo pipefail
pkgs=(age zstd docker.io docker-compose busybox-static prometheus prometheus-node-exporter
      prometheus-alertmanager chromium pebble debootstrap redis-server)
need=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then echo "please install: ${need[*]}" >&2; exit 1; fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
