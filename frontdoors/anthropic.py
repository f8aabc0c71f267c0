"""Anthropic's Messages API in and out (https://docs.anthropic.com/en/api/messages).

On an `anthropic` row the body goes to the provider as sent (providers/anthropic.py, native
calls); `native_chat` gives the gateway the model, the cap and the stream flag it needs.
On other rows `to_chat` turns a Messages request into a Chat Completions body, every field of
Anthropic's published request schema mapped, accepted (it cannot change the answer) or refused
with a 400 naming it (docs/messages-fields.md); `message` turns a chat completion into a
Messages response and `events` a chat chunk stream into Messages stream events
(message_start, content_block_start/delta/stop with text_delta and input_json_delta,
message_delta with the stop reason and usage, message_stop). `Passed` renders an anthropic
row's own events back, `Heard` and `replay` keep and replay them for an idempotent retry.
"""
from __future__ import annotations

import json
import uuid

from core.chat import model_name
from core.errors import GatewayError, InvalidRequest, clip
from frontdoors.common import bad, function_tools

MAPPED = {"model", "messages", "max_tokens", "system", "stop_sequences", "stream", "temperature", "top_p",
          "top_k", "tools", "tool_choice", "thinking", "output_config", "output_format"}
# fields that cannot change the answer on a translated row: checked for shape, not forwarded
ACCEPTED = {"metadata", "service_tier", "cache_control", "context_management", "container", "diagnostics",
            "inference_geo", "speed", "fallback_credit_token", "user_profile_id", "workspace_id",
            "billing_policy"}
FIELDS = MAPPED | ACCEPTED
EFFORTS = {"low": "low", "medium": "medium", "high": "high", "xhigh": "xhigh", "max": "xhigh"}
TOOL_KEYS = {"name", "description", "input_schema", "type", "cache_control", "strict", "eager_input_streaming",
             "defer_loading", "input_examples", "allowed_callers"}
DELTA_USAGE = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens", "output_tokens",
               "output_tokens_details")
STOP = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use",
        "content_filter": "refusal"}
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
               403: "permission_error", 404: "not_found_error", 405: "invalid_request_error",
               409: "invalid_request_error", 413: "request_too_large", 415: "invalid_request_error",
               422: "invalid_request_error", 429: "rate_limit_error", 431: "invalid_request_error",
               503: "overloaded_error", 504: "timeout_error", 529: "overloaded_error"}
PATHS = ("/v1/messages", "/api/v1/messages")  # the Messages door (and count_tokens under it)
# a stream's error event: the gateway's error type as Anthropic's (a provider that failed: api_error)
STREAM_ERRORS = {"rate_limit_error": "rate_limit_error", "service_unavailable": "overloaded_error",
                 "timeout_error": "timeout_error", "invalid_request_error": "invalid_request_error"}


def at_door(path: str) -> bool:
    """Whether a request path is the Messages door's: its errors are Anthropic's, even those
    raised before its view runs (a method not allowed, a body refused by the server)."""
    return any(path == p or path.startswith(p + "/") for p in PATHS)


def request_id(hex_id: str | None = None) -> str:
    """An id in Anthropic's `req_…` form (the `request-id` header, an error body's `request_id`)."""
    return f"req_{hex_id or uuid.uuid4().hex}"


def error_body(err: GatewayError, request_id: str | None = None) -> dict:
    """An error in Anthropic's shape."""
    body = {"type": "error", "error": {"type": ERROR_TYPES.get(err.status, "api_error"), "message": err.message}}
    if request_id:
        body["request_id"] = request_id
    return body


def _text(blocks, where: str) -> str:
    if isinstance(blocks, str):
        return blocks
    if not isinstance(blocks, list):
        raise bad(where, f"'{where}' must be a string or a list of text blocks")
    out = []
    for i, b in enumerate(blocks):
        if not isinstance(b, dict) or b.get("type") != "text" or not isinstance(b.get("text"), str):
            raise bad(f"{where}[{i}]", f"'{where}[{i}]' must be a text block")
        out.append(b["text"])
    return "\n".join(out)


