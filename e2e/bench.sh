#!/usr/bin/env bash
# Runs one chat-loadgen benchmark against a release chat-server on loopback and stops
# the server by PID afterwards. Figures go to docs/benchmarks.md.
#
#   bash e2e/bench.sh fanout [loadgen flags...]   # default: 100 subscribers x 200 msg/s, 10 s
#   bash e2e/bench.sh idle   [loadgen flags...]   # default: 15,000 idle connections
#   bash e2e/bench.sh fanout-redis N [flags...]   # fanout over N servers joined by redis-server
set -euo pipefail
cd "$(dirname "$0")/.."
scenario=${1:?usage: bench.sh fanout|idle [flags]}
shift
cargo build --release --locked -p chat-server -p chatcluster-e2e >&2
port=${BENCH_PORT:-18080}
admin=${BENCH_ADMIN_PORT:-19090}
server_flags=(--dev --log-format json --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin")
if [ "$scenario" = fanout-redis ]; then
  nodes=${1:?usage: bench.sh fanout-redis N [flags]}
  shift
  redis_port=${BENCH_REDIS_PORT:-16379}
  redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no > target/bench-redis.log 2>&1 &
  redis_pid=$!
  pids=()
  urls=()
  trap 'kill -TERM "${pids[@]}" 2>/dev/null || true; kill -TERM $redis_pid 2>/dev/null || true; wait 2>/dev/null || true' EXIT
  sleep 0.3
  for i in $(seq 1 "$nodes"); do
    p=$((port + i)); a=$((admin + i))
    target/release/chat-server --dev --log-format json --listen "127.0.0.1:$p" --admin-listen "127.0.0.1:$a" \
      --node-name "bench$i" --redis-url "redis://127.0.0.1:$redis_port/" --rate-per-sec 1000 --rate-burst 1000 \
      > "target/bench-server-$i.log" 2>&1 &
    pids+=($!)
    urls+=(--url "ws://127.0.0.1:$p/ws")
  done
  for i in $(seq 1 "$nodes"); do
    for _ in $(seq 1 100); do
      curl -sf "http://127.0.0.1:$((admin + i))/readyz" > /dev/null && break
      sleep 0.1
    done
  done
  echo "machine: $(nproc) cores, $(uname -r), $(date -u +%Y-%m-%d)"
  pid_flags=()
  for p in "${pids[@]}"; do pid_flags+=(--server-pid "$p"); done
  timeout 900 target/release/chat-loadgen fanout "${urls[@]}" "${pid_flags[@]}" --redis-pid "$redis_pid" \
    --subscribers 100 --publishers 2 --rate 200 --duration 10 "$@"
  exit $?
fi
case "$scenario" in
  fanout) server_flags+=(--rate-per-sec 1000 --rate-burst 1000)
          defaults=(--subscribers 100 --publishers 2 --rate 200 --duration 10) ;;
  idle)   server_flags+=(--max-connections 19000)
          defaults=(--connections 15000 --workers 2 --source-ips 8 --connect-rate 1500 --hold 5) ;;
  *) echo "unknown scenario $scenario (fanout, idle, fanout-redis N)" >&2; exit 2 ;;
esac
target/release/chat-server "${server_flags[@]}" > "target/bench-server-$scenario.log" 2>&1 &
pid=$!
trap 'kill -TERM $pid 2>/dev/null || true; wait $pid 2>/dev/null || true' EXIT
sleep 0.5
echo "machine: $(nproc) cores, $(uname -r), $(date -u +%Y-%m-%d)"
timeout 900 target/release/chat-loadgen "$scenario" --url "ws://127.0.0.1:$port/ws" --server-pid "$pid" "${defaults[@]}" "$@"
