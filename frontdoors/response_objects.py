"""OpenAI's Responses API out (https://platform.openai.com/docs/api-reference/responses/object).

`response` turns a chat completion into a whole Response object (every property of OpenAI's
published `Response` schema, the request's settings echoed), `events` a chat chunk stream into
the semantic stream events, ending as OpenAI's do with `response.completed`,
`response.incomplete` (cut by the output cap or a content filter) or `response.failed`.
`passed` and `NativeEvents` return a Responses provider's own answer and events whole, with the
gateway's id, the catalogue's model name and the cost in `usage`.
"""
from __future__ import annotations

import json
import time
import uuid

from core.transcript import Transcript

TERMINAL = {"completed": "response.completed", "incomplete": "response.incomplete", "failed": "response.failed"}
INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def _number(value, default: float) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default


class Meta:
    """What a Response carries besides its output: its id, the request's settings echoed, and
    the flat names of namespaced tools (offered to a chat model as `namespace__name`)."""

    def __init__(self, body: dict, model: str, names: dict | None = None):
        self.id, self.created = new_id("resp"), int(time.time())
        self.body, self.model, self.names = body, model, names or {}
        self.ids: dict = {}

    def shell(self, status: str) -> dict:
        b = self.body
        reasoning = b.get("reasoning") if isinstance(b.get("reasoning"), dict) else {}
        text = b.get("text") if isinstance(b.get("text"), dict) else {}
        return {"id": self.id, "object": "response", "created_at": self.created, "status": status,
                "background": False, "completed_at": None, "error": None, "incomplete_details": None,
                "instructions": b.get("instructions"), "max_output_tokens": b.get("max_output_tokens"),
                "max_tool_calls": b.get("max_tool_calls"), "model": self.model, "output": [],
                "parallel_tool_calls": b.get("parallel_tool_calls", True),
                "previous_response_id": b.get("previous_response_id"),
                "prompt_cache_key": b.get("prompt_cache_key"),
                "prompt_cache_retention": b.get("prompt_cache_retention"),
                "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
                "safety_identifier": b.get("safety_identifier"), "service_tier": "default",
                "store": b.get("store", True) is not False,
                "temperature": _number(b.get("temperature"), 1.0), "top_p": _number(b.get("top_p"), 1.0),
                "presence_penalty": 0.0, "frequency_penalty": 0.0,
                "text": {"format": text.get("format") or {"type": "text"}, "verbosity": text.get("verbosity") or "medium"},
                "tool_choice": b.get("tool_choice", "auto"), "tools": _tools(b.get("tools")),
                "top_logprobs": b.get("top_logprobs") or 0, "truncation": b.get("truncation") or "disabled",
                "metadata": b.get("metadata") or {},  # usage: set once known (an object, never null)
                **({"user": b["user"]} if isinstance(b.get("user"), str) else {})}  # a string when present

    def call_names(self, flat: str | None) -> dict:
        """A function call's `name` (and `namespace`) from the name the chat model used."""
        if flat in self.names:
            namespace, name = self.names[flat]
            return {"namespace": namespace, "name": name}
        return {"name": flat}


def _tools(tools) -> list:
    """The tools echoed as OpenAI echoes them: a function tool's `strict` and `parameters` present."""
    if not isinstance(tools, list):
        return []
    return [{**t, "strict": t.get("strict"), "parameters": t.get("parameters")}
            if isinstance(t, dict) and t.get("type") == "function" else t for t in tools]


