"""The server under hostile traffic (SPEC §18, service/server/guard.py): bodies over MAX_CONTENT_LENGTH
refused before they are read, request heads that never end closed, connections per address capped."""
from __future__ import annotations

import json
import os
import select
import socket
import time

import pytest

from service.server import guard, server
from tests.conftest import Live
from tests.helpers import wait_for

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the server's part: no database needed
LIMIT = 4194304  # MAX_CONTENT_LENGTH's default


@pytest.fixture
def guarded(make_app, monkeypatch, tmp_path):
    """Serve an app as service.server serves it (server.make_server); `received` counts the bytes
    the server read from its clients, `spooled()` the sizes of the temporary files waitress wrote
    request bodies to (kept in a directory of the test's instead of unlinked at once)."""
    from waitress.buffers import TempfileBasedBuffer

    made = []
    received = []
    recv = guard.GuardedChannel.recv
    spool = tmp_path / "spool"
    spool.mkdir()

    def counting(self, size):
        data = recv(self, size)
        received.append(len(data))
        return data

    def newfile(self):
        return open(spool / f"body{len(list(spool.iterdir()))}", "w+b")

    monkeypatch.setattr(guard.GuardedChannel, "recv", counting)
    monkeypatch.setattr(TempfileBasedBuffer, "newfile", newfile)

    def start(**conf):
        app = make_app(WAITRESS_THREADS=8, **conf)
        live = Live(app, server=server.make_server(app, app.config, 20000, host="127.0.0.1", port=0))
        live.received = received
        live.spooled = lambda: [path.stat().st_size for path in spool.iterdir()]
        made.append(live)
        return live

    yield start
    for live in made:
        live.close()


def connect(live, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket()
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", int(live.port)))
    return sock


def read_answer(sock: socket.socket, timeout: float = 10) -> bytes:
    """Everything the server sends until it closes (a reset counts as closed)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def get(live, source: str = "127.0.0.1", path: str = "/healthz") -> bytes:
    with connect(live, source) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        return read_answer(sock)


def closed_within(sock: socket.socket, seconds: float, every: float = 0, line: bytes = b"") -> float | None:
    """Seconds until the server closes `sock` (None: still open after `seconds`), sending `line`
    every `every` seconds meanwhile."""
    start = time.monotonic()
    deadline = start + seconds
    while (now := time.monotonic()) < deadline:
        wait = min(deadline - now, every or deadline - now)
        if select.select([sock], [], [], wait)[0]:
            try:
                if sock.recv(65536) == b"":
                    return time.monotonic() - start
            except ConnectionResetError:
                return time.monotonic() - start
        elif line:
            try:
                sock.sendall(line)
            except (BrokenPipeError, ConnectionResetError):
                return time.monotonic() - start
    return None


def contract_413(answer: bytes) -> None:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), answer[:300]
    error = json.loads(body)
    assert error["success"] is False and error["error"]["code"] == "request_too_large"


HEAD = (b"POST /api/v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")


def flood(sock: socket.socket, piece: bytes, most: int) -> tuple[int, bytes]:
    """Send `piece` over and over (no Authorization, as an attacker would) until the server
    answers or drops the connection, or `most` bytes went; (bytes the client got to send, answer)."""
    sock.setblocking(False)
    sent, answer = 0, b""
    while sent < most:
        readable, writable, _ = select.select([sock], [sock], [], 10)
        if readable:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            answer += chunk
            if not chunk or b"\r\n\r\n" in answer:
                break
        elif writable:
            try:
                sent += sock.send(piece)
            except (BrokenPipeError, ConnectionResetError):
                break
        else:
            break
    sock.setblocking(True)
    try:
        answer += read_answer(sock, 5)
    except OSError:
        pass
    return sent, answer


def test_a_declared_gigabyte_is_refused_before_its_body_is_read(guarded):
    live = guarded()
    with connect(live) as sock:
        sock.sendall(HEAD + b"Content-Length: 999999999\r\n\r\n")
        sent, answer = flood(sock, b"\0" * 65536, 1 << 30)
    read = sum(live.received)
    print(f"declared 999999999: the client sent {sent} bytes, the server read {read}, "
          f"temporary files {live.spooled()}")
    assert read < 300_000, read  # the head, and at most waitress's header limit of what followed
    assert live.spooled() == []  # nothing written anywhere
    assert sent < 5_000_000, sent  # what loopback's socket buffers took, at most
    if answer:  # the answer may be lost to the reset of a connection closed with unread data
        contract_413(answer)


def test_the_messages_doors_413_is_in_anthropics_shape(guarded):
    """The server's own refusal of an oversized body on the Messages door is an Anthropic error,
    as every other error of that door is: `request_too_large`, Anthropic's documented type for a
    413 (the SDK's typed union of error objects leaves it out, so the shape is checked here)."""
    live = guarded()
    with connect(live) as sock:
        sock.sendall(HEAD.replace(b"/api/v1/chat/completions", b"/v1/messages") + b"Content-Length: 999999999\r\n\r\n")
        head, _, body = read_answer(sock).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), head
    error = json.loads(body)
    assert error == {"type": "error", "error": {"type": "request_too_large", "message": error["error"]["message"]},
                     "request_id": error["request_id"]}
    assert error["request_id"].startswith("req_") and f"request-id: {error['request_id']}".encode() in head.lower()
    assert "larger than the limit" in error["error"]["message"]


def test_the_413_is_the_contract_body_when_the_client_waits(guarded):
    live = guarded()
    with connect(live) as sock:
        sock.sendall(HEAD + b"Content-Length: 999999999\r\n\r\n")
        contract_413(read_answer(sock))
    assert sum(live.received) < 1000


def test_a_chunked_gigabyte_is_cut_at_the_limit(guarded):
    live = guarded()
    piece = b"10000\r\n" + b"\0" * 65536 + b"\r\n"
    with connect(live) as sock:
        sock.sendall(HEAD + b"Transfer-Encoding: chunked\r\n\r\n")
        sent, answer = flood(sock, piece, 1 << 30)
    read = sum(live.received)
    print(f"chunked: the client sent {sent} bytes, the server read {read}, temporary files {live.spooled()}")
    # a chunked body's size is known only once read: the cut comes at the first wake-up past the
    # limit, and one wake-up may read several pieces (seen: up to 264 KB over on a loaded machine)
    assert read <= LIMIT + (1 << 20), read
    assert sum(live.spooled()) <= LIMIT + 1  # written: the limit at most
    assert read < 5_000_000 and sent < 16_000_000
    if answer:
        contract_413(answer)


def test_a_body_of_exactly_the_limit_reaches_the_app(guarded):
    live = guarded()
    with connect(live) as sock:
        sock.sendall(HEAD + b"Authorization: Bearer x\r\nConnection: close\r\n"
                     + f"Content-Length: {LIMIT}\r\n\r\n".encode() + b" " * LIMIT)
        answer = read_answer(sock)
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]  # read whole and judged by the app


