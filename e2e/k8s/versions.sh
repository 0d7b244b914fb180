# shellcheck shell=bash
# Versions of the simulated control plane, sourced by the e2e/k8s scripts.
# Bumping one builds into a new cache directory; e2e/k8s/controlplane/go.mod must be
# updated for a Kubernetes bump (one replace per staging module at v0.<minor>.<patch>).
K8S_VERSION=1.37.2
ETCD_VERSION=3.6.16
KWOK_VERSION=0.8.0

# Cache directory for the built binaries, keyed by every version above and by Go's.
control_plane_bin_dir() {
  local cache="${CHATCLUSTER_TOOLS_CACHE:-$HOME/.cache/chatcluster-tools}"
  local go_version
  go_version="$(go env GOVERSION)"
  echo "$cache/k8s-v$K8S_VERSION-etcd-v$ETCD_VERSION-kwok-v$KWOK_VERSION-$go_version/bin"
}

# Helm, for the chart tests (built from its Go module, pinned).
HELM_VERSION=3.22.0
# The Kubernetes minor of the client-go that helm version requires (its go.mod).
HELM_K8S_MINOR=37

# Where build-helm.sh puts helm, keyed by its version and Go's.
helm_bin_dir() {
  local cache="${CHATCLUSTER_TOOLS_CACHE:-$HOME/.cache/chatcluster-tools}"
  echo "$cache/helm-v$HELM_VERSION-k8s1.$HELM_K8S_MINOR-$(go env GOVERSION)/bin"
}
