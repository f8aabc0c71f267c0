"""Google Gemini, `POST {base}/v1beta/models/{model}:generateContent` and `:streamGenerateContent?alt=sse`.

Follows https://ai.google.dev/api/generate-content: messages become `contents`
(assistant -> `model`, consecutive same-role turns merged), system and developer
messages become `systemInstruction`, sampling goes in `generationConfig`, tools
become `functionDeclarations`, the key travels in the `x-goog-api-key` header
(never the URL). A stream is SSE of whole GenerateContentResponse objects with
no terminator: it is finished when a candidate carries a `finishReason`.
"""
from __future__ import annotations

import json
from typing import Iterable, Iterator

from core.usage import Usage, count
from providers.base import (
    Adapter, Completion, Delta, StreamState, as_function_call, capped, choice, legacy, sse_data, text_of,
    turns,
)
from providers.parts import Part, parts_of, refuse, tool_call
from core.errors import ProviderError, UnsupportedParameter

CONFIG = {"temperature": "temperature", "top_p": "topP", "top_k": "topK", "max_tokens": "maxOutputTokens",
          "max_completion_tokens": "maxOutputTokens", "n": "candidateCount", "seed": "seed",
          "presence_penalty": "presencePenalty", "frequency_penalty": "frequencyPenalty"}
THINKING = {"none": 0, "minimal": 0, "low": 1024, "medium": 8192, "high": 24576, "xhigh": 24576}
FINISH = {"STOP": "stop", "MAX_TOKENS": "length", "SAFETY": "content_filter",
          "RECITATION": "content_filter", "BLOCKLIST": "content_filter",
          "PROHIBITED_CONTENT": "content_filter", "SPII": "content_filter"}
MODES = {"auto": "AUTO", "none": "NONE", "required": "ANY"}


class GeminiAdapter(Adapter):
    name = "gemini"
    unsupported = ("logprobs", "top_logprobs", "logit_bias")
    mapped = frozenset({*CONFIG, "stop", "response_format", "tools", "tool_choice", "parallel_tool_calls",
                        "reasoning_effort"})
    default_base = "https://generativelanguage.googleapis.com"

    def check(self, chat) -> None:
        chat = legacy(chat)
        super().check(chat)
        _contents(chat.messages)  # every part has a Gemini shape, or a 400 now
        if chat.params.get("parallel_tool_calls") is False:
            raise UnsupportedParameter("Parameter 'parallel_tool_calls' = false is not supported "
                                           "by the gemini provider", param="parallel_tool_calls")

    def url(self, base: str, model, stream: bool) -> str:
        name = model.upstream_model.split(":")[0]
        if stream:
            return f"{base}/v1beta/models/{name}:streamGenerateContent?alt=sse"
        return f"{base}/v1beta/models/{name}:generateContent"

    def embed_url(self, base: str, model) -> str:
        return f"{base}/v1beta/models/{model.upstream_model.split(':')[0]}:batchEmbedContents"

    def embed_request(self, req) -> dict:
        name = f"models/{req.model.upstream_model.split(':')[0]}"
        extra = {"outputDimensionality": req.dimensions} if req.dimensions is not None else {}
        return {"requests": [{"model": name, "content": {"parts": [{"text": t}]}, **extra}
                             for t in self._texts(req)]}

    def embed_response(self, payload, req):
        """batchEmbedContents reports no token count: the caller estimates it (4 bytes a token)."""
        items = payload.get("embeddings") if isinstance(payload, dict) else None
        if not isinstance(items, list) or not all(isinstance(e, dict) and isinstance(e.get("values"), list)
                                                  for e in items):
            raise ProviderError("The provider answered without embeddings")
        return [e["values"] for e in items], None

    def headers(self, api_key):
        headers = {"Content-Type": "application/json"}
        if api_key:
            headers["x-goog-api-key"] = api_key
        return headers

    def request(self, chat) -> dict:
        chat = legacy(chat)
        system, contents = _contents(chat.messages)
        body: dict = {"contents": contents}
        if system:
            body["systemInstruction"] = {"parts": [{"text": t} for t in system]}
        body.update(_generation(capped(chat)))
        tools = [t["function"] for t in chat.params.get("tools") or [] if t.get("type") == "function"]
        if tools:
            body["tools"] = [{"functionDeclarations": [
                {k: v for k, v in fn.items() if k in ("name", "description", "parameters")}
                for fn in tools]}]
            body.update(_tool_config(chat.params.get("tool_choice")))
        return body

    def response(self, payload, chat) -> Completion:
        if not isinstance(payload, dict) or not isinstance(payload.get("candidates"), list):
            raise ProviderError("The provider answered without candidates")
        choices = []
        for i, cand in enumerate(payload["candidates"]):
            text, calls = _parts(cand, i)
            finish = "tool_calls" if calls else FINISH.get(cand.get("finishReason"), "stop")
            choices.append(choice(cand.get("index", i), text, finish, calls or None))
        if "functions" in chat.params:
            choices = [as_function_call(c) for c in choices]
        usage = payload.get("usageMetadata") or {}
        if not isinstance(usage.get("promptTokenCount"), int):
            return Completion(choices, chat.prompt_guess, count(usage.get("candidatesTokenCount")),
                              estimated=True)
        tokens = tokens_of(usage)
        return Completion(choices, tokens.prompt, tokens.completion, detail=tokens.detail)

    def stream_events(self, lines: Iterable[bytes], state: StreamState) -> Iterator[Delta]:
        for data in sse_data(lines):
            event = self.stream_event(data)
            usage = event.get("usageMetadata")
            if isinstance(usage, dict):
                tokens = tokens_of(usage)
                state.prompt_tokens = tokens.prompt if isinstance(usage.get("promptTokenCount"), int) else None
                state.completion_tokens = tokens.completion
                state.detail = tokens.detail
            for i, cand in enumerate(event.get("candidates") or []):
                index = cand.get("index", i)
                offset = state.extra.get("calls", 0)
                text, calls = _parts(cand, index, offset)
                if calls:
                    state.extra["calls"] = offset + len(calls)
                if text or calls:
                    yield Delta(index, text or None,
                                [{"index": offset + n, **c} for n, c in enumerate(calls)] or None)
                if cand.get("finishReason"):
                    state.done = True
                    finish = "tool_calls" if state.extra.get("calls") else FINISH.get(
                        cand["finishReason"], "stop")
                    yield Delta(index, finish_reason=finish)