def test_a_silent_head_is_closed_after_the_deadline(guarded):
    live = guarded(REQUEST_HEAD_TIMEOUT=1)
    with connect(live) as sock:
        took = closed_within(sock, 10)
    assert took is not None and 0.9 <= took <= 3.5, took


def test_a_trickling_head_is_closed_after_the_deadline(guarded):
    live = guarded(REQUEST_HEAD_TIMEOUT=1)
    with connect(live) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        took = closed_within(sock, 10, every=0.1, line=b"X-Slow: 1\r\n")
    assert took is not None and 0.9 <= took <= 3.5, took


def test_the_deadline_spares_a_kept_alive_connection_between_requests(guarded):
    live = guarded(REQUEST_HEAD_TIMEOUT=1)
    with connect(live) as sock:
        for _ in range(2):
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            sock.settimeout(5)
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
            assert closed_within(sock, 2.5) is None  # idle, no head begun: waitress's idle timeout's


def test_connections_over_the_cap_are_closed_at_once(guarded):
    live = guarded(MAX_CONNECTIONS_PER_IP=3)
    held = [connect(live) for _ in range(3)]
    for sock in held:
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")  # a head begun, never finished
    wait_for(lambda: live.server.guard.open.get("127.0.0.1") == 3)
    with connect(live) as extra:
        assert closed_within(extra, 5) is not None
    assert live.server.guard.refused == 1
    assert get(live, "127.0.0.2").startswith(b"HTTP/1.1 200")  # another address is served
    held.pop().close()
    wait_for(lambda: live.server.guard.open.get("127.0.0.1") == 2)
    assert get(live).startswith(b"HTTP/1.1 200")  # a place freed is taken again
    for sock in held:
        sock.close()


