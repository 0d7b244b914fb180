#!/usr/bin/env bash
# Interleaved before/after pairs of the delivery benchmarks, with the kernel's loopback
# send floor measured between pairs (docs/benchmarks.md, "Direct writes").
#
#   e2e/bench/interleaved_pairs.sh BEFORE_RELEASE_DIR AFTER_RELEASE_DIR [PAIRS] [OUT]
#
# Each *_RELEASE_DIR holds a release `chat-loadgen` and the `chat-server` it runs (e.g.
# target/release of two checkouts). Each pair runs, for each scenario, both builds one
# after the other, the order alternating from pair to pair, then the floor. Scenarios:
# single node (`fanout`), 3 nodes over Redis (`fanout-redis 3`), the 1,000-subscriber
# room (`fanout --subscribers 1000 --rate 20`) and idle memory (`idle`). Every result is
# one JSON line in OUT (default /tmp/interleaved_pairs.jsonl); the summary table comes
# from e2e/bench/pairs_table.py. Loopback only; every run is bounded by the load
# generator's own timeout.
set -euo pipefail
cd "$(dirname "$0")/../.."
before=${1:?before release dir}
after=${2:?after release dir}
pairs=${3:-5}
out=${4:-/tmp/interleaved_pairs.jsonl}
: > "$out"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), kernel $(uname -r), $(date -u +%Y-%m-%dT%H:%MZ)" | tee -a "$out.log"

floor() {
  local pair=$1
  local us
  us=$(python3 e2e/bench/loopback_send_floor.py | sed -n 's|.*system \([0-9.]*\) us/send.*|\1|p' | tail -1)
  echo "{\"pair\": $pair, \"build\": \"floor\", \"scenario\": \"floor\", \"floor_us\": $us}" >> "$out"
  echo "pair $pair floor $us us" | tee -a "$out.log"
}

run() {
  local pair=$1 build=$2 dir=$3 name=$4; shift 4
  local json
  json=$(timeout 900 "$dir/chat-loadgen" bench "$@" 2>>"$out.log" | tail -1)
  echo "{\"pair\": $pair, \"build\": \"$build\", \"name\": \"$name\", \"result\": $json}" >> "$out"
  echo "pair $pair $build $name done" | tee -a "$out.log"
}

floor 0
for pair in $(seq 1 "$pairs"); do
  if [ $((pair % 2)) -eq 1 ]; then order="before after"; else order="after before"; fi
  for scenario in single three big idle; do
    for build in $order; do
      if [ "$build" = before ]; then dir=$before; else dir=$after; fi
      case $scenario in
        single) run "$pair" "$build" "$dir" single fanout ;;
        three) run "$pair" "$build" "$dir" three fanout-redis 3 ;;
        big) run "$pair" "$build" "$dir" big fanout --subscribers 1000 --rate 20 ;;
        idle) run "$pair" "$build" "$dir" idle idle ;;
      esac
    done
  done
  floor "$pair"
done
python3 e2e/bench/pairs_table.py "$out"
