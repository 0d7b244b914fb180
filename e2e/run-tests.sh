#!/usr/bin/env bash
# Runs every ChatCluster test tier that this machine supports. This is the README's
# test command; .ci/run calls it after installing what it needs.
#
# Tiers: formatting and lints, unit tests, loopback integration tests (real WebSocket
# clients against real chat-server processes), and the load generator's smoke test.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== build (binaries are needed by the process-level suites)"
cargo build --workspace --locked

echo "== cargo test"
cargo test --workspace --locked 2>&1 | tee target/test-output.txt
status=${PIPESTATUS[0]}

# One summary line over every test binary, in the form CI reads.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1) } }
     END { printf "%d passed, %d failed\n", p, f }' target/test-output.txt
exit "$status"
