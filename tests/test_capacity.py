"""Staying up under real traffic (issue 16): thousands of connections, caps on calls in flight that
hold across processes, clients that stop reading, and a supervisor that does not spin."""
from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from werkzeug import Response

from tests.conftest import SECRET, auth, token
from tests.fakes import openai as fake_openai
from tests.fakes.framed import FramedUpstream
from tests.helpers import charges, holds, invariant, wait_for
from tests.process import ROOT, Gateway, free_port

HI = [{"role": "user", "content": "hi"}]


def base_env(db_url, tmp_path, **extra) -> dict:
    return {"DATABASE_URL": db_url, "JWT_SECRET_KEY": SECRET, "DATA_DIR": str(tmp_path), **extra}


def post(url: str, name: str = "alice", stream: bool = False, **kwargs):
    return requests.post(f"{url}/api/v1/chat/completions", timeout=30, headers=auth(name),
                         json={"model": "slow", "messages": HI, "stream": stream}, **kwargs)


@pytest.fixture
def hanging(add_model, upstream, topup):
    """Model `slow` whose answers wait until `release` is set (`release.arrived` counts the calls
    the fake holds); alice has 100 credits."""
    release = threading.Event()
    release.arrived = []

    def hang(request):
        release.arrived.append(request)
        release.wait(30)
        return Response(json.dumps(fake_openai.completion("ok", 5, 5)), content_type="application/json")

    upstream.expect_request("/v1/chat/completions").respond_with_handler(hang)
    add_model(id=10, name="slow", api="openai", base_url=upstream.url_for("/v1"), cost_per_1k_tokens="1")
    topup("alice", 100)
    yield release
    release.set()


def test_account_cap_holds_across_two_processes_and_frees_after_a_kill(make_app, db_url, tmp_path, hanging,
                                                                       redis_url, upstream):
    env = base_env(db_url, tmp_path, REDIS_URL=redis_url, MAX_CONCURRENT_PER_ACCOUNT="3",
                   CONCURRENCY_LEASE_SECONDS="2", HOLD_TTL_SECONDS="3", HOLD_REAP_INTERVAL_SECONDS="1",
                   RATE_LIMIT_DEFAULT="100000/minute")
    a, b = Gateway(env, tmp_path / "a.log"), Gateway(env, tmp_path / "b.log")
    try:
        for gw in (a, a, b):  # three calls in flight: two on A (killed below, so they fail), one on B
            threading.Thread(target=post_until_dropped, args=(gw.url,), daemon=True).start()
        wait_for(lambda: len(hanging.arrived) == 3, timeout=15)
        refused = post(b.url)
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["code"] == "concurrency_limit_exceeded"
        assert "account alice" in refused.json()["error"]["message"] and "3" in refused.json()["error"]["message"]
        a.signal(signal.SIGKILL)  # A dies holding two slots; their leases end on their own
        a.proc.wait(5)
        killed = time.monotonic()
        wait_for(lambda: slot_free(b.url), timeout=15)
        assert time.monotonic() - killed < 2 + 3  # within the lease (2 s) and a little
    finally:
        hanging.set()
        a.stop()
        b.stop()


def post_until_dropped(url: str) -> None:
    """A call whose gateway may be killed under it: a dropped connection is expected."""
    try:
        post(url)
    except requests.ConnectionError:
        pass


def slot_free(url: str) -> bool:
    """Whether alice may start a call: one that asks for more than she owns gets past the
    concurrency cap (429 while no slot is free) and is then refused by credits (402) before any
    upstream call, giving its slot straight back."""
    r = requests.post(f"{url}/api/v1/chat/completions", timeout=30, headers=auth("alice"),
                      json={"model": "slow", "messages": HI, "max_tokens": 10 ** 9})
    assert r.status_code in (402, 429), r.text
    return r.status_code == 402


