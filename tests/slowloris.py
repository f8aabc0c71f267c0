"""Slow connections from one address, in a process of its own (its descriptors are not the
test's): `python -m tests.slowloris PORT COUNT EVERY`.

Opens COUNT connections to 127.0.0.1:PORT, sends each a partial request head as soon as it is
connected, then one more header line every EVERY seconds on each connection still open. Prints
`ready <json>` once every connection has been answered by the kernel (connected, refused or
closed), and `done <json>` when its standard input closes, then exits. Connections the server
closes are counted, not reopened."""
from __future__ import annotations

import errno
import json
import select
import socket
import sys
import threading
import time

HEAD = b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
LINE = b"X-Slow: 1\r\n"


def main(port: int, count: int, every: float) -> None:
    epoll = select.epoll()
    socks: dict[int, socket.socket] = {}
    pending: set[int] = set()
    stats = {"attempted": count, "connected": 0, "closed_by_server": 0, "failed": 0, "lines_sent": 0}

    def drop(fd: int, key: str) -> None:
        stats[key] += 1
        pending.discard(fd)
        epoll.unregister(fd)
        socks.pop(fd).close()

    for _ in range(count):
        sock = socket.socket()
        sock.setblocking(False)
        err = sock.connect_ex(("127.0.0.1", port))
        if err not in (0, errno.EINPROGRESS):
            stats["failed"] += 1
            sock.close()
            continue
        socks[sock.fileno()] = sock
        pending.add(sock.fileno())
        epoll.register(sock.fileno(), select.EPOLLOUT | select.EPOLLIN | select.EPOLLRDHUP)
    stdin_closed = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stdin_closed.set()), daemon=True).start()
    ready = False
    started = time.monotonic()
    next_line = time.monotonic() + every
    while not stdin_closed.is_set():
        for fd, flags in epoll.poll(0.2):
            sock = socks.get(fd)
            if sock is None:
                continue
            if fd in pending and flags & select.EPOLLOUT:
                if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                    drop(fd, "failed")
                    continue
                pending.discard(fd)
                stats["connected"] += 1
                try:
                    sock.send(HEAD)
                except OSError:
                    drop(fd, "closed_by_server")
                    continue
                epoll.modify(fd, select.EPOLLIN | select.EPOLLRDHUP)
                continue
            if flags & (select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR):
                drop(fd, "closed_by_server")
        if not ready and not pending:
            ready = True
            print("ready", json.dumps({**stats, "open": len(socks),
                                       "seconds": round(time.monotonic() - started, 2)}), flush=True)
        if time.monotonic() >= next_line:
            next_line += every
            for fd, sock in list(socks.items()):
                if fd not in pending:
                    try:
                        sock.send(LINE)
                        stats["lines_sent"] += 1
                    except OSError:
                        drop(fd, "closed_by_server")
    print("done", json.dumps({**stats, "open": len(socks)}), flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]))
