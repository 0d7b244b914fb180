#!/usr/bin/env bash
# Starts a one-node Kubernetes cluster with real pods, without Docker: a network
# namespace holds the node, and everything runs as processes inside it, in a private
# mount namespace of its own:
#   - the control plane of e2e/k8s/start-cluster.sh, its API server on the node's address;
#   - containerd + runc (images imported from e2e/node/images.sh, no registry), the CNI
#     bridge plugin (bridge cni0, node 198.18.0.1, pods 198.18.1.0/24);
#   - kubelet, registered as Node "chatcluster-node";
#   - kube-proxy (iptables mode; Service IPs 198.19.0.0/16);
#   - kube-router's network-policy controller alone, which enforces NetworkPolicies with
#     iptables rules and ipsets in the namespace (pods on the bridge are filtered through
#     br_netfilter, whose setting is per namespace: checked, never written);
#   - CoreDNS on 198.18.0.1:53 as the cluster DNS (cluster.local);
#   - Traefik with its ingress-nginx provider (Ingresses of class "nginx"), the ingress
#     controller, on 198.18.0.1:80 (like a host-network controller on a kind node).
# Every address is in 198.18.0.0/15 inside the namespace; nothing listens on or sends to
# the host's interfaces. Host sysctls are never written: the three kernel values kubelet
# checks are bind-mounted files inside the private mount namespace.
#
# Usage: e2e/node/start-node.sh STATE_DIR IMAGES_DIR
#   IMAGES_DIR holds e2e/node/images.sh's archives. Writes STATE_DIR/kubeconfig,
#   STATE_DIR/kubectl, STATE_DIR/netns (the namespace's name), STATE_DIR/logs/*.log.
#   Run a command on the node's network with `ip netns exec "$(cat STATE_DIR/netns)" CMD`.
# Stop with e2e/node/stop-node.sh STATE_DIR. Needs root (network and mount namespaces,
# cgroups), iptables and openssl.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
k8s="$here/../k8s"

NODE_IP=198.18.0.1
POD_SUBNET=198.18.0.0/16
POD_RANGE_START=198.18.1.2
POD_RANGE_END=198.18.1.254
SERVICE_CIDR=198.19.0.0/16
NODE_NAME=chatcluster-node
INGRESS_PORT=80

say() { echo "start-node: $*" >&2; }

# --- inside the namespaces (the script runs itself there) ------------------------------
if [[ "${1:-}" == --inside ]]; then
  state="$2"
  images="$3"
  node_bin="$4"
  traefik_bin="$5"
  cp_bin="$6"
  kube_router_bin="$7"
  node="$state/node"
  # shellcheck source=e2e/k8s/processes.sh
  source "$k8s/processes.sh"

  # ip netns exec gave this mount namespace a fresh /sys without the cgroup
  # hierarchies: mount them again as the host has them.
  mount -t tmpfs -o mode=755 cgroup /sys/fs/cgroup
  awk '$1 == "cgroup" || $1 == "cgroup2" { print $2, $3, $4 }' /proc/1/mounts |
    while read -r dir type opts; do
      mkdir -p "$dir"
      mount -t "$type" -o "$opts" "$type" "$dir"
    done
  # containerd's shim sockets, /var/log/pods, kubelet's device-plugin and PKI defaults
  # and libcni's cache live at fixed paths: private directories over those.
  for dir in run var/log var/lib; do
    mkdir -p "$node/root/$dir"
    mount --bind "$node/root/$dir" "/$dir"
  done
  # kubelet checks these six kernel values (and would write those that differ); files
  # holding the values it wants are bind-mounted over them here, and kubelet's
  # protectKernelDefaults makes it only check, never write.
  mkdir -p "$node/sysctl"
  for entry in vm/overcommit_memory=1 vm/panic_on_oom=0 kernel/panic=10 \
    kernel/panic_on_oops=1 kernel/keys/root_maxkeys=1000000 \
    kernel/keys/root_maxbytes=25000000; do
    file="$node/sysctl/${entry%%=*}"
    mkdir -p "$(dirname "$file")"
    echo "${entry#*=}" >"$file"
    mount --bind "$file" "/proc/sys/${entry%%=*}"
  done

  # The node's network: loopback, and the bridge the CNI plugin attaches pods to.
  ip link set lo up
  ip link add cni0 type bridge
  ip addr add "$NODE_IP/16" dev cni0
  ip link set cni0 up
  # Service IPs from the node itself (the test clients, Traefik): the route lookup needs a
  # route before kube-proxy's rules rewrite the destination to a pod.
  ip route add "$SERVICE_CIDR" dev cni0 src "$NODE_IP"
  echo 1 >/proc/sys/net/ipv4/ip_forward

  # The control plane, its API server on the node's address.
  K8S_E2E_NODE_IP="$NODE_IP" K8S_E2E_SERVICE_CIDR="$SERVICE_CIDR" K8S_E2E_API_PORT=6443 \
    "$k8s/start-cluster.sh" "$state/cp" >/dev/null
  kubectl=("$cp_bin/kubectl" --kubeconfig "$state/cp/kubeconfig")
  node_kubeconfig="$state/cp/pki/node.kubeconfig"

  # containerd, with runc and the CNI plugins from the node's build.
  mkdir -p "$node/containerd" "$node/cni/net.d"
  sock="$node/containerd/containerd.sock"
  cat >"$node/containerd/config.toml" <<EOF
