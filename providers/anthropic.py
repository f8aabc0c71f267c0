"""Anthropic Messages API, `POST {base}/v1/messages`.

Follows https://docs.anthropic.com/en/api/messages and .../messages-streaming:
system and developer messages go to `system`; `max_tokens` is always sent (the
row's `max_output_tokens` when the client sent none); temperature is clamped
to Anthropic's 0-1 range; tools become `tools` with `input_schema`, tool
results become `tool_result` blocks. Streams are SSE events (`message_start`,
`content_block_start`/`_delta`/`_stop`, `message_delta`, `message_stop`,
`ping`, `error`); usage comes from `message_start` plus `message_delta`.
Anthropic has no `n`: the gateway repeats the call.

A pass-through call (`/v1/messages` on an anthropic row: a `PassThrough`) sends
the client's body as sent, with only `model` and `max_tokens` set (the client's
`anthropic-version`/`anthropic-beta` headers passed on); its answer and every
stream event go back whole (`passed_events`), usage read from them as above.
"""
from __future__ import annotations

import json
from typing import Iterable, Iterator

from core.usage import Usage, count
from providers.base import (
    Adapter, Completion, Delta, StreamState, as_function_call, choice, legacy, sse_data, text_of, turns,
)
from providers.parts import Part, parts_of, refuse, tool_call
from core.chat import PassThrough
from core.errors import InvalidRequest, ProviderError, UnsupportedParameter, clip

VERSION = "2023-06-01"
THINKING = {"none": 0, "minimal": 1024, "low": 1024, "medium": 4096, "high": 16384, "xhigh": 32000}
FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
          "tool_use": "tool_calls", "refusal": "content_filter", "pause_turn": "stop"}


