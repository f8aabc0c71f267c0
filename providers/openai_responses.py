"""OpenAI's Responses API as a provider: OpenAI itself, Azure OpenAI, vLLM and other servers that
speak `POST {base}/responses` (https://platform.openai.com/docs/api-reference/responses).

A row with `api = "openai_responses"` serves /v1/responses by pass-through: the client's body goes
upstream as sent (the model renamed to the upstream name, the row's `max_output_tokens` set as the
cap when the client set none, `previous_response_id` already expanded by the gateway, which keeps
conversations itself), and the answer and every stream event come back whole. Usage is read from
the Response's `usage` (input, cached input, output, reasoning tokens).

Chat Completions and Messages (which runs on the chat call) are translated: messages become
input items (tool calls `function_call`, tool results `function_call_output`), each chat parameter
maps to its Responses field or is a 400 naming it (`stop`, penalties, `seed`, `logit_bias` have
none), `store` is false unless the client asked, and the Response comes back as a chat completion
(`incomplete` for `max_output_tokens` is `length`).
"""
from __future__ import annotations

from typing import Iterable, Iterator

from core.chat import PassThrough
from core.errors import InvalidRequest, ProviderError
from core.usage import from_responses
from providers.openai import OpenAIAdapter
from providers.base import Adapter, Completion, Delta, StreamState, choice, legacy, sse_data, text_of

TERMINAL = ("response.completed", "response.incomplete", "response.failed")
SAME = ("temperature", "top_p", "user", "metadata", "prompt_cache_key", "safety_identifier", "service_tier",
        "parallel_tool_calls", "top_logprobs")
FINISH = {"max_output_tokens": "length", "content_filter": "content_filter"}


class OpenAIResponsesAdapter(Adapter):
    name = "openai_responses"
    default_base = "https://api.openai.com/v1"
    native_n = False  # no `n`: a chat call's choices are repeated calls
    mapped = frozenset({*SAME, "max_tokens", "max_completion_tokens", "n", "tools", "tool_choice", "store",
                        "response_format", "reasoning_effort", "verbosity", "logprobs"})

    def url(self, base: str, model, stream: bool) -> str:
        return f"{base}/responses"

    headers = OpenAIAdapter.headers  # the same key, the same way

    def check(self, chat) -> None:
        """A Responses body passes as sent; a chat call maps each parameter or is a 400."""
        if isinstance(chat, PassThrough):
            return
        chat = legacy(chat)
        super().check(chat)
        _input(chat.messages)  # every message and part has a Responses shape, or a 400 now

    def request(self, chat) -> dict:
        if isinstance(chat, PassThrough):
            body = {**chat.body, "model": chat.model.upstream_model}
            if body.get("max_output_tokens") is None:
                body["max_output_tokens"] = chat.output_cap(chat.model)
        else:
            body = _translated(legacy(chat))
        if chat.stream:
            body["stream"] = True
        return body

    def response(self, payload, chat) -> Completion:
        if not isinstance(payload, dict) or payload.get("object") != "response":
            raise ProviderError("The provider answered with something other than a Response")
        if isinstance(chat, PassThrough):
            return _completion(payload, chat)
        return _chat_completion(payload, chat)

    def passed_events(self, lines: Iterable[bytes], state: StreamState) -> Iterator[Delta]:
        """The provider's events whole (`chunk`), text deltas counted; usage from the last."""
        for data in sse_data(lines):
            if data.strip() == "[DONE]":
                continue
            event = self.stream_event(data)
            kind = event.get("type")
            text = event.get("delta") if kind == "response.output_text.delta" else None
            started = kind == "response.output_item.added" and (event.get("item") or {}).get("type") != "message"
            if kind in TERMINAL:
                _usage(event.get("response") or {}, state)
            yield Delta(0, text if isinstance(text, str) and text else None,
                        [event["item"]] if started else None, None, chunk=event)

    def stream_events(self, lines: Iterable[bytes], state: StreamState) -> Iterator[Delta]:
        """The provider's events as a chat call's deltas."""
        calls: dict[int, int] = {}  # output index -> chat tool call index
        for data in sse_data(lines):
            if data.strip() == "[DONE]":
                continue
            event = self.stream_event(data)
            kind, at = event.get("type"), event.get("output_index", 0)
            if kind == "response.output_text.delta" and event.get("delta"):
                yield Delta(0, event["delta"])
            elif kind == "response.output_item.added" and (event.get("item") or {}).get("type") == "function_call":
                item = event["item"]
                calls[at] = len(calls)
                yield Delta(0, tool_calls=[{"index": calls[at], "id": item.get("call_id"), "type": "function",
                                            "function": {"name": item.get("name"),
                                                         "arguments": item.get("arguments") or ""}}])
            elif kind == "response.function_call_arguments.delta" and at in calls:
                yield Delta(0, tool_calls=[{"index": calls[at], "function": {"arguments": event.get("delta", "")}}])
            elif kind == "response.failed":
                error = (event.get("response") or {}).get("error") or {}
                raise ProviderError(f"The provider failed mid-stream: {error.get('message') or 'response.failed'}")
            elif kind in TERMINAL:
                _usage(event.get("response") or {}, state)
                yield Delta(0, finish_reason=_finish(event.get("response") or {}, bool(calls)))
                return


def _usage(response: dict, state: StreamState) -> None:
    found = response.get("usage")
    if isinstance(found, dict):
        tokens = from_responses(found)
        state.prompt_tokens, state.completion_tokens = tokens.prompt, tokens.completion
        state.detail, state.extra["usage"] = tokens.detail, found
    state.done = True


