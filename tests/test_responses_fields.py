"""/v1/responses, issue 33: every CreateResponse field has a rule (docs/responses-fields.md), answers
and every stream event are whole objects that validate against OpenAI's published schema, a stream
ends as OpenAI's do, and a row with `api = "openai_responses"` is served by pass-through."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from werkzeug import Response

from tests.conftest import auth
from tests.fakes import openai as fake_openai
from tests.fakes import responses as fake_responses
from tests.helpers import charges, holds, invariant, json_answer
from tests.schemas import check_responses, responses_fields

CHAT = "/v1/chat/completions"
GEMINI = "/v1beta/models/up:generateContent"
DOCS = Path(__file__).parent.parent / "docs" / "responses-fields.md"
TOOL = {"type": "function", "name": "get_weather", "description": "Weather now",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def post(client, body: dict, **headers):
    return client.post("/v1/responses", json=body, headers={**auth(), **headers})


def events_of(data: bytes) -> list[dict]:
    """The stream's events, each checked against the published ResponseStreamEvent schema and
    numbered in order."""
    found = [json.loads(line[6:]) for line in data.decode().splitlines() if line.startswith("data: ")]
    for i, event in enumerate(found):
        check_responses("ResponseStreamEvent", event)
        assert event["sequence_number"] == found[0]["sequence_number"] + i
    return found


def _charged(usage: dict) -> None:
    assert charges("alice")[-1].delta == -(usage["input_tokens"] + usage["output_tokens"]) * 1000
    assert usage["cost"] == (usage["input_tokens"] + usage["output_tokens"]) / 1000
    assert holds() == 0
    invariant("alice")


# -- the fields the issue found refused: accepted, and forwarded where the provider reads them --

ACCEPTED = [("client_metadata", {"thread_id": "t1"}), ("include", ["reasoning.encrypted_content"]),
            ("prompt_cache_key", "conv-1"), ("service_tier", "auto"), ("safety_identifier", "user-9"),
            ("stream_options", {"include_obfuscation": False}), ("truncation", "auto"), ("top_logprobs", 0),
            ("background", False), ("max_tool_calls", 3), ("store", False), ("metadata", {"k": "v"}),
            ("prompt_cache_retention", "24h"), ("context_management", [{"type": "compaction"}])]


@pytest.mark.parametrize("api", ["openai", "gemini"])
@pytest.mark.parametrize("field,value", ACCEPTED, ids=[f for f, _ in ACCEPTED])
def test_fields_that_cannot_change_the_answer_are_accepted(gateway, upstream, api, field, value):
    path, answer = {"openai": (CHAT, fake_openai.completion("Hi", 9, 3)),
                    "gemini": (GEMINI, json.loads((Path(__file__).parent / "fixtures/gemini/generate.json").read_text()))}[api]
    upstream.expect_request(path).respond_with_handler(json_answer(answer))
    r = post(gateway, {"model": f"m-{api}", "input": "Hi", field: value})
    assert r.status_code == 200, r.json
    check_responses("Response", r.json)
    sent = upstream.log[-1][0].get_json()
    if api == "openai" and field in ("prompt_cache_key", "safety_identifier"):
        assert sent[field] == value  # a provider that reads it gets it
    else:
        assert field not in sent and "metadata" not in sent
    _charged(r.json["usage"])


def test_top_logprobs_maps_to_chat_logprobs_on_an_openai_row(gateway, upstream):
    answer = fake_openai.completion("Hi", 9, 1)
    answer["choices"][0]["logprobs"] = {"content": [{"token": "Hi", "logprob": -0.1, "bytes": [72, 105],
                                                     "top_logprobs": [{"token": "Hi", "logprob": -0.1,
                                                                       "bytes": [72, 105]}]}]}
    upstream.expect_request(CHAT).respond_with_handler(json_answer(answer))
    r = post(gateway, {"model": "m-openai", "input": "Hi", "top_logprobs": 1,
                      "include": ["message.output_text.logprobs"]})
    assert r.status_code == 200, r.json
    sent = upstream.log[-1][0].get_json()
    assert sent["logprobs"] is True and sent["top_logprobs"] == 1
    assert r.json["output"][0]["content"][0]["logprobs"][0]["token"] == "Hi"
    assert r.json["top_logprobs"] == 1
    check_responses("Response", r.json)


REFUSED = [("background", True, "m-openai"), ("conversation", "conv_1", "m-openai"),
           ("prompt", {"id": "pmpt_1"}, "m-openai"), ("moderation", {"model": "omni-moderation-latest"}, "m-openai"),
           ("top_logprobs", 2, "m-gemini"), ("text", {"verbosity": "low"}, "m-gemini"),
           ("tools", [{"type": "file_search", "vector_store_ids": ["vs_1"]}], "m-openai"),
           ("tool_choice", {"type": "web_search"}, "m-openai"), ("mystery_field", 1, "m-openai")]


@pytest.mark.parametrize("field,value,model", REFUSED, ids=[f"{f}-{m}" for f, _, m in REFUSED])
def test_fields_whose_loss_would_change_the_answer_are_400_naming_them(gateway, upstream, field, value, model):
    r = post(gateway, {"model": model, "input": "Hi", field: value,
                       **({"tools": [{"type": "web_search"}]} if field == "tool_choice" else {})})
    assert r.status_code == 400, r.json
    assert r.json["error"]["param"].split(".")[0].split("[")[0] == field, r.json
    assert field.split("_")[0] in r.json["error"]["message"]
    assert not upstream.log and not charges("alice") and holds() == 0


def test_codex_tools_namespaced_functions_flattened_and_an_optional_web_search_left_out(gateway, upstream):
    call = {"id": "call_9", "type": "function", "function": {"name": "multi__spawn", "arguments": '{"n": 1}'}}
    upstream.expect_request(CHAT).respond_with_handler(json_answer(
        fake_openai.completion(None, 9, 3, finish="tool_calls", tool_calls=[call])))
    namespace = {"type": "namespace", "name": "multi", "description": "agents", "tools": [
        {"type": "function", "name": "spawn", "parameters": {"type": "object", "properties": {}}, "strict": False}]}
    r = post(gateway, {"model": "m-openai", "input": "Hi", "tools": [TOOL, namespace, {"type": "web_search"}]})
    assert r.status_code == 200, r.json
    sent = upstream.log[-1][0].get_json()
    assert [t["function"]["name"] for t in sent["tools"]] == ["get_weather", "multi__spawn"]
    item = r.json["output"][0]
    assert (item["type"], item["namespace"], item["name"]) == ("function_call", "multi", "spawn")
    check_responses("Response", r.json)


def test_every_published_field_has_a_rule_in_the_docs():
    table = DOCS.read_text()
    documented = set(re.findall(r"^\| `([a-z_]+)`", table, re.M))
    assert responses_fields("CreateResponse") - documented == set()
    from frontdoors.responses import FIELDS
    assert responses_fields("CreateResponse") <= FIELDS | {"model"}


# -- whole objects; streams end as OpenAI's do --------------------------------------------------

def test_a_response_carries_every_property_openai_sends(gateway, upstream):
    upstream.expect_request(CHAT).respond_with_handler(json_answer(fake_openai.completion("Hi", 9, 3)))
    r = post(gateway, {"model": "m-openai", "input": "Hi", "temperature": 0.5, "max_output_tokens": 30,
                       "tools": [TOOL], "tool_choice": "auto", "metadata": {"a": "b"}, "user": "u1"})
    body = r.json
    check_responses("Response", body)
    for prop in ("completed_at", "temperature", "top_p", "presence_penalty", "frequency_penalty", "tool_choice",
                 "tools", "parallel_tool_calls", "text", "truncation", "reasoning", "incomplete_details",
                 "max_output_tokens", "service_tier", "store", "usage", "background", "top_logprobs", "user"):
        assert prop in body, prop
    assert body["temperature"] == 0.5 and body["top_p"] == 1.0 and body["max_output_tokens"] == 30
    assert isinstance(body["completed_at"], int) and body["metadata"] == {"a": "b"}
    assert body["tools"] == [{**TOOL, "strict": None}]
    assert body["usage"]["input_tokens_details"] == {"cached_tokens": 0, "cache_write_tokens": 0}
    assert body["usage"]["output_tokens_details"] == {"reasoning_tokens": 0}


def _chunks(*pieces, finish="stop"):
    body = [fake_openai.chunk({"role": "assistant", "content": ""})]
    body += [fake_openai.chunk({"content": p}) for p in pieces]
    body += [fake_openai.chunk({}, finish=finish),
             fake_openai.chunk({}, usage={"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11},
                               choices=False), b"data: [DONE]\n\n"]
    return lambda request: Response(body, mimetype="text/event-stream")


@pytest.mark.parametrize("finish,terminal,status", [("stop", "response.completed", "completed"),
                                                    ("length", "response.incomplete", "incomplete")])
def test_a_stream_ends_completed_or_incomplete_and_every_event_is_published_shape(gateway, upstream, finish,
                                                                                   terminal, status):
    upstream.expect_request(CHAT).respond_with_handler(_chunks("Hel", "lo", finish=finish))
    r = post(gateway, {"model": "m-openai", "input": "Hi", "stream": True, "max_output_tokens": 2})
    found = events_of(r.data)
    assert found[-1]["type"] == terminal and found[-1]["response"]["status"] == status
    assert [e["type"] for e in found].count(terminal) == 1
    if status == "incomplete":
        assert found[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
        assert found[-1]["response"]["completed_at"] is None
    assert "".join(e["delta"] for e in found if e["type"] == "response.output_text.delta") == "Hello"
    _charged(found[-1]["response"]["usage"])


def _streamed(*deltas):
    body = [fake_openai.chunk({"role": "assistant", "content": ""})]
    body += [fake_openai.chunk(d) for d in deltas]
    body += [fake_openai.chunk({}, finish="tool_calls"),
             fake_openai.chunk({}, usage={"prompt_tokens": 9, "completion_tokens": 6, "total_tokens": 15,
                                          "completion_tokens_details": {"reasoning_tokens": 3}}, choices=False),
             b"data: [DONE]\n\n"]
    return lambda request: Response(body, mimetype="text/event-stream")


def _call(i, id_=None, name=None, args=""):
    return {"tool_calls": [{"index": i, **({"id": id_, "type": "function"} if id_ else {}),
                            "function": {**({"name": name} if name else {}), "arguments": args}}]}


def test_reasoning_text_then_the_answer_then_two_calls_stream_one_item_after_another(gateway, upstream):
    """The reasoning a provider sends (`reasoning_content`) is a reasoning item, and each output
    item is done before the next is added, as OpenAI streams them (they used to overlap: every
    `.done` came at the end); the final response lists them in the same order."""
    upstream.expect_request(CHAT).respond_with_handler(_streamed(
        {"reasoning_content": "Think"}, {"reasoning_content": "ing."}, {"content": "Let me look."},
        _call(0, "call_a", "get_weather", '{"city":'), _call(0, args='"Paris"}'),
        _call(1, "call_b", "get_weather", '{"city":"Rome"}')))
    r = post(gateway, {"model": "m-openai", "input": "Weather?", "stream": True, "tools": [TOOL]})
    found = events_of(r.data)
    opened, order = set(), []
    for e in found:
        if e["type"] == "response.output_item.added":
            assert not opened, f"item {e['output_index']} added while {opened} open"
            opened.add(e["output_index"])
            order.append(e["item"]["type"])
        elif e["type"] == "response.output_item.done":
            assert opened == {e["output_index"]}
            opened.clear()
    assert order == ["reasoning", "message", "function_call", "function_call"] and not opened
    assert "".join(e["delta"] for e in found if e["type"] == "response.reasoning_text.delta") == "Thinking."
    done = found[-1]["response"]
    assert [i["type"] for i in done["output"]] == order
    assert done["output"][0]["content"] == [{"type": "reasoning_text", "text": "Thinking."}]
    assert [i.get("arguments") for i in done["output"][2:]] == ['{"city":"Paris"}', '{"city":"Rome"}']
    streamed = [e["item"] for e in found if e["type"] == "response.output_item.done"]
    assert [i["id"] for i in streamed] == [i["id"] for i in done["output"]]
    assert done["usage"]["output_tokens_details"]["reasoning_tokens"] == 3


ODD_STREAMS = {  # what providers may send, and the items it becomes (type, text or arguments)
    "text after a call": ([{"content": "hi"}, _call(0, "a", "get_weather", "{}"), {"content": " more"}],
                          [("message", "hi"), ("function_call", "{}"), ("message", " more")]),
    "a call numbered 1": ([_call(1, "a", "get_weather", "{}")], [("function_call", "{}")]),
    "the name after the id": ([_call(0, "c1", None, '{"city":'), _call(0, None, "get_weather", '"Oslo"}')],
                              [("function_call", '{"city":"Oslo"}')]),
    "no call id": ([_call(0, None, "get_weather", "{}")], [("function_call", "{}")]),
}


@pytest.mark.parametrize("case", list(ODD_STREAMS))
def test_odd_streams_still_stream_whole_items_and_answer_what_they_streamed(gateway, upstream, case):
    """Every event is of a published shape, one item open at a time, and the finished response's
    output is the items the stream finished, same ids, same contents."""
    deltas, expected = ODD_STREAMS[case]
    upstream.expect_request(CHAT).respond_with_handler(_streamed(*deltas))
    found = events_of(post(gateway, {"model": "m-openai", "input": "Hi", "stream": True, "tools": [TOOL]}).data)
    streamed = [e["item"] for e in found if e["type"] == "response.output_item.done"]
    final = found[-1]["response"]["output"]
    assert streamed == final
    assert [(i["type"], i.get("arguments", (i.get("content") or [{}])[0].get("text"))) for i in final] == expected
    assert all(i["call_id"] and i["name"] == "get_weather" for i in final if i["type"] == "function_call")


def test_a_cut_stream_marks_only_its_last_item_incomplete(gateway, upstream):
    body = [fake_openai.chunk({"role": "assistant", "content": ""}), fake_openai.chunk({"content": "Let me"}),
            fake_openai.chunk(_call(0, "a", "get_weather", '{"ci')), fake_openai.chunk({}, finish="length"),
            fake_openai.chunk({}, usage={"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}, choices=False),
            b"data: [DONE]\n\n"]
    upstream.expect_request(CHAT).respond_with_handler(lambda request: Response(body, mimetype="text/event-stream"))
    found = events_of(post(gateway, {"model": "m-openai", "input": "Hi", "stream": True, "tools": [TOOL]}).data)
    assert found[-1]["type"] == "response.incomplete"
    assert [i["status"] for i in found[-1]["response"]["output"]] == ["completed", "incomplete"]


def test_reasoning_text_is_a_reasoning_item_unstreamed_too(gateway, upstream):
    answer = fake_openai.completion("Paris.", 9, 4)
    answer["choices"][0]["message"]["reasoning_content"] = "The capital of France."
    upstream.expect_request(CHAT).respond_with_handler(json_answer(answer))
    r = post(gateway, {"model": "m-openai", "input": "Capital of France?"})
    check_responses("Response", r.json)
    assert [i["type"] for i in r.json["output"]] == ["reasoning", "message"]
    assert r.json["output"][0]["content"][0]["text"] == "The capital of France."
    assert r.json["output"][1]["content"][0]["text"] == "Paris."


def test_a_cap_cut_answer_is_incomplete_unstreamed_too(gateway, upstream):
    upstream.expect_request(CHAT).respond_with_handler(json_answer(fake_openai.completion("Hel", 9, 2, "length")))
    r = post(gateway, {"model": "m-openai", "input": "Hi", "max_output_tokens": 2})
    assert r.json["status"] == "incomplete" and r.json["incomplete_details"] == {"reason": "max_output_tokens"}
    check_responses("Response", r.json)


def test_a_stream_the_provider_breaks_ends_failed(gateway, upstream):
    stream = fake_openai.Stream(["a", "b", "c"], drop_after=2)
    upstream.expect_request(CHAT).respond_with_handler(stream.handler)
    r = post(gateway, {"model": "m-openai", "input": "Hi", "stream": True})
    found = events_of(r.data)
    assert found[-1]["type"] == "response.failed" and found[-1]["response"]["status"] == "failed"
    assert found[-1]["response"]["error"]["code"] == "server_error"


# -- api = "openai_responses": pass-through ------------------------------------------------------

@pytest.fixture
def native(gateway, upstream):
    r = gateway.post("/api/admin/models", headers=auth("root", True), json={
        "id": 9, "name": "m-native", "api": "openai_responses", "provider": "openai", "upstream_model": "up",
        "base_url": upstream.url_for("/v1").rstrip("/"), "api_key_env": "FAKE_API_KEY",
        "cost_per_1k_tokens": "1", "max_output_tokens": 64})
    assert r.status_code == 201, r.json
    return gateway


def test_a_responses_row_gets_the_body_as_sent_and_answers_whole(native, upstream):
    answer = fake_responses.response("Native hello", 20, 5, cached=8, reasoning=2)
    upstream.expect_request("/v1/responses").respond_with_handler(json_answer(answer))
    sent_body = {"model": "m-native", "input": "Hi", "tools": [{"type": "web_search"}], "include": ["x.future"],
                 "client_metadata": {"a": 1}, "future_field": {"kept": True}, "reasoning": {"effort": "high"}}
    r = post(native, sent_body)
    assert r.status_code == 200, r.json
    sent = upstream.log[-1][0].get_json()
    assert sent == {**sent_body, "model": "up", "max_output_tokens": 64,
                    "input": [{"type": "message", "role": "user", "content": "Hi"}]}
    assert upstream.log[-1][0].headers["Authorization"] == "Bearer provider-secret-key-123"
    body = r.json
    assert body["id"].startswith("resp_") and body["id"] != "resp_upstream" and body["model"] == "m-native"
    assert body["billing"] == {"payer": "developer"} and body["output"][0]["type"] == "reasoning"
    assert body["usage"]["input_tokens_details"]["cached_tokens"] == 8
    check_responses("Response", body)
    entry = charges("alice")[-1]
    assert entry.delta == -25 * 1000
    assert holds() == 0
    invariant("alice")


@pytest.mark.parametrize("stream", [False, True])
def test_a_responses_row_bills_each_token_class_its_usage_reports(native, upstream, stream):
    native.patch("/api/admin/models/9", headers=auth("root", True), json={
        "cost_per_1k_input_tokens": "2", "cost_per_1k_cached_input_tokens": "0.5",
        "cost_per_1k_output_tokens": "8", "cost_per_1k_reasoning_tokens": "10"})
    done = fake_responses.response("Priced", 1000, 200, cached=400, reasoning=50)
    upstream.expect_request("/v1/responses").respond_with_handler(
        (lambda request: Response(fake_responses.stream(done), mimetype="text/event-stream")) if stream
        else json_answer(done))
    r = post(native, {"model": "m-native", "input": "word " * 1000, "max_output_tokens": 300, "stream": stream})
    found = events_of(r.data)[-1]["response"] if stream else r.json
    # input 600 x 2 + cached 400 x 0.5 + output 150 x 8 + reasoning 50 x 10, per 1000 tokens
    assert found["usage"]["cost_details"] == {"input": 1.2, "cached_input": 0.2, "cache_write_5m": 0.0,
                                              "cache_write_1h": 0.0, "output": 1.2, "reasoning": 0.5}
    assert found["usage"]["cost"] == 3.1 and charges("alice")[-1].delta == -3_100_000
    assert found["usage"]["input_tokens"] == 1000 and found["usage"]["output_tokens_details"]["reasoning_tokens"] == 50
    assert holds() == 0
    invariant("alice")


def test_a_responses_row_continues_the_gateways_conversation(native, upstream):
    upstream.expect_ordered_request("/v1/responses").respond_with_handler(
        json_answer(fake_responses.response("Hi Ann", reasoning=1)))
    upstream.expect_ordered_request("/v1/responses").respond_with_handler(json_answer(fake_responses.response("Ann")))
    first = post(native, {"model": "m-native", "input": "I am Ann."}).json
    second = post(native, {"model": "m-native", "input": "Who am I?", "previous_response_id": first["id"]}).json
    sent = upstream.log[-1][0].get_json()
    assert "previous_response_id" not in sent
    assert [i.get("type") for i in sent["input"]] == ["message", "reasoning", "message", "message"]
    assert sent["input"][2]["content"][0]["text"] == "Hi Ann" and sent["input"][3]["content"] == "Who am I?"
    assert second["previous_response_id"] == first["id"]
    got = native.get(f"/v1/responses/{second['id']}", headers=auth())
    assert got.json["output"][0]["content"][0]["text"] == "Ann"


def test_a_responses_row_streams_every_event_with_the_cost_in_the_last(native, upstream):
    done = fake_responses.response("Hello there", 10, 3)
    upstream.expect_request("/v1/responses").respond_with_handler(
        lambda request: Response(fake_responses.stream(done, ["Hello", " there"]), mimetype="text/event-stream"))
    r = post(native, {"model": "m-native", "input": "Hi", "stream": True})
    found = events_of(r.data)
    assert [e["type"] for e in found] == [json.loads(line[6:])["type"] for line in
                                          fake_responses.stream(done, ["Hello", " there"]).decode().splitlines()
                                          if line.startswith("data: ")]
    last = found[-1]["response"]
    assert last["id"] == found[0]["response"]["id"] != "resp_upstream" and last["model"] == "m-native"
    assert last["usage"]["cost"] == 0.013
    _charged(last["usage"])
    assert native.get(f"/v1/responses/{last['id']}", headers=auth()).status_code == 200


def test_a_responses_row_stream_without_usage_or_content_is_not_charged(native, upstream):
    done = fake_responses.response("")
    done["output"] = []
    done.pop("usage")
    upstream.expect_request("/v1/responses").respond_with_handler(
        lambda request: Response(fake_responses.stream(done), mimetype="text/event-stream"))
    found = events_of(post(native, {"model": "m-native", "input": "Hi", "stream": True}).data)
    assert found[-1]["type"] == "response.completed" and found[-1]["response"]["usage"]["cost"] == 0
    assert not charges("alice") and holds() == 0


def test_a_responses_row_answers_a_retried_idempotent_call_once(native, upstream):
    upstream.expect_request("/v1/responses").respond_with_handler(json_answer(fake_responses.response("Once")))
    first = post(native, {"model": "m-native", "input": "Hi"}, **{"Idempotency-Key": "k-1"})
    again = post(native, {"model": "m-native", "input": "Hi"}, **{"Idempotency-Key": "k-1"})
    assert first.status_code == again.status_code == 200, again.json
    assert again.json["id"] == first.json["id"] and again.headers["Idempotent-Replayed"] == "true"
    assert len(upstream.log) == 1 and len(charges("alice")) == 1


def test_a_responses_row_replays_a_retried_idempotent_stream_once(native, upstream):
    done = fake_responses.response("Once streamed", 10, 3)
    upstream.expect_request("/v1/responses").respond_with_handler(
        lambda request: Response(fake_responses.stream(done), mimetype="text/event-stream"))
    body = {"model": "m-native", "input": "Hi", "stream": True}
    first = events_of(post(native, body, **{"Idempotency-Key": "k-2"}).data)
    again = post(native, body, **{"Idempotency-Key": "k-2"})
    assert again.headers["Idempotent-Replayed"] == "true"
    replayed = events_of(again.data)
    assert replayed[-1] == {**first[-1], "sequence_number": replayed[-1]["sequence_number"]}
    assert "".join(e["delta"] for e in replayed if e["type"] == "response.output_text.delta") == "Once streamed"
    assert len(upstream.log) == 1 and len(charges("alice")) == 1


def test_a_responses_row_serves_chat_completions_translated(native, upstream):
    upstream.expect_ordered_request("/v1/responses").respond_with_handler(json_answer(fake_responses.response(
        call={"name": "get_weather", "arguments": '{"city": "Paris"}'})))
    upstream.expect_ordered_request("/v1/responses").respond_with_handler(json_answer(
        fake_responses.response("18 degrees", 30, 4, status="incomplete")))
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": TOOL["parameters"]}}
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Paris?"}]
    first = native.post("/v1/chat/completions", headers=auth(), json={
        "model": "m-native", "messages": messages, "tools": [tool], "temperature": 0.2, "max_tokens": 50})
    assert first.status_code == 200, first.json
    sent = upstream.log[-1][0].get_json()
    assert sent["input"] == [{"type": "message", "role": "system", "content": "Be brief."},
                             {"type": "message", "role": "user", "content": "Weather in Paris?"}]
    assert sent["tools"][0]["name"] == "get_weather" and sent["store"] is False
    assert (sent["temperature"], sent["max_output_tokens"], sent["model"]) == (0.2, 50, "up")
    message = first.json["choices"][0]["message"]
    assert first.json["choices"][0]["finish_reason"] == "tool_calls"
    assert message["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    messages += [message, {"role": "tool", "tool_call_id": message["tool_calls"][0]["id"], "content": "18C"}]
    second = native.post("/v1/chat/completions", headers=auth(), json={
        "model": "m-native", "messages": messages, "tools": [tool]})
    sent = upstream.log[-1][0].get_json()
    assert sent["input"][2:] == [{"type": "function_call", "call_id": "call_up1", "name": "get_weather",
                                  "arguments": '{"city": "Paris"}'},
                                 {"type": "function_call_output", "call_id": "call_up1", "output": "18C"}]
    assert second.json["choices"][0]["message"]["content"] == "18 degrees"
    assert second.json["choices"][0]["finish_reason"] == "length"
    assert charges("alice")[-1].delta == -34 * 1000 and holds() == 0


def test_a_responses_row_streams_chat_and_refuses_what_it_has_no_field_for(native, upstream):
    done = fake_responses.response("Hello there", 10, 3)
    upstream.expect_request("/v1/responses").respond_with_handler(
        lambda request: Response(fake_responses.stream(done, ["Hello", " there"]), mimetype="text/event-stream"))
    r = native.post("/v1/chat/completions", headers=auth(), json={
        "model": "m-native", "messages": [{"role": "user", "content": "Hi"}], "stream": True,
        "stream_options": {"include_usage": True}})
    chunks = [json.loads(line[6:]) for line in r.data.decode().splitlines()
              if line.startswith("data: {")]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == "Hello there"
    assert chunks[-1]["usage"]["prompt_tokens"] == 10 and chunks[-1]["usage"]["completion_tokens"] == 3
    assert charges("alice")[-1].delta == -13 * 1000
    r = native.post("/v1/chat/completions", headers=auth(), json={
        "model": "m-native", "messages": [{"role": "user", "content": "Hi"}], "stop": ["x"]})
    assert r.status_code == 400 and r.json["error"]["param"] == "stop"
    assert len(upstream.log) == 1 and holds() == 0


def test_a_responses_row_serves_the_messages_door_through_the_chat_call(native, upstream):
    upstream.expect_request("/v1/responses").respond_with_handler(json_answer(fake_responses.response("Bonjour", 7, 2)))
    r = native.post("/v1/messages", headers=auth(), json={
        "model": "m-native", "max_tokens": 20, "messages": [{"role": "user", "content": "Hi"}]})
    assert r.status_code == 200, r.json
    assert r.json["content"][0]["text"] == "Bonjour" and r.json["usage"]["input_tokens"] == 7
    assert upstream.log[-1][0].get_json()["input"] == [{"type": "message", "role": "user", "content": "Hi"}]


def test_seed_models_and_the_admin_api_take_the_new_api(app, tmp_path, client):
    path = tmp_path / "models.toml"
    path.write_text('''
[[models]]
id = 70
name = "gpt-5-responses"
provider = "openai"
api = "openai_responses"
upstream_model = "gpt-5"
api_key_env = "OPENAI_API_KEY"
cost_per_1k_tokens = "0.01"
''')
    done = app.test_cli_runner().invoke(args=["seed-models", "--file", str(path)])
    assert done.exit_code == 0, done.output
    from service.store.db import AIModel
    assert AIModel.get(AIModel.id == 70).api == "openai_responses"
    r = client.post("/api/admin/models", headers=auth("root", True), json={
        "id": 71, "name": "azure-r", "provider": "azure", "api": "openai_responses", "cost_per_1k_tokens": "0.01"})
    assert r.status_code == 201 and r.json["api"] == "openai_responses"
    r = client.post("/api/admin/models", headers=auth("root", True), json={
        "id": 72, "name": "x", "provider": "x", "api": "openai_response", "cost_per_1k_tokens": "0.01"})
    assert r.status_code == 400 and "openai_responses" in r.json["error"]["message"]


def test_conversations_stored_as_chat_messages_before_still_continue():
    from frontdoors.responses import items_of, messages_of
    old = [{"role": "user", "content": "Weather?"},
           {"role": "assistant", "content": None, "tool_calls": [
               {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
           {"role": "tool", "tool_call_id": "c1", "content": "18C"}, {"role": "assistant", "content": "18 degrees"}]
    items = items_of(old)
    assert [i["type"] for i in items] == ["message", "function_call", "function_call_output", "message"]
    assert messages_of(items) == old


def test_a_namespaced_call_sent_back_is_the_flat_name_the_chat_model_knows():
    from frontdoors.responses import messages_of
    out = messages_of([{"type": "function_call", "call_id": "c1", "namespace": "multi", "name": "spawn",
                        "arguments": "{}"}])
    assert out[0]["tool_calls"][0]["function"]["name"] == "multi__spawn"


def test_a_refusal_from_the_provider_adapter_names_the_responses_field(gateway, upstream):
    r = post(gateway, {"model": "m-ollama", "input": "Hi", "parallel_tool_calls": False, "tools": [TOOL]})
    assert r.status_code == 400 and r.json["error"]["param"] == "parallel_tool_calls"
    r = post(gateway, {"model": "m-ollama", "input": [{"role": "user", "content": [
        {"type": "input_file", "file_data": "data:application/x-nothing;base64,AAAA", "filename": "x.bin"}]}]})
    assert r.status_code == 400 and r.json["error"]["param"] == "input", r.json
    r = post(gateway, {"model": "m-gemini", "input": "Hi", "include": ["message.output_text.logprobs"]})
    assert r.status_code == 400 and r.json["error"]["param"] == "include", r.json
    r = post(gateway, {"model": "m-anthropic", "input": "Hi", "reasoning": {"effort": "high"}, "max_output_tokens": 100})
    assert r.status_code == 400 and r.json["error"]["param"] == "max_output_tokens", r.json
    assert not upstream.log and holds() == 0


def test_a_chat_range_check_names_the_responses_field(gateway, upstream):
    """The chat body's own checks run while the request is translated: their refusals name the
    Responses field too (a huge max_output_tokens said 'max_tokens')."""
    r = post(gateway, {"model": "m-openai", "input": "Hi", "max_output_tokens": 10 ** 12})
    assert r.status_code == 400 and r.json["error"]["param"] == "max_output_tokens", r.json
    assert "max_tokens" not in r.json["error"]["message"].replace("max_output_tokens", "")
    assert not upstream.log and holds() == 0


def test_a_body_without_a_content_type_is_read_as_every_door_reads_it(gateway, upstream):
    """No Content-Type: the other doors read the JSON body; this one answered 415 typed
    internal_error (Flask's get_json refused it, and an unknown HTTP error was a server fault)."""
    upstream.expect_request(CHAT).respond_with_handler(json_answer(fake_openai.completion("Hi", 9, 3)))
    r = gateway.post("/v1/responses", data=json.dumps({"model": "m-openai", "input": "Hi"}), headers=auth())
    assert r.status_code == 200, r.json
    assert r.json["output"][0]["content"][0]["text"] == "Hi"


@pytest.mark.parametrize("value", [123, ["a"], {"name": "m-openai"}])
def test_a_model_that_is_not_a_string_is_named_as_such(gateway, value):
    r = post(gateway, {"model": value, "input": "Hi"})
    assert r.status_code == 400 and r.json["error"]["param"] == "model"
    assert "must be a string" in r.json["error"]["message"]
    r = gateway.post("/v1/messages", headers=auth(),
                     json={"model": value, "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 400 and "must be a string" in r.json["error"]["message"]
    r = gateway.post("/v1/embeddings", json={"model": value, "input": "x"}, headers=auth())
    assert r.status_code == 400 and "must be a string" in r.json["error"]["message"]


@pytest.mark.parametrize("stream", [False, True])
def test_a_retried_call_with_its_idempotency_key_is_the_same_response(gateway, upstream, stream):
    """A replay answered a new Response id (and stored a second copy of the conversation under it):
    a client chaining previous_response_id after a retry forked its conversation."""
    upstream.expect_request(CHAT).respond_with_handler(json_answer(fake_openai.completion("Hi", 9, 3)))
    if stream:
        upstream.clear()
        chunks = b"".join([fake_openai.chunk({"role": "assistant", "content": "Hi"}), fake_openai.chunk({}, "stop"),
                           fake_openai.chunk({}, usage={"prompt_tokens": 9, "completion_tokens": 3,
                                                        "total_tokens": 12}, choices=False), b"data: [DONE]\n\n"])
        upstream.expect_request(CHAT).respond_with_handler(lambda r: Response(chunks, mimetype="text/event-stream"))
    body = {"model": "m-openai", "input": "Hi", "stream": stream}
    first = post(gateway, body, **{"Idempotency-Key": "r-1"})
    first.get_data()  # (a stream read to its end: its answer is stored)
    again = post(gateway, body, **{"Idempotency-Key": "r-1"})
    assert again.headers["Idempotent-Replayed"] == "true" and len(upstream.log) == 1

    def answered(r):
        return [e for e in events_of(r.get_data()) if e["type"] == "response.completed"][0]["response"] \
            if stream else r.json
    assert answered(again)["id"] == answered(first)["id"]
    if not stream:
        assert again.json == first.json
    assert gateway.get(f"/v1/responses/{answered(first)['id']}", headers=auth()).status_code == 200
    listed = gateway.get(f"/v1/responses/{answered(first)['id']}/input_items", headers=auth())
    assert listed.status_code == 200
    assert len(charges("alice")) == 1 and holds() == 0
