"""Responses in Ollama's native format (https://github.com/ollama/ollama/blob/main/docs/api.md#generate-a-chat-completion)."""
from __future__ import annotations

import json
import threading
import time

from werkzeug import Request, Response


def chat(content: str = "Hi from llama", prompt_eval_count: int = 12, eval_count: int = 4,
         done_reason: str = "stop", tool_calls=None) -> dict:
    message = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {"model": "llama2", "created_at": "2023-12-12T14:13:43.416799Z", "message": message,
            "done_reason": done_reason, "done": True, "total_duration": 5191566416,
            "load_duration": 2154458, "prompt_eval_count": prompt_eval_count,
            "prompt_eval_duration": 383809000, "eval_count": eval_count,
            "eval_duration": 4799921000}


class Stream:
    """A paced NDJSON stream; the last line carries done, done_reason and the counts."""

    def __init__(self, tokens: list[str], delay: float = 0.0, prompt_eval_count: int = 12,
                 drop_after: int | None = None):
        self.tokens, self.delay, self.prompt = tokens, delay, prompt_eval_count
        self.drop_after = drop_after
        self.sent_at: list[float] = []
        self.closed = threading.Event()

    def _line(self, body: dict) -> bytes:
        return json.dumps(body).encode() + b"\n"

    def events(self):
        try:
            for i, token in enumerate(self.tokens):
                if self.drop_after is not None and i == self.drop_after:
                    return
                if self.delay:
                    time.sleep(self.delay)
                self.sent_at.append(time.monotonic())
                yield self._line({"model": "llama2", "created_at": "2023-08-04T08:52:19.385406455-07:00",
                                  "message": {"role": "assistant", "content": token}, "done": False})
            final = chat("", self.prompt, len(self.tokens))
            final["message"]["content"] = ""
            yield self._line(final)
        finally:
            self.closed.set()

    def handler(self, request: Request) -> Response:
        return Response(self.events(), mimetype="application/x-ndjson")
