#!/usr/bin/env bash
# Builds the simulated cluster's binaries from Go modules and caches them:
#   kube-apiserver, kube-controller-manager, kube-scheduler, kubectl  (k8s.io/kubernetes)
#   etcd                                                                (go.etcd.io/etcd/server/v3)
#   kwok, kwokctl                                                       (sigs.k8s.io/kwok)
#
# The cache directory is keyed by every version, so a repeat run reuses the binaries and
# a version bump builds into a fresh directory. Prints the directory's bin/ path last.
#
# Usage: e2e/k8s/build-control-plane.sh            # build what is missing, print BIN dir
#        CHATCLUSTER_TOOLS_CACHE=/some/dir ...      # where the cache lives
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=e2e/k8s/versions.sh
source "$here/versions.sh"

bin="$(control_plane_bin_dir)"
mkdir -p "$bin"
log="$bin/../build.log"

log_step() { echo "build-control-plane: $*" >&2; }

timed() { timed_build "$log" "$@"; }

k8s_missing=false
for b in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
  [[ -x "$bin/$b" ]] || k8s_missing=true
done
if $k8s_missing; then
  log_step "building Kubernetes v$K8S_VERSION (cold: tens of minutes on 2 cores)"
  (
    cd "$here/controlplane"
    timed "kubernetes v$K8S_VERSION" env CGO_ENABLED=0 GOFLAGS=-mod=readonly \
      go build -trimpath -ldflags "$(version_ldflags)" -o "$bin/" \
      k8s.io/kubernetes/cmd/kube-apiserver \
      k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kube-scheduler \
      k8s.io/kubernetes/cmd/kubectl
  )
fi

if [[ ! -x "$bin/etcd" ]]; then
  log_step "building etcd v$ETCD_VERSION"
  if ! (
    cd "$here/etcd"
    timed "etcd v$ETCD_VERSION" env CGO_ENABLED=0 GOFLAGS=-mod=readonly \
      go build -trimpath -ldflags "-s -w" -o "$bin/etcd" go.etcd.io/etcd/server/v3
  ); then
    # Debian's etcd-server (3.4) is older than Kubernetes supports: a reported fallback
    # only, linked outside bin/ so the next run tries the build again.
    if command -v etcd >/dev/null; then
      log_step "WARNING: the etcd build failed; falling back to $(command -v etcd) ($(etcd --version | head -n1)), below Kubernetes' minimum"
      ln -sf "$(command -v etcd)" "$bin/../etcd-fallback"
      etcd_fallback=true
    else
      log_step "the etcd build failed and no etcd is installed"
      exit 1
    fi
  fi
fi

if [[ ! -x "$bin/kwok" || ! -x "$bin/kwokctl" ]]; then
  log_step "building kwok and kwokctl v$KWOK_VERSION"
  timed "kwok v$KWOK_VERSION" env CGO_ENABLED=0 GOBIN="$bin" \
    go install -trimpath -ldflags "-s -w" \
    "sigs.k8s.io/kwok/cmd/kwok@v$KWOK_VERSION" "sigs.k8s.io/kwok/cmd/kwokctl@v$KWOK_VERSION"
fi

# KWOK's stage definitions (node, pod and volume lifecycles) live in its module source;
# keep a copy with the binaries so a cleaned Go module cache does not break a start.
stages="$bin/../kwok-stages"
if [[ ! -d "$stages" ]]; then
  kwok_src="$(go env GOMODCACHE)/sigs.k8s.io/kwok@v$KWOK_VERSION"
  [[ -d "$kwok_src" ]] || go mod download "sigs.k8s.io/kwok@v$KWOK_VERSION"
  mkdir -p "$stages.tmp"
  cp -r "$kwok_src/kustomize/stage/." "$stages.tmp/"
  chmod -R u+w "$stages.tmp"
  mv "$stages.tmp" "$stages"
fi

# A binary that does not start is worse than a missing one: check each before use.
"$bin/kube-apiserver" --version >/dev/null
"$bin/kubectl" version --client >/dev/null
if [[ "${etcd_fallback:-false}" == true ]]; then
  "$bin/../etcd-fallback" --version >/dev/null
else
  rm -f "$bin/../etcd-fallback"
  "$bin/etcd" --version >/dev/null
fi
"$bin/kwok" --version >/dev/null 2>&1 || "$bin/kwok" --help >/dev/null
echo "$bin"