def test_key_cap_in_process(client, hanging, upstream, admin_headers, live):
    made = client.post("/api/admin/keys", headers=admin_headers, json={"account": "alice", "max_concurrent": 1})
    key = made.json["key"]
    first = threading.Thread(target=lambda: requests.post(
        f"{live.url}/api/v1/chat/completions", timeout=30, headers={"Authorization": f"Bearer {key}"},
        json={"model": "slow", "messages": HI}), daemon=True)
    first.start()
    wait_for(lambda: len(hanging.arrived) == 1, timeout=10)
    r = requests.post(f"{live.url}/api/v1/chat/completions", timeout=30, headers={"Authorization": f"Bearer {key}"},
                      json={"model": "slow", "messages": HI})
    assert r.status_code == 429 and r.json()["error"]["code"] == "concurrency_limit_exceeded"
    assert f"id {made.json['id']}" in r.json()["error"]["message"] and r.headers["Retry-After"] == "1"
    other = threading.Thread(target=post, args=(live.url,), daemon=True)  # the account itself is not capped at 1
    other.start()
    wait_for(lambda: len(hanging.arrived) == 2, timeout=10)
    hanging.set()
    first.join(30)
    other.join(30)
    r = requests.post(f"{live.url}/api/v1/chat/completions", timeout=30, headers={"Authorization": f"Bearer {key}"},
                      json={"model": "slow", "messages": HI})
    assert r.status_code == 200  # the slot came back when the first call ended
    invariant("alice")


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_more_than_1100_open_connections_keep_it_answering(make_app, db_url, tmp_path, add_model, upstream, topup):
    make_app()
    add_model(id=10, name="slow", api="openai", base_url=upstream.url_for("/v1"), cost_per_1k_tokens="1")
    topup("alice", 10)
    upstream.expect_request("/v1/chat/completions").respond_with_json(fake_openai.completion("ok", 5, 5))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(soft, 4096), hard), hard))
    # its defaults (1024 threads), but for the per-address cap: these 1150 come from one address
    gw = Gateway(base_env(db_url, tmp_path, MAX_CONNECTIONS_PER_IP="0"), tmp_path / "gw.log")
    idle = []
    try:
        for _ in range(1150):  # each one half a request: the server holds it open, waiting
            sock = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            idle.append(sock)
        assert requests.get(f"{gw.url}/healthz", timeout=10).status_code == 200
        assert post(gw.url).status_code == 200
        assert gw.proc.poll() is None
    finally:
        for sock in idle:
            sock.close()
        gw.stop()
    assert "filedescriptor out of range" not in (tmp_path / "gw.log").read_text()