def _image(block: dict, where: str) -> dict:
    source = block.get("source") or {}
    if source.get("type") == "base64" and isinstance(source.get("data"), str):
        url = f"data:{source.get('media_type') or 'image/png'};base64,{source['data']}"
    elif source.get("type") == "url" and isinstance(source.get("url"), str):
        url = source["url"]
    else:
        raise bad(where, f"'{where}.source' must be a base64 or url image source")
    return {"type": "image_url", "image_url": {"url": url}}


def _document(block: dict, where: str) -> dict:
    source = block.get("source") or {}
    if source.get("type") == "base64" and isinstance(source.get("data"), str):
        media = source.get("media_type") or "application/pdf"
        return {"type": "file", "file": {"file_data": f"data:{media};base64,{source['data']}",
                                         "filename": block.get("title") or "document.pdf"}}
    if source.get("type") == "text" and isinstance(source.get("data"), str):
        return {"type": "text", "text": source["data"]}
    raise bad(where, f"'{where}.source' must be a base64 or text document")


def _tool_result(b: dict, at: str) -> tuple[dict, list[dict]]:
    """A tool_result as a `tool` message, and its images as parts for the user message that
    follows (a Chat Completions tool message carries text only; the images go right after it)."""
    content, images = b.get("content") or "", []
    if isinstance(content, str):
        text = content
    elif isinstance(content, list):
        texts = []
        for j, c in enumerate(content):
            kind = c.get("type") if isinstance(c, dict) else None
            if kind == "text" and isinstance(c.get("text"), str):
                texts.append(c["text"])
            elif kind == "image":
                images.append(_image(c, f"{at}.content[{j}]"))
            elif kind == "document" and (c.get("source") or {}).get("type") == "text":
                texts.append(_document(c, f"{at}.content[{j}]")["text"])
            else:
                raise bad(f"{at}.content[{j}]", f"'{at}.content[{j}]' must be a text, image or text "
                                                "document block on this model (its provider cannot take "
                                                f"a {kind} block in a tool result)")
        text = "\n".join(texts)
    else:
        raise bad(f"{at}.content", f"'{at}.content' must be a string or a list of blocks")
    if b.get("is_error"):
        text = f"Error: {text}"
    return {"role": "tool", "tool_call_id": b["tool_use_id"], "content": text}, images


def _user(blocks: list, where: str) -> list[dict]:
    """A user turn's blocks: tool results first (one `tool` message each), then one user message
    with the images those results carried and the turn's other blocks, in order."""
    results, parts = [], []
    for i, b in enumerate(blocks):
        at = f"{where}[{i}]"
        kind = b.get("type") if isinstance(b, dict) else None
        if kind == "text" and isinstance(b.get("text"), str):
            parts.append({"type": "text", "text": b["text"]})
        elif kind == "image":
            parts.append(_image(b, at))
        elif kind == "document":
            parts.append(_document(b, at))
        elif kind == "tool_result" and isinstance(b.get("tool_use_id"), str):
            message, images = _tool_result(b, at)
            results.append(message)
            parts.extend(images)
        else:
            raise bad(at, f"'{at}' must be a text, image, document or tool_result block")
    if parts:
        results.append({"role": "user", "content": parts})
    return results


def _assistant(blocks: list, where: str) -> dict:
    text, calls = [], []
    for i, b in enumerate(blocks):
        at = f"{where}[{i}]"
        kind = b.get("type") if isinstance(b, dict) else None
        if kind == "text" and isinstance(b.get("text"), str):
            text.append(b["text"])
        elif kind == "tool_use" and isinstance(b.get("id"), str) and isinstance(b.get("name"), str):
            calls.append({"id": b["id"], "type": "function",
                          "function": {"name": b["name"], "arguments": json.dumps(b.get("input") or {})}})
        elif kind in ("thinking", "redacted_thinking"):
            continue  # a model's own reasoning: not something another provider can take back
        else:
            raise bad(at, f"'{at}' must be a text, tool_use or thinking block")
    out = {"role": "assistant", "content": "".join(text) if text else None}
    if calls:
        out["tool_calls"] = calls
    return out


