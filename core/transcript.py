"""A streamed answer gathered back into a `chat.completion` body, and a stored body replayed
as a stream (idempotent retries of streamed calls)."""
from __future__ import annotations

import json
import time

from core import sse


class Transcript:
    """Reads the SSE events the client was sent and keeps what they said."""

    def __init__(self):
        self.choices: dict[int, dict] = {}
        self.head: dict = {}
        self.usage = None
        self.failed = False
        self.finished = False

    def feed(self, piece: bytes) -> None:
        if piece == sse.DONE:
            self.finished = not self.failed
            return
        if not piece.startswith(b"data: {"):
            return
        event = json.loads(piece[6:])
        if "error" in event:
            self.failed = True
            return
        if not self.head:
            self.head = {k: v for k, v in event.items() if k not in ("choices", "usage", "object")}
        if event.get("usage"):
            self.usage = event["usage"]
        for c in event.get("choices") or ():
            self._add(c)

    def _add(self, c: dict) -> None:
        msg = self.choices.setdefault(c.get("index", 0), {"message": {"role": "assistant", "content": None},
                                                          "finish_reason": None, "calls": {}})
        for key, value in (c.get("delta") or {}).items():
            if key == "role" or value is None:
                continue
            if key == "tool_calls":
                for call in value:
                    slot = msg["calls"].setdefault(call.get("index", 0), {"id": None, "type": "function",
                                                                          "function": {"name": "", "arguments": ""}})
                    slot["id"] = call.get("id") or slot["id"]
                    fn = call.get("function") or {}
                    slot["function"]["name"] += fn.get("name") or ""
                    slot["function"]["arguments"] += fn.get("arguments") or ""
            elif isinstance(value, str):
                msg["message"][key] = (msg["message"].get(key) or "") + value
            else:
                msg["message"][key] = value
        if isinstance(c.get("logprobs"), dict):  # each chunk's tokens, content and refusal
            kept = msg.setdefault("logprobs", {"content": None, "refusal": None})
            for key, tokens in c["logprobs"].items():
                if isinstance(tokens, list):
                    kept[key] = (kept.get(key) or []) + tokens
        if c.get("finish_reason"):
            msg["finish_reason"] = c["finish_reason"]

    def body(self) -> dict:
        choices = []
        for index in sorted(self.choices):
            msg = self.choices[index]
            message = {"refusal": None, **msg["message"]}
            if msg["calls"]:
                message["tool_calls"] = [msg["calls"][i] for i in sorted(msg["calls"])]
            choices.append({"index": index, "message": message, "logprobs": msg.get("logprobs"),
                            "finish_reason": msg["finish_reason"]})
        return {**self.head, "object": "chat.completion", "choices": choices,
                **({"usage": self.usage} if self.usage else {})}


def replay(body: dict, include_usage: bool):
    """A stored `chat.completion` as the events of a stream: the role, each choice's content and
    tool calls (with its logprobs), the finish, the usage (when the call asked for it), [DONE]."""
    rid, model = body["id"], body["model"]
    created = body.get("created") or int(time.time())
    choices = body.get("choices") or []
    yield sse.chunk(rid, created, model, [sse.delta_choice(c["index"], {"role": "assistant", "content": ""})
                                          for c in choices])
    for c in choices:
        message = c.get("message") or {}
        delta = {k: v for k, v in message.items() if k not in ("role", "tool_calls", "refusal") and v}
        if message.get("tool_calls"):
            delta["tool_calls"] = [{"index": i, **call} for i, call in enumerate(message["tool_calls"])]
        if delta:
            choice = sse.delta_choice(c["index"], delta)
            if c.get("logprobs"):
                choice["logprobs"] = c["logprobs"]
            yield sse.chunk(rid, created, model, [choice])
        yield sse.chunk(rid, created, model, [sse.delta_choice(c["index"], {}, c.get("finish_reason"))])
    if include_usage and body.get("usage"):
        yield sse.chunk(rid, created, model, [], usage=body["usage"])
    yield sse.DONE
