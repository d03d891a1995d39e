#!/usr/bin/env bash
# Builds a minimal Debian image with podman, without a registry: debootstrap --variant=minbase
# with ca-certificates and any PACKAGES, imported as IMAGE. The container tests build nixcache's
# image on localhost/nixcache-base:bookworm (the default), and the test cluster's client pods run
# the real Nix client from one with nix-bin. Idempotent: returns at once when IMAGE exists.
# Usage: build-base-image.sh [IMAGE [PACKAGES...]]
set -euo pipefail
IMAGE=${1:-localhost/nixcache-base:bookworm}
[ $# -gt 0 ] && shift
include=$(IFS=,; echo "ca-certificates${*:+,$*}")
export CONTAINERS_CONF=${CONTAINERS_CONF:-$(cd "$(dirname "$0")/.." && pwd)/tests/containers.conf}
if podman image exists "$IMAGE"; then echo "$IMAGE"; exit 0; fi
uri=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
[ -n "$uri" ] || uri=$(awk '$1=="deb"{print $2; exit}' /etc/apt/sources.list)
suite=$(. /etc/os-release && echo "$VERSION_CODENAME")
W=$(mktemp -d -t nixcache-base.XXXXXX)
trap 'rm -rf "$W"' EXIT
debootstrap --variant=minbase --include="$include" "$suite" "$W/root" "$uri" >"$W/log" 2>&1 \
  || { tail -20 "$W/log" >&2; exit 1; }
rm -rf "$W/root/var/cache/apt/archives"/*.deb "$W/root/var/lib/apt/lists"/*
tar -C "$W/root" -c . | podman import -q - "$IMAGE" >/dev/null
echo "$IMAGE"