def _messages(body: dict) -> list[dict]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty array", param="messages", code="invalid_messages")
    out = []
    if body.get("system") is not None:
        out.append({"role": "system", "content": _text(body["system"], "system")})
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant", "system"):
            raise InvalidRequest(f"'{where}.role' must be user, assistant or system", param=where,
                                 code="invalid_messages")
        content = m.get("content")
        if m["role"] == "system":  # a system message between turns (Claude Code sends them)
            out.append({"role": "system", "content": _text(content, f"{where}.content")})
        elif isinstance(content, str):
            out.append({"role": m["role"], "content": content})
        elif isinstance(content, list) and content:
            out.extend(_user(content, f"{where}.content") if m["role"] == "user"
                       else [_assistant(content, f"{where}.content")])
        else:
            raise InvalidRequest(f"'{where}.content' must be a string or a non-empty list of blocks",
                                 param=f"{where}.content", code="invalid_messages")
    return out


def _tool(t: dict, i: int):
    """(name, description, parameters, strict) of a client tool, or None for a server tool.
    `defer_loading`: declared from the start (these providers load every tool; a deferred one
    must be callable once the client's tool search finds it); `input_examples`: shown in the
    description, as the model would see them; `allowed_callers` other than direct: a 400."""
    if "input_schema" not in t or t.get("type") not in (None, "custom"):
        return None
    extra = sorted(set(t) - TOOL_KEYS)
    if extra:
        raise bad(f"tools[{i}].{extra[0]}", f"'tools[{i}].{extra[0]}' is not supported on this model")
    if t.get("allowed_callers") not in (None, ["direct"]):
        raise bad(f"tools[{i}].allowed_callers", f"'tools[{i}].allowed_callers' can only be [\"direct\"] on "
                                                 "this model (code execution runs on Anthropic's servers)")
    description = t.get("description")
    examples = t.get("input_examples")
    if examples is not None:
        if not isinstance(examples, list):
            raise bad(f"tools[{i}].input_examples", f"'tools[{i}].input_examples' must be a list")
        shown = "\n".join(json.dumps(e, ensure_ascii=False) for e in examples)
        description = f"{description or ''}\n\nInput examples:\n{shown}".lstrip()
    return t["name"], description, t["input_schema"], t.get("strict")


def _tools(tools) -> list[dict]:
    at = {id(t): i for i, t in enumerate(tools)} if isinstance(tools, list) else {}
    return function_tools(tools, lambda t: _tool(t, at[id(t)]),
                          "a client tool with a name and an input_schema (server tools are not available "
                          "on this model)")


def _tool_choice(choice, tools: list) -> str | dict:
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind == "auto":
        return "auto"
    if kind == "any":
        return "required"
    if kind == "none":
        return "none"
    if kind == "tool" and isinstance(choice.get("name"), str):
        if not any(isinstance(t, dict) and t.get("name") == choice["name"] for t in tools):
            raise bad("tool_choice.name", f"'tool_choice.name' {clip(choice['name'])!r} is not a tool in 'tools'")
        return {"type": "function", "function": {"name": choice["name"]}}
    raise bad("tool_choice", "'tool_choice' must be auto, any, none or a named tool")


def _sampling(name: str, value):
    """Anthropic's ranges for its sampling fields: temperature and top_p from 0 to 1, top_k a
    count (the chat call's own checks bound it after)."""
    if name == "top_k":
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise bad(name, "'top_k' must be a non-negative integer")
    elif isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise bad(name, f"'{name}' must be a number from 0 to 1")
    return value


def effort(budget) -> str:
    """An extended-thinking budget as a reasoning effort."""
    if not isinstance(budget, int) or isinstance(budget, bool) or budget < 1024:
        raise bad("thinking.budget_tokens", "'thinking.budget_tokens' must be an integer of at least 1024")
    return "low" if budget <= 4096 else "medium" if budget <= 16384 else "high"


REFUSED = {"mcp_servers": "MCP servers are called by Anthropic's own servers",
           "compaction": "a compaction request answers with a summary block only Anthropic writes",
           "fallbacks": "the gateway's fallbacks are the catalogue's (a row's `fallbacks`)",
           "thread": "threads live on Anthropic's servers"}


