"""The adapter interface: translate OpenAI-shaped requests to a provider and back, no I/O."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from service.errors import (
    GatewayError, NotImplementedByProvider, ProviderError, UpstreamRateLimited, UpstreamRejected,
)


@dataclass
class Completion:
    """A provider's answer in OpenAI terms: choices plus token counts."""

    choices: list[dict]
    prompt_tokens: int
    completion_tokens: int
    estimated: bool = False


@dataclass
class Delta:
    """One piece of a streamed answer for one choice."""

    index: int = 0
    content: str | None = None
    tool_calls: list | None = None
    finish_reason: str | None = None


@dataclass
class StreamState:
    """What a stream gathers across events: usage, finish, whether it ended properly."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    done: bool = False
    extra: dict = field(default_factory=dict)


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
    return "".join(p.get("text", "") for p in content if isinstance(p, dict))


def turns(messages: list[dict], assistant: str, parts_of, key: str) -> tuple[list[str], list[dict]]:
    """System/developer texts apart, the rest as alternating user/`assistant` turns whose `key`
    holds parts_of(message), consecutive same-role messages merged (Gemini and Anthropic)."""
    system, out = [], []
    for m in messages:
        if m["role"] in ("system", "developer"):
            system.append(text_of(m.get("content")))
            continue
        role = assistant if m["role"] == "assistant" else "user"
        parts = parts_of(m)
        if out and out[-1]["role"] == role:
            out[-1][key].extend(parts)
        else:
            out.append({"role": role, key: parts})
    return system, out


def parse_json(text: str | bytes):
    """Parse a provider body; garbage is a 502."""
    try:
        return json.loads(text)
    except (ValueError, TypeError):
        raise ProviderError("The provider answered with a body that is not valid JSON") from None


class Adapter:
    """Base for one wire protocol; subclasses override what differs."""

    name = "base"
    native_n = True
    unsupported: tuple[str, ...] = ()
    stream_format = "sse"  # or "ndjson"

    def check(self, chat) -> None:
        """Refuse (501) parameters this provider cannot honour, never drop them."""
        for param in self.unsupported:
            if param in chat.params:
                raise NotImplementedByProvider(
                    f"Parameter '{param}' is not supported by the {self.name} provider", param=param)

    default_base = ""

    def url(self, base: str, model, stream: bool) -> str:
        raise NotImplementedError

    def headers(self, api_key: str | None) -> dict:
        return {"Content-Type": "application/json"}

    def request(self, chat) -> dict:
        raise NotImplementedError

    def response(self, payload: dict, chat) -> Completion:
        raise NotImplementedError

    def stream_events(self, lines: Iterable[bytes], state: StreamState) -> Iterator[Delta]:
        raise NotImplementedError

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