def _contents(messages: list[dict]) -> tuple[list[str], list[dict]]:
    """System texts and Gemini contents, same-role turns merged (Gemini wants alternation)."""
    names = {c["id"]: (c.get("function") or c.get("custom"))["name"]
             for m in messages for c in m.get("tool_calls") or []}
    return turns(messages, "model", lambda m, i: _message_parts(m, i, names), "parts")


def _part(part: Part) -> dict:
    """One OpenAI part as one Gemini part: text, or inline media (images, audio, PDFs)."""
    if part.kind == "text":
        return {"text": part.text}
    if part.url:
        raise refuse(part.where, f"{part.where}: the gemini provider takes media inline only; send "
                                 f"the {part.kind} as a data URL (data:<type>;base64,...)")
    return {"inline_data": {"mime_type": part.mime, "data": part.data}}


def _message_parts(m: dict, index: int, names: dict) -> list[dict]:
    if m["role"] == "tool":
        try:
            result = json.loads(text_of(m.get("content")))
        except ValueError:
            result = text_of(m.get("content"))
        if not isinstance(result, dict):
            result = {"result": result}
        return [{"functionResponse": {"name": names.get(m["tool_call_id"], m.get("name", "")),
                                      "response": result}}]
    parts = [_part(p) for p in parts_of(m, index)]
    for j, call in enumerate(m.get("tool_calls") or []):
        name, arguments = tool_call(call, f"messages[{index}].tool_calls[{j}]")
        parts.append({"functionCall": {"name": name, "args": arguments}})
    return parts or [{"text": ""}]


def _generation(params: dict) -> dict:
    config = {CONFIG[k]: v for k, v in params.items() if k in CONFIG}
    if "reasoning_effort" in params:
        config["thinkingConfig"] = {"thinkingBudget": THINKING[params["reasoning_effort"]]}
    if "stop" in params:
        config["stopSequences"] = params["stop"] if isinstance(params["stop"], list) else [params["stop"]]
    fmt = params.get("response_format") or {}
    if fmt.get("type") in ("json_object", "json_schema"):
        config["responseMimeType"] = "application/json"
        schema = (fmt.get("json_schema") or {}).get("schema")
        if schema:
            config["responseJsonSchema"] = schema
    return {"generationConfig": config} if config else {}


def _tool_config(tool_choice) -> dict:
    if tool_choice is None:
        return {}
    if isinstance(tool_choice, str):
        return {"toolConfig": {"functionCallingConfig": {"mode": MODES[tool_choice]}}}
    name = (tool_choice.get("function") or {}).get("name")
    return {"toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [name]}}}


def _parts(cand: dict, index: int, offset: int = 0) -> tuple[str, list]:
    """A candidate's text and its function calls as OpenAI tool calls (ids numbered from offset)."""
    text, calls = [], []
    for part in (cand.get("content") or {}).get("parts") or []:
        if "text" in part and not part.get("thought"):
            text.append(part["text"])
        elif "functionCall" in part:
            fn = part["functionCall"]
            calls.append({"id": fn.get("id") or f"call_{index}_{offset + len(calls)}", "type": "function",
                          "function": {"name": fn.get("name", ""),
                                       "arguments": json.dumps(fn.get("args") or {})}})
    return "".join(text), calls


def tokens_of(usage: dict) -> Usage:
    """Gemini's usageMetadata in token classes: the prompt includes the cached content
    (`cachedContentTokenCount`) and tool-use prompts; thinking (`thoughtsTokenCount`) is billed as
    output but is not part of `candidatesTokenCount`."""
    thoughts = count(usage.get("thoughtsTokenCount"))
    return Usage(count(usage.get("promptTokenCount")) + count(usage.get("toolUsePromptTokenCount")),
                 count(usage.get("candidatesTokenCount")) + thoughts,
                 cached=count(usage.get("cachedContentTokenCount")), reasoning=thoughts)