def _accepted(body: dict) -> None:
    """Fields that cannot change a translated row's answer: their shape is checked, no more."""
    tier = body.get("service_tier")
    if tier is not None and tier not in ("auto", "standard_only"):
        raise bad("service_tier", "'service_tier' must be auto or standard_only")
    for name in ("metadata", "context_management", "diagnostics", "cache_control"):
        if body.get(name) is not None and not isinstance(body[name], dict):
            raise bad(name, f"'{name}' must be an object")
    if body.get("cache_control") is not None and body["cache_control"].get("type") != "ephemeral":
        raise bad("cache_control", "'cache_control.type' must be ephemeral")
    policy = body.get("billing_policy")
    if policy is not None and (not isinstance(policy, dict) or policy.get("bill_to", "self") != "self"):
        raise bad("billing_policy", "'billing_policy' can only bill this gateway's own account (bill_to: self)")


def _reasoning(body: dict) -> str | None:
    """`thinking` and `output_config.effort` as a reasoning effort. Thinking enabled: the effort
    named, else the budget's size. Adaptive ("the model decides") sends nothing, effort or not:
    on these providers an effort is the reasoning switch itself, which a model that cannot
    reason refuses (Ollama's `think`, OpenAI's `reasoning_effort`), and a model that can
    reasons by its own default, which is the model deciding."""
    thinking, config = body.get("thinking"), body.get("output_config") or {}
    kind = thinking.get("type") if isinstance(thinking, dict) else None
    if thinking is not None and kind not in ("enabled", "disabled", "adaptive"):
        raise bad("thinking", "'thinking' must be {type: enabled, budget_tokens}, {type: adaptive} or "
                              "{type: disabled}")
    named = config.get("effort")
    if named is not None and named not in EFFORTS:
        raise bad("output_config.effort", "'output_config.effort' must be low, medium, high, xhigh or max")
    if kind == "enabled":
        budget = effort(thinking.get("budget_tokens"))
        return EFFORTS[named] if named else budget
    return None  # adaptive, disabled or absent: the provider's default


def _output_format(body: dict) -> dict | None:
    """`output_config.format` (or the older `output_format`) as a json_schema response format."""
    config = body.get("output_config")
    if config is not None and not isinstance(config, dict):
        raise bad("output_config", "'output_config' must be an object")
    extra = sorted(set(config or {}) - {"effort", "format"})
    if extra:
        raise bad(f"output_config.{extra[0]}", f"'output_config.{extra[0]}' is not supported on this model")
    where, fmt = ("output_config.format", (config or {}).get("format"))
    if fmt is None:
        where, fmt = "output_format", body.get("output_format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema" or not isinstance(fmt.get("schema"), dict):
        raise bad(where, f"'{where}' must be {{type: json_schema, schema}}")
    return {"type": "json_schema", "json_schema": {"name": "output", "schema": fmt["schema"], "strict": True}}


def to_chat(body: dict, counting: bool = False) -> dict:
    """A Messages request as a Chat Completions body for a translated row: each field mapped,
    accepted (it cannot change the answer: not forwarded) or refused with a 400 naming it."""
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        why = REFUSED.get(unknown[0])
        raise bad(unknown[0], f"'{clip(unknown[0])}' is not supported on this model" + (f": {why}" if why else ""))
    model_name(body)
    _accepted(body)
    chat = {"model": body["model"], "messages": _messages(body)}
    if not counting:
        if isinstance(body.get("max_tokens"), bool) or not isinstance(body.get("max_tokens"), int):
            raise bad("max_tokens", "'max_tokens' is required and must be an integer")
        chat["max_tokens"] = body["max_tokens"]
    for name in ("temperature", "top_p", "top_k"):
        if body.get(name) is not None:
            chat[name] = _sampling(name, body[name])
    stops = body.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(x, str) for x in stops) or len(stops) > 4:
            raise bad("stop_sequences", "'stop_sequences' must be a list of at most 4 strings on this model")
        if stops:
            chat["stop"] = stops
    if body.get("tools"):
        chat["tools"] = _tools(body["tools"])
    if body.get("tool_choice") is not None:
        chat["tool_choice"] = _tool_choice(body["tool_choice"], body.get("tools") or [])
        if isinstance(body["tool_choice"], dict) and body["tool_choice"].get("disable_parallel_tool_use"):
            chat["parallel_tool_calls"] = False
    fmt = _output_format(body)
    if fmt:
        chat["response_format"] = fmt
    reasoning = _reasoning(body)
    if reasoning:
        chat["reasoning_effort"] = reasoning
    if body.get("stream") is not None:
        if not isinstance(body["stream"], bool):
            raise bad("stream", "'stream' must be a boolean")
        if body["stream"]:
            chat["stream"] = True
            chat["stream_options"] = {"include_usage": True}
    return chat


