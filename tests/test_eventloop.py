"""The server's epoll loop (service/server/eventloop.py): a wake-up's work follows the connections that
changed, and waitress's behaviour is kept (keep-alive, pipelining, slow readers, idle timeouts)."""
from __future__ import annotations

import socket
import sys
import threading

import pytest
from waitress.channel import HTTPChannel

from tests.conftest import Live
from tests.helpers import wait_for


def hello(environ, start_response):
    """A plain WSGI app: `/big` answers 4 MiB in 64 KiB pieces, anything else a short body."""
    if environ["PATH_INFO"] == "/big":
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return (b"x" * 65536 for _ in range(64))
    if environ["PATH_INFO"] == "/empty":
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "0")])
        return []
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
    return [b"hello"]


@pytest.fixture
def serve():
    """A waitress server on the epoll loop, in a thread (conftest's Live); stopped afterwards."""
    servers = []

    def start(**adj):
        live = Live(hello, threads=4, connection_limit=1000, **adj)
        assert live.server.event_loop is not None  # on this loop, not waitress's own
        servers.append(live)
        return live.port

    start.servers = servers
    yield start
    for live in servers:
        live.close()
        # (seen once in a loaded CI run, not since: what the loop still held says why)
        assert not live.thread.is_alive(), f"the loop still runs, holding {list(live.server._map.values())}"


def get(sock: socket.socket, path: str = "/") -> None:
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())


def read_response(stream) -> bytes:
    """The body of the next response with a Content-Length on a connection's reader."""
    assert stream.readline().startswith(b"HTTP/1.1 200")
    length = None
    while (line := stream.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
    return stream.read(length)


def test_idle_connections_cost_a_call_nothing(serve, monkeypatch):
    """300 idle keep-alive connections: waitress's own poll() loop asks each of them whether it
    wants to read or write at every wake-up (thousands of questions for 20 calls); this loop asks
    only the connection that moved."""
    port = serve()
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(300)]
    caller = socket.create_connection(("127.0.0.1", port), timeout=10)
    reader = caller.makefile("rb")
    get(caller)
    assert read_response(reader) == b"hello"  # every idle connection accepted and looked at by now
    asked = []
    readable = HTTPChannel.readable
    monkeypatch.setattr(HTTPChannel, "readable", lambda self: asked.append(id(self)) or readable(self))
    for _ in range(20):
        get(caller)
        assert read_response(reader) == b"hello"
    assert asked and len(set(asked)) == 1, f"{len(set(asked))} connections asked for 20 calls on one"
    for sock in idle:
        sock.close()
    caller.close()


def test_pipelined_requests_are_answered_in_order(serve):
    port = serve()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock, sock.makefile("rb") as reader:
        sock.sendall(b"GET /a HTTP/1.1\r\nHost: t\r\n\r\nGET /b HTTP/1.1\r\nHost: t\r\n\r\n")
        assert read_response(reader) == b"hello"
        assert read_response(reader) == b"hello"
        get(sock)  # the connection is still served after both
        assert read_response(reader) == b"hello"


def test_a_response_head_leaves_with_the_first_piece_of_its_body(serve, monkeypatch):
    """One send (one segment, one wake-up of the client) where waitress made two: the head, then
    the body; a response with no body still sends its head, and later pieces go as they come."""
    sent = []
    send = HTTPChannel.send
    monkeypatch.setattr(HTTPChannel, "send", lambda self, data, *a, **k: sent.append(bytes(data)) or send(
        self, data, *a, **k))
    port = serve()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock, sock.makefile("rb") as reader:
        get(sock)
        assert read_response(reader) == b"hello"
        assert len(sent) == 1 and sent[0].startswith(b"HTTP/1.1 200") and sent[0].endswith(b"\r\n\r\nhello")
        get(sock, "/empty")
        assert read_response(reader) == b""
        assert len(sent) == 2 and sent[1].startswith(b"HTTP/1.1 200") and sent[1].endswith(b"\r\n\r\n")
        get(sock, "/big")
        data = b""
        while not data.endswith(b"0\r\n\r\n"):
            data += sock.recv(65536)
        assert data.count(b"x") == 64 * 65536
        assert sent[2].startswith(b"HTTP/1.1 200") and b"\r\n\r\n10000\r\nxxx" in sent[2]


def test_a_slow_reader_gets_a_body_larger_than_the_buffer_bound(serve, monkeypatch):
    """The worker thread waits for the loop to flush what it buffered past
    outbuf_high_watermark: the loop must be watching the connection for writability when the
    client reads at last."""
    full = threading.Event()
    wait = HTTPChannel._flush_outbufs_below_high_watermark

    def waiting(self):
        if self.total_outbufs_len > self.adj.outbuf_high_watermark:
            full.set()  # the worker is about to wait for the loop
        return wait(self)

    monkeypatch.setattr(HTTPChannel, "_flush_outbufs_below_high_watermark", waiting)
    port = serve(outbuf_high_watermark=64 * 1024)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        get(sock, "/big")
        assert full.wait(10)  # nothing read yet: the kernel's buffers and then waitress's filled up
        data = b""
        while not data.endswith(b"0\r\n\r\n"):  # chunked: the last chunk ends the body
            piece = sock.recv(65536)
            assert piece, "the server closed before the end of the body"
            data += piece
    assert data.count(b"x") == 64 * 65536


def test_an_idle_connection_is_closed_after_the_channel_timeout(serve):
    """waitress's maintenance marks idle connections to close; the loop must look at every
    connection after it ran, or the mark waits for an event that never comes."""
    port = serve(channel_timeout=1, cleanup_interval=1)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock, sock.makefile("rb") as reader:
        get(sock)
        assert read_response(reader) == b"hello"
        assert reader.read(1) == b""  # closed by the server (a timeout here raises)


def test_connections_that_come_and_go_are_answered_and_leave_nothing_registered(serve):
    """3000 connections from 20 threads: a third hang up at once, a third after asking, a third
    read their answer. Closed descriptors' numbers are reused at once by the next connections;
    each must be served as itself, and nothing stays registered once they are gone."""
    port = serve()
    answered, errors = [], []

    def client(count: int) -> None:
        for i in range(count):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=10) as sock, \
                        sock.makefile("rb") as reader:
                    if i % 3:
                        get(sock)
                    if i % 3 == 2:
                        answered.append(read_response(reader))
            except OSError as exc:
                errors.append(repr(exc))

    threads = [threading.Thread(target=client, args=(150,)) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert answered == [b"hello"] * 1000
    server = serve.servers[0].server
    wait_for(lambda: len(server.event_loop.registered) == len(server.event_loop.fixed))  # listener, trigger


def test_the_gateway_serves_on_this_loop(monkeypatch, tmp_path):
    """service.server's serve() puts the waitress server it creates on this loop before it runs."""
    from service.server import server as gateway

    class Installed(Exception):
        pass

    def install(server):
        assert hasattr(server, "run") and hasattr(server, "trigger")  # a waitress server, not yet run
        raise Installed

    monkeypatch.setattr(gateway.eventloop, "install", install)
    for key, value in {"DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}", "DATA_DIR": str(tmp_path),
                       "PORT": "0", "PIN_WORKERS": "false", "HOLD_REAP_INTERVAL_SECONDS": "0"}.items():
        monkeypatch.setenv(key, value)
    before = sys.getswitchinterval()
    try:
        with pytest.raises(Installed):
            gateway.serve()
    finally:
        sys.setswitchinterval(before)