@pytest.mark.parametrize("conf", [{"TRUSTED_PROXY_ADDRESSES": ["127.0.0.0/30"]}, {"TRUSTED_PROXIES": 1}])
def test_trusted_proxies_are_not_capped(guarded, conf):
    live = guarded(MAX_CONNECTIONS_PER_IP=2, **conf)
    held = [connect(live) for _ in range(4)]
    for sock in held:
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
    assert get(live).startswith(b"HTTP/1.1 200")
    assert live.server.guard.refused == 0
    for sock in held:
        sock.close()


def test_the_cap_applies_beside_proxies_named_by_address(guarded):
    live = guarded(MAX_CONNECTIONS_PER_IP=1, TRUSTED_PROXIES=1, TRUSTED_PROXY_ADDRESSES=["127.0.0.2"])
    with connect(live) as one:
        one.sendall(b"GET /healthz HTTP/1.1\r\n")
        wait_for(lambda: live.server.guard.open.get("127.0.0.1") == 1)
        with connect(live) as two:
            assert closed_within(two, 5) is not None
        assert get(live, "127.0.0.2").startswith(b"HTTP/1.1 200")


SLOW = 10_000


def call_from_elsewhere(live, headers: str) -> float:
    """One call from 127.0.0.2 (connect, ask, read the whole answer): seconds it took."""
    start = time.monotonic()
    with connect(live, "127.0.0.2") as sock:
        sock.sendall(f"GET /api/v1/account HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n".encode())
        answer = read_answer(sock, 30)
    took = time.monotonic() - start
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    return took


def test_ten_thousand_slow_connections_from_one_address_do_not_lock_out_another(guarded):
    """10 000 connections from 127.0.0.1, each a partial head and a header line every second (in a
    child process: its 10 000 descriptors are not ours), with the defaults of MAX_CONNECTIONS,
    MAX_CONNECTIONS_PER_IP and REQUEST_HEAD_TIMEOUT: 50 calls from 127.0.0.2 while they connect,
    50 once they are all open; p99 < 1 s. Bounded: about 10 s, of which 3 s of paced calls."""
    import subprocess
    import sys

    from tests.conftest import auth
    from tests.process import ROOT

    live = guarded()
    headers = "".join(f"{k}: {v}\r\n" for k, v in auth().items())
    call_from_elsewhere(live, headers)  # the account exists before the flood
    child = subprocess.Popen([sys.executable, "-m", "tests.slowloris", str(live.port), str(SLOW), "1"],
                             cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        times = []
        for _ in range(50):  # from the start of the flood on, paced to span its connects and trickles (not awaiting anything)
            times.append(call_from_elsewhere(live, headers))
            time.sleep(0.06)
        line = child.stdout.readline()  # the child says when every connection is settled
        assert line.startswith("ready "), line
        ready = json.loads(line.split(" ", 1)[1])
        held = live.server.guard.open.get("127.0.0.1", 0)
        files = {"test process (server)": len(os.listdir("/proc/self/fd")),
                 "child (clients)": len(os.listdir(f"/proc/{child.pid}/fd"))}
        times += [call_from_elsewhere(live, headers) for _ in range(50)]  # and 50 with the flood settled
        held_after = live.server.guard.open.get("127.0.0.1", 0)
    finally:
        child.stdin.close()
        done = child.stdout.readline()
        child.wait(30)
    during, after = sorted(times[:50]), sorted(times[50:])
    for name, times in (("during the connects", during), ("settled", after)):
        print(f"{name}: p50 {times[24] * 1000:.1f} ms, p99 (of 50: the slowest) {times[-1] * 1000:.1f} ms")
    print(f"flood: {ready}\n{done.strip()}\nserver held {held} then {held_after} from 127.0.0.1, "
          f"refused {live.server.guard.refused}; descriptors open: {files}")
    assert ready["connected"] + ready["failed"] + ready["closed_by_server"] >= SLOW * 0.99
    assert held == held_after == 512  # the default cap, full the whole time
    # done when: with the 10 000 open, p99 of 50 calls (nearest rank: the slowest) under 1 s
    assert after[-1] < 1.0, after
    # while they connect (10 000 SYNs in a fraction of a second, more than the listen queue's 4096
    # places), a call's SYN may find the queue full and the kernel retry it a second later: one such
    # call of 50 is allowed on a loaded machine, no more
    assert during[-2] < 1.0, during


def test_a_declared_body_over_the_limit_gets_no_100_continue(guarded):
    live = guarded()
    with connect(live) as sock:
        sock.sendall(HEAD + b"Expect: 100-continue\r\nContent-Length: 999999999\r\n\r\n")
        contract_413(read_answer(sock))  # the first answer is the 413, not an invitation to send


def test_waitress_refusals_have_the_contract_body(guarded):
    live = guarded()
    with connect(live) as sock:  # a head over waitress's 256 KiB
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"a" * 300_000 + b"\r\n\r\n")
        head, _, body = read_answer(sock).partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == b"431" and json.loads(body)["error"]["code"] == "request_header_fields_too_large"
    assert head.startswith(b"HTTP/1.1 ") and b"\r\nConnection: close" in head  # (the head's version was never read)
    with connect(live) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n")
        head, _, body = read_answer(sock).partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == b"400" and json.loads(body)["success"] is False


