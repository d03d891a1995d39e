#!/usr/bin/env bash
# Builds the minimal Debian base image the container tests build nixcache's image on (no registry
# is needed): debootstrap --variant=minbase with ca-certificates, imported into podman as
# localhost/nixcache-base:bookworm. Idempotent: returns at once when the image exists.
# Usage: build-base-image.sh [IMAGE]
set -euo pipefail
IMAGE=${1:-localhost/nixcache-base:bookworm}
export CONTAINERS_CONF=${CONTAINERS_CONF:-$(cd "$(dirname "$0")/.." && pwd)/tests/containers.conf}
if podman image exists "$IMAGE"; then echo "$IMAGE"; exit 0; fi
uri=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
[ -n "$uri" ] || uri=$(awk '$1=="deb"{print $2; exit}' /etc/apt/sources.list)
suite=$(. /etc/os-release && echo "$VERSION_CODENAME")
W=$(mktemp -d -t nixcache-base.XXXXXX)
trap 'rm -rf "$W"' EXIT
debootstrap --variant=minbase --include=ca-certificates "$suite" "$W/root" "$uri" >"$W/log" 2>&1 \
  || { tail -20 "$W/log" >&2; exit 1; }
rm -rf "$W/root/var/cache/apt/archives"/*.deb "$W/root/var/lib/apt/lists"/*
tar -C "$W/root" -c . | podman import -q - "$IMAGE" >/dev/null
echo "$IMAGE"
