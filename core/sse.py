"""Server-sent event framing for OpenAI chunk streams."""
from __future__ import annotations

import json

DONE = b"data: [DONE]\n\n"


def event(payload: dict) -> bytes:
    return b"data: " + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def chunk(rid: str, created: int, model: str, choices: list, **extra) -> bytes:
    """One `chat.completion.chunk` event."""
    return event({"id": rid, "object": "chat.completion.chunk", "created": created,
                  "model": model, "choices": choices, **extra})


def delta_choice(index: int, delta: dict, finish_reason: str | None = None) -> dict:
    return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
