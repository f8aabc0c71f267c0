"""A scripted model behind each wire format, for the real agent clients (Claude Code): the first
call asks for one tool, the next answers in text what the tool's result held. It answers any
request (streamed or not) in its format, and keeps the usage it reported for each call so that
a test can check the ledger charged exactly that.

Formats: OpenAI Chat Completions (https://platform.openai.com/docs/api-reference/chat-streaming),
Anthropic Messages (https://docs.anthropic.com/en/api/messages-streaming), Gemini
generateContent / streamGenerateContent?alt=sse (https://ai.google.dev/api/generate-content) and
Ollama /api/chat (https://github.com/ollama/ollama/blob/main/docs/api.md, NDJSON streams).
"""
from __future__ import annotations

import json
import threading

from werkzeug import Request, Response

PATHS = {"openai": "/v1/chat/completions", "anthropic": "/v1/messages", "ollama": "/api/chat",
         "gemini": ("/v1beta/models/up:streamGenerateContent", "/v1beta/models/up:generateContent")}


class ScriptedModel:
    """Call 1: the tool `tool` with `args`; once a request carries `secret` (the tool's result
    came back), the text `answer(secret)`; a request that never does gets `gave_up` after
    `patience` calls."""

    def __init__(self, api: str, tool: str, args: dict, secret: str, patience: int = 3):
        self.api, self.tool, self.args, self.secret, self.patience = api, tool, args, secret, patience
        self.calls: list[dict] = []  # each request body
        self.usage: list[tuple[int, int, int, int]] = []  # (input, cache read, cache write, output) per call
        self.lock = threading.Lock()

    def answer(self) -> str:
        return f"The note says {self.secret}."

    def handler(self, request: Request) -> Response:
        body = request.get_json(silent=True) or {}
        raw = request.get_data(as_text=True)
        with self.lock:
            self.calls.append(body)
            n = len(self.calls)
            text = self.answer() if self.secret in raw else ("gave up" if n > self.patience else None)
            usage = (1000 + n, 900 if self.api == "anthropic" else 0, 50 if self.api == "anthropic" else 0, 20 + n)
            self.usage.append(usage)
        streamed = body.get("stream") or "streamGenerateContent" in request.path
        frames = getattr(self, f"_{self.api}")(text, usage, n)
        if streamed:
            return Response(frames, mimetype="application/x-ndjson" if self.api == "ollama" else "text/event-stream")
        return Response(json.dumps(self._whole(text, usage, n)), content_type="application/json")

    # --- streams, one per format
    def _openai(self, text, usage, n):
        def chunk(delta, finish=None, usage_=None, choices=True):
            listed = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}] if choices else []
            out = {"id": f"chatcmpl-{n}", "object": "chat.completion.chunk", "created": 1700000000, "model": "up",
                   "choices": listed}
            if usage_:
                out["usage"] = usage_
            return b"data: " + json.dumps(out).encode() + b"\n\n"

        yield chunk({"role": "assistant", "content": ""})
        if text is None:
            yield chunk({"tool_calls": [{"index": 0, "id": f"call_{n}", "type": "function",
                                         "function": {"name": self.tool, "arguments": ""}}]})
            yield chunk({"tool_calls": [{"index": 0, "function": {"arguments": json.dumps(self.args)}}]})
            yield chunk({}, "tool_calls")
        else:
            for word in _words(text):
                yield chunk({"content": word})
            yield chunk({}, "stop")
        yield chunk({}, usage_={"prompt_tokens": usage[0], "completion_tokens": usage[3],
                                "total_tokens": usage[0] + usage[3]}, choices=False)
        yield b"data: [DONE]\n\n"

    def _anthropic(self, text, usage, n):
        def event(data):
            return f"event: {data['type']}\ndata: {json.dumps(data)}\n\n".encode()

        counts = {"input_tokens": usage[0], "cache_read_input_tokens": usage[1],
                  "cache_creation_input_tokens": usage[2]}
        yield event({"type": "message_start", "message": {
            "id": f"msg_{n}", "type": "message", "role": "assistant", "model": "up", "content": [],
            "stop_reason": None, "stop_sequence": None,
            "usage": {**counts, "cache_creation": {"ephemeral_5m_input_tokens": usage[2],
                                                   "ephemeral_1h_input_tokens": 0},
                      "output_tokens": 1, "service_tier": "standard"}}})
        yield event({"type": "ping"})
        if text is None:
            yield event({"type": "content_block_start", "index": 0, "content_block": {
                "type": "tool_use", "id": f"toolu_{n}", "name": self.tool, "input": {}}})
            yield event({"type": "content_block_delta", "index": 0,
                         "delta": {"type": "input_json_delta", "partial_json": json.dumps(self.args)}})
        else:
            yield event({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
            for word in _words(text):
                yield event({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": word}})
        yield event({"type": "content_block_stop", "index": 0})
        yield event({"type": "message_delta", "delta": {"stop_reason": "tool_use" if text is None else "end_turn",
                                                        "stop_sequence": None},
                     "usage": {**counts, "output_tokens": usage[3]}})
        yield event({"type": "message_stop"})

    def _gemini(self, text, usage, n):
        meta = {"promptTokenCount": usage[0], "candidatesTokenCount": usage[3],
                "totalTokenCount": usage[0] + usage[3]}
        if text is None:
            pieces = [{"functionCall": {"name": self.tool, "args": self.args}}]
        else:
            pieces = [{"text": word} for word in _words(text)]
        for i, part in enumerate(pieces):
            last = i == len(pieces) - 1
            out = {"candidates": [{"content": {"role": "model", "parts": [part]}, "index": 0,
                                   **({"finishReason": "STOP"} if last else {})}],
                   "modelVersion": "up"}
            if last:
                out["usageMetadata"] = meta
            yield b"data: " + json.dumps(out).encode() + b"\r\n\r\n"

    def _ollama(self, text, usage, n):
        def line(message, **end):
            return json.dumps({"model": "up", "created_at": "2026-12-07T10:00:00Z", "message": message,
                               "done": bool(end), **end}).encode() + b"\n"

        if text is None:
            yield line({"role": "assistant", "content": "",
                        "tool_calls": [{"function": {"name": self.tool, "arguments": self.args}}]})
        else:
            for word in _words(text):
                yield line({"role": "assistant", "content": word})
        yield line({"role": "assistant", "content": ""}, done_reason="stop", prompt_eval_count=usage[0],
                   eval_count=usage[3])

    def _whole(self, text, usage, n) -> dict:
        """An answer that is not streamed, in the format (Claude Code streams; other calls may not)."""
        if self.api == "anthropic":
            content = ([{"type": "tool_use", "id": f"toolu_{n}", "name": self.tool, "input": self.args}]
                       if text is None else [{"type": "text", "text": text}])
            return {"id": f"msg_{n}", "type": "message", "role": "assistant", "model": "up", "content": content,
                    "stop_reason": "tool_use" if text is None else "end_turn", "stop_sequence": None,
                    "usage": {"input_tokens": usage[0], "cache_read_input_tokens": usage[1],
                              "cache_creation_input_tokens": usage[2], "output_tokens": usage[3]}}
        if self.api == "ollama":
            message = ({"role": "assistant", "content": "",
                        "tool_calls": [{"function": {"name": self.tool, "arguments": self.args}}]}
                       if text is None else {"role": "assistant", "content": text})
            return {"model": "up", "message": message, "done": True, "done_reason": "stop",
                    "prompt_eval_count": usage[0], "eval_count": usage[3]}
        if self.api == "gemini":
            part = {"functionCall": {"name": self.tool, "args": self.args}} if text is None else {"text": text}
            return {"candidates": [{"content": {"role": "model", "parts": [part]}, "finishReason": "STOP",
                                    "index": 0}],
                    "usageMetadata": {"promptTokenCount": usage[0], "candidatesTokenCount": usage[3],
                                      "totalTokenCount": usage[0] + usage[3]}}
        message = ({"role": "assistant", "content": None, "tool_calls": [{
            "id": f"call_{n}", "type": "function",
            "function": {"name": self.tool, "arguments": json.dumps(self.args)}}]}
            if text is None else {"role": "assistant", "content": text})
        return {"id": f"chatcmpl-{n}", "object": "chat.completion", "created": 1700000000, "model": "up",
                "choices": [{"index": 0, "message": message, "logprobs": None,
                             "finish_reason": "tool_calls" if text is None else "stop"}],
                "usage": {"prompt_tokens": usage[0], "completion_tokens": usage[3],
                          "total_tokens": usage[0] + usage[3]}}


def _words(text: str) -> list[str]:
    words = text.split(" ")
    return [w + " " for w in words[:-1]] + [words[-1]]