version = 3
root = '$node/containerd/root'
state = '$node/containerd/state'
[grpc]
  address = '$sock'
[plugins.'io.containerd.cri.v1.images'.pinned_images]
  sandbox = 'registry.k8s.io/pause:3.10'
[plugins.'io.containerd.cri.v1.runtime']
  # This machine lacks CAP_SYS_RESOURCE: runc may not raise a container's oom_score_adj.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
  BinaryName = '$node_bin/runc'
  SystemdCgroup = false
[plugins.'io.containerd.cri.v1.runtime'.cni]
  bin_dirs = ['$node_bin/../cni']
  conf_dir = '$node/cni/net.d'
EOF
  cat >"$node/cni/net.d/10-chatcluster.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "chatcluster-node",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$POD_SUBNET", "rangeStart": "$POD_RANGE_START",
                     "rangeEnd": "$POD_RANGE_END", "gateway": "$NODE_IP"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "$node/cni/ipam"
      }
    },
    {"type": "loopback"}
  ]
}
EOF
  PATH="$node_bin:$PATH" start containerd "$node_bin/containerd" --config "$node/containerd/config.toml"
  wait_for containerd 60 "$node_bin/ctr" --address "$sock" version
  for archive in "$images"/*.tar; do
    "$node_bin/ctr" --address "$sock" -n k8s.io images import --local "$archive" \
      >>"$state/logs/image-import.log" 2>&1
  done
  # The rollout test's second image: the same content under another tag.
  "$node_bin/ctr" --address "$sock" -n k8s.io images tag \
    docker.io/chatcluster/chat-server:e2e docker.io/chatcluster/chat-server:e2e-b \
    >>"$state/logs/image-import.log" 2>&1

  # kubelet, in a cgroup subtree of its own, named after the namespace (stop-node.sh
  # removes it).
  cgroup_root="/$(cat "$state/netns")"
  for hierarchy in /sys/fs/cgroup/*/; do
    mkdir -p "$hierarchy${cgroup_root#/}"
  done
  echo "nameserver $NODE_IP" >"$node/resolv.conf"
  mkdir -p "$node/kubelet/pki"
  cat >"$node/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
