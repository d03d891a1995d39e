#!/usr/bin/env bash
# Stops a cluster started by scripts/cluster-up.sh and removes what it put on the host: the pods
# (through containerd), the node's processes, its network namespace (with its iptables rules,
# bridge, veths and the host's routes), the kubelet's cgroups, the control plane.
# Usage: cluster-down.sh RUN_DIR [--keep]   (--keep leaves RUN_DIR and its logs)
# scripts/cluster-up.sh runs it first, for a cluster a killed run left behind.
set -uo pipefail
D=${1:?usage: cluster-down.sh RUN_DIR [--keep]}; KEEP=${2:-}
NS=nixcache-k8s STATE=/run/nixcache-k8s
# Without RUN_DIR (gone with a killed run) what the host holds is still removed: the node's
# namespace and the kubelet's cgroups.
[ -d "$D" ] && D=$(cd "$D" && pwd)
pid() { cat "$D/$1.pid" 2>/dev/null; }
alive() { # running and not a zombie
  [ -n "$1" ] && kill -0 "$1" 2>/dev/null && [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]; }
stop() { # names...: SIGTERM each recorded PID, wait up to 10 s, then SIGKILL
  local n p ps=()
  for n in "$@"; do p=$(pid "$n"); alive "$p" && { kill -TERM "$p" 2>/dev/null; ps+=("$n:$p"); }; done
  for _ in $(seq 1 100); do
    local left=()
    for e in "${ps[@]}"; do alive "${e#*:}" && left+=("$e"); done
    ps=("${left[@]}"); [ ${#ps[@]} = 0 ] && break; sleep 0.1
  done
  for e in "${ps[@]}"; do echo "${e%%:*} ignored SIGTERM for 10 s: SIGKILL" >&2; kill -KILL "${e#*:}" 2>/dev/null; done
  return 0
}
MNTNS=$(cat "$D/node.mntns" 2>/dev/null)
stop kube-proxy kubelet
# Every container and sandbox, through containerd (which also unmounts their root filesystems).
S="$D/containerd/containerd.sock"
if [ -S "$S" ] && alive "$(pid containerd)"; then
  C="ctr -a $S -n k8s.io"
  for t in $($C tasks ls -q 2>/dev/null); do $C tasks kill -s SIGKILL "$t" >/dev/null 2>&1; done
  sleep 0.5
  for t in $($C tasks ls -q 2>/dev/null); do $C tasks delete -f "$t" >/dev/null 2>&1; done
  for c in $($C containers ls -q 2>/dev/null); do $C containers delete "$c" >/dev/null 2>&1; done
fi
stop containerd
# What is left in the node's mount namespace (shims) was started by the node: kill it.
if [ -n "$MNTNS" ]; then
  for p in /proc/[0-9]*; do
    [ "$(readlink "$p/ns/mnt" 2>/dev/null)" = "$MNTNS" ] && kill -KILL "${p#/proc/}" 2>/dev/null
  done
  sleep 0.3
fi
# Container processes have mount namespaces of their own, but all are in the kubepods cgroups.
for h in /sys/fs/cgroup/*/kubepods; do
  [ -d "$h" ] && for p in $(find "$h" -name cgroup.procs -exec cat {} + 2>/dev/null); do kill -KILL "$p" 2>/dev/null; done
done
stop kube-scheduler kube-controller-manager apiserver
stop etcd
ip netns list | grep -qw "$NS" && ip netns del "$NS"
# The kubelet's cgroups (the v1 hierarchies are the host's): remove them depth-first.
for h in /sys/fs/cgroup/*/; do
  [ -d "$h/kubepods" ] && find "$h/kubepods" -depth -type d -exec rmdir {} \; 2>/dev/null
done
[ -f "$D/created-run-containerd" ] && rmdir /run/containerd 2>/dev/null
[ -f "$D/created-var-lib-cni" ] && rmdir /var/lib/cni 2>/dev/null
[ "$(cat "$STATE/dir" 2>/dev/null)" = "$D" ] && rm -f "$STATE/owner" "$STATE/dir"
# Overlay snapshots may still be mounted in a namespace that is gone: nothing holds them then.
if [ "$KEEP" != "--keep" ]; then rm -rf "$D" 2>/dev/null || true; fi
exit 0
