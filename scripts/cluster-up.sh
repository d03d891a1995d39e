#!/usr/bin/env bash
# Starts a real single-node Kubernetes v1.20.2 cluster for the end-to-end tests (as root):
#   host network namespace: etcd, kube-apiserver, kube-controller-manager, kube-scheduler;
#   network namespace nixcache-k8s, in a private mount namespace: containerd (CRI, runc), the
#   kubelet and kube-proxy (iptables mode).
# The node's namespace is joined to the host by a veth pair (host 10.200.0.1, node 10.200.0.2)
# and the host routes the pod (10.244.0.0/24) and Service (10.96.0.0/24) ranges through it, so
# ClusterIPs answer from the host, the node and pods, and pods reach host processes listening on
# 10.200.0.1. Every iptables rule, the CNI bridge and pod veths live in the node's namespace;
# scripts/cluster-down.sh deletes it and leaves nothing behind. One cluster runs at a time; one
# left over by a killed run is taken down first.
#
# Usage: cluster-up.sh RUN_DIR API_PORT ETCD_PORT ETCD_PEER_PORT [IMAGE_TAR...]
#   prints KUBECONFIG=RUN_DIR/admin.kubeconfig once the node is Ready. The images (docker-archive
#   tars) are imported into containerd beside the pause image built from KUBE_NODE_DIR/pause.
# Env: KUBE_APISERVER (/opt/kube-apiserver/kube-apiserver), KUBE_NODE_DIR (/opt/kube-node, from
#   scripts/build-kubernetes.sh), KUBECTL, K8S_OWNER (a PID: the cluster counts as in use while
#   it lives; default this script's parent).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
[ $# -ge 4 ] || { echo "usage: cluster-up.sh RUN_DIR API_PORT ETCD_PORT ETCD_PEER_PORT [IMAGE_TAR...]" >&2; exit 2; }
D=$1 PORT=$2 EPORT=$3 PPORT=$4; shift 4
IMAGES=("$@")
APISERVER=${KUBE_APISERVER:-/opt/kube-apiserver/kube-apiserver}
BIN=${KUBE_NODE_DIR:-/opt/kube-node}
KUBECTL=${KUBECTL:-$(command -v kubectl || echo /opt/helm/kubectl)}
OWNER=${K8S_OWNER:-$PPID}
NS=nixcache-k8s STATE=/run/nixcache-k8s
HOST_IP=10.200.0.1 NODE_IP=10.200.0.2 NODE=node1
POD_CIDR=10.244.0.0/24 SVC_CIDR=10.96.0.0/24
export CONTAINERS_CONF=${CONTAINERS_CONF:-$HERE/../tests/containers.conf}
t0=$(date +%s.%N)
log() { awk -v a="$(date +%s.%N)" -v b="$t0" -v m="$*" 'BEGIN{printf "[%6.2fs] %s\n", a-b, m}' >&2; }
for b in "$APISERVER" "$BIN/kube-controller-manager" "$BIN/kube-scheduler" "$BIN/kubelet" \
  "$BIN/kube-proxy" "$BIN/pause"; do
  [ -x "$b" ] || { echo "$b is missing: run scripts/build-kubernetes.sh (scripts/provision.sh does)" >&2; exit 1; }
done
for t in etcd containerd ctr runc iptables nsenter unshare openssl podman "$KUBECTL"; do
  command -v "$t" >/dev/null || { echo "$t is missing (scripts/provision.sh installs it)" >&2; exit 1; }
done
[ -x /usr/lib/cni/bridge ] || { echo "CNI plugins missing: apt-get install containernetworking-plugins" >&2; exit 1; }
[ -e /proc/sys/net/bridge/bridge-nf-call-iptables ] || {
  echo "the br_netfilter kernel module is not loaded (modprobe br_netfilter): Service traffic between pods needs it" >&2; exit 1; }

# ---- one cluster at a time: take down one whose owner is gone -------------------------------
mkdir -p "$STATE"
if [ -f "$STATE/owner" ]; then
  old=$(cat "$STATE/owner")
  if [ "$old" != "$OWNER" ] && kill -0 "$old" 2>/dev/null; then
    echo "a test cluster is in use by PID $old (run dir $(cat "$STATE/dir" 2>/dev/null))" >&2; exit 1
  fi
fi
"$HERE/cluster-down.sh" "$(cat "$STATE/dir" 2>/dev/null || echo /nonexistent)" >/dev/null 2>&1 || true
mkdir -p "$D"/{pki,logs,kubelet,containerd,cni/net.d,cni/ipam,var-lib-cni,var-log,sysctl,images}
D=$(cd "$D" && pwd)
echo "$OWNER" > "$STATE/owner"; echo "$D" > "$STATE/dir"

# ---- PKI: one CA, the API server's certificate, the service-account key pair, static tokens --
P=$D/pki
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$P/ca.key" -out "$P/ca.crt" -days 30 \
  -subj /CN=nixcache-test-ca 2>/dev/null
openssl req -newkey rsa:2048 -nodes -keyout "$P/apiserver.key" -out "$P/apiserver.csr" \
  -subj /CN=kube-apiserver 2>/dev/null
printf 'subjectAltName=IP:%s,IP:10.96.0.1,IP:127.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost\nextendedKeyUsage=serverAuth\n' \
  "$HOST_IP" > "$P/apiserver.ext"
openssl x509 -req -in "$P/apiserver.csr" -CA "$P/ca.crt" -CAkey "$P/ca.key" -CAcreateserial \
  -out "$P/apiserver.crt" -days 30 -extfile "$P/apiserver.ext" 2>/dev/null
openssl genrsa -out "$P/sa.key" 2048 2>/dev/null
openssl rsa -in "$P/sa.key" -pubout -out "$P/sa.pub" 2>/dev/null
tok() { head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
declare -A T=([admin]=$(tok) [kcm]=$(tok) [sched]=$(tok) [kubelet]=$(tok) [proxy]=$(tok))
cat > "$P/tokens.csv" <<EOF
${T[admin]},admin,admin,system:masters
${T[kcm]},system:kube-controller-manager,system:kube-controller-manager
${T[sched]},system:kube-scheduler,system:kube-scheduler
${T[kubelet]},system:node:$NODE,system:node:$NODE,system:nodes
${T[proxy]},system:kube-proxy,system:kube-proxy
EOF
chmod 600 "$P"/*.key "$P/tokens.csv"
for n in admin kcm sched kubelet proxy; do
  cat > "$D/$n.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters: [{name: local, cluster: {server: "https://$HOST_IP:$PORT", certificate-authority: "$P/ca.crt"}}]
users: [{name: $n, user: {token: ${T[$n]}}}]
contexts: [{name: local, context: {cluster: local, user: $n, namespace: default}}]
current-context: local
EOF
  chmod 600 "$D/$n.kubeconfig"
done
export KUBECONFIG=$D/admin.kubeconfig

# ---- network: the node's namespace and a veth pair to the host ------------------------------
ip netns add "$NS"
ip link add nxk8s-host type veth peer name nxk8s-node netns "$NS"
ip addr add "$HOST_IP/24" dev nxk8s-host; ip link set nxk8s-host up
ip -n "$NS" link set lo up
ip -n "$NS" addr add "$NODE_IP/24" dev nxk8s-node; ip -n "$NS" link set nxk8s-node up
# Packets the node itself sends to a ClusterIP need a route before kube-proxy's DNAT applies.
ip -n "$NS" route add "$SVC_CIDR" dev nxk8s-node
ip route add "$POD_CIDR" via "$NODE_IP"; ip route add "$SVC_CIDR" via "$NODE_IP"
ip netns exec "$NS" sysctl -qw net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1
log "PKI and network ready"

# ---- the pause image (the pod sandbox), from the built static binary ------------------------
if [ ! -f "$D/images/pause.tar" ]; then
  mkdir -p "$D/images/pause" && cp "$BIN/pause" "$D/images/pause/pause"
  printf 'FROM scratch\nCOPY pause /pause\nUSER 65535:65535\nENTRYPOINT ["/pause"]\n' > "$D/images/pause/Containerfile"
  podman build -q -t localhost/pause:3.4 -f "$D/images/pause/Containerfile" "$D/images/pause" >/dev/null
  podman save -q --format docker-archive -o "$D/images/pause.tar" localhost/pause:3.4
fi

# ---- etcd and kube-apiserver (host namespace) ------------------------------------------------
etcd --data-dir "$D/etcd" --listen-client-urls "http://127.0.0.1:$EPORT" --advertise-client-urls "http://127.0.0.1:$EPORT" \
  --listen-peer-urls "http://127.0.0.1:$PPORT" --initial-advertise-peer-urls "http://127.0.0.1:$PPORT" \
  --initial-cluster "default=http://127.0.0.1:$PPORT" --unsafe-no-fsync >"$D/logs/etcd.log" 2>&1 </dev/null &
echo $! >"$D/etcd.pid"
"$APISERVER" --etcd-servers="http://127.0.0.1:$EPORT" --bind-address="$HOST_IP" --advertise-address="$HOST_IP" \
  --secure-port="$PORT" --insecure-port=0 --tls-cert-file="$P/apiserver.crt" --tls-private-key-file="$P/apiserver.key" \
  --client-ca-file="$P/ca.crt" --token-auth-file="$P/tokens.csv" \
  --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
  --service-account-issuer=https://kubernetes.default.svc \
  --service-account-key-file="$P/sa.pub" --service-account-signing-key-file="$P/sa.key" \
  --service-cluster-ip-range="$SVC_CIDR" --kubelet-preferred-address-types=InternalIP \
  --allow-privileged=true >"$D/logs/apiserver.log" 2>&1 </dev/null &
echo $! >"$D/apiserver.pid"

# ---- the node: containerd, kubelet, kube-proxy ----------------------------------------------
cat > "$D/containerd/config.toml" <<EOF
version = 2
root = "$D/containerd/root"
state = "$D/containerd/state"
oom_score = 0
[grpc]
  address = "$D/containerd/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "localhost/pause:3.4"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$D/cni/net.d"
[plugins."io.containerd.internal.v1.opt"]
  path = "$D/containerd/opt"
EOF
cat > "$D/cni/net.d/10-bridge.conflist" <<EOF
{"cniVersion": "0.4.0", "name": "k8s-pods", "plugins": [
  {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_CIDR"}]], "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": "$D/cni/ipam"}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}
EOF
cat > "$D/kubelet-config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication: {anonymous: {enabled: true}, webhook: {enabled: false}, x509: {}}
authorization: {mode: AlwaysAllow}
cgroupDriver: cgroupfs
failSwapOn: false
oomScoreAdj: 0
resolvConf: /etc/resolv.conf
clusterDomain: cluster.local
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
serializeImagePulls: false
nodeStatusUpdateFrequency: 2s
EOF
cat > "$D/node-launch.sh" <<EOF
#!/usr/bin/env bash
# Runs in the node's network namespace and a private mount namespace: mounts made here never
# reach the host.
set -euo pipefail
readlink /proc/self/ns/mnt > "$D/node.mntns"
# The host mounts cgroup v1 controllers beside a cgroup2 hierarchy; runc refuses that "hybrid"
# layout when the cgroup2 side has controllers. The node sees the v1 hierarchies only.
if mountpoint -q /sys/fs/cgroup/unified; then umount /sys/fs/cgroup/unified; fi
# The kubelet writes these kernel sysctls (they are not namespaced): it gets files holding the
# values it wants, and the host's values stay as they are.
for kv in vm/overcommit_memory=1 vm/panic_on_oom=0 kernel/panic=10 kernel/panic_on_oops=1 \\
          kernel/keys/root_maxkeys=1000000 kernel/keys/root_maxbytes=25000000; do
  f="$D/sysctl/\$(echo "\${kv%=*}" | tr / _)"; echo "\${kv#*=}" > "\$f"; mount --bind "\$f" "/proc/sys/\${kv%=*}"
done
# Paths the kubelet 1.20 and containerd 1.6 hard-code, kept inside the run directory.
mount -t tmpfs -o mode=0711 tmpfs /run/containerd
mount --bind "$D/var-lib-cni" /var/lib/cni
mount --bind "$D/var-log" /var/log
containerd --config "$D/containerd/config.toml" >"$D/logs/containerd.log" 2>&1 </dev/null &
echo \$! > "$D/containerd.pid"
for i in \$(seq 1 100); do [ -S "$D/containerd/containerd.sock" ] && break; sleep 0.1; done
for img in "$D/images/pause.tar" ${IMAGES[*]:-}; do
  ctr -a "$D/containerd/containerd.sock" -n k8s.io images import --all-platforms "\$img" >/dev/null
done
"$BIN/kubelet" --config="$D/kubelet-config.yaml" --kubeconfig="$D/kubelet.kubeconfig" \\
  --container-runtime=remote --container-runtime-endpoint="unix://$D/containerd/containerd.sock" \\
  --node-ip=$NODE_IP --hostname-override=$NODE --root-dir="$D/kubelet" --cert-dir="$D/kubelet/pki" \\
  --volume-plugin-dir="$D/kubelet/volume-plugins" --v=2 >"$D/logs/kubelet.log" 2>&1 </dev/null &
echo \$! > "$D/kubelet.pid"
"$BIN/kube-proxy" --kubeconfig="$D/proxy.kubeconfig" --proxy-mode=iptables --hostname-override=$NODE \\
  --cluster-cidr=$POD_CIDR --bind-address=$NODE_IP --healthz-bind-address=127.0.0.1:10256 \\
  --metrics-bind-address=127.0.0.1:10249 --conntrack-max-per-core=0 \\
  --conntrack-tcp-timeout-established=0 --conntrack-tcp-timeout-close-wait=0 \\
  --oom-score-adj=0 --v=2 >"$D/logs/kube-proxy.log" 2>&1 </dev/null &
echo \$! > "$D/kube-proxy.pid"
EOF
chmod +x "$D/node-launch.sh"
# Mount points the node's namespace binds its own directories onto.
[ -d /run/containerd ] || { mkdir /run/containerd; touch "$D/created-run-containerd"; }
[ -d /var/lib/cni ] || { mkdir -p /var/lib/cni; touch "$D/created-var-lib-cni"; }
nsenter --net="/run/netns/$NS" unshare --mount --propagation slave "$D/node-launch.sh"
log "node processes started"
for i in $(seq 1 300); do
  if curl -s --cacert "$P/ca.crt" -H "Authorization: Bearer ${T[admin]}" "https://$HOST_IP:$PORT/readyz" | grep -q '^ok'; then break; fi
  kill -0 "$(cat "$D/apiserver.pid")" 2>/dev/null || { echo "kube-apiserver exited; see $D/logs/apiserver.log" >&2; exit 1; }
  [ "$i" = 300 ] && { echo "kube-apiserver not ready after 30 s; see $D/logs/apiserver.log" >&2; exit 1; }
  sleep 0.1
done
log "kube-apiserver ready"

# ---- controller-manager and scheduler (host namespace) --------------------------------------
"$BIN/kube-controller-manager" --kubeconfig="$D/kcm.kubeconfig" --leader-elect=false \
  --service-account-private-key-file="$P/sa.key" --root-ca-file="$P/ca.crt" --use-service-account-credentials=true \
  --service-cluster-ip-range="$SVC_CIDR" --cluster-cidr="$POD_CIDR" --allocate-node-cidrs=false \
  --port=0 --secure-port=0 >"$D/logs/kube-controller-manager.log" 2>&1 </dev/null &
echo $! >"$D/kube-controller-manager.pid"
"$BIN/kube-scheduler" --kubeconfig="$D/sched.kubeconfig" --leader-elect=false \
  --port=0 --secure-port=0 >"$D/logs/kube-scheduler.log" 2>&1 </dev/null &
echo $! >"$D/kube-scheduler.pid"

# ---- a Ready node and the default ServiceAccount ---------------------------------------------
for i in $(seq 1 600); do
  if "$KUBECTL" get node "$NODE" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null | grep -q True \
     && "$KUBECTL" -n default get serviceaccount default >/dev/null 2>&1; then break; fi
  for c in etcd apiserver kube-controller-manager kube-scheduler containerd kubelet kube-proxy; do
    kill -0 "$(cat "$D/$c.pid")" 2>/dev/null || { echo "$c exited; see $D/logs/$c.log" >&2; exit 1; }
  done
  [ "$i" = 600 ] && { echo "node not Ready after 60 s; see $D/logs/kubelet.log" >&2; exit 1; }
  sleep 0.1
done
log "node $NODE Ready"
echo "KUBECONFIG=$D/admin.kubeconfig"
