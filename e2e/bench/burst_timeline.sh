#!/usr/bin/env bash
# Traces one big room on loopback to show where a message's time goes: a release
# chat-server, chat-loadgen fanout (default 1,000 subscribers x 20 msg/s for 10 s), and
# in the middle of the run a system-wide `perf record` of context switches, sends and
# receives; e2e/bench/burst_timeline.py then prints, per message, when the server wrote
# and the generator read, how busy each CPU was, and the CPU a message costs.
#
#   bash e2e/bench/burst_timeline.sh [chat-loadgen fanout flags...]
#
# Needs root (perf record -a) and perf (Debian linux-perf). Env: BENCH_PORT (18080),
# BENCH_ADMIN_PORT (19090), SETTLE_SECS (6: connecting 1,000 clients comes first),
# TRACE_SECS (2; the untraced window that measures CPU per message is as long). Stops
# the processes it started by PID; chat-loadgen bounds its own run (--duration at most
# 600 s, setup at most 600 s).
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --locked -p chat-server -p chatcluster-e2e >&2
port=${BENCH_PORT:-18080}
admin=${BENCH_ADMIN_PORT:-19090}
settle=${SETTLE_SECS:-6}
trace_secs=${TRACE_SECS:-2}
work=$(mktemp -d /tmp/chatcluster-burst.XXXXXX)

pids=()
# shellcheck disable=SC2317 # called from the EXIT trap
stop_all() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  sleep 0.3
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap stop_all EXIT

# utime + stime of a process, in microseconds.
cpu_us() {
  awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) * 1000000 / hz}' "/proc/$1/stat"
}
# Messages the server has accepted from the publishers so far.
received() {
  curl -sf "http://127.0.0.1:$admin/metrics" | awk '$1 == "chat_messages_received_total" {print $2}'
}

target/release/chat-server --dev --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" \
  --rate-per-sec 1000 --rate-burst 1000 > "$work/server.log" 2>&1 &
server=$!
pids+=("$server")
for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:$admin/readyz" > /dev/null && break
  sleep 0.1
done
target/release/chat-loadgen fanout --url "ws://127.0.0.1:$port/ws" --server-pid "$server" \
  --subscribers 1000 --publishers 2 --rate 20 --duration 10 "$@" > "$work/loadgen.out" 2>&1 &
loadgen=$!
pids+=("$loadgen")

sleep "$settle"
# The CPU a message costs is measured over an untraced window of the same length right
# before the recording, because tracing every send and receive adds to both processes.
server_before=$(cpu_us "$server")
loadgen_before=$(cpu_us "$loadgen")
messages_before=$(received)
sleep "$trace_secs"
server_cpu=$(( $(cpu_us "$server") - server_before ))
loadgen_cpu=$(( $(cpu_us "$loadgen") - loadgen_before ))
messages=$(( $(received) - messages_before ))
perf record -q -a -o "$work/trace.perf" -e sched:sched_switch -e syscalls:sys_enter_sendto \
  -e syscalls:sys_exit_recvfrom -- sleep "$trace_secs" > /dev/null 2>&1
wait "$loadgen" || { echo "chat-loadgen failed:" >&2; cat "$work/loadgen.out" >&2; exit 1; }
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(uname -r), $(date -u +%Y-%m-%d)"
grep '^fanout:' "$work/loadgen.out"
perf script -i "$work/trace.perf" -F pid,tid,cpu,time,event,trace > "$work/trace.txt" 2>/dev/null
python3 e2e/bench/burst_timeline.py "$work/trace.txt" "$server" "$loadgen" "$server_cpu" "$loadgen_cpu" "$messages"
