"""OpenAI's Responses API in and out (https://platform.openai.com/docs/api-reference/responses).

`to_chat` turns a Responses request (with the conversation a `previous_response_id` stored)
into a Chat Completions body; `response` turns a chat completion into a Response object, and
`events` a chat chunk stream into the semantic stream events (response.created … output_item,
content_part, output_text.delta/done, function_call_arguments.delta/done … response.completed
with usage).
"""
from __future__ import annotations

import json
import time
import uuid

from core.errors import clip
from frontdoors.common import bad, function_tools
from core.transcript import Transcript

FIELDS = {"model", "input", "instructions", "tools", "tool_choice", "text", "max_output_tokens", "reasoning",
          "temperature", "top_p", "store", "previous_response_id", "stream", "metadata", "parallel_tool_calls",
          "user", "truncation"}


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def _parts(content, where: str):
    if isinstance(content, str):
        return content
    if not isinstance(content, list) or not content:
        raise bad(where, f"'{where}' must be a string or a list of content parts")
    parts = []
    for i, p in enumerate(content):
        kind = p.get("type") if isinstance(p, dict) else None
        if kind in ("input_text", "output_text", "text") and isinstance(p.get("text"), str):
            parts.append({"type": "text", "text": p["text"]})
        elif kind == "input_image" and isinstance(p.get("image_url"), str):
            image = {"url": p["image_url"]}
            if p.get("detail"):
                image["detail"] = p["detail"]
            parts.append({"type": "image_url", "image_url": image})
        else:
            raise bad(f"{where}[{i}]", f"'{where}[{i}]' must be an input_text or input_image (by URL) part")
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def messages_of(items, where: str = "input") -> list[dict]:
    """Input items as chat messages: messages, function calls (merged into one assistant turn)
    and their outputs (tool messages); reasoning items are the model's own and are skipped."""
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    if not isinstance(items, list) or not items:
        raise bad(where, f"'{where}' must be a string or a non-empty list of items")
    out: list[dict] = []
    for i, item in enumerate(items):
        at = f"{where}[{i}]"
        if not isinstance(item, dict):
            raise bad(at, f"'{at}' must be an object")
        kind = item.get("type", "message")
        if kind == "message":
            if item.get("role") not in ("user", "system", "developer", "assistant"):
                raise bad(at, f"'{at}.role' must be user, system, developer or assistant")
            out.append({"role": item["role"], "content": _parts(item.get("content"), f"{at}.content")})
        elif kind == "function_call":
            if not all(isinstance(item.get(k), str) for k in ("call_id", "name", "arguments")):
                raise bad(at, f"'{at}' needs call_id, name and arguments")
            call = {"id": item["call_id"], "type": "function",
                    "function": {"name": item["name"], "arguments": item["arguments"]}}
            if out and out[-1]["role"] == "assistant" and "tool_calls" in out[-1]:
                out[-1]["tool_calls"].append(call)
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            if not isinstance(item.get("call_id"), str) or "output" not in item:
                raise bad(at, f"'{at}' needs call_id and output")
            output = item["output"]
            out.append({"role": "tool", "tool_call_id": item["call_id"],
                        "content": output if isinstance(output, str) else json.dumps(output)})
        elif kind == "reasoning":
            continue
        else:
            raise bad(at, f"'{at}.type' {clip(repr(kind))} is not supported by this gateway")
    return out


def _tools(tools) -> list[dict]:
    return function_tools(tools, lambda t: (t["name"], t.get("description"), t.get("parameters"), t.get("strict"))
                          if t.get("type") == "function" else None,
                          "a function tool (built-in tools are not available through this gateway)")


def _tool_choice(choice):
    if choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise bad("tool_choice", "'tool_choice' must be auto, none, required or a function")


def _format(text) -> dict | None:
    fmt = (text or {}).get("format") if isinstance(text, dict) else None
    if fmt is None or fmt.get("type") == "text":
        return None
    if fmt.get("type") == "json_object":
        return {"type": "json_object"}
    if fmt.get("type") == "json_schema" and isinstance(fmt.get("schema"), dict):
        schema = {"name": fmt.get("name") or "response", "schema": fmt["schema"]}
        if fmt.get("strict") is not None:
            schema["strict"] = fmt["strict"]
        return {"type": "json_schema", "json_schema": schema}
    raise bad("text.format", "'text.format' must be text, json_object or json_schema with a schema")