class AnthropicAdapter(Adapter):
    name = "anthropic"
    native_n = False
    default_base = "https://api.anthropic.com"
    unsupported = ("logprobs", "top_logprobs", "logit_bias", "presence_penalty",
                   "frequency_penalty", "seed")
    mapped = frozenset({"temperature", "top_p", "top_k", "max_tokens", "max_completion_tokens", "n", "stop",
                        "user", "tools", "tool_choice", "parallel_tool_calls", "response_format",
                        "reasoning_effort"})

    def check(self, chat) -> None:
        if isinstance(chat, PassThrough):
            return  # the client's own Messages body: Anthropic judges it
        chat = legacy(chat)
        super().check(chat)
        _messages(chat.messages)  # every part has an Anthropic shape, or a 400 now
        effort = chat.params.get("reasoning_effort")
        if THINKING.get(effort) and chat.output_cap(chat.model) <= THINKING[effort]:
            raise InvalidRequest(f"reasoning_effort '{clip(effort)}' gives Anthropic a thinking budget of "
                                 f"{THINKING[effort]} tokens: max_tokens must be larger",
                                 param="max_tokens")
        fmt = (chat.params.get("response_format") or {}).get("type", "text")
        if fmt != "text":
            raise UnsupportedParameter(f"response_format '{clip(fmt)}' is not supported by the "
                                           "anthropic provider", param="response_format")

    def url(self, base: str, model, stream: bool) -> str:
        return f"{base}/v1/messages"

    def headers(self, api_key):
        headers = {"Content-Type": "application/json", "anthropic-version": VERSION}
        if api_key:
            headers["x-api-key"] = api_key
        return headers

    def request(self, chat) -> dict:
        if isinstance(chat, PassThrough):
            return _native_request(chat)
        chat = legacy(chat)
        p = chat.params
        system, messages = _messages(chat.messages)
        body: dict = {"model": chat.model.upstream_model, "messages": messages,
                      "max_tokens": chat.output_cap(chat.model)}
        if system:
            body["system"] = "\n\n".join(system)
        if "temperature" in p:
            body["temperature"] = min(p["temperature"], 1.0)  # OpenAI allows 0-2, Anthropic 0-1
        if "top_p" in p:
            body["top_p"] = p["top_p"]
        if "top_k" in p:
            body["top_k"] = p["top_k"]
        if THINKING.get(p.get("reasoning_effort")):
            body["thinking"] = {"type": "enabled", "budget_tokens": THINKING[p["reasoning_effort"]]}
        if "stop" in p:
            body["stop_sequences"] = p["stop"] if isinstance(p["stop"], list) else [p["stop"]]
        if "user" in p:
            body["metadata"] = {"user_id": p["user"]}
        body.update(_tools(p))
        if chat.stream:
            body["stream"] = True
        return body

    def response(self, payload, chat) -> Completion:
        if not isinstance(payload, dict) or not isinstance(payload.get("content"), list):
            raise ProviderError("The provider answered without content")
        if isinstance(chat, PassThrough):
            return _native_response(payload, chat)
        text, calls = [], []
        for block in payload["content"]:
            if block.get("type") == "text":
                text.append(block.get("text", ""))
            elif block.get("type") == "tool_use":
                calls.append({"id": block.get("id"), "type": "function",
                              "function": {"name": block.get("name"),
                                           "arguments": json.dumps(block.get("input") or {})}})
        finish = FINISH.get(payload.get("stop_reason"), "stop")
        out = [choice(0, "".join(text) if text or not calls else None, finish, calls or None)]
        if "functions" in chat.params:
            out = [as_function_call(c) for c in out]
        usage = payload.get("usage") or {}
        prompt, completion = usage.get("input_tokens"), usage.get("output_tokens")
        if not isinstance(prompt, int) or not isinstance(completion, int):
            return Completion(out, chat.prompt_guess, completion or 0, estimated=True)
        tokens = tokens_of(usage)
        return Completion(out, tokens.prompt, tokens.completion, detail=tokens.detail)

    def passed_events(self, lines: Iterable[bytes], state: StreamState) -> Iterator[Delta]:
        """A pass-through stream: every event whole, usage from message_start + message_delta."""
        tools: dict[int, int] = {}
        for data in sse_data(lines):
            yield _passed(self.stream_event(data), tools, state)
            if state.done:
                return

    def stream_events(self, lines: Iterable[bytes], state: StreamState) -> Iterator[Delta]:
        tools: dict[int, int] = {}  # Anthropic block index -> OpenAI tool call index
        for data in sse_data(lines):
            event = self.stream_event(data)
            kind = event.get("type")
            if kind == "message_start":
                state.extra["anthropic_usage"] = dict((event.get("message") or {}).get("usage") or {})
                _count_stream(state)
            elif kind == "content_block_start":
                block = event.get("content_block") or {}
                if block.get("type") == "tool_use":
                    tools[event.get("index", 0)] = len(tools)
                    yield Delta(0, tool_calls=[{"index": tools[event.get("index", 0)],
                                                "id": block.get("id"), "type": "function",
                                                "function": {"name": block.get("name"),
                                                             "arguments": ""}}])
                elif block.get("text"):
                    yield Delta(0, block["text"])
            elif kind == "content_block_delta":
                yield from _block_delta(event, tools)
            elif kind == "message_delta":
                usage = event.get("usage")
                if isinstance(usage, dict):  # cumulative: later counts replace earlier ones
                    state.extra.setdefault("anthropic_usage", {}).update(
                        {k: v for k, v in usage.items() if v is not None})
                    _count_stream(state)
                reason = (event.get("delta") or {}).get("stop_reason")
                if reason:
                    yield Delta(0, finish_reason=FINISH.get(reason, "stop"))
            elif kind == "message_stop":
                state.done = True
                return


def _native_request(chat) -> dict:
    """The client's body as sent, with the gateway's model and output cap."""
    body = {**chat.body, "model": chat.model.upstream_model, "max_tokens": chat.output_cap(chat.model)}
    if chat.stream:
        body["stream"] = True
    return body


def _native_response(payload: dict, chat) -> Completion:
    """The provider's message whole (in `raw`), its usage counted."""
    usage = payload.get("usage") or {}
    if not isinstance(usage.get("input_tokens"), int) or not isinstance(usage.get("output_tokens"), int):
        return Completion([], chat.prompt_guess, count(usage.get("output_tokens")), estimated=True, raw=payload)
    tokens = tokens_of(usage)
    return Completion([], tokens.prompt, tokens.completion, raw=payload, detail=tokens.detail)


def _passed(event: dict, tools: dict, state: StreamState) -> Delta:
    """One event of a pass-through stream, whole (`chunk`): its usage counted and its content
    noted (text, a tool call begun or continued), as for a translated stream."""
    kind = event.get("type")
    if kind == "message_start":
        state.extra["anthropic_usage"] = dict((event.get("message") or {}).get("usage") or {})
        _count_stream(state)
    elif kind == "message_delta" and isinstance(event.get("usage"), dict):
        state.extra.setdefault("anthropic_usage", {}).update(
            {k: v for k, v in event["usage"].items() if v is not None})
        _count_stream(state)
    elif kind == "message_stop":
        state.done = True
    piece = Delta(0, chunk=event)
    if kind == "content_block_start" and (event.get("content_block") or {}).get("type") == "tool_use":
        tools[event.get("index", 0)] = len(tools)
        piece.tool_calls = [{"index": tools[event.get("index", 0)]}]
    elif kind == "content_block_delta":
        for d in _block_delta(event, tools):
            piece.content, piece.tool_calls = d.content, d.tool_calls
    return piece