def native_chat(body: dict) -> dict:
    """What the gateway itself reads of any Messages body: the model, the messages, the output
    cap and the stream flag (checked as far as the gateway needs them)."""
    model_name(body)
    if not isinstance(body.get("messages"), list) or not body["messages"]:
        raise InvalidRequest("'messages' must be a non-empty array", param="messages", code="invalid_messages")
    cap, stream = body.get("max_tokens"), body.get("stream")
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
        raise bad("max_tokens", "'max_tokens' must be an integer of at least 1")
    if stream is not None and not isinstance(stream, bool):
        raise bad("stream", "'stream' must be a boolean")
    out = {"model": body["model"], "messages": body["messages"]}
    for name, value in (("max_tokens", cap), ("stream", stream)):
        if value is not None:
            out[name] = value
    return out


def usage(openai_usage: dict | None) -> dict:
    """A chat usage object in Anthropic's current shape (cache reads apart from input; a
    translated row writes no Anthropic cache)."""
    u = openai_usage or {}
    cached = ((u.get("prompt_tokens_details") or {}).get("cached_tokens")) or 0
    out = {"input_tokens": max((u.get("prompt_tokens") or 0) - cached, 0),
           "cache_creation_input_tokens": 0, "cache_read_input_tokens": cached,
           "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
           "output_tokens": u.get("completion_tokens") or 0, "service_tier": "standard"}
    thought = (u.get("completion_tokens_details") or {}).get("reasoning_tokens")
    if thought:  # the output tokens spent reasoning, as Anthropic splits them out
        out["output_tokens_details"] = {"thinking_tokens": thought}
    return out


