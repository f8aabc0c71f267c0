"""Anthropic's Messages API in and out (https://docs.anthropic.com/en/api/messages).

`to_chat` turns a Messages request into a Chat Completions body; `message` turns a chat
completion into a Messages response and `events` a chat chunk stream into Messages stream events
(message_start, content_block_start/delta/stop with text_delta and input_json_delta,
message_delta with the stop reason and usage, message_stop).
"""
from __future__ import annotations

import json

from core.errors import GatewayError, InvalidRequest, clip
from frontdoors.common import bad, function_tools

FIELDS = {"model", "messages", "max_tokens", "system", "stop_sequences", "stream", "temperature", "top_p",
          "top_k", "tools", "tool_choice", "metadata", "thinking"}
STOP = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use",
        "content_filter": "refusal"}
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
               403: "permission_error", 404: "not_found_error", 413: "request_too_large",
               429: "rate_limit_error", 503: "overloaded_error", 529: "overloaded_error"}


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


def _user(blocks: list, where: str) -> list[dict]:
    """A user turn's blocks: tool results first (one `tool` message each), then the rest."""
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
            content = b.get("content", "")
            text = content if isinstance(content, str) else "\n".join(
                c.get("text", "") for c in content if isinstance(c, dict) and c.get("type") == "text") \
                if isinstance(content, list) else json.dumps(content)
            if b.get("is_error"):
                text = f"Error: {text}"
            results.append({"role": "tool", "tool_call_id": b["tool_use_id"], "content": text})
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
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
            raise InvalidRequest(f"'{where}.role' must be user or assistant", param=where, code="invalid_messages")
        content = m.get("content")
        if isinstance(content, str):
            out.append({"role": m["role"], "content": content})
        elif isinstance(content, list) and content:
            out.extend(_user(content, f"{where}.content") if m["role"] == "user"
                       else [_assistant(content, f"{where}.content")])
        else:
            raise InvalidRequest(f"'{where}.content' must be a string or a non-empty list of blocks",
                                 param=f"{where}.content", code="invalid_messages")
    return out


def _tools(tools) -> list[dict]:
    return function_tools(tools, lambda t: (t["name"], t.get("description"), t["input_schema"], None)
                          if "input_schema" in t and t.get("type") in (None, "custom") else None,
                          "a client tool with a name and an input_schema (server tools are not available "
                          "through this gateway)")


def _tool_choice(choice) -> str | dict:
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind == "auto":
        return "auto"
    if kind == "any":
        return "required"
    if kind == "none":
        return "none"
    if kind == "tool" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise bad("tool_choice", "'tool_choice' must be auto, any, none or a named tool")


def effort(budget) -> str:
    """An extended-thinking budget as a reasoning effort."""
    if not isinstance(budget, int) or isinstance(budget, bool) or budget < 1024:
        raise bad("thinking.budget_tokens", "'thinking.budget_tokens' must be an integer of at least 1024")
    return "low" if budget <= 4096 else "medium" if budget <= 16384 else "high"


def to_chat(body: dict, counting: bool = False) -> dict:
    """A Messages request as a Chat Completions body (validated on the way; a field with no
    equivalent is a 400, never dropped; `metadata` is informational and not forwarded)."""
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise bad(unknown[0], f"'{clip(unknown[0])}' is not supported by this gateway's Messages API")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise bad("model", "'model' is required")
    chat = {"model": body["model"], "messages": _messages(body)}
    if not counting:
        if isinstance(body.get("max_tokens"), bool) or not isinstance(body.get("max_tokens"), int):
            raise bad("max_tokens", "'max_tokens' is required and must be an integer")
        chat["max_tokens"] = body["max_tokens"]
    for name in ("temperature", "top_p", "top_k"):
        if body.get(name) is not None:
            chat[name] = body[name]
    if body.get("stop_sequences") is not None:
        chat["stop"] = body["stop_sequences"]
    if body.get("tools"):
        chat["tools"] = _tools(body["tools"])
    if body.get("tool_choice") is not None:
        chat["tool_choice"] = _tool_choice(body["tool_choice"])
        if isinstance(body["tool_choice"], dict) and body["tool_choice"].get("disable_parallel_tool_use"):
            chat["parallel_tool_calls"] = False
    thinking = body.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") == "enabled":
        chat["reasoning_effort"] = effort(thinking.get("budget_tokens"))
    elif thinking is not None and not (isinstance(thinking, dict) and thinking.get("type") == "disabled"):
        raise bad("thinking", "'thinking' must be {type: enabled, budget_tokens} or {type: disabled}")
    if body.get("stream") is not None:
        if not isinstance(body["stream"], bool):
            raise bad("stream", "'stream' must be a boolean")
        if body["stream"]:
            chat["stream"] = True
            chat["stream_options"] = {"include_usage": True}
    return chat


