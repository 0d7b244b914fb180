#!/usr/bin/env bash
# Runs the chaos soak (chat-soak, docs/reliability.md) on loopback: 3 chat-server nodes
# behind haproxy, a durable redis-server behind one Toxiproxy link per node, 200 clients
# that publish, subscribe, send DMs and resume, and one fault at a time (node SIGKILL,
# node drain, Redis restart, 200 ms Redis latency, a node cut from Redis for 5 s). The
# checker then reads every client's log and fails the run on any acknowledged message
# lost, duplicated or reordered. Then a small reconnect storm (chat-soak storm). Toxiproxy
# is built (pinned, cached) on the first run.
#
# Usage: bash e2e/soak.sh [seconds, default 90] [chat-soak flags...]
# Prints chat-soak's reports and `# pass N` / `# fail N` for the test runner's summary.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-90}"
shift || true
CHATCLUSTER_TOXIPROXY="$(bash e2e/build-toxiproxy.sh)"
export CHATCLUSTER_TOXIPROXY
cargo build --locked -p chat-server -p chatcluster-e2e --bins >&2

# Each run in its own session, so that whatever happens every process it started (nodes,
# Redis, haproxy, Toxiproxy, storm workers) is stopped with it; bounded in time.
pass=0
fail=0
run_bounded() {
  local limit="$1"
  shift
  setsid timeout --kill-after=10 "$limit" "$@" &
  local pid=$!
  if wait "$pid"; then
    pass=$((pass + 1))
  else
    fail=$((fail + 1))
  fi
  kill -- "-$pid" 2>/dev/null || true
}
run_bounded $((seconds + 300)) target/debug/chat-soak chaos --seconds "$seconds" "$@"
# The reconnect storm, small: 2,000 clients through haproxy, whose restart makes all of
# them reconnect at once into nodes limited to 100 new connections a second each, so
# most are first refused with 503 and Retry-After (docs/reliability.md has 15,000).
run_bounded 400 target/debug/chat-soak storm --clients 2000 --workers 2 --accept-rate 100 --within 180
echo "# pass $pass"
echo "# fail $fail"
[ "$fail" -eq 0 ]