def test_a_client_that_stops_reading_is_cut_and_billed_for_what_was_written(make_app, db_url, tmp_path, add_model,
                                                                          upstream, topup):
    make_app()
    piece = b"data: " + json.dumps({"id": "u", "object": "chat.completion.chunk", "created": 1, "model": "u",
                                    "choices": [{"index": 0, "delta": {"content": "x" * 1000},
                                                 "finish_reason": None}]}).encode() + b"\n\n"
    big = FramedUpstream([piece] * 3000 + [b"data: [DONE]\n\n"], "chunked", awaited=set())
    add_model(id=11, name="big", api="openai", base_url=big.url + "/v1", cost_per_1k_tokens="1")
    add_model(id=10, name="slow", api="openai", base_url=upstream.url_for("/v1"), cost_per_1k_tokens="1")
    upstream.expect_request("/v1/chat/completions").respond_with_json(fake_openai.completion("ok", 5, 5))
    topup("alice", 1000)
    gw = Gateway(base_env(db_url, tmp_path, WAITRESS_THREADS="2", CLIENT_WRITE_TIMEOUT="2",
                          STREAM_BUFFER_BYTES="65536"), tmp_path / "gw.log")
    stalled = []
    try:
        for _ in range(2):  # both worker threads pinned by clients that never read
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", gw.port))
            body = json.dumps({"model": "big", "stream": True, "messages": HI}).encode()
            sock.sendall(b"POST /api/v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         + f"Authorization: Bearer {token()}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
            stalled.append(sock)
        wait_for(lambda: len(big.requests) == 2, timeout=10)
        started = time.monotonic()
        served = post(gw.url)  # waits for a thread: served once the stalled streams are cut
        assert served.status_code == 200 and time.monotonic() - started < 20
        wait_for(lambda: len(charges("alice")) == 3 and holds() == 0, timeout=20)
    finally:
        for sock in stalled:
            sock.close()
        big.close()
        gw.stop()
    cut = [e for e in charges("alice") if e.model == "big"]
    assert len(cut) == 2 and all(e.estimated and 0 < e.completion_tokens < 3000 for e in cut)
    assert "read nothing" in (tmp_path / "gw.log").read_text()
    invariant("alice")


def test_calls_waiting_on_the_provider_hold_no_pooled_connection(make_app, live_factory, hanging):
    """Four non-streaming calls wait on a slow provider with two pooled connections: each gave
    its connection back once it held, so all four reach the provider and the account page is
    answered meanwhile (before: the third call waited for the pool while two slept on theirs)."""
    live = live_factory(make_app(DB_POOL_SIZE=2))
    results = []
    threads = [threading.Thread(target=lambda: results.append(post(live.url))) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: len(hanging.arrived) == 4, timeout=10)
        page = requests.get(f"{live.url}/api/v1/account", headers=auth(), timeout=10)
        assert page.status_code == 200
    finally:
        hanging.set()
        for t in threads:
            t.join(30)
    assert [r.status_code for r in results] == [200] * 4
    wait_for(lambda: len(charges("alice")) == 4 and holds() == 0)
    invariant("alice")


def _connections_held(pid: int, port: int) -> int:
    """Established TCP connections to `port` whose socket process `pid` holds (/proc: inodes)."""
    inodes = set()
    for line in open("/proc/net/tcp").read().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == "01":
            inodes.add(fields[9])
    held = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        held += link.startswith("socket:[") and link[8:-1] in inodes
    return held


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_two_workers_share_new_connections(db_url, tmp_path):
    """Each worker has its own socket on the port (SO_REUSEPORT), so the kernel spreads
    connections between them (one shared socket gave all 500 streams of a run to one worker)."""
    gw = Gateway(base_env(db_url, tmp_path, WORKERS="2"), tmp_path / "gw.log")
    conns = []
    try:
        children = f"/proc/{gw.proc.pid}/task/{gw.proc.pid}/children"
        wait_for(lambda: len(open(children).read().split()) == 2, timeout=20)
        workers = [int(pid) for pid in open(children).read().split()]
        for _ in range(40):
            sock = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")  # accepted and answered
            conns.append(sock)
        counts = [_connections_held(pid, gw.port) for pid in workers]
        assert sum(counts) == 40 and min(counts) >= 5, counts  # P(< 5 of 40 | fair) ~ 1e-7
    finally:
        for sock in conns:
            sock.close()
        gw.stop()


def test_supervisor_backs_off_then_gives_up(tmp_path):
    port = free_port()
    env = {**os.environ, "PORT": str(port), "HOST": "127.0.0.1", "WORKERS": "2", "DATA_DIR": str(tmp_path),
           "JWT_SECRET_KEY": SECRET, "DATABASE_URL": "postgresql://postgres@127.0.0.1:1/nothing",
           "WORKER_MAX_FAILURES": "4", "WORKER_BACKOFF": "0.2", "WORKER_MIN_UPTIME": "10"}
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "service.server"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    elapsed = time.monotonic() - started
    log = proc.stdout + proc.stderr
    assert proc.returncode == 1
    assert "giving up" in log and "Connection refused" in log.split("giving up", 1)[1]
    assert log.count("starting another") <= 3  # not hundreds of restarts
    assert elapsed >= 0.2 + 0.4  # the backoff was waited out
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()  # the port is closed again


def test_the_server_sets_the_switch_interval(monkeypatch, tmp_path):
    """SWITCH_INTERVAL reaches the interpreter before waitress starts: every thread waiting for the
    interpreter wakes once per interval, and at Python's 5 ms with a thousand streams open those
    wake-ups cost more CPU than the relaying (bench/streams.md)."""
    from service.server import server

    class Started(Exception):
        pass

    def create_server(*args, **kwargs):
        raise Started

    monkeypatch.setattr(server, "create_server", create_server)  # waitress's, not ours: stop there
    for key, value in base_env(f"sqlite:///{tmp_path / 'db.sqlite'}", tmp_path, SWITCH_INTERVAL="0.037",
                               HOLD_REAP_INTERVAL_SECONDS="0", PIN_WORKERS="false").items():
        monkeypatch.setenv(key, value)
    before = sys.getswitchinterval()
    try:
        with pytest.raises(Started):
            server.serve()
        assert sys.getswitchinterval() == pytest.approx(0.037)
    finally:
        sys.setswitchinterval(before)


def _cpus_of(pid: int) -> set[int]:
    """The CPUs any thread of a process may run on."""
    return set().union(*(os.sched_getaffinity(int(tid)) for tid in os.listdir(f"/proc/{pid}/task")))


def _workers_of(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_each_serving_process_runs_on_a_cpu_of_its_own(tmp_path):
    """Worker processes claim CPUs through files in their data directory: the workers of one
    gateway, and other gateways on the host, each run every thread on a CPU no other holds; with
    every CPU claimed a process runs unpinned; a CPU comes free when its process ends."""
    allowed = os.sched_getaffinity(0)
    assert len(allowed) >= 2, "this test needs two CPUs"
    env = base_env(f"sqlite:///{tmp_path / 'db.sqlite'}", tmp_path, HOLD_REAP_INTERVAL_SECONDS="0")
    first = Gateway({**env, "WORKERS": "2"}, tmp_path / "first.log")
    try:
        def both_pinned():  # a worker pins itself before it serves; the other may still start
            workers = _workers_of(first.proc.pid)
            return len(workers) == 2 and all(len(_cpus_of(pid)) == 1 for pid in workers)

        wait_for(both_pinned, 20)
        pinned = [_cpus_of(pid) for pid in _workers_of(first.proc.pid)]
        assert pinned[0] != pinned[1]
        taken = pinned[0] | pinned[1]
        second = Gateway(env, tmp_path / "second.log")
        try:
            if len(allowed) == 2:  # every CPU claimed: the kernel places it
                assert _cpus_of(second.proc.pid) == allowed
            else:
                assert len(_cpus_of(second.proc.pid)) == 1 and not _cpus_of(second.proc.pid) & taken
        finally:
            second.stop()
    finally:
        first.stop()
    third = Gateway(env, tmp_path / "third.log")
    try:
        assert len(_cpus_of(third.proc.pid)) == 1  # the first gateway's CPUs came free
    finally:
        third.stop()
    off = Gateway({**env, "PIN_WORKERS": "false"}, tmp_path / "off.log")
    try:
        assert _cpus_of(off.proc.pid) == allowed
    finally:
        off.stop()
