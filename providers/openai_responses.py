"""OpenAI's Responses API as a provider: OpenAI itself, Azure OpenAI, vLLM and other servers that
speak `POST {base}/responses` (https://platform.openai.com/docs/api-reference/responses).

A row with `api = "openai_responses"` serves /v1/responses by pass-through: the client's body goes
upstream as sent (the model renamed to the upstream name, the row's `max_output_tokens` set as the
cap when the client set none, `previous_response_id` already expanded by the gateway, which keeps
conversations itself), and the answer and every stream event come back whole. Usage is read from
the Response's `usage` (input, cached input, output, reasoning tokens). Such a row does not serve
Chat Completions or Messages: those calls are 501 naming the door to use.
"""
from __future__ import annotations

from typing import Iterable, Iterator

from core.chat import PassThrough
from core.errors import NotImplementedByProvider, ProviderError
from core.usage import from_responses
from providers.base import Adapter, Completion, Delta, StreamState, sse_data

TERMINAL = ("response.completed", "response.incomplete", "response.failed")


class OpenAIResponsesAdapter(Adapter):
    name = "openai_responses"
    default_base = "https://api.openai.com/v1"

    def url(self, base: str, model, stream: bool) -> str:
        return f"{base}/responses"

    def headers(self, api_key):
        headers = {"Content-Type": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        return headers

    def check(self, chat) -> None:
        """Only the Responses door's own bodies: a chat or Messages call is 501."""
        if not isinstance(chat, PassThrough):
            raise NotImplementedByProvider(
                f"Model {chat.model.name} speaks OpenAI's Responses API only: call it through "
                "POST /v1/responses", param="model")

    def request(self, chat) -> dict:
        body = {**chat.body, "model": chat.model.upstream_model}
        if body.get("max_output_tokens") is None:
            body["max_output_tokens"] = chat.output_cap(chat.model)
        if chat.stream:
            body["stream"] = True
        return body

    def response(self, payload, chat) -> Completion:
        if not isinstance(payload, dict) or payload.get("object") != "response":
            raise ProviderError("The provider answered with something other than a Response")
        return _completion(payload, chat)

    def stream_events(self, lines: Iterable[bytes], state: StreamState) -> Iterator[Delta]:
        for data in sse_data(lines):
            if data.strip() == "[DONE]":
                continue
            event = self.stream_event(data)
            kind = event.get("type")
            text = event.get("delta") if kind == "response.output_text.delta" else None
            started = kind == "response.output_item.added" and (event.get("item") or {}).get("type") != "message"
            if kind in TERMINAL:
                found = (event.get("response") or {}).get("usage")
                if isinstance(found, dict):
                    tokens = from_responses(found)
                    state.prompt_tokens, state.completion_tokens = tokens.prompt, tokens.completion
                    state.detail, state.extra["usage"] = tokens.detail, found
                state.done = True
            yield Delta(0, text if isinstance(text, str) and text else None,
                        [event["item"]] if started else None, None, chunk=event)


def _completion(payload: dict, chat) -> Completion:
    found = payload.get("usage")
    if not isinstance(found, dict) or not isinstance(found.get("input_tokens"), int) \
            or not isinstance(found.get("output_tokens"), int):
        text = sum(len(str(item)) for item in payload.get("output") or [])
        return Completion([], chat.prompt_guess, max(1, text // 4), estimated=True, raw=payload)
    tokens = from_responses(found)
    return Completion([], tokens.prompt, tokens.completion, raw=payload, usage=found, detail=tokens.detail)
