"""Bills that match the provider's invoice: each provider's recorded usage shapes (cached,
cache-write and reasoning tokens) are billed per token class, streamed and unstreamed alike, and
the charge, the ledger row and the client's usage agree."""
from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings, strategies as st
from werkzeug import Response

from core import prices
from core.usage import CLASSES, Usage
from tests import schemas
from tests.conftest import auth
from tests.helpers import charges, holds, invariant
from tests.providers import fixture

# credits per 1k tokens; every class priced differently, cached input at a fraction of a
# micro-credit a token so that rounding shows
PRICES = {"cost_per_1k_input_tokens": "0.003", "cost_per_1k_cached_input_tokens": "0.00033",
          "cost_per_1k_cache_write_5m_tokens": "0.00375", "cost_per_1k_cache_write_1h_tokens": "0.006",
          "cost_per_1k_output_tokens": "0.015"}  # reasoning: unset, the output price
MICRO = {"input": 3000, "cached_input": 330, "cache_write_5m": 3750, "cache_write_1h": 6000,
         "output": 15000, "reasoning": 15000}
BIG = "x" * 9000  # a prompt whose hold covers the recorded counts

# provider api, fixture pair, path, stream path, tokens per class as the provider's invoice has them
CASES = {
    "openai": ("openai", "cached_reasoning", "/v1/chat/completions", None,
               {"input": 2006 - 1920, "cached_input": 1920, "output": 300 - 192, "reasoning": 192}),
    "deepseek": ("openai", "deepseek_cache", "/v1/chat/completions", None,
                 {"input": 476, "cached_input": 1024, "output": 120}),
    "anthropic": ("anthropic", "cache", "/v1/messages", None,
                  {"input": 50, "cached_input": 2400, "cache_write_5m": 1200, "cache_write_1h": 600,
                   "output": 210}),
    "gemini": ("gemini", "cached_thinking", "/v1beta/models/up:generateContent",
               "/v1beta/models/up:streamGenerateContent",
               {"input": 3100 - 2048, "cached_input": 2048, "output": 90, "reasoning": 250}),
}
ROW = {"openai": 1, "deepseek": 1, "ollama": 2, "gemini": 3, "anthropic": 4}


def expected(tokens: dict) -> dict:
    """The invoice worked by hand: ceil(tokens x price / 1000) per class."""
    return {c: math.ceil(tokens.get(c, 0) * MICRO[c] / 1000) for c in CLASSES}


@pytest.fixture
def classy(gateway):
    for row in (1, 2, 3, 4):
        r = gateway.patch(f"/api/admin/models/{row}", headers=auth("root", True),
                          json={**PRICES, "max_output_tokens": 1000})
        assert r.status_code == 200, r.json
    return gateway


def _serve(upstream, path, body: bytes, mimetype):
    upstream.clear()
    upstream.expect_request(path).respond_with_handler(lambda request: Response(body, mimetype=mimetype))


def _call(client, name: str, stream: bool):
    body = {"model": name, "messages": [{"role": "user", "content": BIG}]}
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    r = client.post("/api/v1/chat/completions", headers=auth(), json=body)
    assert r.status_code == 200, r.get_data(as_text=True)
    if not stream:
        schemas.check("CreateChatCompletionResponse", r.json)
        return r.json["usage"]
    events = [json.loads(e[6:]) for e in r.get_data().split(b"\n\n") if e.startswith(b"data: {")]
    for event in events:
        schemas.check("CreateChatCompletionStreamResponse", event)
    return events[-1]["usage"]


@pytest.mark.parametrize("case", list(CASES))
def test_each_provider_is_billed_per_class_streamed_and_not(classy, upstream, case):
    api, name, path, stream_path, tokens = CASES[case]
    costs = expected(tokens)
    total = sum(costs.values())
    _serve(upstream, path, fixture(api, f"{name}.json"), "application/json")
    plain = _call(classy, f"m-{api}", False)
    _serve(upstream, stream_path or path, fixture(api, f"{name}.sse"), "text/event-stream")
    streamed = _call(classy, f"m-{api}", True)
    for usage in (plain, streamed):
        assert usage["prompt_tokens"] == sum(tokens.get(c, 0) for c in prices.PROMPT_CLASSES)
        assert usage["completion_tokens"] == tokens["output"] + tokens.get("reasoning", 0)
        assert usage["prompt_tokens_details"]["cached_tokens"] == tokens["cached_input"]
        assert usage["completion_tokens_details"]["reasoning_tokens"] == tokens.get("reasoning", 0)
        assert usage["cost_details"] == {c: costs[c] / 1e6 for c in CLASSES}
        assert usage["cost"] == total / 1e6
    rows = charges("alice")
    assert [r.delta for r in rows] == [-total, -total]  # the stream billed exactly as the plain call
    for row in rows:
        assert row.cached_tokens == tokens["cached_input"]
        assert row.cache_write_5m_tokens == tokens.get("cache_write_5m", 0)
        assert row.cache_write_1h_tokens == tokens.get("cache_write_1h", 0)
        assert row.reasoning_tokens == tokens.get("reasoning", 0)
        assert row.prices == MICRO and not row.estimated
    assert holds() == 0
    invariant("alice")