healthzBindAddress: 127.0.0.1
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $state/cp/pki/ca.crt}
authorization: {mode: Webhook}
cgroupDriver: cgroupfs
cgroupRoot: $cgroup_root
failCgroupV1: false
failSwapOn: false
protectKernelDefaults: true
clusterDNS: [$NODE_IP]
clusterDomain: cluster.local
resolvConf: $node/resolv.conf
containerRuntimeEndpoint: unix://$sock
staticPodPath: ""
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
maxPods: 110
EOF
  start kubelet "$node_bin/kubelet" --config "$node/kubelet/config.yaml" \
    --kubeconfig "$node_kubeconfig" --root-dir "$node/kubelet/root" \
    --cert-dir "$node/kubelet/pki" --node-ip "$NODE_IP" --hostname-override "$NODE_NAME"
  wait_for kubelet 240 "${kubectl[@]}" wait --for=condition=Ready "node/$NODE_NAME" --timeout=1s

  # Volumes for StatefulSet claims (a managed Redis with persistence): the default
  # StorageClass has no provisioner; hostPath PersistentVolumes under the state
  # directory are bound to claims when their pod is scheduled (as kind's local-path).
  mkdir -p "$node/volumes"
  {
    cat <<EOF
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: node-local
  annotations: {storageclass.kubernetes.io/is-default-class: "true"}
provisioner: kubernetes.io/no-provisioner
volumeBindingMode: WaitForFirstConsumer
EOF
    for i in $(seq 1 8); do
      # World-writable: a hostPath volume gets no fsGroup ownership change.
      install -d -m 0777 "$node/volumes/pv$i"
      cat <<EOF
---
apiVersion: v1
kind: PersistentVolume
metadata:
  name: node-local-$i
spec:
  capacity: {storage: 2Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: node-local
  hostPath: {path: $node/volumes/pv$i, type: Directory}
EOF
    done
  } | "${kubectl[@]}" apply -f - >/dev/null

  # kube-proxy: Service IPs to pod IPs with iptables rules in this namespace. conntrack
  # limits are global (not settable from a namespace), so kube-proxy leaves them alone.
  cat >"$node/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection: {kubeconfig: $node_kubeconfig}
hostnameOverride: $NODE_NAME
bindAddress: $NODE_IP
clusterCIDR: $POD_SUBNET
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
iptables: {masqueradeAll: true}
EOF
  start kube-proxy "$node_bin/kube-proxy" --config "$node/kube-proxy.yaml"
  wait_for kube-proxy 120 curl -fsS http://127.0.0.1:10256/healthz

  # NetworkPolicies: kube-router's policy controller, and nothing else of kube-router (no
  # routing, no service proxy, no health or metrics port). Traffic between pods on cni0
  # reaches its rules only through br_netfilter, on by default in a new namespace.
  if [[ "$(cat /proc/sys/net/bridge/bridge-nf-call-iptables 2>/dev/null)" != 1 ]]; then
    say "bridged traffic skips iptables in this namespace (net.bridge.bridge-nf-call-iptables is not 1): NetworkPolicies could not be enforced"
    exit 1
  fi
  # It finds its Node by NODE_NAME before the hostname (the host's, in this namespace).
  start kube-router env NODE_NAME="$NODE_NAME" "$kube_router_bin/kube-router" \
    --run-firewall=true --run-router=false --run-service-proxy=false --run-loadbalancer=false \
    --kubeconfig "$node_kubeconfig" --hostname-override "$NODE_NAME" \
    --service-cluster-ip-range "$SERVICE_CIDR" --enable-ipv4=true --enable-ipv6=false \
    --health-port=0 --metrics-port=0 --iptables-sync-period=1m --cache-sync-timeout=2m --v=1
  wait_for kube-router 120 bash -c "iptables -S KUBE-ROUTER-FORWARD 2>/dev/null | grep -q ACCEPT"

  # CoreDNS, the cluster DNS.
  cat >"$node/Corefile" <<EOF
.:53 {
    bind $NODE_IP
    errors
    kubernetes cluster.local in-addr.arpa {
        kubeconfig $node_kubeconfig chatcluster-e2e
        pods insecure
    }
    cache 5
}
EOF
  start coredns "$node_bin/coredns" -conf "$node/Corefile"
  wait_for coredns 60 bash -c "exec 3<>/dev/tcp/$NODE_IP/53"

  # Traefik, the ingress controller, with its ingress-nginx provider: Ingresses of class
  # "nginx" with ingress-nginx's annotations (which the operator writes) are served as
  # ingress-nginx would, the migration path now that ingress-nginx is retired.
  "${kubectl[@]}" apply -f - >/dev/null <<EOF
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata:
  name: nginx
spec:
  controller: k8s.io/ingress-nginx
EOF
  # Static configuration in a file (Traefik takes one source: file, flags or environment),
  # readable by root only: it holds the API token.
  token="$(awk '/token:/ { print $2 }' "$node_kubeconfig")"
  (
    umask 077
    cat >"$node/traefik.yaml" <<EOF
entryPoints:
  web: {address: "$NODE_IP:$INGRESS_PORT"}
experimental: {kubernetesIngressNGINX: true}
providers:
  kubernetesIngressNGINX:
    endpoint: "https://$NODE_IP:6443"
    token: "$token"
    certAuthFilePath: "$state/cp/pki/ca.crt"
ping: {entryPoint: web}
log: {level: INFO, noColor: true}
# Traefik asks update.traefik.io for new versions unless told not to: tests reach no
# address outside loopback and the node's namespace.
global: {checkNewVersion: false, sendAnonymousUsage: false}
EOF
  )
  start traefik "$traefik_bin/traefik" --configFile="$node/traefik.yaml"
  wait_for traefik 60 curl -fsS "http://$NODE_IP:$INGRESS_PORT/ping"
  exit 0
fi

# --- on the host ---------------------------------------------------------------------
state="${1:?usage: start-node.sh STATE_DIR IMAGES_DIR}"
images="${2:?usage: start-node.sh STATE_DIR IMAGES_DIR}"
[[ $EUID -eq 0 ]] || { say "needs root (network and mount namespaces, cgroups)"; exit 1; }
for tool in ip unshare iptables ipset openssl curl; do
  command -v "$tool" >/dev/null || { say "missing $tool"; exit 1; }
done
compgen -G "$images/*.tar" >/dev/null || { say "no image archives in $images"; exit 1; }
# kubelet runs on the host's cgroup v1 hierarchies (as on this project's machines); on a
# cgroup v2 host the node's cgroup subtree and its cleanup would be elsewhere.
if [[ -f /sys/fs/cgroup/cgroup.controllers ]]; then
  say "this host uses cgroup v2 only; the node supports cgroup v1 hierarchies (use e2e/kind/run.sh)"
  exit 1
fi
images="$(cd "$images" && pwd)"

cp_bin="$("$k8s/build-control-plane.sh")"
built="$("$here/build-node.sh")"
node_bin="$(sed -n 1p <<<"$built")"
traefik_bin="$(sed -n 2p <<<"$built")"
kube_router_bin="$(sed -n 4p <<<"$built")"

marker="$state/.chatcluster-node-state"
if [[ -d "$state" && ! -f "$marker" ]] && [[ -n "$(ls -A "$state")" ]]; then
  say "$state exists and was not made by this script; give a new or empty directory"
  exit 1
fi
[[ ! -f "$marker" ]] || "$here/stop-node.sh" "$state"
rm -rf "$state"
mkdir -p "$state"/{logs,pids}
touch "$marker"
state="$(cd "$state" && pwd)"
# The namespace's name comes from the state directory's full path.
netns="chatcluster-$(echo -n "$state" | sha256sum | cut -c1-12)"
if [[ -e "/run/netns/$netns" ]]; then
  say "network namespace $netns already exists (another node with this state directory?)"
  exit 1
fi
start_time=$SECONDS
ip netns add "$netns"
echo "$netns" >"$state/netns"
trap '"$here/stop-node.sh" "$state"' ERR
ip netns exec "$netns" unshare --mount --propagation private \
  "$here/start-node.sh" --inside "$state" "$images" "$node_bin" "$traefik_bin" "$cp_bin" \
  "$kube_router_bin"
ln -s "$cp_bin/kubectl" "$state/kubectl"
cp "$state/cp/kubeconfig" "$state/kubeconfig"
say "node up in $((SECONDS - start_time)) s: netns $netns, KUBECONFIG=$state/kubeconfig, ingress http://$NODE_IP:$INGRESS_PORT"
echo "$state/kubeconfig"