def usage(u: dict | None) -> dict:
    """A chat usage object (the bill's, cost included) in the Responses API's shape."""
    u = u or {}
    prompt, completion = u.get("prompt_tokens") or 0, u.get("completion_tokens") or 0
    details = u.get("prompt_tokens_details") or {}
    out = {"input_tokens": prompt,
           "input_tokens_details": {"cached_tokens": details.get("cached_tokens") or 0,
                                    "cache_write_tokens": details.get("cache_write_tokens") or 0},
           "output_tokens": completion,
           "output_tokens_details": {"reasoning_tokens":
                                     (u.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0},
           "total_tokens": prompt + completion, "cost": u.get("cost", 0)}
    if "cost_details" in u:
        out["cost_details"] = u["cost_details"]
    return out


def _logprobs(choice: dict) -> list:
    return ((choice.get("logprobs") or {}).get("content") or []) if isinstance(choice, dict) else []


def _thought(message: dict) -> str | None:
    """The reasoning text a provider sent beside the answer (DeepSeek's and llama.cpp's
    `reasoning_content`, others' `reasoning`)."""
    thought = message.get("reasoning_content") or message.get("reasoning")
    return thought if isinstance(thought, str) and thought else None


def _reasoning(item_id: str, text: str, status: str) -> dict:
    return {"type": "reasoning", "id": item_id, "summary": [], "status": status,
            "content": [{"type": "reasoning_text", "text": text}]}


def _message(item_id: str, text: str, logprobs: list, status: str) -> dict:
    return {"type": "message", "id": item_id, "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs}]}


def _items(choice: dict, meta: Meta) -> list[dict]:
    message, out = choice.get("message") or {}, []
    thought = _thought(message)
    if thought:
        out.append(_reasoning(meta.ids.setdefault("reasoning", new_id("rs")), thought, "completed"))
    if message.get("content"):
        out.append(_message(meta.ids.setdefault("message", new_id("msg")), message["content"], _logprobs(choice),
                            "completed"))
    for i, call in enumerate(message.get("tool_calls") or []):
        fn = call.get("function") or {}
        out.append({"type": "function_call", "id": meta.ids.setdefault(f"fc{i}", new_id("fc")), "call_id": call.get("id"),
                    **meta.call_names(fn.get("name")), "arguments": fn.get("arguments") or "", "status": "completed"})
    return out


def response(completion: dict, meta: Meta) -> dict:
    """A chat completion as a Response (the first choice): completed, or incomplete when the
    output cap or a content filter cut it."""
    choice = (completion.get("choices") or [{}])[0]
    out = meta.shell("completed")
    out["output"] = _items(choice, meta)
    reason = INCOMPLETE.get(choice.get("finish_reason"))
    if reason:
        out["status"], out["incomplete_details"] = "incomplete", {"reason": reason}
        if out["output"]:  # the item the cap cut (those before it were complete)
            out["output"][-1]["status"] = "incomplete"
    else:
        out["completed_at"] = int(time.time())
    out["usage"] = usage(completion.get("usage"))
    return out


def failed(meta: Meta, error: dict) -> dict:
    """A failed Response: the error's code in OpenAI's vocabulary, its message kept."""
    out = meta.shell("failed")
    code = "rate_limit_exceeded" if "rate_limit" in str(error.get("code")) else "server_error"
    out["error"] = {"code": code, "message": error.get("message") or "The provider failed"}
    return out


class Emitter:
    """Numbered Responses stream events as SSE bytes."""

    def __init__(self, start: int = 0):
        self.n = start

    def __call__(self, kind: str, **data) -> bytes:
        payload = {"type": kind, "sequence_number": self.n, **data}
        self.n += 1
        return frame(payload)


def frame(payload: dict) -> bytes:
    return (f"event: {payload['type']}\ndata: ".encode()
            + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n")


class _Output:
    """The output items of a chat stream, one open at a time as OpenAI streams them: an item's
    `.done` events come before the next item is added. The reasoning text, the answer's text and
    each tool call are items. Text of a kind whose item is done already (a provider that went
    back to it) opens a new item of that kind; a tool call's item is added once its name is
    known. The finished response's output is these items, as streamed."""

    def __init__(self, meta: Meta, emit: Emitter):
        self.meta, self.emit = meta, emit
        self.items: list[dict] = []  # as streamed: {"kind", "id", "text" | call fields, ...}
        self.open: dict | None = None
        self.latest: dict[str, dict] = {}  # "reasoning" / "message" / "fc<upstream index>" -> its item

    def _begin(self, item: dict):
        """Close the open item, then add `item` (its `output_index` the next)."""
        yield from self._close("completed")
        item["index"] = len(self.items)
        self.items.append(item)
        self.open = item
        emit, index, item_id = self.emit, item["index"], item["id"]
        if item["kind"] == "reasoning":
            yield emit("response.output_item.added", output_index=index, item={
                "type": "reasoning", "id": item_id, "summary": [], "content": [], "status": "in_progress"})
            yield emit("response.content_part.added", item_id=item_id, output_index=index, content_index=0,
                       part={"type": "reasoning_text", "text": ""})
        elif item["kind"] == "message":
            yield emit("response.output_item.added", output_index=index, item={
                "type": "message", "id": item_id, "status": "in_progress", "role": "assistant", "content": []})
            yield emit("response.content_part.added", item_id=item_id, output_index=index, content_index=0,
                       part={"type": "output_text", "text": "", "annotations": [], "logprobs": []})
        else:
            yield emit("response.output_item.added", output_index=index, item={**self._call(item, "in_progress"),
                                                                                "arguments": ""})
            if item["arguments"]:  # what came before its name was known
                yield emit("response.function_call_arguments.delta", item_id=item_id, output_index=index,
                           delta=item["arguments"])

    def _text_item(self, kind: str):
        """The item that takes `kind`'s next text: the open one, else a new one."""
        item = self.latest.get(kind)
        if item is None or item is not self.open:
            item = self.latest[kind] = {"kind": kind, "text": "", "logprobs": [],
                                        "id": new_id("rs" if kind == "reasoning" else "msg")}
            yield from self._begin(item)
        return item

    def reasoning(self, delta: str):
        item = yield from self._text_item("reasoning")
        item["text"] += delta
        yield self.emit("response.reasoning_text.delta", item_id=item["id"], output_index=item["index"],
                        content_index=0, delta=delta)

    def text(self, delta: str, logprobs: list):
        item = yield from self._text_item("message")
        item["text"] += delta
        item["logprobs"].extend(logprobs)
        yield self.emit("response.output_text.delta", item_id=item["id"], output_index=item["index"],
                        content_index=0, delta=delta, logprobs=logprobs)

    def call(self, call: dict):
        fn, key = call.get("function") or {}, f"fc{call.get('index', 0)}"
        item = self.latest.get(key)
        if item is None:
            item = self.latest[key] = {"kind": "call", "id": new_id("fc"), "call_id": None, "name": "",
                                       "arguments": "", "index": None}
        item["call_id"] = call.get("id") or item["call_id"]
        item["name"] += fn.get("name") or ""
        item["arguments"] += fn.get("arguments") or ""
        if item["index"] is None:
            if item["name"]:
                yield from self._begin(item)
        elif fn.get("arguments") and item is self.open:
            yield self.emit("response.function_call_arguments.delta", item_id=item["id"],
                            output_index=item["index"], delta=fn["arguments"])

    def _call(self, item: dict, status: str) -> dict:
        if item["call_id"] is None:  # a provider that sent none: the answer's own, for its output
            item["call_id"] = "call_" + uuid.uuid4().hex[:24]
        return {"type": "function_call", "id": item["id"], "call_id": item["call_id"],
                **self.meta.call_names(item["name"]), "arguments": item["arguments"], "status": status}

    def _object(self, item: dict, status: str) -> dict:
        if item["kind"] == "reasoning":
            return _reasoning(item["id"], item["text"], status)
        if item["kind"] == "message":
            return _message(item["id"], item["text"], item["logprobs"], status)
        return self._call(item, status)

    def _close(self, status: str):
        """The open item's `.done` events, with `status`."""
        item, self.open = self.open, None
        if item is None:
            return
        emit, item_id, index = self.emit, item["id"], item["index"]
        made = item["made"] = self._object(item, status)
        if item["kind"] == "reasoning":
            part = made["content"][0]
            yield emit("response.reasoning_text.done", item_id=item_id, output_index=index, content_index=0,
                       text=part["text"])
            yield emit("response.content_part.done", item_id=item_id, output_index=index, content_index=0, part=part)
        elif item["kind"] == "message":
            part = made["content"][0]
            yield emit("response.output_text.done", item_id=item_id, output_index=index, content_index=0,
                       text=part["text"], logprobs=part["logprobs"])
            yield emit("response.content_part.done", item_id=item_id, output_index=index, content_index=0, part=part)
        else:
            yield emit("response.function_call_arguments.done", item_id=item_id, output_index=index,
                       arguments=made["arguments"], name=made["name"])
        yield emit("response.output_item.done", output_index=index, item=made)

    def done(self, response: dict):
        """Add the calls still unnamed, close the last item (`incomplete` when the answer was
        cut), and make the response's output the items as streamed."""
        for item in list(self.latest.values()):
            if item["kind"] == "call" and item["index"] is None:
                yield from self._begin(item)
        yield from self._close("incomplete" if response["status"] == "incomplete" else "completed")
        for item in self.items:
            if item["kind"] == "call":  # (a piece after its item was done: the whole call here)
                item["made"]["arguments"] = item["arguments"]
        response["output"] = [item["made"] for item in self.items]


def events(chunks, meta: Meta, on_done=None):
    """Chat chunk events (SSE bytes) as Responses stream events; on_done(response) once the
    stream ended with an answer (completed or incomplete), before its terminal event."""
    emit, heard = Emitter(), Transcript()
    out = _Output(meta, emit)
    yield emit("response.created", response=meta.shell("in_progress"))
    yield emit("response.in_progress", response=meta.shell("in_progress"))
    try:
        for piece in chunks:
            heard.feed(piece)
            if not piece.startswith(b"data: {"):
                continue
            event = json.loads(piece[6:])
            if "error" in event:
                yield emit("response.failed", response=failed(meta, event["error"]))
                return
            for c in event.get("choices") or ():
                if c.get("index", 0) != 0:
                    continue
                delta = c.get("delta") or {}
                thought = _thought(delta)
                if thought:
                    yield from out.reasoning(thought)
                if delta.get("content"):
                    yield from out.text(delta["content"], _logprobs(c))
                for call in delta.get("tool_calls") or ():
                    yield from out.call(call)
        if not heard.finished:
            return
        done = response(heard.body() | {"id": "x"}, meta)
        yield from out.done(done)
        if on_done:
            on_done(done)
        yield emit(TERMINAL[done["status"]], response=done)
    finally:
        close = getattr(chunks, "close", None)
        if close:
            close()


# -- a row that speaks the Responses API: its answer and events whole ---------------------------

def _billed(theirs: dict | None, bill: dict) -> dict:
    """The provider's usage, every field kept, with the gateway's cost and its classes."""
    out = dict(theirs) if isinstance(theirs, dict) else usage(bill)
    out["cost"] = bill.get("cost", 0)
    if "cost_details" in bill:
        out["cost_details"] = bill["cost_details"]
    return out


def passed(raw: dict, meta: Meta, bill: dict) -> dict:
    """A Responses provider's answer whole, as the gateway's: its id, the catalogue's model name,
    the conversation it continues, the cost in its usage."""
    return {**raw, "id": meta.id, "model": meta.model,
            "previous_response_id": meta.body.get("previous_response_id"), "usage": _billed(raw.get("usage"), bill)}


class NativeEvents:
    """Renders a Responses provider's stream events as the gateway's (see `passed`); on_done gets
    the final Response of a stream that ended with an answer, before its terminal event."""

    def __init__(self, meta: Meta, on_done=None):
        self.meta, self.on_done = meta, on_done
        self.last: dict | None = None
        self.seq = 0

    def __call__(self, event: dict, bill: dict | None = None) -> bytes:
        if isinstance(event.get("sequence_number"), int):
            self.seq = event["sequence_number"] + 1
        resp = event.get("response")
        if isinstance(resp, dict):
            meta = self.meta
            resp = {**resp, "id": meta.id, "model": meta.model,
                    "previous_response_id": meta.body.get("previous_response_id")}
            if bill is not None:
                resp["usage"] = _billed(resp.get("usage"), bill)
                if self.on_done and resp.get("status") in ("completed", "incomplete"):
                    self.on_done(resp)
            event = {**event, "response": resp}
            self.last = resp
        return frame(event)

    def failed(self, error: dict) -> bytes:
        """The stream broke (the provider failed, the gateway is stopping): `response.failed`."""
        body = failed(self.meta, error)
        if self.last:
            body = {**self.last, "status": "failed", "error": body["error"], "completed_at": None}
        return Emitter(self.seq)("response.failed", response=body)



class Heard:
    """The final Response of a stream of Responses events (the client's bytes), for an idempotent
    retry: `finished` once it ended with an answer (completed or incomplete)."""

    def __init__(self):
        self.finished, self.done = False, None

    def feed(self, piece: bytes) -> None:
        for line in piece.split(b"\n"):
            if line.startswith(b"data: {"):
                event = json.loads(line[6:])
                if event.get("type") in ("response.completed", "response.incomplete"):
                    self.finished, self.done = True, event["response"]

    def body(self) -> dict:
        return self.done


def replay(done: dict, include_usage: bool = False):
    """A stored Response as the events of a stream again: created, each output item whole (a
    message's text as one delta), the terminal event."""
    emit = Emitter()
    shell = {k: v for k, v in done.items() if k != "usage"} | {"status": "in_progress", "output": [],
                                                                "completed_at": None}
    yield emit("response.created", response=shell)
    for i, item in enumerate(done.get("output") or []):
        yield emit("response.output_item.added", output_index=i, item=item)
        if item.get("type") == "message":
            for j, part in enumerate(item.get("content") or []):
                if part.get("type") == "output_text":
                    yield emit("response.output_text.delta", item_id=item.get("id"), output_index=i,
                               content_index=j, delta=part.get("text", ""), logprobs=[])
                    yield emit("response.output_text.done", item_id=item.get("id"), output_index=i,
                               content_index=j, text=part.get("text", ""), logprobs=[])
        yield emit("response.output_item.done", output_index=i, item=item)
    yield emit(TERMINAL.get(done.get("status"), "response.completed"), response=done)
