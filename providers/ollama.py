"""Ollama's native chat protocol, `POST {base}/api/chat`.

Follows https://github.com/ollama/ollama/blob/main/docs/api.md: sampling
parameters go under `options` (max_tokens -> num_predict), streams are NDJSON
lines whose last (`done: true`) carries `done_reason`, `prompt_eval_count`
and `eval_count`. Ollama has no `n`: the gateway repeats the call.
"""
from __future__ import annotations

import json
from typing import Iterable, Iterator

from providers.base import (
    Adapter, Completion, Delta, StreamState, as_function_call, capped, choice, legacy,
)
from providers.parts import parts_of, refuse, tool_call
from core.errors import ProviderError, ProviderUnavailable, UnsupportedParameter

OPTIONS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "seed": "seed",
           "presence_penalty": "presence_penalty", "frequency_penalty": "frequency_penalty",
           "repetition_penalty": "repeat_penalty", "min_p": "min_p",
           "max_tokens": "num_predict", "max_completion_tokens": "num_predict"}


class OllamaAdapter(Adapter):
    name = "ollama"
    native_n = False
    stream_format = "ndjson"
    unsupported = ("logprobs", "top_logprobs", "logit_bias")
    mapped = frozenset({*OPTIONS, "n", "stop", "response_format", "tools", "tool_choice", "reasoning_effort"})

    def check(self, chat) -> None:
        chat = legacy(chat)
        super().check(chat)
        for i, m in enumerate(chat.messages):
            _message(m, i)  # every part has an Ollama shape, or a 400 now
        choice_ = chat.params.get("tool_choice")
        if choice_ not in (None, "auto", "none"):
            raise UnsupportedParameter(
                "Parameter 'tool_choice' other than auto/none is not supported by the ollama provider",
                param="tool_choice")

    default_base = "http://localhost:11434"
    base_setting = "OLLAMA_HOST"

    def url(self, base: str, model, stream: bool) -> str:
        return f"{base}/api/chat"

    def embed_url(self, base: str, model) -> str:
        return f"{base}/api/embed"

    def embed_request(self, req) -> dict:
        body = {"model": req.model.upstream_model, "input": self._texts(req)}
        if req.dimensions is not None:
            body["dimensions"] = req.dimensions
        return body

    def embed_response(self, payload, req):
        vectors = payload.get("embeddings") if isinstance(payload, dict) else None
        if not isinstance(vectors, list) or len(vectors) != len(req.inputs):
            raise ProviderError("The provider answered without embeddings")
        tokens = payload.get("prompt_eval_count")
        return vectors, tokens if isinstance(tokens, int) else None

    def unavailable(self, provider: str) -> ProviderUnavailable:
        """The seed's wording, whatever the row's display name."""
        return ProviderUnavailable("Ollama service is unavailable. Please make sure Ollama is running.",
                                   code="ollama_unavailable")

    def request(self, chat) -> dict:
        chat = legacy(chat)
        params = capped(chat)
        body = {"model": chat.model.upstream_model, "stream": chat.stream,
                "messages": [_message(m, i) for i, m in enumerate(chat.messages)]}
        if "reasoning_effort" in params:
            body["think"] = params["reasoning_effort"] != "none"
        options = {OPTIONS[k]: v for k, v in params.items() if k in OPTIONS}
        if "stop" in params:
            options["stop"] = params["stop"] if isinstance(params["stop"], list) else [params["stop"]]
        if options:
            body["options"] = options
        fmt = params.get("response_format") or {}
        if fmt.get("type") == "json_object":
            body["format"] = "json"
        elif fmt.get("type") == "json_schema":
            body["format"] = (fmt.get("json_schema") or {}).get("schema") or "json"
        if params.get("tools") and params.get("tool_choice") != "none":
            body["tools"] = params["tools"]
        return body

    def response(self, payload, chat) -> Completion:
        if not isinstance(payload, dict) or not isinstance(payload.get("message"), dict):
            raise ProviderError("The provider answered without a message")
        msg = payload["message"]
        calls = _tool_calls(msg.get("tool_calls"))
        finish = "tool_calls" if calls else _finish(payload.get("done_reason"))
        out = [choice(0, msg.get("content", ""), finish, calls or None)]
        if "functions" in chat.params:
            out = [as_function_call(c) for c in out]
        prompt, completion = payload.get("prompt_eval_count"), payload.get("eval_count")
        if not isinstance(prompt, int) or not isinstance(completion, int):
            # Ollama omits prompt_eval_count when the prompt was cached
            return Completion(out, prompt if isinstance(prompt, int) else chat.prompt_guess,
                              completion if isinstance(completion, int) else 0, estimated=True)
        return Completion(out, prompt, completion)

    def stream_events(self, lines: Iterable[bytes], state: StreamState) -> Iterator[Delta]:
        for raw in lines:
            if not raw.strip():
                continue
            event = self.stream_event(raw)
            msg = event.get("message") or {}
            offset = state.extra.get("calls", 0)
            calls = _tool_calls(msg.get("tool_calls"), offset)
            if calls:
                state.extra["calls"] = offset + len(calls)
            if msg.get("content") or calls:
                yield Delta(0, msg.get("content") or None,
                            [{"index": offset + n, **c} for n, c in enumerate(calls)] or None)
            if event.get("done"):
                state.prompt_tokens = event.get("prompt_eval_count")
                state.completion_tokens = event.get("eval_count")
                state.done = True
                finish = "tool_calls" if state.extra.get("calls") else _finish(event.get("done_reason"))
                yield Delta(0, finish_reason=finish)
                return


def _finish(reason) -> str:
    return "length" if reason == "length" else "stop"


def _message(m: dict, index: int) -> dict:
    """An OpenAI message as Ollama takes it: text parts joined by new lines, inline images in
    `images`, tool calls with object arguments."""
    texts, images = [], []
    for part in parts_of(m, index):
        if part.kind == "text":
            texts.append(part.text)
        elif part.kind == "image" and not part.url:
            images.append(part.data)
        else:
            raise refuse(part.where, f"{part.where}: the ollama provider takes text and inline "
                                     "images (data URLs) only")
    out = {"role": m["role"], "content": "\n".join(texts)}
    if images:
        out["images"] = images
    if m.get("tool_calls"):
        calls = [tool_call(c, f"messages[{index}].tool_calls[{j}]") for j, c in enumerate(m["tool_calls"])]
        out["tool_calls"] = [{"function": {"name": name, "arguments": arguments}} for name, arguments in calls]
    if m["role"] == "tool" and m.get("name"):
        out["tool_name"] = m["name"]
    return out


def _tool_calls(calls, offset: int = 0) -> list:
    """Ollama tool calls as OpenAI's (arguments as a JSON string, a call id)."""
    out = []
    for i, c in enumerate(calls or []):
        fn = c.get("function") or {}
        out.append({"id": c.get("id") or f"call_{offset + i}", "type": "function",
                    "function": {"name": fn.get("name", ""),
                                 "arguments": json.dumps(fn.get("arguments") or {})}})
    return out