def stop_of(choice: dict) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence) of a chat choice: a stop on one of the client's sequences
    is known where the provider names it (vLLM's `stop_reason`); OpenAI, Gemini and Ollama say
    only `stop`, which is end_turn."""
    finish = choice.get("finish_reason")
    if finish == "stop" and isinstance(choice.get("stop_reason"), str):
        return "stop_sequence", choice["stop_reason"]
    return STOP.get(finish, "end_turn"), None


def message_id(chat_id: str) -> str:
    return "msg_" + chat_id.removeprefix("chatcmpl-")


def message(completion: dict) -> dict:
    """A chat completion as a Messages response (the first choice)."""
    choice = (completion.get("choices") or [{}])[0]
    msg = choice.get("message") or {}
    content = []
    thought = msg.get("reasoning_content") or msg.get("reasoning")
    if isinstance(thought, str) and thought:  # an OpenAI-compatible provider's reasoning
        content.append({"type": "thinking", "thinking": thought, "signature": ""})
    if msg.get("content"):
        content.append({"type": "text", "text": msg["content"]})
    for call in msg.get("tool_calls") or []:
        fn = call.get("function") or {}
        try:
            args = json.loads(fn.get("arguments") or "{}")
        except ValueError:
            args = {"_raw": fn.get("arguments")}
        content.append({"type": "tool_use", "id": call.get("id"), "name": fn.get("name"), "input": args})
    reason, sequence = stop_of(choice)
    return {"id": message_id(completion["id"]), "type": "message", "role": "assistant",
            "model": completion.get("model"), "content": content,
            "stop_reason": reason, "stop_sequence": sequence, "usage": usage(completion.get("usage"))}


def _event(name: str, data: dict) -> bytes:
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"event: {name}\ndata: {payload}\n\n".encode()


class _Blocks:
    """The content blocks of a stream being written: which one is open (its key: thinking, text,
    or a tool call's index) and the events that open, fill and close them."""

    def __init__(self):
        self.key, self.index = None, -1

    def into(self, key, block: dict):
        """Events that make `key` the open block (closing the one before), if it is not."""
        if key == self.key:
            return
        yield from self.close()
        self.key, self.index = key, self.index + 1
        yield _event("content_block_start", {"type": "content_block_start", "index": self.index,
                                             "content_block": block})

    def delta(self, delta: dict) -> bytes:
        return _event("content_block_delta", {"type": "content_block_delta", "index": self.index, "delta": delta})

    def close(self):
        if self.key is not None:
            yield _event("content_block_stop", {"type": "content_block_stop", "index": self.index})
        self.key = None


def _choice_events(c: dict, blocks: _Blocks):
    """One chat chunk choice's delta as content block events: reasoning as thinking, text,
    tool calls."""
    delta = c.get("delta") or {}
    thought = delta.get("reasoning_content") or delta.get("reasoning")
    if isinstance(thought, str) and thought:
        yield from blocks.into("thinking", {"type": "thinking", "thinking": "", "signature": ""})
        yield blocks.delta({"type": "thinking_delta", "thinking": thought})
    if delta.get("content"):
        yield from blocks.into("text", {"type": "text", "text": ""})
        yield blocks.delta({"type": "text_delta", "text": delta["content"]})
    for call in delta.get("tool_calls") or ():
        fn = call.get("function") or {}
        yield from blocks.into(("tool", call.get("index", 0)), {"type": "tool_use", "id": call.get("id"),
                                                                "name": fn.get("name"), "input": {}})
        if fn.get("arguments"):
            yield blocks.delta({"type": "input_json_delta", "partial_json": fn["arguments"]})


def events(chunks):
    """Chat chunk events (SSE bytes) as Messages stream events."""
    started, blocks, stop, last_usage = False, _Blocks(), ("end_turn", None), None
    try:
        for piece in chunks:
            if not piece.startswith(b"data: {"):
                continue
            event = json.loads(piece[6:])
            if "error" in event:
                err = event["error"]
                yield _event("error", {"type": "error", "error": {
                    "type": STREAM_ERRORS.get(err.get("type"), "api_error"), "message": err.get("message")}})
                return
            if not started:
                started = True
                yield _event("message_start", {"type": "message_start", "message": {
                    "id": message_id(event["id"]), "type": "message", "role": "assistant",
                    "model": event.get("model"), "content": [], "stop_reason": None, "stop_sequence": None,
                    "usage": usage(None)}})
            if event.get("usage"):
                last_usage = event["usage"]
            for c in event.get("choices") or ():
                if c.get("index", 0) == 0:
                    yield from _choice_events(c, blocks)
                    stop = stop_of(c) if c.get("finish_reason") else stop
        if not started:
            return
        yield from blocks.close()
        counted = usage(last_usage)  # message_delta's usage: the counts, not the tier or the split
        yield _event("message_delta", {"type": "message_delta",
                                       "delta": {"stop_reason": stop[0], "stop_sequence": stop[1]},
                                       "usage": {k: counted[k] for k in DELTA_USAGE if k in counted}})
        yield _event("message_stop", {"type": "message_stop"})
    finally:
        close = getattr(chunks, "close", None)
        if close:
            close()


class Passed:
    """Renders a pass-through call's stream (an anthropic row's own events) back to the client:
    each event whole, in Anthropic's framing, `message_start`'s model the catalogue's name."""

    def __init__(self, model: str):
        self.model = model

    def __call__(self, event: dict, bill: dict | None = None) -> bytes:
        if event.get("type") == "message_start" and isinstance(event.get("message"), dict):
            event = {**event, "message": {**event["message"], "model": self.model}}
        return _event(str(event.get("type")), event)

    def failed(self, error: dict) -> bytes:
        """The stream broke (the provider failed, the gateway is stopping): an error event."""
        return _event("error", {"type": "error", "error": {
            "type": STREAM_ERRORS.get(error.get("type"), "api_error"), "message": error.get("message")}})


def passed(raw: dict, model: str) -> dict:
    """An anthropic row's message whole, with the catalogue's model name."""
    return {**raw, "model": model}


class Heard:
    """A pass-through stream's events as the client got them, for an idempotent retry:
    `finished` once `message_stop` came."""

    def __init__(self):
        self.events: list[str] = []
        self.finished = False

    def feed(self, piece: bytes) -> None:
        self.events.append(piece.decode())
        self.finished = self.finished or piece.startswith(b"event: message_stop")

    def body(self) -> dict:
        return {"type": "message_stream", "events": self.events}


def replay(stored: dict, include_usage: bool = False):
    """A stored pass-through stream, event for event."""
    yield from (event.encode() for event in stored["events"])
