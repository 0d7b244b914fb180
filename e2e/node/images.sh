#!/usr/bin/env bash
# Packs the images the real node runs into OCI archives for `ctr images import`:
#   docker.io/chatcluster/chat-server:e2e         e2e/images' reproduction of server/Dockerfile
#   docker.io/chatcluster/chatcluster-operator:e2e  ... of operator/Dockerfile
#   docker.io/chatcluster/redis:e2e                Debian's redis-server and redis-cli, busybox sh/cat
#   registry.k8s.io/pause:3.10                     the pod sandbox (e2e/node/pause.c, static)
#   docker.io/envoyproxy/gateway:vX                Envoy Gateway (controller, certgen, shutdown manager)
#   docker.io/envoyproxy/envoy:distroless-vY       Envoy, the proxy Envoy Gateway deploys
#   docker.io/chatcluster/prometheus:e2e           the pinned Prometheus (e2e/k8s/build-prometheus.sh)
#   ghcr.io/kedacore/keda:VERSION                  KEDA's operator (/keda), built by build-node.sh
#   ghcr.io/kedacore/keda-metrics-apiserver:VERSION  its metrics API server (/keda-adapter)
# The production runtime image is gcr.io/distroless/cc-debian12:nonroot; here its stand-in
# is a base layer with exactly the shared libraries the binaries load (found with ldd),
# /etc/passwd and /etc/group with root and nonroot (65532), CA certificates and a /tmp.
# What differs from distroless: Debian's libraries of this machine rather than
# distroless' build of them, no tzdata, no /etc/os-release.
#
# Usage: e2e/node/images.sh IMAGE_BUILD_DIR NODE_BIN ENVOY_GATEWAY_DIR OUT PROMETHEUS KEDA_DIR
#   IMAGE_BUILD_DIR: output of e2e/images/build.sh; NODE_BIN, ENVOY_GATEWAY_DIR and
#   KEDA_DIR: e2e/node/build-node.sh's first, third and fifth lines; PROMETHEUS: the
#   binary e2e/k8s/build-prometheus.sh prints; writes OUT/*.tar and prints OUT.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
build="$1"
node_bin="$2"
eg="$3"
out="$4"
prometheus="$5"
keda="$6"
# shellcheck source=e2e/k8s/versions.sh
source "$here/../k8s/versions.sh"
rm -rf "$out"
mkdir -p "$out/layers"
out="$(cd "$out" && pwd)"
layers="$out/layers"

(cd "$here/ociimage" && go build -mod=readonly -o "$out/ociimage" .)

# Copies each binary's shared libraries (and the dynamic loader) into DIR, at the paths
# the binary resolves them to here.
copy_libraries() {
  local dir="$1" binary lib
  shift
  for binary in "$@"; do
    if ! ldd "$binary" >/dev/null 2>&1; then continue; fi # static
    for lib in $(ldd "$binary" | grep -o '/[^ ]*'); do
      mkdir -p "$dir$(dirname "$lib")"
      cp -L "$lib" "$dir$lib"
    done
  done
}

base="$layers/base"
mkdir -p "$base/etc/ssl/certs" "$base/tmp"
chmod 1777 "$base/tmp"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$base/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$base/etc/group"
cp /etc/ssl/certs/ca-certificates.crt "$base/etc/ssl/certs/"
copy_libraries "$base" "$build/chat-server/rootfs/usr/local/bin/chat-server" \
  "$build/chatcluster-operator/rootfs/usr/local/bin/chatcluster-operator"

redis="$layers/redis"
mkdir -p "$redis/usr/bin" "$redis/bin" "$redis/data"
cp /usr/bin/redis-server /usr/bin/redis-cli "$redis/usr/bin/"
cp "$(command -v busybox)" "$redis/bin/busybox"
ln -s busybox "$redis/bin/sh"
ln -s busybox "$redis/bin/cat"
copy_libraries "$redis" /usr/bin/redis-server /usr/bin/redis-cli

pause="$layers/pause"
mkdir -p "$pause"
cp "$node_bin/pause" "$pause/pause"

gateway="$layers/envoy-gateway"
mkdir -p "$gateway/usr/local/bin"
cp "$eg/bin/envoy-gateway" "$gateway/usr/local/bin/"

envoy="$layers/envoy"
mkdir -p "$envoy/usr/local/bin"
cp "$eg/bin/envoy" "$envoy/usr/local/bin/"
copy_libraries "$envoy" "$eg/bin/envoy"

prom="$layers/prometheus"
mkdir -p "$prom/bin"
cp "$prometheus" "$prom/bin/prometheus"
copy_libraries "$prom" "$prometheus"

# KEDA's images hold one static binary each, at the path KEDA's manifests run.
keda_operator="$layers/keda"
mkdir -p "$keda_operator"
cp "$keda/bin/keda" "$keda_operator/keda"
keda_adapter="$layers/keda-adapter"
mkdir -p "$keda_adapter"
cp "$keda/bin/keda-adapter" "$keda_adapter/keda-adapter"

pack() { "$out/ociimage" "$@" >&2; }
pack -name docker.io/chatcluster/chat-server:e2e -out "$out/chat-server.tar" \
  -imagebuild-config "$build/chat-server/config.json" "$base" "$build/chat-server/rootfs"
pack -name docker.io/chatcluster/chatcluster-operator:e2e -out "$out/chatcluster-operator.tar" \
  -imagebuild-config "$build/chatcluster-operator/config.json" "$base" \
  "$build/chatcluster-operator/rootfs"
pack -name docker.io/chatcluster/redis:e2e -out "$out/redis.tar" \
  -entrypoint '["/usr/bin/redis-server"]' -user 10999:10999 "$base" "$redis"
pack -name registry.k8s.io/pause:3.10 -out "$out/pause.tar" \
  -entrypoint '["/pause"]' -user 65535:65535 "$pause"
pack -name "docker.io/envoyproxy/gateway:v$ENVOY_GATEWAY_VERSION" -out "$out/envoy-gateway.tar" \
  -entrypoint '["/usr/local/bin/envoy-gateway"]' -user 65532:65532 "$base" "$gateway"
pack -name "docker.io/envoyproxy/envoy:distroless-v$ENVOY_VERSION" -out "$out/envoy.tar" \
  -entrypoint '["/usr/local/bin/envoy"]' -user 65532:65532 "$base" "$envoy"
pack -name docker.io/chatcluster/prometheus:e2e -out "$out/prometheus.tar" \
  -entrypoint '["/bin/prometheus"]' -user 65532:65532 "$base" "$prom"
pack -name "ghcr.io/kedacore/keda:$KEDA_VERSION" -out "$out/keda.tar" \
  -entrypoint '["/keda"]' -user 65532:65532 "$base" "$keda_operator"
pack -name "ghcr.io/kedacore/keda-metrics-apiserver:$KEDA_VERSION" \
  -out "$out/keda-metrics-apiserver.tar" \
  -entrypoint '["/keda-adapter"]' -user 65532:65532 "$base" "$keda_adapter"
echo "$out"
