"""A loopback TCP proxy that a test can cut and restore (a Redis outage without stopping Redis)."""
from __future__ import annotations

import socket
import threading


class TcpProxy:
    def __init__(self, host: str, port: int):
        self.target = (host, port)
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.up = True
        self.reads = 0  # what the clients sent, read by read: their round trips (requests are small)
        self.sent: list[bytes] = []  # and what it was (a test's proxy lives for one test)
        self.open: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.up:
                client.close()
                continue
            upstream = socket.create_connection(self.target)
            pair = [client, upstream]
            with self.lock:
                self.open += pair
            for a, b, counted in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pump, args=(a, b, counted, pair), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, counted: bool, pair: list) -> None:
        try:
            while data := src.recv(65536):
                if counted:  # before it is passed on: the client cannot have its answer yet
                    self.reads += 1
                    self.sent.append(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with self.lock:
                for s in (src, dst):
                    _shut(s)
                pair.pop()
                if not pair:  # the second pump out closes both: no descriptor is freed while
                    for s in (src, dst):  # the other pump may still use it (a reused number
                        self.open.remove(s)  # would be read or written by the wrong owner)
                        s.close()

    def said(self, command: bytes, since: int = 0) -> int:
        """How often the clients sent `command` (a RESP bulk string) in their reads from `since`."""
        return b"".join(self.sent[since:]).upper().count(b"\r\n" + command.upper() + b"\r\n")

    def cut(self) -> None:
        """Refuse new connections and drop the open ones (their pumps see the end and close them)."""
        self.up = False
        with self.lock:
            for s in self.open:
                _shut(s)

    def restore(self) -> None:
        self.up = True

    def close(self) -> None:
        self.cut()
        self.listener.close()


def _shut(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
