"""POST /v1/responses: the official openai SDK (responses.create, responses.stream, a function-call
round trip, previous_response_id, retrieve/input_items/delete) against OpenAI-compatible and
Gemini rows, billed like the chat call."""
from __future__ import annotations

import json

import openai
import pytest
from werkzeug import Response

from tests.conftest import auth, token
from tests.fakes import openai as fake_openai
from tests.helpers import charges, holds, invariant, json_answer
from tests.providers import fixture

PATHS = {"openai": "/v1/chat/completions", "gemini": "/v1beta/models/up:generateContent"}
TOOL = {"type": "function", "name": "get_weather", "description": "Weather now",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


@pytest.fixture
def sdk(gateway, live_factory):
    live = live_factory(gateway.application)
    return openai.OpenAI(base_url=f"{live.url}/v1", api_key=token(), max_retries=0)


_json = json_answer


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


STREAMS = {"openai": ("/v1/chat/completions", lambda: fake_openai.Stream(["Hel", "lo", "!"]).events(), "Hello!", 3),
           "gemini": ("/v1beta/models/up:streamGenerateContent", lambda: fixture("gemini", "stream.sse"),
                      "AI learns patterns from data.", 7)}


@pytest.mark.parametrize("api", ["openai", "gemini"])
def test_responses_stream(sdk, upstream, api):
    path, body, text, out = STREAMS[api]
    upstream.expect_request(path).respond_with_handler(lambda request: Response(body(), mimetype="text/event-stream"))
    with sdk.responses.stream(model=f"m-{api}", input="Hi") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == text and final.output_text == text
    assert final.usage.output_tokens == out
    _charged_matches(final.usage)
    again = sdk.responses.retrieve(final.id)  # a streamed answer is stored too
    assert again.output_text == text


def test_the_sdks_stream_helper_keeps_the_reasoning_text(sdk, upstream):
    """A provider's reasoning text (`reasoning_content`) streams as a reasoning item the SDK's
    helper assembles (its typed events, its final response), before the answer's text."""
    body = [fake_openai.chunk({"role": "assistant", "content": ""}), fake_openai.chunk({"reasoning_content": "Hmm, "}),
            fake_openai.chunk({"reasoning_content": "hello."}), fake_openai.chunk({"content": "Hi!"}),
            fake_openai.chunk({}, finish="stop"),
            fake_openai.chunk({}, usage={"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}, choices=False),
            b"data: [DONE]\n\n"]
    upstream.expect_request(PATHS["openai"]).respond_with_handler(lambda request: Response(body, mimetype="text/event-stream"))
    with sdk.responses.stream(model="m-openai", input="Hi") as stream:
        thought = "".join(e.delta for e in stream if e.type == "response.reasoning_text.delta")
        final = stream.get_final_response()
    assert thought == "Hmm, hello." and final.output_text == "Hi!"
    assert [item.type for item in final.output] == ["reasoning", "message"]
    assert final.output[0].content[0].text == "Hmm, hello."
    _charged_matches(final.usage)


SECOND = {"openai": (fake_openai.completion("It is 18 degrees.", 30, 6), "It is 18 degrees."),
          "gemini": (json.loads(fixture("gemini", "generate.json")), "AI learns patterns from data.")}
CALLS = {"openai": ("openai", "tool_call.json"), "gemini": ("gemini", "function_call.json")}


@pytest.mark.parametrize("api", ["openai", "gemini"])
def test_function_call_round_trip_with_previous_response_id(sdk, upstream, api):
    answer, text = SECOND[api]
    upstream.expect_ordered_request(PATHS[api]).respond_with_handler(_json(fixture(*CALLS[api])))
    upstream.expect_ordered_request(PATHS[api]).respond_with_handler(_json(answer))
    first = sdk.responses.create(model=f"m-{api}", input="Weather in Paris?", tools=[TOOL])
    call = next(o for o in first.output if o.type == "function_call")
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
    second = sdk.responses.create(model=f"m-{api}", previous_response_id=first.id, tools=[TOOL], input=[
        {"type": "function_call_output", "call_id": call.call_id, "output": '{"temp_c": 18}'}])
    assert second.output_text == text
    sent = upstream.log[-1][0].get_json()
    if api == "openai":
        assert sent["messages"][0] == {"role": "user", "content": "Weather in Paris?"}
        assert sent["messages"][1]["tool_calls"][0]["id"] == call.call_id
        assert sent["messages"][2] == {"role": "tool", "tool_call_id": call.call_id, "content": '{"temp_c": 18}'}
        assert sent["tools"][0]["function"]["name"] == "get_weather"
    else:
        assert sent["contents"][0] == {"role": "user", "parts": [{"text": "Weather in Paris?"}]}
        assert sent["contents"][-1]["parts"][0]["functionResponse"] == {"name": "get_weather",
                                                                         "response": {"temp_c": 18}}
    assert len(charges("alice")) == 2
    _charged_matches(second.usage)


@pytest.mark.parametrize("api", ["openai", "gemini"])
def test_conversation_state_retrieve_items_delete(sdk, upstream, api):
    answers = {"openai": [fake_openai.completion("Hi Ann", 9, 2), fake_openai.completion("Ann", 20, 1)],
               "gemini": [json.loads(fixture("gemini", "generate.json"))] * 2}[api]
    for answer in answers:
        upstream.expect_ordered_request(PATHS[api]).respond_with_handler(_json(answer))
    first = sdk.responses.create(model=f"m-{api}", input="I am Ann.")
    second = sdk.responses.create(model=f"m-{api}", input="Who am I?", previous_response_id=first.id)
    assert second.previous_response_id == first.id
    sent = upstream.log[-1][0].get_json()
    if api == "openai":
        assert second.output_text == "Ann"
        assert [m["content"] for m in sent["messages"]] == ["I am Ann.", "Hi Ann", "Who am I?"]
    else:
        assert [c["parts"][0]["text"] for c in sent["contents"]] == [
            "I am Ann.", "AI learns patterns from data.", "Who am I?"]
    assert sdk.responses.retrieve(first.id).output_text == first.output_text
    items = sdk.responses.input_items.list(second.id)
    assert [i.type for i in items.data] == ["message"]
    sdk.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve(first.id)
    with pytest.raises(openai.NotFoundError):
        sdk.responses.create(model=f"m-{api}", input="x", previous_response_id=first.id)


def test_input_items_are_paged_as_openais(sdk, gateway, upstream):
    """Newest first by default, `limit` and `after` page them (the SDK's auto-paging follows
    `after` = the last id while `has_more`), `order=asc` reverses; bad values are 400s by name."""
    upstream.expect_request(PATHS["openai"]).respond_with_handler(_json(fake_openai.completion("ok", 9, 1)))
    made = sdk.responses.create(model="m-openai", input=[
        {"role": "user", "content": word} for word in ("one", "two", "three")])

    def words(items):
        return [item.content[0].text for item in items]

    assert words(sdk.responses.input_items.list(made.id).data) == ["three", "two", "one"]
    page = sdk.responses.input_items.list(made.id, limit=2)
    assert words(page.data) == ["three", "two"] and page.has_more and page.last_id == page.data[-1].id
    assert words(sdk.responses.input_items.list(made.id, limit=1)) == ["three", "two", "one"]  # auto-paged
    assert words(sdk.responses.input_items.list(made.id, order="asc", limit=2)) == ["one", "two", "three"]
    last = sdk.responses.input_items.list(made.id, order="asc", after=page.data[0].id)
    assert words(last.data) == [] and not last.has_more and last.first_id is None
    for query, param in (("order=sideways", "order"), ("limit=0", "limit"), ("limit=101", "limit"),
                         ("limit=x", "limit"), ("limit=%C2%B2", "limit"), ("after=nope", "after")):
        r = gateway.get(f"/v1/responses/{made.id}/input_items?{query}", headers=auth())
        assert r.status_code == 400 and r.json["error"]["param"] == param, (query, r.json)


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
        sdk.responses.create(model="m-openai", input="x", tools=[{"type": "file_search", "vector_store_ids": ["vs_1"]}])
    with pytest.raises(openai.BadRequestError):
        sdk.responses.create(model="m-openai", input=[{"type": "mystery"}])
    assert not upstream.log and not charges("alice") and holds() == 0
