#!/usr/bin/env python3
"""Kernel floor for one WebSocket-sized write per delivery on this machine.

Sends 100-byte messages to 100 loopback TCP sockets every 5 ms (the fanout benchmark's
pattern: 100 subscribers x 200 msgs/s) from one process, while a forked process reads
them, and reports the sender's system CPU per send. Loopback only; bounded to 1000
rounds; the reader exits when it has read everything or its sockets close.
"""
import os
import selectors
import socket
import time

SOCKETS = 100
ROUNDS = 1000
MESSAGE = b"x" * 100


def main():
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(SOCKETS * 2)
    port = listener.getsockname()[1]
    pid = os.fork()
    if pid == 0:
        sel = selectors.DefaultSelector()
        for _ in range(SOCKETS):
            c = socket.create_connection(("127.0.0.1", port))
            c.setblocking(False)
            sel.register(c, selectors.EVENT_READ)
        got, want = 0, SOCKETS * ROUNDS * len(MESSAGE)
        while got < want:
            events = sel.select(timeout=5)
            if not events:
                break
            for key, _ in events:
                data = key.fileobj.recv(65536)
                if not data:
                    os._exit(0)
                got += len(data)
        os._exit(0)
    senders = []
    for _ in range(SOCKETS):
        s, _ = listener.accept()
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        senders.append(s)
    before = os.times()
    for _ in range(ROUNDS):
        for s in senders:
            s.send(MESSAGE)
        time.sleep(0.005)
    after = os.times()
    for s in senders:
        s.close()
    os.waitpid(pid, 0)
    n = SOCKETS * ROUNDS
    print("sends %d: user %.2f us/send, system %.2f us/send" % (
        n, (after.user - before.user) / n * 1e6, (after.system - before.system) / n * 1e6))


if __name__ == "__main__":
    main()
