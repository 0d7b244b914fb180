#!/usr/bin/env bash
# Starts a simulated Kubernetes cluster on loopback: etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler and KWOK (one fake node, pods made Running and
# Ready, PVCs provisioned by KWOK's volume stages). Every component binds to 127.0.0.1,
# the node's InternalIP is 127.0.0.1 and pod IPs come from 127.10.0.0/16, so anything
# that dials a node or a pod stays on loopback. Service cluster IPs are allocated but
# never dialled.
#
# With K8S_E2E_NODE_IP set (e2e/node/start-node.sh does, inside its network namespace),
# the same control plane serves a real node instead: the API server listens and
# advertises on that address (pods reach it through the "kubernetes" Service, whose
# endpoint it maintains), Service IPs come from K8S_E2E_SERVICE_CIDR, the API server
# reaches kubelets with a client certificate, the aggregation layer is configured (a
# front-proxy CA and client certificate, for APIServices such as KEDA's), KWOK is not
# started, and STATE_DIR/pki/node.kubeconfig is written for the node's components.
#
# Usage: e2e/k8s/start-cluster.sh [STATE_DIR]     (default /tmp/chatcluster-k8s)
# Writes STATE_DIR/kubeconfig (admin), STATE_DIR/kubectl (a matching kubectl),
# STATE_DIR/logs/*.log and STATE_DIR/pids/*.pid.
# Stop with e2e/k8s/stop-cluster.sh STATE_DIR.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

state="${1:-/tmp/chatcluster-k8s}"
bin="$("$here/build-control-plane.sh")"
kwok_stages="$bin/../kwok-stages"

etcd_port="${K8S_E2E_ETCD_PORT:-23790}"
etcd_peer_port="${K8S_E2E_ETCD_PEER_PORT:-23800}"
api_port="${K8S_E2E_API_PORT:-26443}"
kcm_port="${K8S_E2E_KCM_PORT:-20257}"
sched_port="${K8S_E2E_SCHEDULER_PORT:-20259}"
kwok_port="${K8S_E2E_KWOK_PORT:-20247}"
pod_cidr="127.10.0.0/16"
node_ip="${K8S_E2E_NODE_IP:-}"
service_cidr="${K8S_E2E_SERVICE_CIDR:-10.96.0.0/16}"
api_host="${node_ip:-127.0.0.1}"

say() { echo "start-cluster: $*" >&2; }

# The state directory is wiped: only one this script made (it carries a marker), or an
# empty or missing one.
marker="$state/.chatcluster-k8s-state"
if [[ -d "$state" && ! -f "$marker" ]] && [[ -n "$(ls -A "$state")" ]]; then
  say "$state exists and was not made by this script; give a new or empty directory"
  exit 1
fi
if [[ -d "$state/pids" ]] && compgen -G "$state/pids/*.pid" >/dev/null; then
  say "$state already has running components; stopping them first"
  "$here/stop-cluster.sh" "$state"
fi
rm -rf "$state"
mkdir -p "$state"/{pki,logs,pids,etcd}
touch "$marker"
# Any failure from here on stops what was started.
trap '"$here/stop-cluster.sh" "$state"' ERR

for port in "$etcd_port" "$etcd_peer_port" "$api_port" "$kcm_port" "$sched_port" "$kwok_port"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null ||
    { [[ -n "$node_ip" ]] && (exec 3<>"/dev/tcp/$node_ip/$port") 2>/dev/null; }; then
    say "port $port on 127.0.0.1 is in use; set the K8S_E2E_*_PORT variables to free ports"
    exit 1
  fi
done

# --- certificates and credentials -------------------------------------------------
pki="$state/pki"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=chatcluster-e2e-ca" \
  -keyout "$pki/ca.key" -out "$pki/ca.crt" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" \
  -keyout "$pki/apiserver.key" -out "$pki/apiserver.csr" 2>/dev/null
san="IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc"
if [[ -n "$node_ip" ]]; then
  # The node's address, and the "kubernetes" Service's IP (the first of the range).
  service_ip="$(python3 -c 'import ipaddress,sys; print(ipaddress.ip_network(sys.argv[1])[1])' "$service_cidr")"
  san+=",IP:$node_ip,IP:$service_ip,DNS:kubernetes.default.svc.cluster.local"
fi
printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\n' "$san" >"$pki/apiserver.ext"
openssl x509 -req -in "$pki/apiserver.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
  -CAcreateserial -days 2 -extfile "$pki/apiserver.ext" -out "$pki/apiserver.crt" 2>/dev/null
