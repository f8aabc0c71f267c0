"""A raw-socket fake provider that streams with any HTTP framing, in lockstep with the test.

Real servers frame a streamed body three ways: chunked, with a Content-Length, or as an
HTTP/1.0-style body that ends when the connection closes. This fake writes one piece, then
waits until the test says it saw that piece arrive at the client (`go`), so a gateway that
held pieces back until the body ended would never get the next one (the test times out).
"""
from __future__ import annotations

import socket
import threading
import time


class FramedUpstream:
    def __init__(self, pieces: list[bytes], framing: str, content_type: str = "text/event-stream",
                 delay: float | None = None, awaited: set | None = None, keep_alive: bool = False,
                 hold_end: threading.Event | None = None, headers: dict | None = None):
        """Lockstep with the test after each piece in `awaited` (indices; default all), or, given
        `delay`, paced by the fake's own clock. With `keep_alive` a connection serves one answer
        after another (chunked and Content-Length bodies), as real servers do; with `hold_end` a chunked
        body's closing chunk waits until the test sets it."""
        self.pieces, self.framing, self.content_type, self.delay = pieces, framing, content_type, delay
        self.awaited = set(range(len(pieces))) if awaited is None else awaited
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.sent = 0  # pieces written
        self.go = threading.Semaphore(0)  # the test releases one per piece it saw
        self.closed = threading.Event()  # the answer ended (sent whole, or the gateway hung up)
        self.requests: list[bytes] = []
        self.keep_alive, self.hold_end, self.connections = keep_alive, hold_end, 0  # connections accepted
        self.headers = headers or {}  # more response headers
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _read_request(self, conn: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            more = conn.recv(65536)
            if not more:
                raise ConnectionResetError("the client closed the connection")
            data += more
        head, _, body = data.partition(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        while len(body) < length:
            body += conn.recv(65536)
        self.requests.append(body)

    def _answer(self, conn: socket.socket) -> None:
        try:
            self._answer_one(conn)
            while self.keep_alive and self.framing != "close":
                self._answer_one(conn)
        except OSError:
            pass
        finally:
            self.closed.set()
            conn.close()

    def _answer_one(self, conn: socket.socket) -> None:
        self._read_request(conn)
        head = f"HTTP/1.1 200 OK\r\nContent-Type: {self.content_type}\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in self.headers.items())
        if self.framing == "chunked":
            head += "Transfer-Encoding: chunked\r\n"
        elif self.framing == "length":
            head += f"Content-Length: {sum(len(p) for p in self.pieces)}\r\n"
        else:
            head = head.replace("HTTP/1.1", "HTTP/1.0") + "Connection: close\r\n"
        conn.sendall(head.encode() + b"\r\n")
        for i, piece in enumerate(self.pieces):
            if self.delay:
                time.sleep(self.delay)  # the fake's own pacing, not a test wait
            conn.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if self.framing == "chunked" else piece)
            self.sent += 1
            if self.delay is None and i in self.awaited and not self.go.acquire(timeout=10):
                raise TimeoutError("the piece never reached the client")
        if self.framing == "chunked":
            if self.hold_end is not None:
                self.hold_end.wait(10)
            conn.sendall(b"0\r\n\r\n")

    def close(self) -> None:
        self.listener.close()
