"""Validate an OpenAI chat request (SPEC §7) into a `ChatRequest`; bad input is a 400 naming the param."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from core.errors import InvalidRequest

MAX_MESSAGES = 2048
ROLES = {"system", "developer", "user", "assistant", "tool", "function"}
RANGES = {"temperature": (0, 2), "top_p": (0, 1),
          "presence_penalty": (-2, 2), "frequency_penalty": (-2, 2)}
INTS = {"max_tokens": (1, 2 ** 31 - 1), "max_completion_tokens": (1, 2 ** 31 - 1), "n": (1, 8),
        "top_logprobs": (0, 20), "seed": (-(2 ** 63), 2 ** 63 - 1), "top_k": (0, 2 ** 31 - 1)}
# what the gateway itself decides; every other field the client sends is a parameter that an
# OpenAI-compatible row receives as sent and a translated row maps or refuses (SPEC §7)
OWN = ("model", "id", "messages", "stream", "stream_options")


@dataclass
class ChatRequest:
    """A validated call: the model row, messages, and every other field the client sent."""

    model: object
    messages: list[dict]
    params: dict = field(default_factory=dict)
    stream: bool = False
    include_usage: bool = False
    request_id: str = ""
    stream_options: dict = field(default_factory=dict)  # the client's own, passed on
    _size: tuple | None = field(default=None, repr=False, compare=False)

    @property
    def n(self) -> int:
        return self.params.get("n", 1)

    def output_cap(self, row) -> int:
        """Completion tokens this call may produce on `row`: the client's cap, else the row's
        `max_output_tokens` (which the adapters then send, so the provider stops there)."""
        return (self.params.get("max_completion_tokens") or self.params.get("max_tokens")
                or row.max_output_tokens)

    def _sized(self) -> tuple[int, int]:
        """(bytes, images): the size of everything that reaches the provider (every message
        field, tool calls and results, names, tools, response format, every other parameter),
        image parts counted apart with their inline data left out; computed once."""
        if self._size is None:
            size = len(json.dumps([self.messages, self.params], ensure_ascii=False).encode())
            images = 0
            for m in self.messages:
                content = m.get("content")
                if not isinstance(content, list):
                    continue
                for part in content:
                    if isinstance(part, dict) and part.get("type") in IMAGE_PARTS:
                        images += 1
                        size -= len(_image_url(part).encode())
            self._size = (max(size, 0), images)
        return self._size

    def prompt_bound(self, image_tokens: int) -> int:
        """An upper bound on prompt tokens for holds: a token is at least a byte, and each
        image costs at most `image_tokens` (the row's allowance)."""
        size, images = self._sized()
        return size + 4 * len(self.messages) + 8 + images * image_tokens

    @property
    def prompt_guess(self) -> int:
        """A fair guess of prompt tokens (4 bytes a token), billed only when a provider gives no count."""
        return -(-self._sized()[0] // 4) + 3 * len(self.messages)


IMAGE_PARTS = ("image_url", "input_image", "image")


def _body_size(body: dict) -> tuple[int, int]:
    """(bytes, images) of a front door's own body: every byte, with each image (a Responses
    `input_image`, an Anthropic `image` block, wherever it sits, a tool result's included)
    counted apart and its inline data left out."""
    size, images = len(json.dumps(body, ensure_ascii=False).encode()), 0
    stack = [body]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            if node.get("type") in IMAGE_PARTS:
                images += 1
                source = node.get("source")
                data = source.get("data") if isinstance(source, dict) else _image_url(node)
                size -= len(data.encode()) if isinstance(data, str) else 0
            stack.extend(v for v in node.values() if isinstance(v, (dict, list)))
    return max(size, 0), images


def _image_url(part: dict) -> str:
    """An image part's URL or inline data (OpenAI's `image_url.url`, or a plain string)."""
    ref = part.get("image_url", part.get("url", ""))
    if isinstance(ref, dict):
        ref = ref.get("url", "")
    return ref if isinstance(ref, str) else ""


def bad(param: str, message: str) -> InvalidRequest:
    return InvalidRequest(message, param=param)


def model_name(body: dict) -> str:
    """A body's `model` as a door reads it: a non-empty string, or a 400 saying which it is not."""
    ref = body.get("model")
    if ref is None or ref == "":
        raise bad("model", "'model' is required")
    if not isinstance(ref, str):
        raise bad("model", f"'model' must be a string (a model's name or id), got {type(ref).__name__}")
    return ref


def _number(body: dict, name: str, low: float, high: float) -> None:
    value = body[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise bad(name, f"'{name}' must be a number")
    if not low <= value <= high:
        raise bad(name, f"'{name}' must be between {low} and {high}, got {value}")


def _integer(body: dict, name: str, low: int, high: int | None) -> None:
    value = body[name]
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad(name, f"'{name}' must be an integer")
    if value < low or (high is not None and value > high):
        limit = f"at least {low}" if high is None else f"between {low} and {high}"
        raise bad(name, f"'{name}' must be {limit}, got {value}")


def _stop(value) -> None:
    if isinstance(value, str):
        return
    if (not isinstance(value, list) or not 1 <= len(value) <= 4
            or not all(isinstance(s, str) for s in value)):
        raise bad("stop", "'stop' must be a string or a list of 1 to 4 strings")


SHAPES = {
    "user": lambda v: isinstance(v, str),
    "logprobs": lambda v: isinstance(v, bool),
    "parallel_tool_calls": lambda v: isinstance(v, bool),
    "response_format": lambda v: isinstance(v, dict)
    and v.get("type") in ("text", "json_object", "json_schema"),
    "tools": lambda v: isinstance(v, list) and all(
        isinstance(t, dict) and isinstance(t.get("type"), str) for t in v),
    "tool_choice": lambda v: v in ("none", "auto", "required") or isinstance(v, dict),
    "logit_bias": lambda v: isinstance(v, dict),
    "functions": lambda v: isinstance(v, list) and all(
        isinstance(f, dict) and isinstance(f.get("name"), str) for f in v),
    "function_call": lambda v: v in ("none", "auto") or (isinstance(v, dict) and isinstance(v.get("name"), str)),
    "reasoning_effort": lambda v: v in ("none", "minimal", "low", "medium", "high", "xhigh"),
    "metadata": lambda v: isinstance(v, dict),
}


def _shapes(body: dict) -> None:
    for name, ok in SHAPES.items():
        if name in body and not ok(body[name]):
            raise bad(name, f"'{name}' has an invalid value")


def _content_ok(content, role: str) -> bool:
    if isinstance(content, str):
        return True
    if content is None:
        return role in ("assistant", "function")  # OpenAI's schema lets these be null
    if isinstance(content, list) and content:
        return all(isinstance(p, dict) and isinstance(p.get("type"), str)
                   and (p["type"] != "text" or isinstance(p.get("text"), str)) for p in content)
    return False


def messages_of(body: dict) -> list[dict]:
    """The messages, or a 400 `invalid_messages`."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("Messages must be a non-empty array", param="messages", code="invalid_messages")
    if len(messages) > MAX_MESSAGES:
        raise InvalidRequest(f"At most {MAX_MESSAGES} messages are accepted, got {len(messages)}",
                             param="messages", code="invalid_messages")
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or m["role"] not in ROLES:
            raise InvalidRequest(f"{where} must be an object with a role of {', '.join(sorted(ROLES))}",
                                 param=where, code="invalid_messages")
        if "content" not in m and m["role"] != "assistant":
            raise InvalidRequest(f"{where} has no content", param=where, code="invalid_messages")
        if not _content_ok(m.get("content"), m["role"]):
            raise InvalidRequest(f"{where}.content must be a string or a non-empty list of parts",
                                 param=f"{where}.content", code="invalid_messages")
        if m["role"] == "function" and not isinstance(m.get("name"), str):
            raise InvalidRequest(f"{where} (role function) needs a name", param=where,
                                 code="invalid_messages")
        if m["role"] == "tool" and not isinstance(m.get("tool_call_id"), str):
            raise InvalidRequest(f"{where} (role tool) needs a tool_call_id", param=where,
                                 code="invalid_messages")
        if m.get("tool_calls") is not None:
            _tool_calls(m["tool_calls"], f"{where}.tool_calls")
    return messages


def _tool_calls(calls, where: str) -> None:
    """An assistant message's tool calls as OpenAI's schema has them (a list of calls, each with an
    id and a function's name and arguments, or a custom tool's name and input), or a 400 naming
    the call: every adapter and upstream reads them."""
    if not isinstance(calls, list):
        raise InvalidRequest(f"{where} must be a list of tool calls", param=where, code="invalid_messages")
    for j, call in enumerate(calls):
        at = f"{where}[{j}]"
        kind = call.get("type", "function") if isinstance(call, dict) else None
        body = call.get(kind) if kind in ("function", "custom") else None
        if not (isinstance(call.get("id") if kind else None, str) and isinstance(body, dict)
                and isinstance(body.get("name"), str)):
            raise InvalidRequest(f"{at} must be an object with a string id, a type (function or custom) "
                                 "and that object with a string name", param=at, code="invalid_messages")
        value = body.get("arguments" if kind == "function" else "input")
        if value is not None and not isinstance(value, (str, dict) if kind == "function" else str):
            field = f"{at}.{kind}.{'arguments' if kind == 'function' else 'input'}"
            raise InvalidRequest(f"{field} must be a string", param=field, code="invalid_messages")


def params_of(body: dict) -> dict:
    """Every field the client sent but those the gateway decides (null means not sent); the
    ones OpenAI defines are checked for range and shape."""
    sent = {k: v for k, v in body.items() if v is not None and k not in OWN}
    for name, (low, high) in RANGES.items():
        if name in sent:
            _number(sent, name, low, high)
    for name, (low, high) in INTS.items():
        if name in sent:
            _integer(sent, name, low, high)
    if "stop" in sent:
        _stop(sent["stop"])
    _shapes(sent)
    return sent


def stream_flags(body: dict, force_stream: bool) -> tuple[bool, bool]:
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise bad("stream", "'stream' must be a boolean")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise bad("stream_options", "'stream_options' must be an object")
    include = (options or {}).get("include_usage", False)
    if not isinstance(include, bool):
        raise bad("stream_options.include_usage", "'stream_options.include_usage' must be a boolean")
    return bool(stream) or force_stream, include


def model_ref(body: dict, default: str):
    """What names the model: `id`, then `model`, then the default (SPEC §7)."""
    ref = body.get("id")
    if ref is not None:
        if isinstance(ref, bool) or not isinstance(ref, (int, str)):
            raise bad("id", "'id' must be an integer model id")
        return ref
    ref = body.get("model")
    if ref is None or ref == "":
        return default
    if not isinstance(ref, (str, int)) or isinstance(ref, bool):
        raise bad("model", "'model' must be a string")
    return ref


@dataclass
class PassThrough(ChatRequest):
    """A call on a row that speaks the front door's own API (`api = "openai_responses"` behind
    /v1/responses, `anthropic` behind /v1/messages): `body` goes upstream as the client sent it
    (with `headers`, the client's protocol headers), `render(event, usage)` turns each
    provider event into the client's bytes (the cost in the last one's usage), `answer(raw, usage)`
    the provider's whole answer into the client's body; `transcript` and `replay` store and replay
    a stream for an idempotent retry."""

    body: dict = field(default_factory=dict)
    headers: dict = field(default_factory=dict)
    cap_field: str = "max_output_tokens"
    render: object = None
    answer: object = None
    transcript: object = None  # () -> what gathers the client's stream back into its answer (idempotency)
    replay: object = None  # (stored answer, include_usage) -> that answer as the client's stream again

    def output_cap(self, row) -> int:
        return self.body.get(self.cap_field) or row.max_output_tokens

    def _sized(self) -> tuple[int, int]:
        """(bytes, images) of the body as it goes upstream, inline images counted apart."""
        if self._size is None:
            self._size = _body_size(self.body)
        return self._size