def check(body: dict) -> None:
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise bad(unknown[0], f"'{clip(unknown[0])}' is not supported by this gateway's Responses API")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise bad("model", "'model' is required")
    if body.get("truncation") not in (None, "disabled"):
        raise bad("truncation", "'truncation' must be disabled (the gateway never drops input)")
    for name in ("store", "stream", "parallel_tool_calls"):
        if body.get(name) is not None and not isinstance(body[name], bool):
            raise bad(name, f"'{name}' must be a boolean")


def to_chat(body: dict, history: list[dict]) -> tuple[dict, list[dict]]:
    """(the Chat Completions body, the conversation to store: history + this input)."""
    check(body)
    conversation = history + messages_of(body.get("input"))
    messages = list(conversation)
    if body.get("instructions") is not None:
        if not isinstance(body["instructions"], str):
            raise bad("instructions", "'instructions' must be a string")
        messages.insert(0, {"role": "system", "content": body["instructions"]})
    chat = {"model": body["model"], "messages": messages}
    if body.get("max_output_tokens") is not None:
        chat["max_tokens"] = body["max_output_tokens"]
    for name in ("temperature", "top_p", "user"):
        if body.get(name) is not None:
            chat[name] = body[name]
    if body.get("tools"):
        chat["tools"] = _tools(body["tools"])
    if body.get("tool_choice") is not None:
        chat["tool_choice"] = _tool_choice(body["tool_choice"])
    if body.get("parallel_tool_calls") is False:
        chat["parallel_tool_calls"] = False
    fmt = _format(body.get("text"))
    if fmt:
        chat["response_format"] = fmt
    effort = (body.get("reasoning") or {}).get("effort") if isinstance(body.get("reasoning"), dict) else None
    if effort is not None:
        chat["reasoning_effort"] = effort
    if body.get("stream"):
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return chat, conversation


def usage(u: dict | None) -> dict:
    u = u or {}
    prompt, completion = u.get("prompt_tokens") or 0, u.get("completion_tokens") or 0
    return {"input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": (u.get("prompt_tokens_details") or {}).get("cached_tokens") or 0},
            "output_tokens": completion,
            "output_tokens_details": {"reasoning_tokens":
                                      (u.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0},
            "total_tokens": prompt + completion, "cost": u.get("cost", 0)}


