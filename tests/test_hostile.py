"""Hostile input: each answered with a 4xx in the contract body, never a 500, never a hung thread."""
from __future__ import annotations

import json
import threading

import pytest

from tests import schemas
from tests.conftest import auth
from tests.fakes import openai as fake_openai
from tests.helpers import holds

MSG = {"role": "user", "content": "hi"}


@pytest.fixture
def gw(client, add_model, upstream, topup):
    add_model(id=1, name="m", api="openai", base_url=upstream.url_for("/v1"), cost_per_1k_tokens="1")
    upstream.expect_request("/v1/chat/completions").respond_with_json(fake_openai.completion())
    topup("alice", 10)
    return client


def post_raw(client, data: bytes, content_type="application/json", **headers):
    return client.post("/api/v1/chat/completions", data=data, headers={**auth(), **headers},
                       content_type=content_type)


def refused(r, status=400):
    assert r.status_code == status, r.get_data(as_text=True)
    schemas.check("ErrorResponse", r.json)
    assert r.json["success"] is False
    return r.json["error"]


CASES = [
    ("deep nesting", b'{"model": "m", "messages": [], "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400),
    ("invalid utf-8", b'{"model": "m", "messages": [{"role": "user", "content": "\xff\xfe"}]}', 400),
    ("duplicate keys", b'{"model": "m", "model": "m", "messages": [{"role": "user", "content": "x"}]}', 400),
    ("NaN", b'{"model": "m", "temperature": NaN, "messages": [{"role": "user", "content": "x"}]}', 400),
    ("Infinity", b'{"model": "m", "top_p": -Infinity, "messages": [{"role": "user", "content": "x"}]}', 400),
    ("huge exponent", b'{"model": "m", "temperature": 1e999, "messages": [{"role": "user", "content": "x"}]}', 400),
    ("numbers as strings", b'{"model": "m", "max_tokens": "10", "messages": [{"role": "user", "content": "x"}]}',
     400),
    ("null everywhere", b'{"model": null, "id": null, "messages": null, "temperature": null}', 400),
    ("null messages", b'{"model": "m", "messages": [null, null]}', 400),
    ("null content parts", b'{"model": "m", "messages": [{"role": "user", "content": [null]}]}', 400),
    ("truncated", b'{"model": "m", "messages": [', 400),
    ("bare string", b'"hello"', 400),
    ("model as object", b'{"model": {"$ne": 1}, "messages": [{"role": "user", "content": "x"}]}', 400),
    ("id as float", b'{"id": 1.5, "messages": [{"role": "user", "content": "x"}]}', 400),
    ("huge body", b'{"model": "m", "messages": [{"role": "user", "content": "' + b"x" * 5_000_000 + b'"}]}', 413),
]


@pytest.mark.parametrize("name,data,status", CASES, ids=[c[0] for c in CASES])
def test_hostile_bodies(gw, upstream, name, data, status):
    refused(post_raw(gw, data), status)
    assert not upstream.log and holds() == 0


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x"])
def test_wrong_content_type(gw, content_type):
    body = json.dumps({"model": "m", "messages": [MSG]}).encode()
    error = refused(post_raw(gw, body, content_type), 415)
    assert error["code"] == "invalid_content_type"


def test_ten_thousand_messages(gw, upstream):
    body = json.dumps({"model": "m", "messages": [MSG] * 10_000}).encode()
    error = refused(post_raw(gw, body))
    assert error["code"] == "invalid_messages" and "2048" in error["message"]


def test_header_injection_never_reaches_upstream_headers(gw, upstream):
    body = {"model": "m", "messages": [{"role": "user", "content": "x\r\nX-Injected: 1"}],
            "user": "u\r\nX-Injected: 1\r\n\r\nGET / HTTP/1.1"}
    r = gw.post("/api/v1/chat/completions", json=body, headers={**auth(), "X-Request-ID": "abc"})
    assert r.status_code == 200
    sent = upstream.log[0][0]
    assert "X-Injected" not in sent.headers and sent.get_json()["user"] == body["user"]
    r = gw.post("/api/v1/chat/completions", json={**body, "model": "m\r\nX-Injected: 1"}, headers=auth())
    refused(r, 404)


def test_nothing_hangs(gw):
    """Each hostile body is answered from a worker thread in bounded time."""
    done = []

    def run():
        for _, data, _ in CASES[:6]:
            done.append(post_raw(gw, data).status_code)

    worker = threading.Thread(target=run)
    worker.start()
    worker.join(30)
    assert not worker.is_alive() and all(400 <= s < 500 for s in done)
