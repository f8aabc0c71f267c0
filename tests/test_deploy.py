"""Two gateway processes behind nginx (deploy/): unbuffered streams, shared credits and limits,
and a graceful stop on SIGTERM."""
from __future__ import annotations

import json
import signal
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from core.chat import ChatRequest
from tests.conftest import SECRET, auth, token
from tests.fakes import openai as fake_openai
from tests.helpers import account, charges, holds, invariant
from tests.nginx import Nginx
from tests.process import Gateway
from tests.helpers import wait_for

pytestmark = pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
MSGS = [{"role": "user", "content": "count"}]
WORDS = [f" w{i}" for i in range(12)]


@pytest.fixture
def stack(make_app, db_url, redis_url, upstream, tmp_path):
    client = make_app().test_client()
    admin = auth("root", True)
    for row in ({"id": 1, "name": "paid", "cost_per_1k_tokens": "1", "max_output_tokens": 20},
                {"id": 2, "name": "free", "base_url": upstream.url_for("/free")},
                {"id": 3, "name": "slow", "base_url": upstream.url_for("/slow"), "cost_per_1k_tokens": "1"}):
        assert client.post("/api/admin/models", headers=admin,
                           json={"api": "openai", "base_url": upstream.url_for("/v1"), **row}).status_code == 201
    env = {"DATABASE_URL": db_url, "REDIS_URL": redis_url, "JWT_SECRET_KEY": SECRET, "DATA_DIR": str(tmp_path),
           "RATE_LIMIT_DEFAULT": "20/minute", "TRUSTED_PROXIES": "1", "SHUTDOWN_GRACE_SECONDS": "0.5",
           "WAITRESS_THREADS": "8"}
    gateways = [Gateway(env, tmp_path / f"gw{i}.log") for i in range(2)]
    nginx_dir = tmp_path / "nginx"
    nginx_dir.mkdir()
    proxy = Nginx(nginx_dir, [gw.port for gw in gateways])
    yield client, proxy, gateways
    proxy.stop()
    for gw in gateways:
        gw.stop()


def post(url, name="alice", **body):
    return requests.post(f"{url}/api/v1/chat/completions", timeout=30,
                         headers={"Authorization": f"Bearer {token(name)}"},
                         json={"messages": MSGS, **body})


def test_streams_through_nginx_arrive_unbuffered(stack, upstream):
    client, proxy, _ = stack
    client.post("/api/admin/accounts/alice/credits", json={"amount": 10}, headers=auth("root", True))
    fake = fake_openai.Stream(WORDS, lockstep=True)  # the next token only once the client has this one
    upstream.expect_request("/slow/chat/completions").respond_with_handler(fake.handler)
    r = requests.post(f"{proxy.url}/api/v1/chat/completions", stream=True, timeout=30,
                      headers={"Authorization": f"Bearer {token()}"},
                      json={"model": "slow", "messages": MSGS, "stream": True})
    arrived = []
    for line in r.iter_lines(chunk_size=1):
        if line.startswith(b"data: {") and json.loads(line[6:])["choices"] and \
                json.loads(line[6:])["choices"][0]["delta"].get("content"):
            arrived.append(json.loads(line[6:])["choices"][0]["delta"]["content"])
            fake.ack()
    assert arrived == WORDS and fake.missed == 0  # nginx and the gateway buffered nothing


def test_credits_hold_across_both_processes(stack, upstream):
    client, proxy, _ = stack
    model = type("M", (), {"max_output_tokens": 20})()
    per_call = ChatRequest(model, MSGS).prompt_bound(0) + 20
    upstream.expect_request("/v1/chat/completions").respond_with_json(
        fake_openai.completion("x", per_call - 20, 20))
    client.post("/api/admin/accounts/zed/credits", json={"amount": per_call * 10 / 1000}, headers=auth("root", True))
    with ThreadPoolExecutor(12) as pool:
        statuses = list(pool.map(lambda _: post(proxy.url, "zed", model="paid").status_code, range(19)))
    assert statuses.count(200) == 10 and statuses.count(402) == 9, statuses
    assert account("zed").balance == 0 and account("zed").held == 0 and len(charges("zed")) == 10
    invariant("zed")


def test_limits_hold_across_both_processes(stack, upstream):
    _, proxy, _ = stack
    upstream.expect_request("/free/chat/completions").respond_with_json(fake_openai.completion())
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: post(proxy.url, "lim", model="free"), range(60)))
    statuses = [a.status_code for a in answers]
    assert statuses.count(200) == 20 and statuses.count(429) == 40
    assert all(int(a.headers["Retry-After"]) >= 1 for a in answers if a.status_code == 429)


def test_sigterm_mid_stream_ends_cleanly_and_settles(stack, upstream):
    client, _, gateways = stack
    client.post("/api/admin/accounts/tess/credits", json={"amount": 10}, headers=auth("root", True))
    fake = fake_openai.Stream(WORDS * 3, delay=0.1)
    upstream.expect_request("/slow/chat/completions").respond_with_handler(fake.handler)
    gw = gateways[0]
    r = requests.post(f"{gw.url}/api/v1/chat/completions", stream=True, timeout=30,
                      headers={"Authorization": f"Bearer {token('tess')}"},
                      json={"model": "slow", "messages": MSGS, "stream": True})
    lines = r.iter_lines(chunk_size=1)
    content = 0
    while content < 3:
        line = next(lines)
        content += line.startswith(b"data: {") and b'"content":" w' in line
    gw.signal(signal.SIGTERM)
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{gw.url}/healthz", timeout=2)  # no new connections once stopping
    rest = [line for line in lines if line]
    last = json.loads(rest[-1][6:])
    assert last["error"]["code"] == "shutting_down"  # the grace (0.5 s) ends before the stream would
    assert gw.proc.wait(15) == 0
    wait_for(lambda: holds() == 0 and len(charges("tess")) == 1)
    row = charges("tess")[0]
    assert 3 <= row.completion_tokens < len(WORDS) * 3 and row.estimated
    invariant("tess")
