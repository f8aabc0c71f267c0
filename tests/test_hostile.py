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


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br"])
def test_a_compressed_body_is_a_415_saying_so(gw, upstream, encoding):
    """A compressed body (gzip shown; the others alike) used to be read as text and refused as
    'not a JSON object'; it is refused by what it is, and never reaches the upstream."""
    import gzip

    body = gzip.compress(json.dumps({"model": "m", "messages": [MSG]}).encode())
    error = refused(post_raw(gw, body, **{"Content-Encoding": encoding}), 415)
    assert error["code"] == "unsupported_content_encoding" and encoding in error["message"]
    assert not upstream.log and holds() == 0


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


FORGED = '/v1/responses/%00%0A{"status":201,"account":"FORGED"}'


@pytest.fixture
def log_lines():
    """Every log record of the test as the server writes it (service/server/logsink.JsonLines)."""
    import io
    import logging

    from service.server.logsink import JsonLines

    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonLines())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield lambda: out.getvalue().splitlines()
    root.removeHandler(handler)
    root.setLevel(level)


def test_a_control_character_in_a_path_is_a_4xx_and_forges_no_log_line(client, log_lines):
    r = client.get(FORGED, headers=auth())
    assert 400 <= r.status_code < 500, r.get_data(as_text=True)
    schemas.check("ErrorResponse", r.json)
    lines = [json.loads(line) for line in log_lines()]  # each line one JSON object, or this fails
    assert lines and all(isinstance(line, dict) for line in lines)
    assert not [line for line in lines if line.get("account") == "FORGED" or line.get("status") == 201]
    access = [line for line in lines if line.get("path", "").startswith("/v1/responses/")]
    assert [line["path"] for line in access] == ['/v1/responses/\x00\n{"status":201,"account":"FORGED"}']


def test_a_traceback_is_one_line_too(log_lines):
    import logging

    try:
        raise RuntimeError('bad\n{"status": 201}')
    except RuntimeError:
        logging.getLogger("tollgate").exception("unhandled error on GET /x\n{\"status\": 201}")
    (line,) = log_lines()
    record = json.loads(line)
    assert record["level"] == "error" and "RuntimeError" in record["exception"]


@pytest.mark.parametrize("where", ["path", "query", "header"])
def test_a_nul_anywhere_in_the_head_is_400(client, where):
    path, query, headers = "/api/v1/usage", {}, auth()
    if where == "path":
        path = "/v1/responses/resp_%00x"
    elif where == "query":
        query = {"before": "1\x00"}
    else:
        headers["X-Request-ID"] = "a\x00b"
    r = client.get(path, query_string=query, headers=headers)
    assert refused(r)["code"] == "invalid_request"


def test_no_path_query_or_header_value_is_a_5xx(client, admin_headers):
    """Property: any text in a path segment, query values or header values is answered below 500,
    on every route that takes one, user and admin, with GET, DELETE, POST and PATCH."""
    from urllib.parse import quote

    from hypothesis import HealthCheck, given, settings, strategies as st

    text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=60)
    header_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n",
                                        max_codepoint=0xff), max_size=60)
    routes = ["/v1/responses/{}", "/v1/responses/{}/input_items", "/api/v1/models/{}", "/api/v1/logs/{}",
              "/api/admin/accounts/{}", "/api/admin/keys/{}", "/api/admin/models/{}", "/api/admin/models/{}/deployments",
              "/api/admin/accounts/{}/usage/summary", "/api/admin/accounts/{}/usage/export.csv",
              "/api/v1/usage/summary", "/api/v1/usage", "/api/v1/usage/export.csv", "/api/admin/usage/export.csv",
              "/api/v1/logs", "/api/admin/audit", "/api/admin/logs", "/console/{}", "/{}", "/api/v1/account"]
    params = st.sampled_from(["limit", "before", "from", "to", "group_by", "model", "status", "key_id",
                              "account", "actor", "action", "format"])
    names = st.sampled_from(["X-Request-ID", "Accept-Language", "Idempotency-Key", "Cache-Control", "Authorization",
                             "Accept", "Cookie", "X-Forwarded-For", "Origin"])

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(route=st.sampled_from(routes), segment=text, query=st.dictionaries(params, text, max_size=3),
           headers=st.dictionaries(names, header_text, max_size=3), admin=st.booleans(),
           method=st.sampled_from(["GET", "DELETE", "POST", "PATCH"]))
    def check(route, segment, query, headers, admin, method):
        path = route.format(quote(segment, safe="") or "x")
        r = client.open(path, method=method, query_string=query, data=b"{}", content_type="application/json",
                        headers={**(admin_headers if admin else auth()), **headers})
        assert r.status_code < 500, (method, path[:200], query, headers, r.get_data(as_text=True)[:300])

    check()


