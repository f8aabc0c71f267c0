"""OpenAI Chat Completions protocol: OpenAI, DeepSeek, vLLM, llama.cpp, Ollama's /v1.

Follows https://platform.openai.com/docs/api-reference/chat: the request passes
through as sent (model renamed to the upstream name; the row's `max_output_tokens`
added as the cap when the client set none), streams are SSE of
`chat.completion.chunk` with `stream_options.include_usage` asked for so that
the final chunk carries usage.
"""
from __future__ import annotations

import json
from typing import Iterable, Iterator

from providers.base import Adapter, Completion, Delta, StreamState, capped, choice, sse_data
from service.errors import ProviderError


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

    def request(self, chat) -> dict:
        body = {"model": chat.model.upstream_model, "messages": chat.messages,
                **capped(chat, self.cap_field(chat.model))}
        if chat.stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body

    def cap_field(self, model) -> str:
        """OpenAI's own API wants `max_completion_tokens` (its reasoning models refuse
        `max_tokens`); DeepSeek, vLLM, llama.cpp and Ollama read `max_tokens`."""
        return "max_completion_tokens" if "api.openai.com" in (model.base_url or self.default_base) \
            else "max_tokens"

    def response(self, payload, chat) -> Completion:
        if not isinstance(payload, dict) or not isinstance(payload.get("choices"), list):
            raise ProviderError("The provider answered without choices")
        choices = []
        for i, c in enumerate(payload["choices"]):
            msg = c.get("message") or {}
            out = choice(c.get("index", i), msg.get("content"), c.get("finish_reason") or "stop",
                         msg.get("tool_calls"))
            if msg.get("refusal"):
                out["message"]["refusal"] = msg["refusal"]
            if c.get("logprobs") is not None:
                out["logprobs"] = c["logprobs"]
            choices.append(out)
        usage = payload.get("usage") or {}
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if not isinstance(prompt, int) or not isinstance(completion, int):
            return Completion(choices, chat.prompt_guess, _estimate(choices), estimated=True)
        return Completion(choices, prompt, completion)

    def stream_events(self, lines: Iterable[bytes], state: StreamState) -> Iterator[Delta]:
        for data in sse_data(lines):
            if data.strip() == "[DONE]":
                state.done = True
                return
            event = self.stream_event(data)
            usage = event.get("usage")
            if isinstance(usage, dict):
                state.prompt_tokens = usage.get("prompt_tokens")
                state.completion_tokens = usage.get("completion_tokens")
            for c in event.get("choices") or []:
                delta = c.get("delta") or {}
                yield Delta(c.get("index", 0), delta.get("content"), delta.get("tool_calls"),
                            c.get("finish_reason"))


def _estimate(choices: list[dict]) -> int:
    """Rough completion tokens when a server reports none (about 4 bytes a token)."""
    text = "".join((c["message"].get("content") or "") + json.dumps(c["message"].get("tool_calls") or "")
                   for c in choices)
    return max(1, len(text.encode()) // 4)
