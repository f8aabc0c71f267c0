"""The bare relay's streams through one event loop thread instead of a thread per stream: what an
event-driven relay inside waitress allows (`make bench-streams`, beside bench/bare_proxy.py).

Flask and waitress as in the bare relay (the gateway's server settings, one CPU of its own); a
streamed call's worker thread sends the request upstream on a plain socket and reads the response
head, then hands the socket to the loop thread and waits: the loop reads every upstream socket
that has data (epoll), takes the chunked body's pieces out and writes each into its client's
waitress channel at once. No thread is woken per piece. `EVENT_RELAY_THREADED=1` relays the same
way from each stream's own thread instead, to tell the two costs apart (plain sockets against
requests and urllib3; one loop against a thread per stream). Bench only: chunked upstreams,
HTTP/1.1 clients, no TLS.
"""
from __future__ import annotations

import os
import selectors
import socket
import sys
import threading
from urllib.parse import urlsplit

from flask import Flask, Response, request
from waitress import create_server

from config import settings
from service.server import cpus, eventloop, server

UPSTREAM = urlsplit(os.environ["BARE_UPSTREAM"])
THREADED = os.environ.get("EVENT_RELAY_THREADED") == "1"
PARKED_CHECK = 0.01  # seconds between looks at a stream whose client's buffer is full


class Relayed:
    """One stream: its upstream socket, the chunked body not yet decoded, its client's channel."""

    def __init__(self, sock: socket.socket, rest: bytes, channel, watermark: int):
        self.sock, self.buf, self.channel, self.watermark = sock, rest, channel, watermark
        self.done = threading.Event()

    def pieces(self, data: bytes) -> tuple[list[bytes], bool]:
        """The chunked body's whole pieces so far, and whether the body ended."""
        self.buf += data
        out = []
        while (end := self.buf.find(b"\r\n")) >= 0:
            size = int(self.buf[:end].split(b";")[0], 16)
            if size == 0:
                return out, True
            if len(self.buf) < end + size + 4:
                break
            out.append(self.buf[end + 2:end + 2 + size])
            self.buf = self.buf[end + size + 4:]
        return out, False

    def feed(self, data: bytes) -> bool:
        """Write each whole piece to the client at once; True once the body ended or the client
        is gone."""
        pieces, ended = self.pieces(data)
        try:
            for piece in pieces:  # waitress's own chunked framing, as its task writes it
                self.channel.write_soon(b"%X\r\n%s\r\n" % (len(piece), piece))
        except Exception:  # the client hung up
            return True
        return ended

    def full(self) -> bool:
        return self.channel.total_outbufs_len > self.watermark


class Loop:
    """The thread that reads every stream's upstream socket."""

    def __init__(self):
        self.selector = selectors.DefaultSelector()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        self.selector.register(self.wake_r, selectors.EVENT_READ)
        self.lock, self.new, self.parked = threading.Lock(), [], []
        threading.Thread(target=self.run, name="event-relay", daemon=True).start()

    def add(self, stream: Relayed) -> None:
        with self.lock:
            self.new.append(stream)
        os.write(self.wake_w, b"x")

    def run(self) -> None:
        while True:
            for key, _ in self.selector.select(PARKED_CHECK if self.parked else None):
                if key.data is None:
                    self._take_new()
                else:
                    self._read(key.data)
            self._unpark()

    def _take_new(self) -> None:
        try:
            os.read(self.wake_r, 65536)
        except BlockingIOError:
            pass
        with self.lock:
            new, self.new = self.new, []
        for stream in new:
            stream.sock.setblocking(False)
            if stream.feed(b""):  # what came with the first pieces
                self._end(stream, registered=False)
            else:
                self.selector.register(stream.sock, selectors.EVENT_READ, stream)

    def _read(self, stream: Relayed) -> None:
        if stream.full():  # the client reads slower than the upstream writes: stop reading
            self.selector.unregister(stream.sock)
            self.parked.append(stream)
            return
        try:
            data = stream.sock.recv(65536)
        except BlockingIOError:
            return
        if not data or stream.feed(data):
            self._end(stream)

    def _unpark(self) -> None:
        waiting, self.parked = self.parked, []
        for stream in waiting:
            if not stream.channel.connected:
                self._end(stream, registered=False)
            elif stream.full():
                self.parked.append(stream)
            else:
                self.selector.register(stream.sock, selectors.EVENT_READ, stream)

    def _end(self, stream: Relayed, registered: bool = True) -> None:
        if registered:
            self.selector.unregister(stream.sock)
        stream.sock.close()
        stream.done.set()


def open_upstream(body: bytes) -> tuple[socket.socket, bytes]:
    """POST the body upstream on a new connection; the socket and what came after the head."""
    sock = socket.create_connection((UPSTREAM.hostname, UPSTREAM.port))
    sock.sendall(f"POST {UPSTREAM.path} HTTP/1.1\r\nHost: {UPSTREAM.netloc}\r\n"
                 f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    head = b""
    while b"\r\n\r\n" not in head:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("the upstream closed before its answer's head")
        head += data
    return sock, head.split(b"\r\n\r\n", 1)[1]


def relayed(loop: Loop, environ: dict, watermark: int):
    """The response body: its first pieces (waitress writes the head with them); the rest are
    written by the loop, or by this thread when THREADED."""
    sock, rest = open_upstream(request.get_data())
    stream = Relayed(sock, rest, environ["waitress.client_disconnected"].__self__, watermark)

    def body():
        first, ended = stream.pieces(b"")
        while not first and not ended:  # the first pieces come through waitress from this
            data = sock.recv(65536)  # thread, so that it writes the response head with them
            first, ended = stream.pieces(data) if data else ([], True)
        yield from first
        if ended:
            sock.close()
            return
        if THREADED:
            with sock:
                while not ended:
                    data = sock.recv(65536)
                    ended = not data or stream.feed(data)
            return
        loop.add(stream)
        stream.done.wait()

    return body()


def make_app(watermark: int) -> Flask:
    app = Flask(__name__)
    loop = None if THREADED else Loop()

    @app.post("/v1/chat/completions")
    def relay():
        return Response(relayed(loop, request.environ, watermark), content_type="text/event-stream")

    return app


def main() -> None:
    port, threads = int(sys.argv[1]), int(sys.argv[2])
    server.raise_descriptor_limit()
    conf = settings.load()
    sys.setswitchinterval(conf["SWITCH_INTERVAL"])
    if conf["PIN_WORKERS"]:
        cpus.pin(conf["DATA_DIR"])
    relay = create_server(make_app(conf["STREAM_BUFFER_BYTES"]), host="127.0.0.1", port=port, threads=threads,
                          asyncore_use_poll=True, connection_limit=10000, channel_request_lookahead=1,
                          outbuf_high_watermark=conf["STREAM_BUFFER_BYTES"])
    eventloop.install(relay)  # the gateway's server loop
    relay.run()


if __name__ == "__main__":
    main()