if [[ -n "$node_ip" ]]; then
  # The API server's client certificate for kubelets (logs, exec, port-forward).
  openssl req -newkey rsa:2048 -nodes -subj "/O=system:masters/CN=kube-apiserver-kubelet-client" \
    -keyout "$pki/apiserver-kubelet-client.key" -out "$pki/apiserver-kubelet-client.csr" 2>/dev/null
  printf 'extendedKeyUsage=clientAuth\n' >"$pki/client.ext"
  openssl x509 -req -in "$pki/apiserver-kubelet-client.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
    -CAcreateserial -days 2 -extfile "$pki/client.ext" -out "$pki/apiserver-kubelet-client.crt" 2>/dev/null
  # The aggregation layer (KEDA's metrics API server is an APIService): a front-proxy CA
  # of its own, and the client certificate the API server presents when it proxies a
  # request to an extension API server, which reads that CA from the
  # extension-apiserver-authentication ConfigMap to trust the forwarded user.
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=chatcluster-e2e-front-proxy-ca" \
    -keyout "$pki/front-proxy-ca.key" -out "$pki/front-proxy-ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=front-proxy-client" \
    -keyout "$pki/front-proxy-client.key" -out "$pki/front-proxy-client.csr" 2>/dev/null
  openssl x509 -req -in "$pki/front-proxy-client.csr" -CA "$pki/front-proxy-ca.crt" \
    -CAkey "$pki/front-proxy-ca.key" -CAcreateserial -days 2 -extfile "$pki/client.ext" \
    -out "$pki/front-proxy-client.crt" 2>/dev/null
fi
openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null

# Static bearer tokens, one identity per component. The components are in system:masters
# (a test cluster: their RBAC is not what is under test; the operator's is, in its chart).
token() { openssl rand -hex 24; }
admin_token="$(token)"
kcm_token="$(token)"
sched_token="$(token)"
kwok_token="$(token)"
node_token="$(token)"
cat >"$pki/tokens.csv" <<EOF
$admin_token,chatcluster-e2e-admin,uid-admin,"system:masters"
$kcm_token,system:kube-controller-manager,uid-kcm,"system:masters"
$sched_token,system:kube-scheduler,uid-scheduler,"system:masters"
$kwok_token,kwok-controller,uid-kwok,"system:masters"
EOF
[[ -z "$node_ip" ]] ||
  echo "$node_token,system:node:chatcluster-node,uid-node,\"system:masters,system:nodes\"" >>"$pki/tokens.csv"

write_kubeconfig() {
  local file="$1" user="$2" tok="$3"
  cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: chatcluster-e2e
  cluster:
    server: https://$api_host:$api_port
    certificate-authority-data: $(base64 -w0 <"$pki/ca.crt")
users:
- name: $user
  user:
    token: $tok
contexts:
- name: chatcluster-e2e
  context:
    cluster: chatcluster-e2e
    user: $user
current-context: chatcluster-e2e
EOF
}
write_kubeconfig "$state/kubeconfig" admin "$admin_token"
write_kubeconfig "$pki/kcm.kubeconfig" kube-controller-manager "$kcm_token"
write_kubeconfig "$pki/scheduler.kubeconfig" kube-scheduler "$sched_token"
write_kubeconfig "$pki/kwok.kubeconfig" kwok "$kwok_token"
# kubelet, kube-proxy, CoreDNS and the ingress controller of a real node.
[[ -z "$node_ip" ]] || write_kubeconfig "$pki/node.kubeconfig" node "$node_token"

# --- processes ----------------------------------------------------------------------
# shellcheck source=e2e/k8s/processes.sh
source "$here/processes.sh"

etcd_bin="$bin/etcd"
if [[ ! -x "$etcd_bin" ]]; then
  etcd_bin="$bin/../etcd-fallback"
  say "WARNING: using the fallback etcd $(readlink -f "$etcd_bin"), older than Kubernetes supports"
fi
start etcd "$etcd_bin" --name e2e --data-dir "$state/etcd" \
  --listen-client-urls "http://127.0.0.1:$etcd_port" \
  --advertise-client-urls "http://127.0.0.1:$etcd_port" \
  --listen-peer-urls "http://127.0.0.1:$etcd_peer_port" \
  --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer_port" \
  --initial-cluster "e2e=http://127.0.0.1:$etcd_peer_port" \
  --listen-metrics-urls "" \
  --unsafe-no-fsync --quota-backend-bytes 1073741824 --log-level warn
wait_for etcd 60 curl -fsS "http://127.0.0.1:$etcd_port/health"

