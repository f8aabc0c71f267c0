"""A paced OpenAI-compatible streaming upstream: CHUNKS chunks, one every INTERVAL seconds, each
carrying its emission time (time.monotonic, one clock for every process on the machine)."""
from __future__ import annotations

import json
import sys
import time

from waitress import serve

CHUNKS, INTERVAL = 20, 0.01


def chunk(delta: dict, finish=None) -> bytes:
    body = {"id": "chatcmpl-paced", "object": "chat.completion.chunk", "created": 1700000000,
            "model": "paced", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def usage_chunk(tokens: int) -> bytes:
    """The last chunk: no choices, the usage."""
    usage = {"prompt_tokens": 5, "completion_tokens": tokens, "total_tokens": tokens + 5}
    return b"data: " + json.dumps({"id": "chatcmpl-paced", "object": "chat.completion.chunk",
                                   "created": 1700000000, "model": "paced", "choices": [],
                                   "usage": usage}).encode() + b"\n\n"


def app(environ, start_response):
    environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    start_response("200 OK", [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")])

    def events():
        yield chunk({"role": "assistant", "content": ""})
        for _ in range(CHUNKS):
            time.sleep(INTERVAL)
            yield chunk({"content": f"{time.monotonic():.6f}|"})
        yield chunk({}, "stop")
        yield usage_chunk(CHUNKS)
        yield b"data: [DONE]\n\n"

    return events()


if __name__ == "__main__":
    serve(app, host="127.0.0.1", port=int(sys.argv[1]), threads=8, channel_request_lookahead=1,
          _quiet=True)
