"""The chat call through fake OpenAI-compatible and Ollama upstreams (issue: gateway core)."""
from __future__ import annotations

import openai
import pytest

from tests import schemas
from tests.conftest import auth, token
from tests.fakes import ollama as fake_ollama
from tests.fakes import openai as fake_openai
from tests.helpers import basic, charges, holds

MSGS = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello?"}]


@pytest.fixture
def models(add_model, upstream, topup):
    add_model(id=10, name="fake-gpt", api="openai", base_url=upstream.url_for("/v1"),
              upstream_model="gpt-upstream", cost_per_1k_tokens="1", aliases=["fg"])
    add_model(id=11, name="fake-llama", api="ollama", base_url=upstream.url_for("/"),
              upstream_model="llama2:7b", cost_per_1k_tokens="0.5")
    topup("alice", 100)
    return upstream


def sdk(live, name="alice") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live.url}/api/v1", api_key=token(name), max_retries=0)


def test_sdk_gets_completion_from_openai_upstream(models, live):
    models.expect_request("/v1/chat/completions", method="POST").respond_with_json(
        fake_openai.completion("Hi!", 9, 3))
    result = sdk(live).chat.completions.create(model="fake-gpt", messages=MSGS, temperature=0.3)
    assert result.choices[0].message.content == "Hi!"
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (9, 3)
    body = result.model_dump(exclude_unset=True)
    schemas.check("CreateChatCompletionResponse", body)
    assert body["model"] == "fake-gpt" and body["id"].startswith("chatcmpl-")
    assert body["system_fingerprint"] == "fp_x"  # every field the provider sent comes back
    assert models.log[0][0].environ["RAW_URI"] == "/v1/chat/completions"  # origin-form request line
    sent = models.log[0][0].get_json()
    # no cap sent by the client: the row's max_output_tokens (default 4096) goes up
    assert sent == {"model": "gpt-upstream", "messages": MSGS, "temperature": 0.3, "max_tokens": 4096}


def test_sdk_gets_completion_from_ollama_upstream(models, live):
    models.expect_request("/api/chat", method="POST").respond_with_json(
        fake_ollama.chat("Hi from llama", 12, 4, "length"))
    result = sdk(live).chat.completions.create(
        model="fake-llama", messages=MSGS, max_tokens=4, temperature=0.5, stop=["\n"], seed=7)
    assert result.choices[0].message.content == "Hi from llama"
    assert result.choices[0].finish_reason == "length"
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (12, 4)
    schemas.check("CreateChatCompletionResponse", result.model_dump(exclude_unset=True))
    sent = models.log[0][0].get_json()
    assert sent == {"model": "llama2:7b", "stream": False, "messages": MSGS,
                    "options": {"num_predict": 4, "temperature": 0.5, "seed": 7, "stop": ["\n"]}}


def test_sdk_lists_models(models, live):
    listed = sdk(live).models.list()
    names = [m.id for m in listed.data]
    assert names == ["fake-gpt", "fake-llama"]
    schemas.check("ListModelsResponse", listed.model_dump())
    assert sdk(live).models.retrieve("fake-gpt").owned_by == "openai"


def test_response_is_exact_chat_completion(client, models):
    models.expect_request("/v1/chat/completions").respond_with_json(fake_openai.completion("ok", 1000, 500))
    r = client.post("/api/v1/chat/completions", json={"model": "fake-gpt", "messages": MSGS},
                    headers=auth())
    assert r.status_code == 200
    body = r.json
    schemas.check("CreateChatCompletionResponse", body)
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "ok", "refusal": None}
    assert body["choices"][0]["logprobs"] is None
    assert basic(body["usage"]) == {"prompt_tokens": 1000, "completion_tokens": 500, "total_tokens": 1500,
                             "cost": 1.5}
    assert r.headers["X-Request-ID"] == body["id"]


@pytest.mark.parametrize("selector", [{"id": 10}, {"model": "10"}, {"model": "fg"}, {"id": "10"},
                                      {"model": "fake-gpt", "id": 10}])
def test_model_chosen_by_id_then_name(client, models, selector):
    models.expect_request("/v1/chat/completions").respond_with_json(fake_openai.completion())
    r = client.post("/v1/chat/completions", json={"messages": MSGS, **selector}, headers=auth())
    assert r.status_code == 200, r.json
    assert r.json["model"] == "fake-gpt"


