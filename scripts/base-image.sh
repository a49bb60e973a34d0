#!/usr/bin/env bash
# The base image deploy/Dockerfile builds FROM, made locally (no registry is reachable here):
# a debootstrap of Debian bookworm with its python3 (3.11), pip and venv, laid out like
# python:3.11-slim-bookworm where the Dockerfile relies on it (`python`, `pip install` allowed),
# then `docker import`ed under the Dockerfile's base tag on the test Engine. Idempotent: the
# root filesystem's tarball is cached outside the repository and imported only when missing.
#
#   bash scripts/base-image.sh            # needs root (debootstrap), the Debian mirror, the Engine
#
# Env: HOMELAB_BASE_IMAGE (tag, default the Dockerfile's PYTHON_IMAGE), DOCKER_HOST (default the
# test Engine), HOMELAB_CACHE (default /var/cache/homelab-ops), DEBIAN_MIRROR.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
tag=${HOMELAB_BASE_IMAGE:-$(sed -n 's/^ARG PYTHON_IMAGE=//p' "$here/deploy/Dockerfile")}
export DOCKER_HOST=${DOCKER_HOST:-unix:///run/homelab-ops-test/docker.sock}
cache=${HOMELAB_CACHE:-/var/cache/homelab-ops}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
arch=$(dpkg --print-architecture)
tarball="$cache/debian-bookworm-python3-$arch.tar"
recipe="debootstrap minbase bookworm python3 python3-venv python3-pip ca-certificates v1"
# A machine whose egress goes through a TLS-inspecting proxy trusts an extra CA (here:
# /usr/local/share/ca-certificates); the image trusts the same ones, or pip/uv cannot reach PyPI.
extra_cas=(/usr/local/share/ca-certificates/*.crt)
[ -e "${extra_cas[0]}" ] || extra_cas=()
if [ ${#extra_cas[@]} -gt 0 ]; then
  recipe="$recipe + host CAs $(cat "${extra_cas[@]}" | sha256sum | cut -c1-12)"
fi

if docker image inspect "$tag" --format '{{ index .Config.Labels "homelab-test.base" }}' 2>/dev/null \
    | grep -qx "$recipe"; then
  exit 0
fi

if [ ! -s "$tarball" ]; then
  command -v debootstrap >/dev/null || {
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }
  mkdir -p "$cache"
  work=$(mktemp -d "$cache/rootfs.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
    bookworm "$work/root" "$mirror" >"$cache/debootstrap.log" 2>&1 \
    || { tail -20 "$cache/debootstrap.log" >&2; exit 1; }
  # What python:3.11-slim-bookworm offers that the Dockerfile uses: `python`, and pip allowed to
  # install into /usr/local (PEP 668's marker is Debian's; the official image has none).
  ln -sf python3 "$work/root/usr/bin/python"
  rm -f "$work/root"/usr/lib/python3*/EXTERNALLY-MANAGED
  rm -rf "$work/root"/var/lib/apt/lists/* "$work/root"/var/cache/apt/*.bin
  tar -C "$work/root" --numeric-owner -cf "$tarball.part" .
  mv "$tarball.part" "$tarball"
fi

docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["python3"]' \
  --change "LABEL homelab-test.base=\"$recipe\"" \
  "$tarball" "$tag" >/dev/null
if [ ${#extra_cas[@]} -gt 0 ]; then
  ctx=$(mktemp -d)
  cp "${extra_cas[@]}" "$ctx/"
  # pip reads PIP_CERT, uv and Python's ssl SSL_CERT_FILE: both name the system bundle.
  printf '%s\n' "FROM $tag" "COPY *.crt /usr/local/share/ca-certificates/" \
    "RUN update-ca-certificates >/dev/null" \
    "ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt PIP_CERT=/etc/ssl/certs/ca-certificates.crt" \
    > "$ctx/Dockerfile"
  DOCKER_BUILDKIT=0 docker build -q --network none -t "$tag" "$ctx" >/dev/null
  rm -rf "$ctx"
fi
echo "imported $tarball as $tag"
