#!/usr/bin/env python3
"""Summarises e2e/bench/interleaved_pairs.sh's JSON lines: one row per pair, before and
after side by side, CPU per delivery as a ratio to the mean of the floors measured just
before and just after that pair."""
import json
import sys


def main(path):
    floors = {}
    results = {}
    for line in open(path):
        row = json.loads(line)
        if row["build"] == "floor":
            floors[row["pair"]] = row["floor_us"]
            continue
        results[(row["pair"], row["name"], row["build"])] = row["result"]
    pairs = sorted({p for p, _, _ in results})
    print("| pair | floor (µs) | single: before / after (µs, ×floor) | 3 nodes: before / after (µs, ×floor) | 1,000 subs: p99 (ms), CPU per delivery (µs): before / after | idle: before / after (KiB per conn) | lost, dup (all runs) |")
    print("|---|---|---|---|---|---|---|")
    for pair in pairs:
        if pair not in floors:
            continue  # a pair whose closing floor is not in yet
        floor = (floors[pair - 1] + floors[pair]) / 2
        cells = [str(pair), f"{floors[pair - 1]:.2f} / {floors[pair]:.2f}"]
        for name in ("single", "three"):
            values = []
            for build in ("before", "after"):
                r = results.get((pair, name, build))
                us = r["server_cpu_us_per_delivery"] if r else float("nan")
                values.append(f"{us:.2f} ({us / floor:.2f}×)")
            cells.append(" / ".join(values))
        big = [results.get((pair, "big", b)) for b in ("before", "after")]
        cells.append(" / ".join(
            f"{r['last_subscriber_latency_us']['p99'] / 1000:.1f}, {r['server_cpu_us_per_delivery']:.2f}" if r else "-"
            for r in big
        ))
        idle = [results.get((pair, "idle", b)) for b in ("before", "after")]
        cells.append(" / ".join(f"{r['server_rss_bytes_per_connection'] / 1024:.2f}" if r else "-" for r in idle))
        lost = sum(r.get("lost", 0) for (p, _, _), r in results.items() if p == pair)
        dup = sum(r.get("duplicated", 0) for (p, _, _), r in results.items() if p == pair)
        cells.append(f"{lost}, {dup}")
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/interleaved_pairs.jsonl")
