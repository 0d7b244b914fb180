#!/usr/bin/env bash
# Fetches the CRDs of the optional APIs the operator creates objects of (KEDA's
# ScaledObject, the Prometheus operator's PodMonitor) from their projects' released
# source, pinned in versions.sh: the Go module proxy serves each release as a zip that
# holds its config/ and example/ directories. They are copied into a cache directory keyed
# by both versions, unless already there. Prints that directory.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=e2e/k8s/versions.sh
source "$here/versions.sh"

out="$(optional_crds_dir)"
files=(keda.sh_scaledobjects.yaml monitoring.coreos.com_podmonitors.yaml)
if [[ ! -s "$out/${files[0]}" || ! -s "$out/${files[1]}" ]]; then
  mkdir -p "$out"
  scratch="$(mktemp -d)"
  trap 'rm -rf "$scratch"' EXIT
  # Outside any module, so go.mod files around do not matter.
  module_dir() {
    (cd "$scratch" && go mod download -json "$1" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  }
  keda="$(module_dir "github.com/kedacore/keda/v2@v$KEDA_VERSION")"
  promop="$(module_dir "github.com/prometheus-operator/prometheus-operator@v$PROMETHEUS_OPERATOR_VERSION")"
  if [[ -z "$keda" || -z "$promop" ]]; then
    echo "fetch-crds: the module proxy did not serve KEDA v$KEDA_VERSION or the Prometheus operator v$PROMETHEUS_OPERATOR_VERSION" >&2
    exit 1
  fi
  cp "$keda/config/crd/bases/keda.sh_scaledobjects.yaml" "$out/"
  cp "$promop/example/prometheus-operator-crd/monitoring.coreos.com_podmonitors.yaml" "$out/"
  chmod u+w "$out"/*.yaml
fi
echo "$out"
