"""What a provider's answer is in OpenAI terms: a completion, a stream's deltas and what a
stream gathers (no I/O, no web framework)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Completion:
    """A provider's answer in OpenAI terms: choices plus token counts; `raw` is an
    OpenAI-compatible provider's whole body (every field it sent goes back to the client) and
    `usage` its usage object (details such as cached and reasoning tokens)."""

    choices: list[dict]
    prompt_tokens: int
    completion_tokens: int
    estimated: bool = False
    raw: dict | None = None
    usage: dict | None = None
    detail: dict = field(default_factory=dict)  # cached, cache-write and reasoning tokens (core/usage.py)


@dataclass
class Delta:
    """One piece of a streamed answer for one choice."""

    index: int = 0
    content: str | None = None
    tool_calls: list | None = None
    finish_reason: str | None = None
    chunk: dict | None = None  # an OpenAI-compatible provider's whole chunk, relayed as it came


@dataclass
class StreamState:
    """What a stream gathers across events: usage, finish, whether it ended properly."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    detail: dict = field(default_factory=dict)  # cached, cache-write and reasoning tokens
    done: bool = False
    extra: dict = field(default_factory=dict)
