#!/usr/bin/env python3
"""Splits a chat-server CPU profile into the costs that matter for a delivery.

    perf record -e cpu-clock -F 1999 --call-graph dwarf,16384 -p SERVER_PID -o srv.perf -- sleep 5
    python3 e2e/bench/perf_categories.py srv.perf

Each sample goes to the first category (in the order below) whose marker appears
anywhere in its call stack, so "kernel send" is every sample under a sendto() whatever
called it. Samples that match none are split by their leaf frame. Reads perf's output
only; starts no process but `perf script`.
"""
import collections
import subprocess
import sys

# (category, markers): "=name" matches a frame exactly, anything else as a substring.
CATEGORIES = [
    ("kernel send (sendto: the floor's work)", ["=__sys_sendto"]),
    ("kernel receive (recvfrom)", ["=__sys_recvfrom"]),
    ("idle and wake-up (epoll_wait, futex, scheduler)",
     ["=do_epoll_wait", "=do_futex", "=__schedule", "=schedule"]),
    ("room fan-out (direct writes' own code, queue offers, task wake-ups)",
     ["deliver_room_message", "fan_out::", "Wire::deliver"]),
    ("pub/sub receive (reading and parsing Redis messages)", ["ValueCodec", "single_pubsub_task"]),
    ("framing and flush (tungstenite write; since #30 the wire's framing and flush)",
     ["Session::flush", "WebSocketContext::write", "buffer_frame", "put_text_frame",
      "Wire::write_own", "Wire::flush"]),
    ("client frames (a publisher's send: parse, publish, ack)", ["Session::dispatch"]),
    ("polling the client's read side", ["WebSocket::recv", "WebSocketStream", "ClientIo"]),
    ("timers", ["tokio::time::sleep", "time::Driver", "TimerEntry"]),
    ("metrics", ["prometheus::"]),
]


def stacks(perf_data):
    """Yields each sample's frames, leaf first."""
    out = subprocess.run(["perf", "script", "-i", perf_data, "-F", "comm,ip,sym"],
                         capture_output=True, text=True, check=True).stdout
    frames = []
    for line in out.split("\n"):
        if line and not line[0].isspace():
            if frames:
                yield frames
            frames = []
        elif line.strip():
            # "ffffffff8205a46c ip_finish_output2" -> "ip_finish_output2"
            frames.append(line.strip().split(" ", 1)[-1])
    if frames:
        yield frames


def matches(marker, frame):
    return frame == marker[1:] if marker.startswith("=") else marker in frame


def by_leaf(leaf):
    if "tokio::runtime" in leaf:
        return "tokio runtime (task polls, run queues; leaf)"
    if any(k in leaf for k in ("chat_server", "on_upgrade", "AtomicWaker", "Pin<P>", "PollFn")):
        return "session task (select, send queue; leaf)"
    if leaf.startswith("__mem") or "malloc" in leaf or "free" in leaf:
        return "libc memory (leaf)"
    return "other"


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: perf_categories.py PERF_DATA")
    counts = collections.Counter()
    total = 0
    for frames in stacks(sys.argv[1]):
        total += 1
        category = next((name for name, markers in CATEGORIES
                         if any(matches(m, f) for m in markers for f in frames)), None)
        counts[category or by_leaf(frames[0])] += 1
    if total == 0:
        sys.exit("no samples in " + sys.argv[1])
    for name, n in counts.most_common():
        print("%5.1f%%  %s" % (100.0 * n / total, name))
    print("%d samples" % total)


if __name__ == "__main__":
    main()
