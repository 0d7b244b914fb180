#!/usr/bin/env bash
# Builds the Prometheus server from its Go module (pinned in versions.sh) into a cache
# directory keyed by version, unless it is already there. Prints the path of the
# prometheus binary.
#
# Build tags: `remove_all_sd,enable_kubernetes_sd` keep only the Kubernetes service
# discovery (plus static, file and HTTP, which are always in), for a smaller, faster
# build. Without the `builtinassets` tag (deliberately not set: the module ships no
# compiled web UI) the UI pages answer 404; the HTTP API the operator queries is whole.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=e2e/k8s/versions.sh
source "$here/versions.sh"

bin="$(prometheus_bin_dir)"
if [[ ! -x "$bin/prometheus" ]]; then
  mkdir -p "$bin"
  echo "build-prometheus: building Prometheus v$PROMETHEUS_VERSION (module v$PROMETHEUS_MODULE_VERSION)" >&2
  # What `prometheus --version` reports, as Prometheus' own release build sets it.
  v=github.com/prometheus/common/version
  ldflags="-s -w -X $v.Version=$PROMETHEUS_VERSION -X $v.Revision=v$PROMETHEUS_MODULE_VERSION"
  ldflags+=" -X $v.Branch=HEAD -X $v.BuildUser=chatcluster -X $v.BuildDate=19700101-00:00:00"
  timed_build "$bin/../build.log" "prometheus v$PROMETHEUS_VERSION" \
    env CGO_ENABLED=0 GOBIN="$bin" go install -trimpath \
    -tags remove_all_sd,enable_kubernetes_sd -ldflags "$ldflags" \
    "github.com/prometheus/prometheus/cmd/prometheus@v$PROMETHEUS_MODULE_VERSION"
fi
"$bin/prometheus" --version >/dev/null
echo "$bin/prometheus"
