#!/usr/bin/env bash
# Builds real Kubernetes v1.20.2 components from Debian's `kubernetes` source package, using only
# Debian's archive as this machine's apt is configured:
#   $KUBE_APISERVER_DIR (/opt/kube-apiserver): kube-apiserver, for the operator's API tests;
#   $KUBE_NODE_DIR (/opt/kube-node): kube-controller-manager, kube-scheduler, kubelet, kube-proxy
#     and a static `pause` (the pod sandbox's process), for the test cluster (scripts/cluster-up.sh).
# Builds only what is missing, in one `make`: ~4 min for the API server alone, ~14 min for all.
# Usage: build-kubernetes.sh [apiserver] [node]   (default: both); prints the directories.
set -euo pipefail
API=${KUBE_APISERVER_DIR:-/opt/kube-apiserver}
NODE=${KUBE_NODE_DIR:-/opt/kube-node}
want=("$@"); [ ${#want[@]} -gt 0 ] || want=(apiserver node)
what=()
for w in "${want[@]}"; do
  case $w in
    apiserver) [ -x "$API/kube-apiserver" ] || what+=(cmd/kube-apiserver) ;;
    node)
      for c in kube-controller-manager kube-scheduler kubelet kube-proxy; do
        [ -x "$NODE/$c" ] || what+=("cmd/$c")
      done
      [ -x "$NODE/pause" ] || what+=(pause) ;;
    *) echo "usage: build-kubernetes.sh [apiserver] [node]" >&2; exit 2 ;;
  esac
done
if [ ${#what[@]} -eq 0 ]; then printf '%s\n' "$API" "$NODE"; exit 0; fi

export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq golang-go golang-github-modern-go-reflect2-dev etcd-server etcd-client openssl gcc >/dev/null
W=$(mktemp -d -t kube-build.XXXXXX)
trap 'rm -rf "$W"' EXIT
# A deb-src list built from the machine's own deb entries, kept in a private apt state dir.
uri=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
[ -n "$uri" ] || uri=$(awk '$1=="deb"{print $2; exit}' /etc/apt/sources.list)
suite=$(. /etc/os-release && echo "$VERSION_CODENAME")
mkdir -p "$W/lists/partial" "$W/src"
echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $uri $suite main" > "$W/src.list"
O="-o Dir::Etc::SourceList=$W/src.list -o Dir::Etc::SourceParts=/nonexistent -o Dir::State::Lists=$W/lists"
apt-get $O update -qq
(cd "$W" && apt-get $O source --download-only kubernetes >/dev/null)
tar -xzf "$W"/kubernetes_*.orig.tar.gz -C "$W/src"
K=$(ls -d "$W"/src/kubernetes-*)
# The vendored reflect2 1.0.1 breaks at run time with Go >= 1.18; Debian ships 1.0.2.
rm -rf "$K/vendor/github.com/modern-go/reflect2"
cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 "$K/vendor/github.com/modern-go/reflect2"
rm -f "$K/vendor/github.com/modern-go/reflect2/go.mod"
ver=$(basename "$K" | sed 's/kubernetes-//')
cmds=()
for w in "${what[@]}"; do [ "$w" = pause ] || cmds+=("$w"); done
if [ ${#cmds[@]} -gt 0 ]; then
  (cd "$K" && env PATH=/usr/lib/go-1.19/bin:$PATH HOME="$W/home" \
    KUBE_GIT_VERSION="v$ver" KUBE_GIT_TREE_STATE=clean KUBE_GIT_MAJOR=1 \
    KUBE_GIT_MINOR="$(echo "$ver" | cut -d. -f2)" KUBE_BUILD_PLATFORMS=linux/amd64 \
    make WHAT="${cmds[*]}" >"$W/build.log" 2>&1) || { tail -30 "$W/build.log" >&2; exit 1; }
fi
for w in "${what[@]}"; do
  case $w in
    cmd/kube-apiserver) mkdir -p "$API" && cp "$K/_output/bin/kube-apiserver" "$API/" ;;
    pause)
      mkdir -p "$NODE"
      gcc -Os -Wall -Werror -static -DVERSION="v3.4-$ver" -o "$W/pause" "$K/build/pause/linux/pause.c"
      strip "$W/pause" && cp "$W/pause" "$NODE/pause" ;;
    cmd/*) mkdir -p "$NODE" && cp "$K/_output/bin/${w#cmd/}" "$NODE/" ;;
  esac
done
printf '%s\n' "$API" "$NODE"
