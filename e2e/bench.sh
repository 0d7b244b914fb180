#!/usr/bin/env bash
# Runs one benchmark scenario: builds the release binaries, then `chat-loadgen bench`
# starts the chat-server nodes (and Redis) on 127.0.0.1 ephemeral ports, runs the load
# generator against them and stops every process it started. Figures go to
# docs/benchmarks.md, with the machine line printed first.
#
#   bash e2e/bench.sh fanout [loadgen flags...]   # default: 100 subscribers x 200 msg/s, 10 s
#   bash e2e/bench.sh idle   [loadgen flags...]   # default: 15,000 idle connections
#   bash e2e/bench.sh fanout-redis N [flags...]   # fanout over N servers joined by redis-server
#   bash e2e/bench.sh idle-redis N [flags...]     # N x 16,667 idle connections in 1,000
#       # rooms over N servers joined by redis-server; RSS per connection of both
#   bash e2e/bench.sh join-storm [flags...]       # 10,000 members join one room
#   bash e2e/bench.sh rooms-redis N single|cluster [flags...]
#       # 200 rooms x 20 members over N servers, on one redis-server or on a Redis
#       # Cluster of 3 masters (sharded pub/sub); Redis CPU is reported per server
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$#" -ge 1 ] || { echo "usage: bench.sh fanout|idle|fanout-redis N|idle-redis N|rooms-redis N single|cluster|join-storm [flags]" >&2; exit 2; }
cargo build --release --locked -p chat-server -p chatcluster-e2e >&2
echo "machine: $(nproc) cores, $(uname -r), $(date -u +%Y-%m-%d)"
timeout 900 target/release/chat-loadgen bench "$@"
