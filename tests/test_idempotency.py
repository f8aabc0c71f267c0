"""`Idempotency-Key`: a retried call returns the stored answer and pays nothing more; the same
key with another body is 422; a duplicate while the first still runs is 409. Keys hold across
processes."""
from __future__ import annotations

import json
import threading

import openai
import pytest
import requests
from werkzeug import Response

from tests.conftest import SECRET, auth, token
from tests.fakes import openai as fake_openai
from tests.helpers import charges, holds, invariant
from tests.process import Gateway

MSGS = [{"role": "user", "content": "Hi"}]
BODY = {"model": "m-openai", "messages": MSGS}


def _post(client, body=BODY, key="retry-1", **headers):
    return client.post("/api/v1/chat/completions", json=body,
                       headers={**auth(), "Idempotency-Key": key, **headers})


def _events(r) -> list[dict]:
    return [json.loads(e[6:]) for e in r.get_data().split(b"\n\n") if e.startswith(b"data: {")]


def test_a_retried_call_gets_the_stored_answer_and_pays_once(gateway, upstream):
    upstream.expect_request("/v1/chat/completions").respond_with_json(fake_openai.completion("Once", 9, 3))
    first = _post(gateway)
    again = _post(gateway)
    assert first.status_code == again.status_code == 200
    assert again.json == first.json and again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert len(upstream.log) == 1 and len(charges("alice")) == 1 and holds() == 0
    other = _post(gateway, key="retry-2")  # another key is another call
    assert other.json["id"] != first.json["id"] and len(charges("alice")) == 2
    invariant("alice")


def test_the_same_key_with_another_body_is_422(gateway, upstream):
    upstream.expect_request("/v1/chat/completions").respond_with_json(fake_openai.completion("Once", 9, 3))
    assert _post(gateway).status_code == 200
    r = _post(gateway, {**BODY, "temperature": 0.1})
    assert r.status_code == 422 and r.json["error"]["code"] == "idempotency_key_reused"
    assert r.headers["x-should-retry"] == "false"
    r = _post(gateway, {**BODY, "stream": True})  # streaming is part of the request
    assert r.status_code == 422
    assert len(upstream.log) == 1 and len(charges("alice")) == 1


def test_a_duplicate_while_the_first_runs_is_409(gateway, upstream):
    arrived, release = threading.Event(), threading.Event()

    def slow(request):
        arrived.set()
        release.wait(10)
        return Response(json.dumps(fake_openai.completion("Late", 9, 3)), content_type="application/json")

    upstream.expect_request("/v1/chat/completions").respond_with_handler(slow)
    result = {}
    first = threading.Thread(target=lambda: result.update(r=_post(gateway)))
    first.start()
    assert arrived.wait(10)
    r = _post(gateway)
    assert r.status_code == 409 and r.json["error"]["code"] == "idempotency_key_in_flight"
    assert r.headers["x-should-retry"] == "true" and "Retry-After" not in r.headers
    release.set()
    first.join(10)
    assert result["r"].status_code == 200
    assert _post(gateway).json == result["r"].json and len(charges("alice")) == 1


def test_a_failed_call_gives_its_key_back(gateway, upstream):
    upstream.expect_ordered_request("/v1/chat/completions").respond_with_json({"error": {"message": "x"}}, 500)
    upstream.expect_ordered_request("/v1/chat/completions").respond_with_json({"error": {"message": "x"}}, 500)
    upstream.expect_ordered_request("/v1/chat/completions").respond_with_json({"error": {"message": "x"}}, 500)
    upstream.expect_ordered_request("/v1/chat/completions").respond_with_json(fake_openai.completion("Ok", 9, 3))
    assert _post(gateway).status_code == 502  # the gateway's own retries all failed
    r = _post(gateway)
    assert r.status_code == 200 and "Idempotent-Replayed" not in r.headers
    assert len(charges("alice")) == 1 and holds() == 0


def test_a_stream_is_replayed_as_events(gateway, upstream):
    stream = fake_openai.Stream(["Hel", "lo", "!"])
    upstream.expect_request("/v1/chat/completions").respond_with_handler(
        lambda request: Response(stream.events(), mimetype="text/event-stream"))
    body = {**BODY, "stream": True, "stream_options": {"include_usage": True}}
    first = _post(gateway, body)
    a = _events(first)  # read to its end: the answer is stored when the stream ends
    again = _post(gateway, body)
    assert again.headers["Idempotent-Replayed"] == "true"
    b = _events(again)
    text = lambda events: "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
    assert text(a) == text(b) == "Hello!"
    assert a[-1]["usage"] == b[-1]["usage"] and {e["id"] for e in b} == {a[0]["id"]}
    assert [e["choices"][0]["finish_reason"] for e in b if e["choices"]][-1] == "stop"
    assert again.get_data().endswith(b"data: [DONE]\n\n")
    assert len(upstream.log) == 1 and len(charges("alice")) == 1