def test_raw_bytes_in_the_head_are_never_a_5xx(make_app):
    """Through the server as deployed (waitress, then the app): bytes no client library would send
    (invalid UTF-8, raw controls, NUL, over-long encodings) in the path, the query and header values."""
    import socket

    from service.server import server
    from tests.conftest import Live

    app = make_app(WAITRESS_THREADS=4)
    live = Live(app, server=server.make_server(app, app.config, 20000, host="127.0.0.1", port=0))
    paths = [b"/v1/responses/\xff\xfe", b"/v1/responses/%ff%fe", b"/api/v1/usage?from=%ff", b"/api/v1/usage?limit=\xff",
             b"/v1/responses/\x00x", b"/v1/responses/a\x01b", b"/api/v1/models/%c0%80", b"/api/v1/logs/%00",
             b"/api/v1/usage/summary?to=%00", b"//", b"/api/v1/usage?limit=99999999999999999999",
             b"/api/v1/logs?limit=-5&before=abc", b"/api/v1/usage?before=1e400", b"*", b"/v1/responses/" + b"a" * 60000]
    extras = [b"", b"X-Request-ID: \xff\xfe\r\n", b"Accept-Language: \xe4\xb8\xad\r\n", b"Idempotency-Key: \x7f\r\n",
              b"X-Forwarded-For: \xff\r\n", b"Cookie: a=\xff\r\n", b"Accept-Language: zh\x01\r\n"]
    token = auth()["Authorization"].encode()
    answered = []
    try:
        for path in paths:
            for extra in extras:
                with socket.create_connection(("127.0.0.1", int(live.port)), timeout=10) as sock:
                    sock.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nAuthorization: " + token + b"\r\n"
                                 + extra + b"Connection: close\r\n\r\n")
                    data = b""
                    try:
                        while chunk := sock.recv(65536):
                            data += chunk
                    except ConnectionResetError:
                        pass
                answered.append((path[:40], extra, data.split(b" ", 2)[1] if data else b"nothing"))
    finally:
        live.close()
    assert not [a for a in answered if a[2] == b"nothing" or a[2].startswith(b"5")]
    assert {a[2] for a in answered} >= {b"400", b"404"}


LONG = "m" * 100_000


def echoed(r) -> int:
    """The longest run of the client's long value in the answer."""
    text = r.get_data(as_text=True)
    assert len(text) < 2000, f"{len(text)} bytes of error body"
    return max((len(part) for part in text.replace('"', " ").replace("'", " ").split()), default=0)


@pytest.mark.parametrize("path,body", [
    ("/api/v1/chat/completions", {"model": LONG, "messages": [MSG]}),
    ("/v1/messages", {"model": LONG, "max_tokens": 5, "messages": [MSG]}),
    ("/v1/responses", {"model": LONG, "input": "hi"}),
    ("/v1/embeddings", {"model": LONG, "input": "hi"}),
    ("/v1/responses", {"model": "m", "input": "hi", LONG: 1}),
    ("/v1/messages", {"model": "m", "max_tokens": 5, "messages": [MSG], LONG: 1}),
    ("/v1/embeddings", {"model": "m", "input": "hi", LONG: 1}),
], ids=["chat", "messages", "responses", "embeddings", "responses-field", "messages-field", "embeddings-field"])
def test_a_long_value_is_echoed_at_most_200_characters(gw, path, body):
    r = gw.post(path, json=body, headers=auth())
    assert 400 <= r.status_code < 500
    assert echoed(r) <= 210  # 200 characters of the value, and the quotes or words around it


def test_a_long_value_in_a_path_is_echoed_at_most_200_characters(gw, admin_headers):
    for path, headers in ((f"/v1/responses/{LONG}", auth()), (f"/api/admin/accounts/{LONG}", admin_headers),
                          (f"/api/v1/models/{LONG}", auth())):
        r = gw.get(path, headers=headers)
        assert 400 <= r.status_code < 500 and echoed(r) <= 210, path[:40]


@pytest.mark.parametrize("query", ["to=0001-01-02", "from=0001-01-01T00:00:00%2B01:00",
                                   "to=9999-12-31T23:59:59-01:00", "from=99999999999999999999",
                                   "to=1969-12-31", "from=9999-12-31T23:59:59"])
@pytest.mark.parametrize("path", ["/api/v1/usage/summary", "/api/v1/usage/export.csv",
                                  "/api/admin/accounts/alice/usage/summary",
                                  "/api/admin/accounts/alice/usage/export.csv", "/api/admin/usage/export.csv"])
def test_times_out_of_range_are_400(client, admin_headers, topup, path, query):
    topup("alice", 1)
    r = client.get(f"{path}?{query}", headers=admin_headers if "/admin/" in path else auth())
    error = refused(r)
    assert error["code"] == "invalid_parameter" and error["param"] in ("from", "to")


def test_the_earliest_and_latest_times_are_served(client):
    for query in ("from=1970-01-01&to=9999-12-31", "to=1970-01-02", "from=9999-12-30&to=9999-12-31"):
        r = client.get(f"/api/v1/usage/summary?{query}", headers=auth())
        assert r.status_code == 200, (query, r.json)