# OwnerReferencesPermissionEnforcement is on, as on some production clusters: setting
# blockOwnerDeletion then needs update on the owner's finalizers, which the chart's RBAC
# test proves the operator has.
# Simulated cluster: the "kubernetes" Service's endpoint reconciler is off (Endpoints
# may not hold loopback addresses, and nothing dials the Service). Real node: pods reach
# the API server through that Service, so its endpoint is maintained, and the
# aggregation layer is on (requestheader and proxy-client flags) for KEDA's APIService.
api_mode=(--bind-address 127.0.0.1 --advertise-address 127.0.0.1 --endpoint-reconciler-type none)
if [[ -n "$node_ip" ]]; then
  api_mode=(--bind-address "$node_ip" --advertise-address "$node_ip"
    --endpoint-reconciler-type lease
    --kubelet-client-certificate "$pki/apiserver-kubelet-client.crt"
    --kubelet-client-key "$pki/apiserver-kubelet-client.key"
    --kubelet-preferred-address-types "InternalIP,Hostname"
    --requestheader-client-ca-file "$pki/front-proxy-ca.crt"
    --requestheader-allowed-names front-proxy-client
    --requestheader-username-headers X-Remote-User
    --requestheader-group-headers X-Remote-Group
    --requestheader-extra-headers-prefix X-Remote-Extra-
    --proxy-client-cert-file "$pki/front-proxy-client.crt"
    --proxy-client-key-file "$pki/front-proxy-client.key")
fi
start kube-apiserver "$bin/kube-apiserver" \
  --etcd-servers "http://127.0.0.1:$etcd_port" \
  "${api_mode[@]}" --secure-port "$api_port" \
  --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
  --client-ca-file "$pki/ca.crt" --token-auth-file "$pki/tokens.csv" \
  --authorization-mode RBAC \
  --enable-admission-plugins OwnerReferencesPermissionEnforcement \
  --service-account-issuer https://kubernetes.default.svc \
  --service-account-key-file "$pki/sa.pub" \
  --service-account-signing-key-file "$pki/sa.key" \
  --service-cluster-ip-range "$service_cidr" \
  --enable-priority-and-fairness=false \
  --profiling=false
ln -s "$bin/kubectl" "$state/kubectl"
kubectl=("$bin/kubectl" --kubeconfig "$state/kubeconfig")
wait_for kube-apiserver 240 "${kubectl[@]}" get --raw /readyz

# The default controllers (StatefulSet, garbage collector, namespace, service account
# and token, PV binder…); node IPAM is off because pod IPs come from KWOK.
start kube-controller-manager "$bin/kube-controller-manager" \
  --kubeconfig "$pki/kcm.kubeconfig" --authentication-kubeconfig "$pki/kcm.kubeconfig" \
  --authorization-kubeconfig "$pki/kcm.kubeconfig" \
  --bind-address 127.0.0.1 --secure-port "$kcm_port" \
  --leader-elect=false --use-service-account-credentials=false \
  --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
  --controllers '*,-node-ipam-controller' \
  --allocate-node-cidrs=false --profiling=false ${node_ip:+--service-cluster-ip-range "$service_cidr"}

start kube-scheduler "$bin/kube-scheduler" \
  --kubeconfig "$pki/scheduler.kubeconfig" --authentication-kubeconfig "$pki/scheduler.kubeconfig" \
  --authorization-kubeconfig "$pki/scheduler.kubeconfig" \
  --bind-address 127.0.0.1 --secure-port "$sched_port" --leader-elect=false --profiling=false

if [[ -z "$node_ip" ]]; then
# KWOK's own stages, copied from its module source by the build step: nodes are
# initialised (InternalIP 127.0.0.1) and kept alive through node Leases, pods become
# Running and Ready (and go away when deleted), and StatefulSet volume claims are
# provisioned and bound by its volume stages.
stages="$state/kwok-stages.yaml"
for f in node/fast/node-initialize node/heartbeat-with-lease/node-heartbeat-with-lease \
  pod/fast/pod-ready pod/fast/pod-complete pod/fast/pod-delete \
  volume/fast/pv-bind volume/fast/pv-delete volume/fast/pvc-provision volume/fast/pvc-delete; do
  cat "$kwok_stages/$f.yaml"
  echo "---"
done >"$stages"
start kwok "$bin/kwok" --kubeconfig "$pki/kwok.kubeconfig" \
  --config "$stages" --node-lease-duration-seconds 40 \
  --manage-nodes-with-annotation-selector kwok.x-k8s.io/node=fake \
  --node-ip 127.0.0.1 --cidr "$pod_cidr" \
  --server-address "127.0.0.1:$kwok_port"

"${kubectl[@]}" apply -f "$kwok_stages/volume/fast/storage-class.yaml" >/dev/null
"${kubectl[@]}" apply -f - >/dev/null <<'EOF'
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-0
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    kubernetes.io/hostname: kwok-node-0
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    type: kwok
status:
  allocatable: {cpu: "64", memory: 256Gi, pods: "250"}
  capacity: {cpu: "64", memory: 256Gi, pods: "250"}
EOF
wait_for kwok 60 "${kubectl[@]}" wait --for=condition=Ready node/kwok-node-0 --timeout=1s
fi
# Pods need the default ServiceAccount, made by the controller manager.
wait_for kube-controller-manager 120 "${kubectl[@]}" get serviceaccount default -n default

say "cluster up: KUBECONFIG=$state/kubeconfig ($("${kubectl[@]}" version -o json | grep -m1 gitVersion | tr -d ' ",'))"
echo "$state/kubeconfig"
