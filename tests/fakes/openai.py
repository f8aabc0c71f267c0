"""Responses in OpenAI's Chat Completions format (https://platform.openai.com/docs/api-reference/chat)."""
from __future__ import annotations

import json
import threading
import time

from werkzeug import Request, Response


def completion(content: str = "Hello there!", prompt_tokens: int = 9, completion_tokens: int = 3,
               finish: str = "stop", n: int = 1, tool_calls=None) -> dict:
    message = {"role": "assistant", "content": content}
    if tool_calls:
        message = {"role": "assistant", "content": None, "tool_calls": tool_calls}
    return {
        "id": "chatcmpl-upstream", "object": "chat.completion", "created": 1700000000,
        "model": "upstream-model", "system_fingerprint": "fp_x",
        "choices": [{"index": i, "message": message, "logprobs": None, "finish_reason": finish}
                    for i in range(n)],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }


def chunk(delta: dict, finish=None, usage=None, choices=True) -> bytes:
    body = {"id": "chatcmpl-upstream", "object": "chat.completion.chunk", "created": 1700000000,
            "model": "upstream-model",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
            if choices else []}
    if usage is not None:
        body["usage"] = usage
    return b"data: " + json.dumps(body).encode() + b"\n\n"


LOCKSTEP_WAIT = 5.0


class Stream:
    """A paced SSE stream that records when each token left and whether the client hung up."""

    def __init__(self, tokens: list[str], delay: float = 0.0, prompt_tokens: int = 9,
                 drop_after: int | None = None, usage: bool = True, lockstep: bool = False):
        self.tokens, self.delay, self.prompt_tokens = tokens, delay, prompt_tokens
        self.drop_after, self.usage = drop_after, usage
        self.sent_at: list[float] = []
        self.closed = threading.Event()
        self.finished = threading.Event()
        # lockstep: each token after the first is sent only once the client said (ack()) that the
        # one before reached it; `missed` counts tokens the client had not seen LOCKSTEP_WAIT
        # seconds after they were sent (an answer that is buffered anywhere on the way)
        self.lockstep, self.missed = lockstep, 0
        self._acks = threading.Semaphore(0)

    def ack(self) -> None:
        self._acks.release()

    def events(self):
        try:
            yield chunk({"role": "assistant", "content": ""})
            for i, token in enumerate(self.tokens):
                if self.drop_after is not None and i == self.drop_after:
                    return  # connection ends with no [DONE]
                if self.delay:
                    time.sleep(self.delay)  # the fake's own pacing, not a test wait
                if self.lockstep and i and not self._acks.acquire(timeout=LOCKSTEP_WAIT):
                    self.missed += 1
                self.sent_at.append(time.monotonic())
                yield chunk({"content": token})
            yield chunk({}, finish="stop")
            if self.usage:
                n = len(self.tokens)
                yield chunk({}, usage={"prompt_tokens": self.prompt_tokens, "completion_tokens": n,
                                       "total_tokens": self.prompt_tokens + n}, choices=False)
            yield b"data: [DONE]\n\n"
            self.finished.set()
        finally:
            self.closed.set()

    def handler(self, request: Request) -> Response:
        return Response(self.events(), mimetype="text/event-stream")
