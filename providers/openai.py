"""OpenAI Chat Completions protocol: OpenAI, DeepSeek, vLLM, llama.cpp, Ollama's /v1.

Follows https://platform.openai.com/docs/api-reference/chat: the request passes
through as sent, every field known to the gateway or not (model renamed to the
upstream name; the row's `max_output_tokens` added as the cap when the client set
none; `stream_options.include_usage` asked for so that the final chunk carries
usage). The answer and each chunk come back whole: the relay rewrites `id` and
`model` and adds the cost, nothing else.
"""
from __future__ import annotations

import json
from typing import Iterable, Iterator

from core.usage import from_openai
from providers.base import Adapter, Completion, Delta, StreamState, capped, sse_data
from core.errors import ProviderError


class OpenAIAdapter(Adapter):
    name = "openai"

    default_base = "https://api.openai.com/v1"

    def url(self, base: str, model, stream: bool) -> str:
        return f"{base}/chat/completions"

    def headers(self, api_key):
        headers = {"Content-Type": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        return headers

    def check(self, chat) -> None:
        """Everything passes through: the upstream decides what it takes."""

    def request(self, chat) -> dict:
        body = {**capped(chat, self.cap_field(chat.model)), "model": chat.model.upstream_model,
                "messages": chat.messages}
        if chat.stream:
            body["stream"] = True
            body["stream_options"] = {**chat.stream_options, "include_usage": True}
        return body

    def cap_field(self, model) -> str:
        """OpenAI's own API wants `max_completion_tokens` (its reasoning models refuse
        `max_tokens`); DeepSeek, vLLM, llama.cpp and Ollama read `max_tokens`."""
        return "max_completion_tokens" if "api.openai.com" in (model.base_url or self.default_base) \
            else "max_tokens"

    def embed_url(self, base: str, model) -> str:
        return f"{base}/embeddings"

    def embed_request(self, req) -> dict:
        body = {"model": req.model.upstream_model, "input": req.inputs, "encoding_format": "float"}
        if req.dimensions is not None:
            body["dimensions"] = req.dimensions
        if req.user is not None:
            body["user"] = req.user
        return body

    def embed_response(self, payload, req):
        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(data, list) or not all(isinstance(d, dict) and isinstance(d.get("embedding"), list)
                                                 for d in data):
            raise ProviderError("The provider answered without embeddings")
        vectors = [d["embedding"] for d in sorted(data, key=lambda d: d.get("index", 0))]
        usage = payload.get("usage") if isinstance(payload.get("usage"), dict) else {}
        tokens = usage.get("prompt_tokens")
        return vectors, tokens if isinstance(tokens, int) else None

    def response(self, payload, chat) -> Completion:
        if not isinstance(payload, dict) or not isinstance(payload.get("choices"), list):
            raise ProviderError("The provider answered without choices")
        choices = []
        for i, c in enumerate(payload["choices"]):
            if not isinstance(c, dict) or not isinstance(c.get("message"), dict):
                raise ProviderError("The provider answered with a choice without a message")
            message = {"role": "assistant", "content": None, "refusal": None, **c["message"]}
            choices.append({**c, "index": c.get("index", i), "message": message,
                            "logprobs": c.get("logprobs"), "finish_reason": c.get("finish_reason") or "stop"})
        usage = payload.get("usage") if isinstance(payload.get("usage"), dict) else {}
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if not isinstance(prompt, int) or not isinstance(completion, int):
            return Completion(choices, chat.prompt_guess, _estimate(choices), estimated=True, raw=payload)
        return Completion(choices, prompt, completion, raw=payload, usage=usage,
                          detail=from_openai(usage).detail)

    def stream_events(self, lines: Iterable[bytes], state: StreamState) -> Iterator[Delta]:
        for data in sse_data(lines):
            if data.strip() == "[DONE]":
                state.done = True
                return
            event = self.stream_event(data)
            usage = event.pop("usage", None)
            if isinstance(usage, dict):
                state.prompt_tokens = usage.get("prompt_tokens")
                state.completion_tokens = usage.get("completion_tokens")
                state.extra["usage"] = usage
                state.detail = from_openai(usage).detail
            choices = event.get("choices")
            if not isinstance(choices, list) or not choices or not all(isinstance(c, dict) for c in choices):
                continue  # the usage chunk (sent again, with the cost, at the end) or an empty one
            text = "".join(c["delta"].get("content") or "" for c in choices if isinstance(c.get("delta"), dict))
            yield Delta(choices[0].get("index", 0), text or None,
                        next((c["delta"]["tool_calls"] for c in choices
                              if isinstance(c.get("delta"), dict) and c["delta"].get("tool_calls")), None),
                        next((c["finish_reason"] for c in choices if c.get("finish_reason")), None),
                        chunk=event)


def _estimate(choices: list[dict]) -> int:
    """Rough completion tokens when a server reports none (about 4 bytes a token)."""
    text = "".join((c["message"].get("content") or "") + json.dumps(c["message"].get("tool_calls") or "")
                   for c in choices)
    return max(1, len(text.encode()) // 4)