def _completion(payload: dict, chat) -> Completion:
    found = payload.get("usage")
    if not isinstance(found, dict) or not isinstance(found.get("input_tokens"), int) \
            or not isinstance(found.get("output_tokens"), int):
        text = sum(len(str(item)) for item in payload.get("output") or [])
        return Completion([], chat.prompt_guess, max(1, text // 4), estimated=True, raw=payload)
    tokens = from_responses(found)
    return Completion([], tokens.prompt, tokens.completion, raw=payload, usage=found, detail=tokens.detail)


# -- a chat call on a Responses row ----------------------------------------------------------------

def _content(content, where: str, role: str):
    if content is None or isinstance(content, str):
        return content or ""
    out = []
    for j, part in enumerate(content):
        kind, at = part.get("type"), f"{where}.content[{j}]"
        if kind == "text":
            out.append({"type": "output_text" if role == "assistant" else "input_text", "text": part["text"]})
        elif kind == "refusal" and role == "assistant":
            out.append({"type": "refusal", "refusal": part.get("refusal", "")})
        elif kind == "image_url" and role == "user":
            image = part.get("image_url") if isinstance(part.get("image_url"), dict) else {"url": part.get("image_url")}
            out.append({"type": "input_image", "image_url": image.get("url"), "detail": image.get("detail") or "auto"})
        elif kind == "file" and role == "user" and isinstance(part.get("file"), dict):
            out.append({"type": "input_file", **{k: v for k, v in part["file"].items()
                                                 if k in ("file_data", "file_id", "filename")}})
        else:
            raise InvalidRequest(f"'{at}' ({kind}) has no equivalent on the openai_responses provider", param=at)
    return out


def _input(messages: list[dict]) -> list[dict]:
    """Chat messages as Responses input items."""
    items = []
    for i, m in enumerate(messages):
        where, role = f"messages[{i}]", m["role"]
        if role == "tool":
            items.append({"type": "function_call_output", "call_id": m.get("tool_call_id"),
                          "output": text_of(m.get("content"))})
            continue
        content = _content(m.get("content"), where, role)
        if content or role != "assistant":
            items.append({"type": "message", "role": role, "content": content})
        for call in m.get("tool_calls") or () if role == "assistant" else ():
            fn = call.get("function") or {}
            items.append({"type": "function_call", "call_id": call.get("id"), "name": fn.get("name"),
                          "arguments": fn.get("arguments") or "{}"})
    return items


def _tools(p: dict) -> dict:
    out = {}
    if "tools" in p:
        out["tools"] = []
        for i, t in enumerate(p["tools"]):
            fn = t.get("function") if t.get("type") == "function" else None
            if not isinstance(fn, dict):
                raise InvalidRequest(f"'tools[{i}]' must be a function tool on this provider", param=f"tools[{i}]")
            out["tools"].append({"type": "function", "name": fn.get("name"), "description": fn.get("description"),
                                 "parameters": fn.get("parameters") or {"type": "object", "properties": {}},
                                 "strict": bool(fn.get("strict"))})
    choice_ = p.get("tool_choice")
    if isinstance(choice_, dict):
        out["tool_choice"] = {"type": "function", "name": (choice_.get("function") or {}).get("name")}
    elif choice_ is not None:
        out["tool_choice"] = choice_
    return out


def _text(p: dict) -> dict:
    fmt, text = p.get("response_format") or {}, {}
    if fmt.get("type") == "json_object":
        text["format"] = {"type": "json_object"}
    elif fmt.get("type") == "json_schema":
        schema = fmt.get("json_schema") or {}
        text["format"] = {"type": "json_schema", **{k: schema[k] for k in ("name", "schema", "strict", "description")
                                                   if k in schema}}
    if "verbosity" in p:
        text["verbosity"] = p["verbosity"]
    return {"text": text} if text else {}


def _translated(chat) -> dict:
    p = chat.params
    body = {"model": chat.model.upstream_model, "input": _input(chat.messages),
            "max_output_tokens": chat.output_cap(chat.model), "store": bool(p.get("store", False)),
            **{k: p[k] for k in SAME if k in p}, **_tools(p), **_text(p)}
    if "reasoning_effort" in p:
        body["reasoning"] = {"effort": p["reasoning_effort"]}
    if p.get("logprobs"):
        body["include"] = ["message.output_text.logprobs"]
    return body


def _finish(response: dict, called: bool) -> str:
    if response.get("status") == "incomplete":
        return FINISH.get((response.get("incomplete_details") or {}).get("reason"), "length")
    return "tool_calls" if called else "stop"


def _chat_completion(payload: dict, chat) -> Completion:
    text, calls, refusal, logprobs = [], [], None, []
    for item in payload.get("output") or ():
        if item.get("type") == "message":
            for part in item.get("content") or ():
                if part.get("type") == "output_text":
                    text.append(part.get("text") or "")
                    logprobs.extend(part.get("logprobs") or [])
                elif part.get("type") == "refusal":
                    refusal = part.get("refusal")
        elif item.get("type") == "function_call":
            calls.append({"id": item.get("call_id"), "type": "function",
                          "function": {"name": item.get("name"), "arguments": item.get("arguments") or ""}})
    made = choice(0, "".join(text) if text or not calls else None, _finish(payload, bool(calls)), calls or None)
    made["message"]["refusal"] = refusal
    if chat.params.get("logprobs"):
        made["logprobs"] = {"content": logprobs, "refusal": None}
    done = _completion(payload, chat)
    return Completion([made], done.prompt_tokens, done.completion_tokens, done.estimated, detail=done.detail)
