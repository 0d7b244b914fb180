#!/usr/bin/env python3
"""Where one big room's message spends its time: the analysis half of burst_timeline.sh.

    burst_timeline.py TRACE SERVER_PID LOADGEN_PID SERVER_CPU_US LOADGEN_CPU_US MESSAGES

TRACE is `perf script -F pid,tid,cpu,time,event,trace` of a system-wide recording of
sched:sched_switch, syscalls:sys_enter_sendto and syscalls:sys_exit_recvfrom while
chat-loadgen ran a one-room fanout. A burst starts at each publish (a send of at least
64 bytes by the load generator) and runs to the next one. For each burst it finds the
server's first and last write, the generator's first and last read, and how busy each
CPU was with the two processes; then it prints medians over the bursts and the CPU that
one message costs both processes (CPU times and the server's received-message count,
sampled over an untraced window: tracing adds to both processes' CPU).
"""
import bisect
import collections
import os
import re
import statistics
import sys

# A frame of a run's message is well over this; pings, pongs and closes are under it.
MIN_MESSAGE_BYTES = 64
LINE = re.compile(r"\s*(\d+)/(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+(\S+):\s*(.*)")
SWITCH = re.compile(r"prev_pid=(\d+) .*==> next_comm=.* next_pid=(\d+)")


def parse(path):
    """Returns the events as (time, pid, tid, cpu, event, rest), and thread -> process."""
    events, process_of = [], {}
    with open(path) as f:
        for line in f:
            m = LINE.match(line)
            if not m:
                continue
            pid, tid, cpu, t, event, rest = m.groups()
            process_of[int(tid)] = int(pid)
            events.append((float(t), int(pid), int(tid), int(cpu), event.rstrip(":"), rest))
    events.sort()
    return events, process_of


def length_of(event, rest):
    """Bytes sent (sendto's len argument) or received (recvfrom's return value)."""
    if event.endswith("sys_enter_sendto"):
        m = re.search(r"len: (0x[0-9a-f]+)", rest)
        return int(m.group(1), 16) if m else 0
    value = rest.strip().split()[0] if rest.strip() else "0"
    try:
        return int(value, 16)
    except ValueError:
        return 0


def busy_intervals(events, process_of, pids):
    """Per CPU, the (start, end) intervals in which a thread of `pids` ran."""
    running, intervals = {}, collections.defaultdict(list)
    for t, _, _, cpu, event, rest in events:
        if not event.endswith("sched_switch"):
            continue
        m = SWITCH.search(rest)
        if not m:
            continue
        if cpu in running:
            start, tid = running[cpu]
            if process_of.get(tid) in pids:
                intervals[cpu].append((start, t))
        running[cpu] = (t, int(m.group(2)))
    return intervals


def between(times, start, end):
    """The sorted `times` in [start, end)."""
    return times[bisect.bisect_left(times, start):bisect.bisect_left(times, end)]


def overlap(intervals, a, b):
    return sum(max(0.0, min(b, y) - max(a, x)) for x, y in intervals)


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def p90(xs):
    xs = sorted(xs)
    return xs[int(0.9 * (len(xs) - 1))] if xs else float("nan")


def main():
    if len(sys.argv) != 7:
        sys.exit(__doc__)
    path = sys.argv[1]
    server, loadgen = int(sys.argv[2]), int(sys.argv[3])
    server_cpu_us, loadgen_cpu_us, messages = map(float, sys.argv[4:7])
    events, process_of = parse(path)
    # Message-sized sends and receives, in time order, by who made them.
    io = [(t, pid, event) for t, pid, _, _, event, rest in events
          if not event.endswith("sched_switch") and length_of(event, rest) >= MIN_MESSAGE_BYTES]
    publishes = [t for t, pid, event in io if pid == loadgen and event.endswith("sendto")]
    all_writes = [t for t, pid, event in io if pid == server and event.endswith("sendto")]
    all_reads = [t for t, pid, event in io if pid == loadgen and event.endswith("recvfrom")]
    cpus = busy_intervals(events, process_of, {server, loadgen})
    rows = []
    for start, end in zip(publishes, publishes[1:]):
        writes = between(all_writes, start, end)
        reads = between(all_reads, start, end)
        if not writes or not reads:
            continue
        last = max(writes[-1], reads[-1])
        busy = [overlap(cpus[c], start, last) / (last - start) for c in sorted(cpus)]
        rows.append({
            "writes": len(writes), "reads": len(reads),
            "first_write": writes[0] - start, "last_write": writes[-1] - start,
            "first_read": reads[0] - start, "last_read": reads[-1] - start,
            "busy": busy,
        })
    if not rows:
        sys.exit("no complete burst in the trace: was the run publishing while it recorded?")
    ms = lambda key: [1000 * r[key] for r in rows]  # noqa: E731
    print("bursts: %d (deliveries per burst: server writes %d, generator reads %d)"
          % (len(rows), median([r["writes"] for r in rows]), median([r["reads"] for r in rows])))
    for key, label in (("first_write", "server's first write"), ("last_write", "server's last write"),
                       ("first_read", "generator's first read"), ("last_read", "generator's last read")):
        print("  %-24s median %5.1f ms, p90 %5.1f ms after the publish" % (label, median(ms(key)), p90(ms(key))))
    busy_both = [sum(r["busy"]) / len(r["busy"]) for r in rows]
    one_idle = sum(1 for r in rows if min(r["busy"]) < 0.5)
    print("  both CPUs busy with the two processes: median %.0f %% of a burst; %d of %d bursts had a"
          " CPU busy less than half of it" % (100 * median(busy_both), one_idle, len(rows)))
    if messages <= 0:
        sys.exit("no message was published in the untraced window")
    server_ms = server_cpu_us / 1000 / messages
    loadgen_ms = loadgen_cpu_us / 1000 / messages
    cores = os.cpu_count() or 1
    print("CPU per message (untraced): server %.1f ms, load generator %.1f ms (%d messages); on %d"
          " cores the last delivery cannot come sooner than %.1f ms after the publish"
          % (server_ms, loadgen_ms, messages, cores, (server_ms + loadgen_ms) / cores))


if __name__ == "__main__":
    main()
