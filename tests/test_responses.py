"""POST /v1/responses: the official openai SDK (responses.create, responses.stream, a function-call
round trip, previous_response_id, retrieve/input_items/delete) against OpenAI-compatible and
Gemini rows, billed like the chat call."""
from __future__ import annotations

import json

import openai
import pytest
from werkzeug import Response

from tests.conftest import token
from tests.fakes import openai as fake_openai
from tests.helpers import charges, holds, invariant
from tests.providers import fixture

PATHS = {"openai": "/v1/chat/completions", "gemini": "/v1beta/models/up:generateContent"}
TOOL = {"type": "function", "name": "get_weather", "description": "Weather now",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


@pytest.fixture
def sdk(gateway, live_factory):
    live = live_factory(gateway.application)
    return openai.OpenAI(base_url=f"{live.url}/v1", api_key=token(), max_retries=0)


def _json(body):
    return lambda request: Response(json.dumps(body) if isinstance(body, dict) else body,
                                    content_type="application/json")


def _charged_matches(usage) -> None:
    assert charges("alice")[-1].delta == -(usage.input_tokens + usage.output_tokens) * 1000
    assert holds() == 0
    invariant("alice")


@pytest.mark.parametrize("api,answer,text", [
    ("openai", _json(fake_openai.completion("Hello from GPT", 9, 3)), "Hello from GPT"),
    ("gemini", _json(fixture("gemini", "generate.json")), "AI learns patterns from data."),
])
def test_responses_create_over_two_providers(sdk, upstream, api, answer, text):
    upstream.expect_request(PATHS[api]).respond_with_handler(answer)
    made = sdk.responses.create(model=f"m-{api}", input="Hi", instructions="Be brief.", max_output_tokens=40)
    assert made.status == "completed" and made.output_text == text and made.model == f"m-{api}"
    assert made.usage.total_tokens == made.usage.input_tokens + made.usage.output_tokens
    _charged_matches(made.usage)
    if api == "openai":
        sent = upstream.log[-1][0].get_json()
        assert sent["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
        assert sent["max_tokens"] == 40


def test_responses_stream(sdk, upstream):
    fake = fake_openai.Stream(["Hel", "lo", "!"])
    upstream.expect_request(PATHS["openai"]).respond_with_handler(
        lambda request: Response(fake.events(), mimetype="text/event-stream"))
    with sdk.responses.stream(model="m-openai", input="Hi") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == "Hello!" and final.output_text == "Hello!"
    assert final.usage.output_tokens == 3
    _charged_matches(final.usage)
    again = sdk.responses.retrieve(final.id)  # a streamed answer is stored too
    assert again.output_text == "Hello!"


def test_function_call_round_trip_with_previous_response_id(sdk, upstream):
    upstream.expect_ordered_request(PATHS["openai"]).respond_with_handler(_json(fixture("openai", "tool_call.json")))
    upstream.expect_ordered_request(PATHS["openai"]).respond_with_handler(
        _json(fake_openai.completion("It is 18 degrees.", 30, 6)))
    first = sdk.responses.create(model="m-openai", input="Weather in Paris?", tools=[TOOL])
    call = next(o for o in first.output if o.type == "function_call")
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
    second = sdk.responses.create(model="m-openai", previous_response_id=first.id, tools=[TOOL], input=[
        {"type": "function_call_output", "call_id": call.call_id, "output": '{"temp_c": 18}'}])
    assert second.output_text == "It is 18 degrees."
    sent = upstream.log[-1][0].get_json()
    assert sent["messages"][0] == {"role": "user", "content": "Weather in Paris?"}
    assert sent["messages"][1]["tool_calls"][0]["id"] == call.call_id
    assert sent["messages"][2] == {"role": "tool", "tool_call_id": call.call_id, "content": '{"temp_c": 18}'}
    assert sent["tools"][0]["function"]["name"] == "get_weather"
    assert len(charges("alice")) == 2


def test_conversation_state_retrieve_items_delete(sdk, upstream):
    upstream.expect_ordered_request(PATHS["openai"]).respond_with_handler(_json(fake_openai.completion("Hi Ann", 9, 2)))
    upstream.expect_ordered_request(PATHS["openai"]).respond_with_handler(_json(fake_openai.completion("Ann", 20, 1)))
    first = sdk.responses.create(model="m-openai", input="I am Ann.")
    second = sdk.responses.create(model="m-openai", input="Who am I?", previous_response_id=first.id)
    assert second.output_text == "Ann" and second.previous_response_id == first.id
    assert [m["content"] for m in upstream.log[-1][0].get_json()["messages"]] == ["I am Ann.", "Hi Ann", "Who am I?"]
    assert sdk.responses.retrieve(first.id).output_text == "Hi Ann"
    items = sdk.responses.input_items.list(second.id)
    assert [i.content for i in items.data] in ([["Who am I?"]], ["Who am I?"]) or items.data[0].type == "message"
    sdk.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve(first.id)
    with pytest.raises(openai.NotFoundError):
        sdk.responses.create(model="m-openai", input="x", previous_response_id=first.id)


def test_structured_output_and_store_false(sdk, upstream):
    upstream.expect_request(PATHS["openai"]).respond_with_handler(_json(fake_openai.completion('{"a": 1}', 9, 3)))
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"],
              "additionalProperties": False}
    made = sdk.responses.create(model="m-openai", input="json please", store=False,
                                text={"format": {"type": "json_schema", "name": "thing", "schema": schema,
                                                 "strict": True}})
    assert json.loads(made.output_text) == {"a": 1}
    assert upstream.log[-1][0].get_json()["response_format"] == {
        "type": "json_schema", "json_schema": {"name": "thing", "schema": schema, "strict": True}}
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve(made.id)


def test_bad_input_is_400_and_nothing_is_charged(sdk, upstream):
    with pytest.raises(openai.BadRequestError):
        sdk.responses.create(model="m-openai", input="x", tools=[{"type": "web_search_preview"}])
    with pytest.raises(openai.BadRequestError):
        sdk.responses.create(model="m-openai", input=[{"type": "mystery"}])
    assert not upstream.log and not charges("alice") and holds() == 0