def usage(openai_usage: dict | None) -> dict:
    u = openai_usage or {}
    cached = ((u.get("prompt_tokens_details") or {}).get("cached_tokens")) or 0
    return {"input_tokens": max((u.get("prompt_tokens") or 0) - cached, 0), "output_tokens": u.get("completion_tokens") or 0,
            "cache_read_input_tokens": cached, "cache_creation_input_tokens": 0}


def message_id(chat_id: str) -> str:
    return "msg_" + chat_id.removeprefix("chatcmpl-")


def message(completion: dict) -> dict:
    """A chat completion as a Messages response (the first choice)."""
    choice = (completion.get("choices") or [{}])[0]
    msg = choice.get("message") or {}
    content = []
    if msg.get("content"):
        content.append({"type": "text", "text": msg["content"]})
    for call in msg.get("tool_calls") or []:
        fn = call.get("function") or {}
        try:
            args = json.loads(fn.get("arguments") or "{}")
        except ValueError:
            args = {"_raw": fn.get("arguments")}
        content.append({"type": "tool_use", "id": call.get("id"), "name": fn.get("name"), "input": args})
    return {"id": message_id(completion["id"]), "type": "message", "role": "assistant",
            "model": completion.get("model"), "content": content,
            "stop_reason": STOP.get(choice.get("finish_reason"), "end_turn"), "stop_sequence": None,
            "usage": usage(completion.get("usage"))}


def _event(name: str, data: dict) -> bytes:
    return f"event: {name}\ndata: ".encode() + json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def events(chunks):
    """Chat chunk events (SSE bytes) as Messages stream events."""
    started, block, tool, index, stop, last_usage = False, None, None, -1, "end_turn", None
    try:
        for piece in chunks:
            if not piece.startswith(b"data: {"):
                continue
            event = json.loads(piece[6:])
            if "error" in event:
                err = event["error"]
                yield _event("error", {"type": "error", "error": {"type": ERROR_TYPES.get(0, "api_error"),
                                                                  "message": err.get("message")}})
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
                if c.get("index", 0) != 0:
                    continue
                delta = c.get("delta") or {}
                if delta.get("content"):
                    if block != "text":
                        if block is not None:
                            yield _event("content_block_stop", {"type": "content_block_stop", "index": index})
                        index, block, tool = index + 1, "text", None
                        yield _event("content_block_start", {"type": "content_block_start", "index": index,
                                                             "content_block": {"type": "text", "text": ""}})
                    yield _event("content_block_delta", {"type": "content_block_delta", "index": index,
                                                         "delta": {"type": "text_delta", "text": delta["content"]}})
                for call in delta.get("tool_calls") or ():
                    fn = call.get("function") or {}
                    if block != "tool" or call.get("index", 0) != tool:
                        if block is not None:
                            yield _event("content_block_stop", {"type": "content_block_stop", "index": index})
                        index, block, tool = index + 1, "tool", call.get("index", 0)
                        yield _event("content_block_start", {"type": "content_block_start", "index": index,
                                                             "content_block": {"type": "tool_use", "id": call.get("id"),
                                                                               "name": fn.get("name"), "input": {}}})
                    if fn.get("arguments"):
                        yield _event("content_block_delta", {"type": "content_block_delta", "index": index,
                                                             "delta": {"type": "input_json_delta",
                                                                       "partial_json": fn["arguments"]}})
                if c.get("finish_reason"):
                    stop = STOP.get(c["finish_reason"], "end_turn")
        if not started:
            return
        if block is not None:
            yield _event("content_block_stop", {"type": "content_block_stop", "index": index})
        yield _event("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
                                       "usage": usage(last_usage)})
        yield _event("message_stop", {"type": "message_stop"})
    finally:
        close = getattr(chunks, "close", None)
        if close:
            close()
