"""The adapter interface: translate OpenAI-shaped requests to a provider and back, no I/O."""
from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import replace
from typing import Iterable, Iterator

from core.errors import (
    GatewayError, InvalidRequest, NotImplementedByProvider, ProviderError, ProviderUnavailable, UnsupportedParameter,
    UpstreamRateLimited, UpstreamRejected, clip,
)
from core.types import Completion, Delta, StreamState  # noqa: F401 - the adapters' vocabulary


def choice(index: int, content: str | None, finish_reason: str | None,
           tool_calls: list | None = None) -> dict:
    """An OpenAI `chat.completion` choice (refusal and logprobs present, null)."""
    message = {"role": "assistant", "content": content, "refusal": None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {"index": index, "message": message, "logprobs": None, "finish_reason": finish_reason}


def capped(chat, field: str = "max_tokens") -> dict:
    """The client's parameters, with `field` set to the model row's `max_output_tokens` when the
    client set no cap: the provider then stops where the credit hold ends, and a model that never
    emits its end token (a base model) cannot run to its full context."""
    params = chat.params
    if "max_tokens" in params or "max_completion_tokens" in params:
        return params
    return {**params, field: chat.output_cap(chat.model)}


def text_of(content) -> str:
    """A message's content as plain text (list of text parts joined)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "\n".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")


def turns(messages: list[dict], assistant: str, parts_of, key: str) -> tuple[list[str], list[dict]]:
    """System/developer texts apart, the rest as alternating user/`assistant` turns whose `key`
    holds parts_of(message, index), consecutive same-role messages merged (Gemini and Anthropic)."""
    system, out = [], []
    for i, m in enumerate(messages):
        if m["role"] in ("system", "developer"):
            system.append(text_of(m.get("content")))
            continue
        role = assistant if m["role"] == "assistant" else "user"
        parts = parts_of(m, i)
        if out and out[-1]["role"] == role:
            out[-1][key].extend(parts)
        else:
            out.append({"role": role, key: parts})
    return system, out


def legacy(chat):
    """The call with OpenAI's legacy function calling (`functions`, `function_call`, assistant
    `function_call` turns, `function` results) restated as tools, for translating adapters."""
    p = chat.params
    if not ("functions" in p or "function_call" in p or any(
            m["role"] == "function" or m.get("function_call") for m in chat.messages)):
        return chat
    params = {k: v for k, v in p.items() if k not in ("functions", "function_call")}
    if "functions" in p:
        params.setdefault("tools", [{"type": "function", "function": f} for f in p["functions"]])
    call = p.get("function_call")
    if call is not None:
        params.setdefault("tool_choice", call if isinstance(call, str) else
                          {"type": "function", "function": {"name": call.get("name")}})
    return replace(chat, params=params, messages=_tool_messages(chat.messages))


def _tool_messages(messages: list[dict]) -> list[dict]:
    out, waiting = [], {}  # function name -> ids of its calls not yet answered
    for i, m in enumerate(messages):
        if m["role"] == "assistant" and isinstance(m.get("function_call"), dict):
            fn, cid = m["function_call"], f"call_{i}"
            waiting.setdefault(fn.get("name"), []).append(cid)
            m = {k: v for k, v in m.items() if k != "function_call"} | {"tool_calls": [
                {"id": cid, "type": "function",
                 "function": {"name": fn.get("name", ""), "arguments": fn.get("arguments") or "{}"}}]}
        elif m["role"] == "function":
            ids = waiting.get(m.get("name")) or [f"call_{i}"]
            m = {"role": "tool", "tool_call_id": ids.pop(0), "name": m.get("name"),
                 "content": m.get("content")}
        out.append(m)
    return out


def as_function_call(choice_: dict) -> dict:
    """A choice in the legacy shape the client asked for: its first tool call as `function_call`."""
    message = choice_["message"]
    calls = message.pop("tool_calls", None)
    if calls:
        message["function_call"] = {"name": calls[0]["function"]["name"],
                                    "arguments": calls[0]["function"]["arguments"]}
    if choice_.get("finish_reason") == "tool_calls":
        choice_["finish_reason"] = "function_call"
    return choice_


def legacy_delta(body: dict, finish: str | None) -> tuple[dict, str | None]:
    """A streamed delta in the legacy shape: `function_call` pieces instead of `tool_calls`."""
    calls = body.pop("tool_calls", None)
    if calls:
        fn = calls[0].get("function") or {}
        body["function_call"] = {k: fn[k] for k in ("name", "arguments") if fn.get(k) is not None}
    return body, ("function_call" if finish == "tool_calls" else finish)


def parse_json(text: str | bytes):
    """Parse a provider body; garbage is a 502."""
    try:
        return json.loads(text)
    except (ValueError, TypeError):
        raise ProviderError("The provider answered with a body that is not valid JSON") from None


class Adapter(ABC):
    """One wire protocol: how to reach it, what to send, how to read its answers and streams, and
    which of OpenAI's parameters it can honour; subclasses override what differs."""

    name = "base"
    native_n = True
    unsupported: tuple[str, ...] = ()  # OpenAI features this provider lacks: 400 unsupported_parameter
    mapped: frozenset = frozenset()  # parameters this adapter translates; any other is a 400
    stream_format = "sse"  # or "ndjson"

    def check(self, chat) -> None:
        """Refuse what this provider cannot honour, never drop it: a feature it lacks is 400
        `unsupported_parameter`, a parameter with no equivalent there 400 `invalid_parameter`,
        each naming it."""
        for param in chat.params:
            if param in self.unsupported:
                raise UnsupportedParameter(
                    f"Parameter '{clip(param)}' is not supported by the {self.name} provider", param=param)
            if param not in self.mapped:
                raise InvalidRequest(f"Parameter '{clip(param)}' has no equivalent on the {self.name} "
                                     "provider; remove it or choose another model", param=param)

    default_base = ""  # where a row without base_url is sent
    base_setting: str | None = None  # a setting that overrides default_base (Ollama: OLLAMA_HOST)

    @abstractmethod
    def url(self, base: str, model, stream: bool) -> str:
        """The endpoint for a call (streaming or not)."""

    def unavailable(self, provider: str) -> ProviderUnavailable:
        """The error for a provider that cannot be reached (refused, reset, unresolvable)."""
        return ProviderUnavailable(f"{provider} service is unavailable.",
                                   code=f"{provider.lower()}_unavailable")

    def headers(self, api_key: str | None) -> dict:
        return {"Content-Type": "application/json"}

    def call_headers(self, chat, api_key: str | None) -> dict:
        """The headers of one call: the provider's, plus the client's protocol headers that a
        pass-through call passes on (Anthropic's `anthropic-version`, `anthropic-beta`)."""
        return {**self.headers(api_key), **getattr(chat, "headers", {})}

    # Embeddings (core/embedding.py): where, what to send, and (vectors, prompt tokens or None)
    def embed_url(self, base: str, model) -> str:
        raise NotImplementedByProvider(f"Embeddings are not offered by the {self.name} provider", param="model")

    def embed_request(self, req) -> dict:
        self.embed_url("", req.model)  # a provider without embeddings refuses here
        raise NotImplementedError

    def embed_response(self, payload, req) -> tuple[list[list[float]], int | None]:
        raise NotImplementedError

    def _texts(self, req) -> list[str]:
        if req.tokenized:
            raise InvalidRequest(f"Token arrays as 'input' are not supported by the {self.name} provider; "
                                 "send strings", param="input")
        return req.inputs

    @abstractmethod
    def request(self, chat) -> dict:
        """The provider's request body for a chat call."""

    @abstractmethod
    def response(self, payload: dict, chat) -> Completion:
        """The provider's answer as a completion."""

    @abstractmethod
    def stream_events(self, lines: Iterable[bytes], state: StreamState) -> Iterator[Delta]:
        """The provider's stream as deltas; usage and the end go into `state`."""

    def stream_event(self, data: str | bytes) -> dict:
        """One stream event as an object; garbage or an in-band error is a ProviderError."""
        event = parse_json(data)
        if not isinstance(event, dict):
            raise ProviderError("The provider sent a stream event that is not an object")
        if "error" in event or event.get("type") == "error":
            raise ProviderError(f"The provider failed mid-stream: {self.error_message(event)}")
        return event

    def error_message(self, payload) -> str | None:
        """The provider's own message from its error body."""
        if isinstance(payload, dict):
            err = payload.get("error")
            if isinstance(err, dict):
                return err.get("message")
            if isinstance(err, str):
                return err
        return None

    def error(self, status: int, text: str, provider: str) -> GatewayError:
        """Map a provider's non-2xx answer to the contract's error (SPEC §8)."""
        try:
            message = self.error_message(json.loads(text))
        except ValueError:
            message = None
        if status == 429:
            return UpstreamRateLimited(f"{provider} rate limit reached: {message or 'retry later'}")
        if status in (401, 403):
            err = ProviderError(f"{provider} refused the gateway's credentials")
            err.retry = False  # another try will not fix our key
            return err
        if 400 <= status < 500:
            return UpstreamRejected(message or f"{provider} rejected the request (HTTP {status})")
        return ProviderError(f"{provider} failed (HTTP {status}): {message or 'Failed to generate response'}")


def sse_data(lines: Iterable[bytes]) -> Iterator[str]:
    """The `data:` payloads of an SSE stream, one per event (multi-line data joined)."""
    buf: list[str] = []
    for raw in lines:
        line = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        line = line.rstrip("\r")
        if not line:
            if buf:
                yield "\n".join(buf)
                buf = []
            continue
        if line.startswith("data:"):
            buf.append(line[5:].lstrip(" "))
    if buf:
        yield "\n".join(buf)