def test_openai_usage_keeps_the_providers_own_details(classy, upstream):
    _serve(upstream, "/v1/chat/completions", fixture("openai", "cached_reasoning.json"), "application/json")
    usage = _call(classy, "m-openai", False)
    assert usage["prompt_tokens_details"] == {"cached_tokens": 1920, "audio_tokens": 0}
    assert usage["completion_tokens_details"]["accepted_prediction_tokens"] == 0


def test_ollama_reports_counts_only(classy, upstream):
    _serve(upstream, "/api/chat", fixture("ollama", "stream.ndjson"), "application/x-ndjson")
    usage = _call(classy, "m-ollama", True)
    assert usage["prompt_tokens_details"] == {"cached_tokens": 0}
    assert usage["cost_details"]["input"] == 78 / 1e6 and usage["cost_details"]["output"] == 30 / 1e6
    assert charges("alice")[0].delta == -(26 * 3 + 2 * 15)


def test_the_account_ledger_shows_the_breakdown(classy, upstream):
    _serve(upstream, "/v1/messages", fixture("anthropic", "cache.json"), "application/json")
    _call(classy, "m-anthropic", False)
    row = classy.get("/api/v1/usage", headers=auth()).json["data"][0]
    assert row["tokens"] == {"input": 50, "cached_input": 2400, "cache_write_5m": 1200,
                             "cache_write_1h": 600, "output": 210, "reasoning": 0}
    assert row["prices"] == {c: MICRO[c] / 1e6 for c in CLASSES}
    assert row["cost_details"] == {c: v / 1e6 for c, v in expected(CASES["anthropic"][4]).items()}
    admin = classy.get("/api/admin/accounts/alice", headers=auth("root", True)).json
    assert admin["ledger"][0]["tokens"] == row["tokens"]


def test_a_call_is_billed_at_the_prices_in_force_when_it_began(classy, upstream):
    """A price change while a call runs does not reach that call; the next one pays the new price."""
    import threading

    release, arrived = threading.Event(), threading.Event()

    def slow(request):
        arrived.set()
        release.wait(10)
        return Response(fixture("openai", "deepseek_cache.json"), mimetype="application/json")

    upstream.expect_request("/v1/chat/completions").respond_with_handler(slow)
    result = {}
    worker = threading.Thread(target=lambda: result.update(usage=_call(classy, "m-openai", False)))
    worker.start()
    assert arrived.wait(10)
    r = classy.patch("/api/admin/models/1", headers=auth("root", True),
                     json={"cost_per_1k_input_tokens": "0.006"})
    assert r.status_code == 200
    release.set()
    worker.join(10)
    old = sum(expected(CASES["deepseek"][4]).values())
    assert result["usage"]["cost"] == old / 1e6
    second = _call(classy, "m-openai", False)
    assert second["cost_details"]["input"] == 476 * 6 / 1e6
    history = classy.get("/api/admin/models/1/prices", headers=auth("root", True)).json["data"]
    assert [h["prices"]["input"] for h in history] == [1.0, 0.003, 0.006]


def test_seed_validates_class_prices(make_app, tmp_path):
    app = make_app()
    path = tmp_path / "models.toml"
    path.write_text('[[models]]\nid = 1\nname = "a"\napi = "openai"\ncost_per_1k_cached_input_tokens = "-1"\n')
    result = app.test_cli_runner().invoke(args=["seed-models", "--file", str(path)])
    assert result.exit_code != 0 and "cost_per_1k_cached_input_tokens" in result.output


counts = st.integers(0, 10 ** 7)
unit = st.integers(0, 10 ** 9)


@settings(max_examples=300, deadline=None)
@given(prompt=counts, completion=counts, cached=counts, w5=counts, w1=counts, reasoning=counts,
       price=st.fixed_dictionaries({c: unit for c in CLASSES}))
def test_class_costs_sum_to_the_charge_each_rounded_up_once(prompt, completion, cached, w5, w1,
                                                             reasoning, price):
    tokens = Usage(prompt + cached + w5 + w1, completion + reasoning, cached, w5, w1, reasoning)
    costs = prices.costs(price, tokens)
    assert sum(costs.values()) == prices.charge(price, tokens)
    for cls, n in tokens.classes().items():
        exact = n * price[cls]
        assert costs[cls] * 1000 >= exact and costs[cls] * 1000 - exact < 1000  # one ceil, no more
    assert prices.charge(price, tokens) <= prices.bound(price, tokens.prompt, tokens.completion)
