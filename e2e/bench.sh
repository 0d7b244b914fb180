#!/usr/bin/env bash
# Runs one chat-loadgen benchmark against release chat-servers on loopback and stops
# every process it started by PID afterwards. Figures go to docs/benchmarks.md.
#
#   bash e2e/bench.sh fanout [loadgen flags...]   # default: 100 subscribers x 200 msg/s, 10 s
#   bash e2e/bench.sh idle   [loadgen flags...]   # default: 15,000 idle connections
#   bash e2e/bench.sh fanout-redis N [flags...]   # fanout over N servers joined by redis-server
#   bash e2e/bench.sh rooms-redis N single|cluster [flags...]
#       # 200 rooms x 20 members over N servers, on one redis-server or on a Redis
#       # Cluster of 3 masters (sharded pub/sub); Redis CPU is reported per server
set -euo pipefail
cd "$(dirname "$0")/.."
scenario=${1:?usage: bench.sh fanout|idle|fanout-redis N|rooms-redis N single|cluster [flags]}
shift
cargo build --release --locked -p chat-server -p chatcluster-e2e >&2
port=${BENCH_PORT:-18080}
admin=${BENCH_ADMIN_PORT:-19090}
redis_port=${BENCH_REDIS_PORT:-16379}
server_flags=(--dev --log-format json --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin")

pids=()
# shellcheck disable=SC2317 # called from the EXIT trap
stop_all() {
  [ "${#pids[@]}" -eq 0 ] && return 0
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap stop_all EXIT

# Starts a redis-server on $1 (with the extra flags that follow); its PID goes to pids
# and redis_pids.
redis_pids=()
start_redis() {
  local p=$1
  shift
  mkdir -p "target/bench-redis-$p"
  redis-server --port "$p" --bind 127.0.0.1 --save "" --appendonly no --dir "target/bench-redis-$p" "$@" \
    > "target/bench-redis-$p.log" 2>&1 &
  pids+=($!)
  redis_pids+=(--redis-pid "$!")
  for _ in $(seq 1 100); do
    redis-cli -p "$p" PING > /dev/null 2>&1 && return 0
    sleep 0.05
  done
  echo "redis-server on $p did not start" >&2
  return 1
}

# Starts $1 chat-server nodes with the flags that follow; fills urls and server_pids and
# waits until every node is ready.
urls=()
server_pids=()
start_nodes() {
  local n=$1
  shift
  for i in $(seq 1 "$n"); do
    local p=$((port + i)) a=$((admin + i))
    target/release/chat-server --dev --log-format json --listen "127.0.0.1:$p" --admin-listen "127.0.0.1:$a" \
      --node-name "bench$i" --rate-per-sec 1000 --rate-burst 1000 "$@" > "target/bench-server-$i.log" 2>&1 &
    pids+=($!)
    server_pids+=(--server-pid "$!")
    urls+=(--url "ws://127.0.0.1:$p/ws")
  done
  for i in $(seq 1 "$n"); do
    for _ in $(seq 1 100); do
      curl -sf "http://127.0.0.1:$((admin + i))/readyz" > /dev/null && break
      sleep 0.1
    done
  done
}

machine() {
  echo "machine: $(nproc) cores, $(uname -r), $(date -u +%Y-%m-%d)"
}

case "$scenario" in
  fanout-redis)
    nodes=${1:?usage: bench.sh fanout-redis N [flags]}
    shift
    start_redis "$redis_port"
    start_nodes "$nodes" --redis-url "redis://127.0.0.1:$redis_port/"
    machine
    timeout 900 target/release/chat-loadgen fanout "${urls[@]}" "${server_pids[@]}" "${redis_pids[@]}" \
      --subscribers 100 --publishers 2 --rate 200 --duration 10 "$@"
    exit $?
    ;;
  rooms-redis)
    nodes=${1:?usage: bench.sh rooms-redis N single|cluster [flags]}
    mode=${2:?usage: bench.sh rooms-redis N single|cluster [flags]}
    shift 2
    case "$mode" in
      single)
        start_redis "$redis_port"
        start_nodes "$nodes" --redis-url "redis://127.0.0.1:$redis_port/"
        ;;
      cluster)
        # 3 masters, no replicas: the figure is what each shard's CPU does.
        seeds=()
        for i in 0 1 2; do
          rm -rf "target/bench-redis-$((redis_port + i))"
          start_redis "$((redis_port + i))" --cluster-enabled yes --cluster-port "$((redis_port + 100 + i))" \
            --cluster-config-file nodes.conf
          seeds+=("127.0.0.1:$((redis_port + i))")
        done
        redis-cli --cluster create "${seeds[@]}" --cluster-replicas 0 --cluster-yes > target/bench-redis-create.log
        for _ in $(seq 1 100); do
          redis-cli -p "$redis_port" CLUSTER INFO | grep -q cluster_state:ok && break
          sleep 0.1
        done
        start_nodes "$nodes" --redis-cluster \
          --redis-url "redis://127.0.0.1:$redis_port/,redis://127.0.0.1:$((redis_port + 1))/,redis://127.0.0.1:$((redis_port + 2))/"
        ;;
      *) echo "rooms-redis takes single or cluster, not $mode" >&2; exit 2 ;;
    esac
    machine
    timeout 900 target/release/chat-loadgen fanout "${urls[@]}" "${server_pids[@]}" "${redis_pids[@]}" \
      --rooms 200 --subscribers 4000 --publishers 1 --rate 1000 --duration 10 --body-bytes 64 "$@"
    exit $?
    ;;
  fanout) server_flags+=(--rate-per-sec 1000 --rate-burst 1000)
          defaults=(--subscribers 100 --publishers 2 --rate 200 --duration 10) ;;
  idle)   server_flags+=(--max-connections 19000)
          defaults=(--connections 15000 --workers 2 --source-ips 8 --connect-rate 1500 --hold 5) ;;
  *) echo "unknown scenario $scenario (fanout, idle, fanout-redis N, rooms-redis N single|cluster)" >&2; exit 2 ;;
esac
target/release/chat-server "${server_flags[@]}" > "target/bench-server-$scenario.log" 2>&1 &
pids+=($!)
sleep 0.5
machine
timeout 900 target/release/chat-loadgen "$scenario" --url "ws://127.0.0.1:$port/ws" --server-pid "${pids[0]}" "${defaults[@]}" "$@"
