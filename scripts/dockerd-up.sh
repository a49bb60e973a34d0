#!/usr/bin/env bash
# Start a Docker Engine for the tests on a socket of its own (idempotent, needs root).
# No registry is reachable here: the tests build their images locally with `docker import`.
set -euo pipefail
root=${HOMELAB_TEST_DOCKER_ROOT:-/var/lib/homelab-ops-test-docker}
sock=${HOMELAB_TEST_DOCKER_SOCK:-/run/homelab-ops-test/docker.sock}
if [ -S "$sock" ] && docker -H "unix://$sock" version >/dev/null 2>&1; then exit 0; fi
if ! command -v dockerd >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
fi
mkdir -p "$root/data" "$root/exec" "$(dirname "$sock")"
rm -f "$sock"
nohup dockerd --iptables=false --bridge=none --storage-driver=vfs \
  --data-root "$root/data" --exec-root "$root/exec" --pidfile "$root/dockerd.pid" \
  -H "unix://$sock" >"$root/dockerd.log" 2>&1 &
for _ in $(seq 1 60); do
  docker -H "unix://$sock" version >/dev/null 2>&1 && exit 0
  sleep 0.5
done
echo "dockerd did not start; see $root/dockerd.log" >&2
tail -20 "$root/dockerd.log" >&2
exit 1
