#!/usr/bin/env bash
# Builds toxiproxy-server (Shopify's fault-injecting TCP proxy, pinned in
# e2e/k8s/versions.sh) from its Go module into a cache directory keyed by version, unless
# it is already there. Prints the path of the binary. The chaos soak (e2e/soak.sh) puts
# one proxy between each chat-server node and Redis.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=e2e/k8s/versions.sh
source "$here/k8s/versions.sh"

bin="$(toxiproxy_bin_dir)"
if [[ ! -x "$bin/toxiproxy-server" ]]; then
  mkdir -p "$bin"
  echo "build-toxiproxy: building toxiproxy v$TOXIPROXY_VERSION" >&2
  scratch="$(mktemp -d)"
  trap 'rm -rf "$scratch"' EXIT
  # The module's server command is cmd/server; it installs as `server`.
  timed_build "$bin/../build.log" "toxiproxy v$TOXIPROXY_VERSION" \
    env CGO_ENABLED=0 GOBIN="$scratch" go install -trimpath -ldflags "-s -w" \
    "github.com/Shopify/toxiproxy/v2/cmd/server@v$TOXIPROXY_VERSION"
  mv "$scratch/server" "$bin/toxiproxy-server"
fi
"$bin/toxiproxy-server" -version >/dev/null
echo "$bin/toxiproxy-server"
