"""POST /v1/embeddings: the official openai SDK (float and base64) against OpenAI-compatible, Ollama
and Gemini rows of kind `embedding`, billed per input token."""
from __future__ import annotations

import json
import math
import struct
from base64 import b64decode

import openai
import pytest
from werkzeug import Response

from tests.conftest import PROVIDER_KEY, auth, token
from tests.helpers import charges, holds, invariant

VECTORS = [[0.25, -0.5, 1.0], [0.125, 0.0, -1.0]]
PATHS = {"openai": "/v1/embeddings", "ollama": "/api/embed", "gemini": "/v1beta/models/up:batchEmbedContents"}
ANSWERS = {  # each provider's documented answer shape
    "openai": {"object": "list", "model": "text-embedding-3-small", "usage": {"prompt_tokens": 7, "total_tokens": 7},
               "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(VECTORS)]},
    "ollama": {"model": "all-minilm", "embeddings": VECTORS, "total_duration": 14143917, "load_duration": 1019500,
               "prompt_eval_count": 8},
    "gemini": {"embeddings": [{"values": v} for v in VECTORS]},
}
BASES = {"openai": "/v1", "ollama": "/", "gemini": "/", "anthropic": "/"}
INPUTS = ["The food was delicious", "and the waiter"]


@pytest.fixture
def embedders(gateway, upstream):
    for i, api in enumerate(BASES):
        r = gateway.post("/api/admin/models", headers=auth("root", True), json={
            "id": 11 + i, "name": f"e-{api}", "api": api, "kind": "embedding", "upstream_model": "up",
            "base_url": upstream.url_for(BASES[api]).rstrip("/"), "api_key_env": "FAKE_API_KEY",
            "cost_per_1k_input_tokens": "1"})
        assert r.status_code == 201, r.json
    return gateway


@pytest.fixture
def sdk(embedders, live_factory):
    live = live_factory(embedders.application)
    return openai.OpenAI(base_url=f"{live.url}/v1", api_key=token(), max_retries=0)


@pytest.mark.parametrize("api,tokens", [("openai", 7), ("ollama", 8),
                                        ("gemini", sum(math.ceil(len(s) / 4) for s in INPUTS))])
@pytest.mark.parametrize("fmt", ["float", "base64", None])  # None: the SDK asks for base64 and decodes
def test_embeddings_in_both_encodings(sdk, upstream, api, tokens, fmt):
    upstream.expect_request(PATHS[api]).respond_with_handler(
        lambda request: Response(json.dumps(ANSWERS[api]), content_type="application/json"))
    made = sdk.embeddings.create(model=f"e-{api}", input=INPUTS, **({"encoding_format": fmt} if fmt else {}))
    got = [d.embedding for d in made.data]
    if fmt == "base64":  # asked for explicitly, the SDK hands the text over as it came
        got = [list(struct.unpack(f"<{len(b64decode(e)) // 4}f", b64decode(e))) for e in got]
    assert got == VECTORS
    assert made.model == f"e-{api}" and made.usage.prompt_tokens == tokens == made.usage.total_tokens
    assert charges("alice")[-1].delta == -tokens * 1000 and holds() == 0
    assert charges("alice")[-1].estimated == (api == "gemini")  # Gemini counts no tokens
    sent = upstream.log[-1][0]
    body = sent.get_json()
    if api == "openai":
        assert body == {"model": "up", "input": INPUTS, "encoding_format": "float"}
        assert sent.headers["Authorization"] == f"Bearer {PROVIDER_KEY}"
    elif api == "ollama":
        assert body == {"model": "up", "input": INPUTS}
    else:
        assert body["requests"][1] == {"model": "models/up", "content": {"parts": [{"text": INPUTS[1]}]}}
        assert sent.headers["x-goog-api-key"] == PROVIDER_KEY
    invariant("alice")


def test_dimensions_and_token_arrays(embedders, upstream):
    upstream.expect_request(PATHS["openai"]).respond_with_json(ANSWERS["openai"])
    r = embedders.post("/v1/embeddings", headers=auth(), json={"model": "e-openai", "input": [[1, 2, 3], [4]],
                                                               "dimensions": 3})
    assert r.status_code == 200, r.json
    assert upstream.log[-1][0].get_json()["input"] == [[1, 2, 3], [4]]
    assert upstream.log[-1][0].get_json()["dimensions"] == 3
    r = embedders.post("/v1/embeddings", headers=auth(), json={"model": "e-ollama", "input": [[1, 2, 3]]})
    assert r.status_code == 400 and r.json["error"]["param"] == "input"


def test_embedding_rows_are_listed_and_kept_apart_from_chat(embedders, upstream):
    names = {m["id"] for m in embedders.get("/v1/models", headers=auth()).json["data"]}
    assert {"e-openai", "m-openai"} <= names
    r = embedders.post("/v1/chat/completions", headers=auth(),
                       json={"model": "e-openai", "messages": [{"role": "user", "content": "Hi"}]})
    assert r.status_code == 400 and "embedding model" in r.json["error"]["message"]
    r = embedders.post("/v1/embeddings", headers=auth(), json={"model": "m-openai", "input": "x"})
    assert r.status_code == 400 and r.json["error"]["param"] == "model"
    r = embedders.post("/v1/embeddings", headers=auth(), json={"model": "e-anthropic", "input": "x"})
    assert r.status_code == 501
    for bad in ({"model": "e-openai"}, {"model": "e-openai", "input": ""}, {"model": "e-openai", "input": "x",
                                                                           "encoding_format": "hex"}):
        assert embedders.post("/v1/embeddings", headers=auth(), json=bad).status_code == 400
    assert not upstream.log and not charges("alice") and holds() == 0


def test_no_credits_no_call(embedders, upstream):
    r = embedders.post("/v1/embeddings", headers=auth("poor"), json={"model": "e-openai", "input": "x" * 100})
    assert r.status_code == 402 and not upstream.log


def test_a_retried_embeddings_call_with_its_idempotency_key_gets_the_stored_answer(embedders, upstream):
    """SPEC §13: every door takes an Idempotency-Key. An embeddings list has no `id`: its replay
    was a 500 (the replay named the answer by its id), every time for a day."""
    upstream.expect_request(PATHS["openai"]).respond_with_handler(
        lambda request: Response(json.dumps(ANSWERS["openai"]), content_type="application/json"))
    body = {"model": "e-openai", "input": INPUTS, "encoding_format": "base64"}
    headers = {**auth(), "Idempotency-Key": "embed-1"}
    first = embedders.post("/v1/embeddings", json=body, headers=headers)
    again = embedders.post("/v1/embeddings", json=body, headers=headers)
    assert first.status_code == again.status_code == 200, again.json
    assert again.json == first.json and again.headers["Idempotent-Replayed"] == "true"
    assert again.headers["X-Request-ID"]
    assert len(upstream.log) == 1 and len(charges("alice")) == 1 and holds() == 0
    invariant("alice")