def test_the_deployed_server_is_guarded(tmp_path, db_url):
    """`python -m service.server` reads the settings and serves with the guards."""
    from tests.conftest import SECRET
    from tests.process import Gateway

    gateway = Gateway({"DATABASE_URL": f"sqlite:///{tmp_path / 'g.db'}", "DATA_DIR": str(tmp_path),
                       "JWT_SECRET_KEY": SECRET, "WAITRESS_THREADS": "4", "PIN_WORKERS": "false",
                       "REQUEST_HEAD_TIMEOUT": "1", "MAX_CONNECTIONS_PER_IP": "2", "MAX_CONTENT_LENGTH": "1000"},
                      tmp_path / "gw.log")
    try:
        live = type("Deployed", (), {"port": gateway.port})
        with connect(live) as sock:
            sock.sendall(HEAD + b"Content-Length: 1001\r\n\r\n")
            contract_413(read_answer(sock))
        with connect(live) as one, connect(live) as two:
            took = closed_within(one, 10)
            assert took is not None and took <= 3.5  # the silent head's deadline
            wait_for(lambda: closed_within(two, 0.01) is not None)
        held = [connect(live) for _ in range(2)]
        with connect(live) as third:
            assert closed_within(third, 0.9) is not None  # closed at once, not by the deadline
        for sock in held:
            sock.close()
    finally:
        gateway.stop()
    lines = (tmp_path / "gw.log").read_text().splitlines()
    assert lines and all(isinstance(json.loads(line), dict) for line in lines)


def test_a_chunked_body_under_the_limit_reaches_the_app(guarded):
    from tests.conftest import auth

    live = guarded()
    body = json.dumps({"model": "nope", "messages": [{"role": "user", "content": "x" * 100_000}]}).encode()
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 7000]), body[i:i + 7000]) for i in range(0, len(body), 7000))
    with connect(live) as sock:
        sock.sendall(HEAD + f"Authorization: {auth()['Authorization']}\r\nConnection: close\r\n".encode()
                     + b"Transfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n")
        head, _, answer = read_answer(sock).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 404") and json.loads(answer)["error"]["code"] == "model_not_found"


def test_a_head_pipelined_behind_a_running_answer_waits_for_it(guarded):
    """A stream being answered is not cut because the client began its next request's head."""
    import threading

    live = guarded(REQUEST_HEAD_TIMEOUT=1)
    release = threading.Event()
    app = live.server.application

    def slow(environ, start_response):
        if environ["PATH_INFO"] == "/slow":
            start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
            return iter([b"a", release.wait(10) and b"b"])
        return app(environ, start_response)

    live.server.application = slow
    with connect(live) as sock:
        sock.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\n")  # the next head begun
        assert closed_within(sock, 2.5) is None  # past the deadline: still open, the answer running
        release.set()
        sock.sendall(b"Host: x\r\nConnection: close\r\n\r\n")
        answer = read_answer(sock)
    assert answer.count(b"HTTP/1.1 200") == 2


@pytest.mark.parametrize("host,exempt", [("10.0.0.5", True), ("::ffff:10.0.0.5", True), ("10.0.1.5", False),
                                         ("fe80::1%eth0", True), ("2001:db8::1", False), ("garbage", False)])
def test_which_peers_are_exempt(host, exempt, db_url):
    assert guard.Exempt(1, ["10.0.0.0/24", "fe80::/10"])(host) is exempt
    assert guard.Exempt(1, [])(host) is True  # TRUSTED_PROXIES without addresses: every peer
    assert guard.Exempt(0, [])(host) is False