def _block_delta(event: dict, tools: dict) -> Iterator[Delta]:
    delta = event.get("delta") or {}
    if delta.get("type") == "text_delta":
        yield Delta(0, delta.get("text", ""))
    elif delta.get("type") == "input_json_delta" and event.get("index", 0) in tools:
        yield Delta(0, tool_calls=[{"index": tools[event.get("index", 0)],
                                    "function": {"arguments": delta.get("partial_json", "")}}])


def tokens_of(usage: dict) -> Usage:
    """Anthropic's usage in token classes: `input_tokens` excludes the cache, which is read
    (`cache_read_input_tokens`) or written (`cache_creation_input_tokens`, split by lifetime in
    `cache_creation.ephemeral_5m/1h_input_tokens`; unsplit writes are 5-minute ones)."""
    read, written = count(usage.get("cache_read_input_tokens")), count(usage.get("cache_creation_input_tokens"))
    split = usage.get("cache_creation") if isinstance(usage.get("cache_creation"), dict) else {}
    hour = count(split.get("ephemeral_1h_input_tokens"))
    five = count(split.get("ephemeral_5m_input_tokens")) if split else written - hour
    if split and five + hour < written:
        five = written - hour
    return Usage(count(usage.get("input_tokens")) + read + five + hour, count(usage.get("output_tokens")),
                 cached=read, cache_write_5m=five, cache_write_1h=hour)


def _count_stream(state: StreamState) -> None:
    usage = state.extra["anthropic_usage"]
    tokens = tokens_of(usage)
    state.prompt_tokens = tokens.prompt
    state.completion_tokens = usage.get("output_tokens") if isinstance(usage.get("output_tokens"), int) else None
    state.detail = tokens.detail


def _block(part: Part) -> dict:
    """One OpenAI part as one Anthropic block: text, an image (inline or by URL), a PDF."""
    if part.kind == "text":
        return {"type": "text", "text": part.text}
    if part.kind == "audio":
        raise refuse(part.where, f"{part.where}: the anthropic provider does not take audio")
    kind = "image" if part.kind == "image" else "document"
    if part.url:
        return {"type": kind, "source": {"type": "url", "url": part.url}}
    return {"type": kind, "source": {"type": "base64", "media_type": part.mime, "data": part.data}}


def _blocks(m: dict, index: int) -> list[dict]:
    if m["role"] == "tool":
        return [{"type": "tool_result", "tool_use_id": m["tool_call_id"], "content": text_of(m.get("content"))}]
    blocks = [_block(p) for p in parts_of(m, index) if p.kind != "text" or p.text]
    for j, call in enumerate(m.get("tool_calls") or []):
        name, arguments = tool_call(call, f"messages[{index}].tool_calls[{j}]")
        blocks.append({"type": "tool_use", "id": call["id"], "name": name, "input": arguments})
    return blocks


def _messages(messages: list[dict]) -> tuple[list[str], list[dict]]:
    """System texts, and the turns with consecutive same-role messages merged."""
    system, out = turns(messages, "assistant", _blocks, "content")
    for turn in out:  # a single text block is sent as a plain string, as the docs show
        if len(turn["content"]) == 1 and turn["content"][0]["type"] == "text":
            turn["content"] = turn["content"][0]["text"]
    return system, out


def _tools(p: dict) -> dict:
    tools = [t["function"] for t in p.get("tools") or [] if t.get("type") == "function"]
    if not tools or p.get("tool_choice") == "none":
        return {}
    out: dict = {"tools": [{"name": fn["name"], "description": fn.get("description", ""),
                            "input_schema": fn.get("parameters") or {"type": "object"}}
                           for fn in tools]}
    choice_ = p.get("tool_choice")
    if choice_ == "required":
        out["tool_choice"] = {"type": "any"}
    elif isinstance(choice_, dict):
        out["tool_choice"] = {"type": "tool", "name": (choice_.get("function") or {}).get("name")}
    if p.get("parallel_tool_calls") is False:
        out.setdefault("tool_choice", {"type": "auto"})["disable_parallel_tool_use"] = True
    return out