def test_default_model_used_when_none_named(make_app, upstream):
    app = make_app(DEFAULT_MODEL="fake-llama", AUTH_REQUIRED=False)
    client = app.test_client()
    r = client.post("/api/admin/models", json={"id": 11, "name": "fake-llama", "api": "ollama",
                                               "base_url": upstream.url_for("/")},
                    headers=auth("root", True))
    assert r.status_code == 201
    upstream.expect_request("/api/chat").respond_with_json(fake_ollama.chat())
    r = client.post("/api/v1/chat/completions", json={"messages": MSGS})
    assert r.status_code == 200 and r.json["model"] == "fake-llama"


PASSED_THROUGH = {
    "top_p": 0.9, "n": 1, "stop": "END", "presence_penalty": 0.5, "frequency_penalty": -0.5, "seed": 3,
    "user": "u1", "max_completion_tokens": 50, "unknownField": 1, "reasoning_effort": "low",
    "verbosity": "low", "metadata": {"team": "a"}, "store": False, "service_tier": "flex",
    "prediction": {"type": "content", "content": "x"}, "modalities": ["text"],
    "prompt_cache_key": "k1", "safety_identifier": "s1", "top_k": 20, "repetition_penalty": 1.1,
    "functions": [{"name": "f", "parameters": {"type": "object"}}], "function_call": "auto",
}


def test_every_sent_field_reaches_an_openai_upstream(client, models):
    models.expect_request("/v1/chat/completions").respond_with_json(fake_openai.completion())
    body = {"model": "fake-gpt", "messages": MSGS, "temperature": None, **PASSED_THROUGH}
    assert client.post("/api/v1/chat/completions", json=body, headers=auth()).status_code == 200
    sent = models.log[0][0].get_json()
    assert sent == {"model": "gpt-upstream", "messages": MSGS, **PASSED_THROUGH}  # null: not sent


def test_ollama_n_served_by_repeated_calls(client, models):
    models.expect_request("/api/chat").respond_with_json(fake_ollama.chat("one", 10, 2))
    r = client.post("/api/v1/chat/completions", json={"model": "fake-llama", "messages": MSGS, "n": 2},
                    headers=auth())
    assert r.status_code == 200
    assert [c["index"] for c in r.json["choices"]] == [0, 1]
    assert r.json["usage"]["prompt_tokens"] == 20 and r.json["usage"]["completion_tokens"] == 4
    assert len(models.log) == 2
    assert "n" not in models.log[0][0].get_json()


def test_ai_models_enabled_has_the_seed_envelope(client, add_model):
    add_model(id=4, name="deepseek-chat", provider="deepseek", api="openai", cost_per_1k_tokens="0.014")
    add_model(id=2, name="gemini-2.0-flash:generateContent", provider="Google", api="gemini",
              cost_per_1k_tokens="0.010")
    add_model(id=3, name="off", api="openai", enabled=False)
    r = client.get("/api/ai-models/enabled", headers=auth())
    assert r.status_code == 200
    body = r.json
    assert list(body) == ["code", "message", "data", "timestamp"]
    assert body["code"] == 200 and body["message"] == "获取启用的AI模型列表成功"
    assert body["data"] == [
        {"id": 2, "modelName": "gemini-2.0-flash:generateContent", "provider": "Google",
         "costPer1kTokens": 0.01},
        {"id": 4, "modelName": "deepseek-chat", "provider": "deepseek", "costPer1kTokens": 0.014}]
    assert isinstance(body["timestamp"], int) and body["timestamp"] > 1_700_000_000_000


def test_seed_gemini_name_maps_to_model_before_colon(client, add_model, admin_headers):
    row = add_model(id=2, name="gemini-2.0-flash:generateContent", provider="Google", api="gemini")
    assert row["upstream_model"] == "gemini-2.0-flash"


def test_successful_call_is_charged_once(client, models):
    models.expect_request("/v1/chat/completions").respond_with_json(fake_openai.completion("x", 100, 50))
    client.post("/api/v1/chat/completions", json={"model": "fake-gpt", "messages": MSGS}, headers=auth())
    rows = charges("alice")
    assert len(rows) == 1 and rows[0].delta == -150_000 and holds() == 0