def test_bad_keys_are_400(gateway):
    r = _post(gateway, key="x" * 256)
    assert r.status_code == 400 and r.json["error"]["param"] == "Idempotency-Key"


def test_the_openai_sdk_retry_is_answered_from_the_store(gateway, upstream, live_factory):
    upstream.expect_request("/v1/chat/completions").respond_with_json(fake_openai.completion("Sdk", 9, 3))
    live = live_factory(gateway.application)
    sdk = openai.OpenAI(base_url=f"{live.url}/v1", api_key=token())
    made = [sdk.chat.completions.create(model="m-openai", messages=MSGS, extra_headers={"Idempotency-Key": "k"})
            for _ in range(2)]
    assert made[0].id == made[1].id and made[1].choices[0].message.content == "Sdk"
    assert len(charges("alice")) == 1


@pytest.mark.parametrize("stream", [False, True])
def test_keys_hold_across_two_processes(make_app, db_url, tmp_path, upstream, add_model, topup, stream):
    make_app()
    add_model(id=10, name="paid", api="openai", base_url=upstream.url_for("/v1"), cost_per_1k_tokens="1")
    topup("kim", 10)
    fake = fake_openai.Stream(["A", "B"])
    upstream.expect_request("/v1/chat/completions").respond_with_handler(
        lambda request: Response(fake.events(), mimetype="text/event-stream") if stream
        else Response(json.dumps(fake_openai.completion("AB", 9, 2)), content_type="application/json"))
    env = {"DATABASE_URL": db_url, "JWT_SECRET_KEY": SECRET, "DATA_DIR": str(tmp_path), "WAITRESS_THREADS": "8"}
    one, two = Gateway(env, tmp_path / "one.log"), Gateway(env, tmp_path / "two.log")
    try:
        answers = [requests.post(f"{gw.url}/v1/chat/completions", timeout=20,
                                 headers={"Authorization": f"Bearer {token('kim')}", "Idempotency-Key": "same"},
                                 json={"model": "paid", "messages": MSGS, "stream": stream})
                   for gw in (one, two)]
    finally:
        one.stop()
        two.stop()
    assert [a.status_code for a in answers] == [200, 200]
    assert answers[1].headers.get("Idempotent-Replayed") == "true"
    if not stream:
        assert answers[0].json() == answers[1].json()
    else:
        assert b'"content":"AB"' in answers[1].content
    assert len(upstream.log) == 1 and len(charges("kim")) == 1
    invariant("kim")


def _with_logprobs(token: str) -> bytes:
    body = json.loads(fake_openai.chunk({"content": token})[6:])
    body["choices"][0]["logprobs"] = {"content": [{"token": token, "logprob": -0.5, "bytes": list(token.encode()),
                                                   "top_logprobs": []}], "refusal": None}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def test_a_streamed_answer_is_replayed_with_its_logprobs(gateway, upstream):
    """SPEC §7 keeps every field a provider sends, and a replay is the stored answer: a streamed
    retry (and a streamed cache hit, the same replay) dropped the logprobs the first stream carried."""
    stream = b"".join([fake_openai.chunk({"role": "assistant", "content": ""}), _with_logprobs("Hel"),
                       _with_logprobs("lo"), fake_openai.chunk({}, finish="stop"),
                       fake_openai.chunk({}, usage={"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11},
                                         choices=False), b"data: [DONE]\n\n"])
    upstream.expect_request("/v1/chat/completions").respond_with_handler(
        lambda request: Response(stream, mimetype="text/event-stream"))
    body = {**BODY, "stream": True, "logprobs": True}
    first = _post(gateway, body)
    first.get_data()  # (the stream read to its end: its answer is stored)
    again = _post(gateway, body)
    assert again.headers["Idempotent-Replayed"] == "true" and len(upstream.log) == 1

    def tokens(r):
        return [t["token"] for e in _events(r) for c in e["choices"] for t in ((c.get("logprobs") or {})
                                                                               .get("content") or [])]
    assert tokens(first) == tokens(again) == ["Hel", "lo"]
    assert len(charges("alice")) == 1 and holds() == 0
