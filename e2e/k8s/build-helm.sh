#!/usr/bin/env bash
# Builds helm from its Go module (pinned in versions.sh) into a cache directory keyed by
# version, unless it is already there. Prints the path of the helm binary.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=e2e/k8s/versions.sh
source "$here/versions.sh"

bin="$(helm_bin_dir)"
if [[ ! -x "$bin/helm" ]]; then
  mkdir -p "$bin"
  echo "build-helm: building helm v$HELM_VERSION" >&2
  # As helm's own release build does: the Kubernetes version `helm template` and `helm
  # lint` assume is the client-go minor helm was built with (1.37 for helm 3.22).
  k8s_flags=""
  for pkg in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
    k8s_flags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$HELM_K8S_MINOR"
  done
  timed_build "$bin/../build.log" "helm v$HELM_VERSION" \
    env CGO_ENABLED=0 GOBIN="$bin" go install -trimpath \
    -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=v$HELM_VERSION $k8s_flags" \
    "helm.sh/helm/v3/cmd/helm@v$HELM_VERSION"
fi
"$bin/helm" version --short >/dev/null
echo "$bin/helm"