def _items(message: dict, ids: dict) -> list[dict]:
    out = []
    if message.get("content"):
        out.append({"type": "message", "id": ids.setdefault("message", new_id("msg")), "status": "completed",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": message["content"], "annotations": [], "logprobs": []}]})
    for i, call in enumerate(message.get("tool_calls") or []):
        fn = call.get("function") or {}
        out.append({"type": "function_call", "id": ids.setdefault(f"fc{i}", new_id("fc")), "call_id": call.get("id"),
                    "name": fn.get("name"), "arguments": fn.get("arguments") or "", "status": "completed"})
    return out


class Meta:
    """What a Response carries besides its output: its id, the request's echo fields."""

    def __init__(self, body: dict, model: str):
        self.id, self.created = new_id("resp"), int(time.time())
        self.body, self.model = body, model
        self.ids: dict = {}

    def shell(self, status: str) -> dict:
        b = self.body
        return {"id": self.id, "object": "response", "created_at": self.created, "status": status,
                "model": self.model, "output": [], "error": None, "incomplete_details": None,
                "instructions": b.get("instructions"), "max_output_tokens": b.get("max_output_tokens"),
                "metadata": b.get("metadata") or {}, "parallel_tool_calls": b.get("parallel_tool_calls", True),
                "previous_response_id": b.get("previous_response_id"),
                "reasoning": b.get("reasoning") or {"effort": None, "summary": None},
                "store": b.get("store", True), "temperature": b.get("temperature"),
                "text": b.get("text") or {"format": {"type": "text"}}, "tool_choice": b.get("tool_choice", "auto"),
                "tools": b.get("tools") or [], "top_p": b.get("top_p"), "truncation": "disabled",
                "user": b.get("user"), "usage": None}


def response(completion: dict, meta: Meta) -> dict:
    """A chat completion as a completed Response (the first choice)."""
    choice = (completion.get("choices") or [{}])[0]
    out = meta.shell("completed")
    out["output"] = _items(choice.get("message") or {}, meta.ids)
    if choice.get("finish_reason") == "length":
        out["status"], out["incomplete_details"] = "incomplete", {"reason": "max_output_tokens"}
    out["usage"] = usage(completion.get("usage"))
    return out


class _Events:
    def __init__(self):
        self.n = 0

    def __call__(self, kind: str, **data) -> bytes:
        payload = {"type": kind, "sequence_number": self.n, **data}
        self.n += 1
        return f"event: {kind}\ndata: ".encode() + json.dumps(payload, ensure_ascii=False,
                                                              separators=(",", ":")).encode() + b"\n\n"


def events(chunks, meta: Meta, on_done=None):
    """Chat chunk events (SSE bytes) as Responses stream events; on_done(response) once the
    stream completed."""
    emit, heard = _Events(), Transcript()
    yield emit("response.created", response=meta.shell("in_progress"))
    yield emit("response.in_progress", response=meta.shell("in_progress"))
    text_index, calls = None, {}  # output index of the text item; tool call index -> output index
    next_index = 0
    try:
        for piece in chunks:
            heard.feed(piece)
            if not piece.startswith(b"data: {"):
                continue
            event = json.loads(piece[6:])
            if "error" in event:
                failed = meta.shell("failed")
                failed["error"] = {"code": event["error"].get("code") or "server_error",
                                   "message": event["error"].get("message")}
                yield emit("response.failed", response=failed)
                return
            for c in event.get("choices") or ():
                if c.get("index", 0) != 0:
                    continue
                delta = c.get("delta") or {}
                if delta.get("content"):
                    if text_index is None:
                        text_index, next_index = next_index, next_index + 1
                        item_id = meta.ids.setdefault("message", new_id("msg"))
                        yield emit("response.output_item.added", output_index=text_index, item={
                            "type": "message", "id": item_id, "status": "in_progress", "role": "assistant",
                            "content": []})
                        yield emit("response.content_part.added", item_id=item_id, output_index=text_index,
                                   content_index=0, part={"type": "output_text", "text": "", "annotations": [],
                                                          "logprobs": []})
                    yield emit("response.output_text.delta", item_id=meta.ids["message"], output_index=text_index,
                               content_index=0, delta=delta["content"], logprobs=[])
                for call in delta.get("tool_calls") or ():
                    i = call.get("index", 0)
                    fn = call.get("function") or {}
                    key = f"fc{i}"
                    if i not in calls:
                        calls[i], next_index = next_index, next_index + 1
                        yield emit("response.output_item.added", output_index=calls[i], item={
                            "type": "function_call", "id": meta.ids.setdefault(key, new_id("fc")),
                            "call_id": call.get("id"), "name": fn.get("name"), "arguments": "",
                            "status": "in_progress"})
                    if fn.get("arguments"):
                        yield emit("response.function_call_arguments.delta", item_id=meta.ids[key],
                                   output_index=calls[i], delta=fn["arguments"])
        if not heard.finished:
            return
        done = response(heard.body() | {"id": "x"}, meta)
        for item in done["output"]:
            index = text_index if item["type"] == "message" else calls.get(
                next(int(k[2:]) for k, v in meta.ids.items() if v == item["id"]))
            if item["type"] == "message":
                part = item["content"][0]
                yield emit("response.output_text.done", item_id=item["id"], output_index=index, content_index=0,
                           text=part["text"], logprobs=[])
                yield emit("response.content_part.done", item_id=item["id"], output_index=index, content_index=0,
                           part=part)
            else:
                yield emit("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                           arguments=item["arguments"], name=item["name"])
            yield emit("response.output_item.done", output_index=index, item=item)
        if on_done:
            on_done(done)
        yield emit("response.completed", response=done)
    finally:
        close = getattr(chunks, "close", None)
        if close:
            close()
