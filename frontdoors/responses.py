"""OpenAI's Responses API in (https://platform.openai.com/docs/api-reference/responses/create).

Every field of OpenAI's published `CreateResponse` schema has one rule here (docs/responses-fields.md
lists them per api):

* on a row that speaks the Responses API itself (`api = "openai_responses"`), `native` checks the
  few fields the gateway owns and the body goes upstream as sent (`conversation_items` expands
  `previous_response_id` from the gateway's store);
* on a translated row, `to_chat` maps each field to the Chat Completions body the chat call runs
  on, accepts the ones that cannot change the answer (FREE), or refuses one with a 400 naming it.

The objects and events that go back are built in frontdoors/response_objects.py.
"""
from __future__ import annotations

from frontdoors.common import bad
from frontdoors.response_objects import Heard, Meta, NativeEvents, events, new_id, passed, replay, response

from core.chat import model_name
from core.errors import clip
__all__ = ["Heard", "Meta", "NativeEvents", "events", "new_id", "passed", "replay", "response", "check", "native", "to_chat",
           "items_of", "messages_of", "renamed"]

# accepted on translated rows because they cannot change the answer (docs/responses-fields.md)
FREE = {"metadata", "client_metadata", "prompt_cache_key", "prompt_cache_retention", "prompt_cache_options",
        "safety_identifier", "service_tier", "stream_options", "context_management", "max_tool_calls", "include"}
MAPPED = {"model", "input", "instructions", "tools", "tool_choice", "text", "max_output_tokens", "reasoning",
          "temperature", "top_p", "top_logprobs", "store", "previous_response_id", "stream", "parallel_tool_calls",
          "user", "truncation", "background"}
REFUSED = {"conversation": "the gateway keeps conversations itself: continue one with 'previous_response_id'",
           "prompt": "stored prompt templates live with OpenAI, out of the gateway's reach: send 'instructions' "
                     "and 'input'",
           "moderation": "the gateway runs no moderation model on the answer"}
FIELDS = FREE | MAPPED | set(REFUSED)
# `client_metadata` (sent by Codex CLI) is not in the published schema: bookkeeping, like `metadata`
INCLUDE = {"file_search_call.results", "web_search_call.results", "web_search_call.action.sources",
           "message.input_image.image_url", "computer_call_output.output.image_url",
           "code_interpreter_call.outputs", "reasoning.encrypted_content", "message.output_text.logprobs"}
HOSTED_SEARCH = ("web_search", "web_search_preview", "web_search_2025_08_26", "web_search_preview_2025_03_11")
TIERS = ("auto", "default", "flex", "scale", "priority", "fast")
SEP = "__"  # a namespaced function offered to a chat model as `namespace__name`


def _kind(name: str, value, ok, what: str) -> None:
    if value is not None and not ok(value):
        raise bad(name, f"'{name}' must be {what}")


def _string(v) -> bool:
    return isinstance(v, str)


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check(body: dict, native: bool = False) -> None:
    """What every row checks: known fields (a native row takes any), their types, and the
    refusals that hold on the row."""
    unknown = sorted(set(body) - FIELDS)
    if unknown and not native:
        raise bad(unknown[0], f"'{clip(unknown[0])}' is not supported by this gateway's Responses API")
    model_name(body)
    for name, why in REFUSED.items():
        if body.get(name) is not None and not (native and name == "moderation"):
            raise bad(name, f"'{name}' is not supported: {why}")
    if body.get("background"):
        raise bad("background", "'background': true is not supported: the gateway answers while the client "
                                "waits (send false, or leave it out)")
    _kind("truncation", body.get("truncation"), lambda v: v in ("auto", "disabled"), "auto or disabled")
    for name in ("store", "stream", "parallel_tool_calls", "background"):
        _kind(name, body.get(name), lambda v: isinstance(v, bool), "a boolean")
    for name in ("metadata", "client_metadata", "stream_options", "prompt_cache_options", "reasoning", "text"):
        _kind(name, body.get(name), lambda v: isinstance(v, dict), "an object")
    for name in ("prompt_cache_key", "safety_identifier", "user", "previous_response_id", "prompt_cache_retention"):
        _kind(name, body.get(name), _string, "a string")
    _kind("service_tier", body.get("service_tier"), lambda v: v in TIERS, f"one of {', '.join(TIERS)}")
    _kind("max_tool_calls", body.get("max_tool_calls"), lambda v: _int(v) and v >= 0, "a count")
    _kind("top_logprobs", body.get("top_logprobs"), lambda v: _int(v) and 0 <= v <= 20, "an integer from 0 to 20")
    _kind("max_output_tokens", body.get("max_output_tokens"), lambda v: _int(v) and v >= 1, "a positive integer")
    _kind("context_management", body.get("context_management"), lambda v: isinstance(v, list), "a list")
    include = body.get("include")
    if not native:  # a native row takes the entries its provider knows
        _kind("include", include, lambda v: isinstance(v, list) and all(i in INCLUDE for i in v),
              "a list of: " + ", ".join(sorted(INCLUDE)))


def native(body: dict, history: list[dict], cap: int) -> dict:
    """The body for a row that speaks the Responses API: as sent, `previous_response_id` replaced by
    the conversation the gateway stored, the output cap set (the hold bounds the call)."""
    check(body, native=True)
    out = {k: v for k, v in body.items() if k != "previous_response_id"}
    out["input"] = history + items_of(body.get("input"))
    if out.get("max_output_tokens") is None:
        out["max_output_tokens"] = cap
    return out


# -- input items <-> chat messages --------------------------------------------------------------

def _parts(content, where: str):
    if isinstance(content, str):
        return content
    if not isinstance(content, list) or not content:
        raise bad(where, f"'{where}' must be a string or a list of content parts")
    parts = []
    for i, p in enumerate(content):
        kind = p.get("type") if isinstance(p, dict) else None
        if kind in ("input_text", "output_text", "text", "refusal") and isinstance(p.get("text", p.get("refusal")),
                                                                                    str):
            parts.append({"type": "text", "text": p.get("text", p.get("refusal"))})
        elif kind == "input_image" and isinstance(p.get("image_url"), str):
            image = {"url": p["image_url"]}
            if p.get("detail"):
                image["detail"] = p["detail"]
            parts.append({"type": "image_url", "image_url": image})
        elif kind == "image_url" and isinstance(p.get("image_url"), dict):  # stored before items were kept
            parts.append(p)
        elif kind == "input_file" and isinstance(p.get("file_data"), str):
            parts.append({"type": "file", "file": {k: p[k] for k in ("file_data", "filename") if k in p}})
        else:
            raise bad(f"{where}[{i}]", f"'{where}[{i}]' must be an input_text, input_image (by URL or data URL) "
                                       "or input_file (by file_data) part")
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def _output(output, where: str) -> str:
    """A function call's output as the tool message's text: a string, or text parts joined."""
    if isinstance(output, str):
        return output
    if isinstance(output, list) and all(isinstance(p, dict) and p.get("type") in ("input_text", "output_text")
                                        and isinstance(p.get("text"), str) for p in output):
        return "".join(p["text"] for p in output)
    raise bad(where, f"'{where}' must be a string or a list of input_text parts on this model "
                     "(its provider takes text tool results only)")


def _flat(item: dict) -> str:
    return f"{item['namespace']}{SEP}{item['name']}" if item.get("namespace") else item["name"]


def messages_of(items, where: str = "input") -> list[dict]:
    """Input items as chat messages: messages, function calls (merged into one assistant turn)
    and their outputs (tool messages); reasoning items are another model's own thoughts, kept by
    the client only to send back, and are skipped."""
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    if not isinstance(items, list):
        raise bad(where, f"'{where}' must be a string or a list of items")
    out: list[dict] = []
    for i, item in enumerate(items):
        at = f"{where}[{i}]"
        if not isinstance(item, dict):
            raise bad(at, f"'{at}' must be an object")
        kind = item.get("type", "message")
        if kind == "message":
            if item.get("role") not in ("user", "system", "developer", "assistant"):
                raise bad(at, f"'{at}.role' must be user, system, developer or assistant")
            out.append({"role": item["role"], "content": _parts(item.get("content"), f"{at}.content")})
        elif kind == "function_call":
            if not all(isinstance(item.get(k), str) for k in ("call_id", "name", "arguments")):
                raise bad(at, f"'{at}' needs call_id, name and arguments")
            call = {"id": item["call_id"], "type": "function",
                    "function": {"name": _flat(item), "arguments": item["arguments"]}}
            if out and out[-1]["role"] == "assistant" and "tool_calls" in out[-1]:
                out[-1]["tool_calls"].append(call)
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            if not isinstance(item.get("call_id"), str) or "output" not in item:
                raise bad(at, f"'{at}' needs call_id and output")
            out.append({"role": "tool", "tool_call_id": item["call_id"],
                        "content": _output(item["output"], f"{at}.output")})
        elif kind == "reasoning":
            continue
        else:
            raise bad(at, f"'{at}.type' {clip(repr(kind))} is not supported on this model (its provider runs no such tool)")
    return out


def items_of(value) -> list[dict]:
    """Input (a string, items, or chat messages stored by an older gateway) as Responses items."""
    if value is None:
        return []
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    if not isinstance(value, list):
        raise bad("input", "'input' must be a string or a list of items")
    out = []
    for m in value:
        if not isinstance(m, dict) or "type" in m or m.get("role") not in ("tool", "assistant") or (
                m.get("role") == "assistant" and not m.get("tool_calls")):
            out.append(m if not isinstance(m, dict) or "type" in m else {"type": "message", **m})
        elif m["role"] == "tool":
            out.append({"type": "function_call_output", "call_id": m.get("tool_call_id"), "output": m.get("content")})
        else:
            if m.get("content"):
                out.append({"type": "message", "role": "assistant", "content": m["content"]})
            out.extend({"type": "function_call", "call_id": c.get("id"), "name": c["function"]["name"],
                        "arguments": c["function"].get("arguments") or ""} for c in m["tool_calls"])
    return out


# -- request fields on translated rows ---------------------------------------------------------

def _function(t: dict, where: str, name: str | None = None) -> dict:
    if not isinstance(t.get("name"), str) or not t["name"]:
        raise bad(where, f"'{where}' needs a name")
    fn = {"name": name or t["name"]}
    for key in ("description", "parameters", "strict"):
        if t.get(key) is not None:
            fn[key] = t[key]
    return {"type": "function", "function": fn}


def _tools(body: dict, names: dict) -> list[dict]:
    """Function tools as chat tools, namespaced ones flattened (names maps the flat name back); a
    hosted web search offered (not required) is left out: no provider behind a translated row
    runs one. Any other hosted or custom tool is a 400 naming it."""
    if not isinstance(body["tools"], list):
        raise bad("tools", "'tools' must be a list")
    forced = body.get("tool_choice") if isinstance(body.get("tool_choice"), dict) else {}
    out = []
    for i, t in enumerate(body["tools"]):
        where, kind = f"tools[{i}]", t.get("type") if isinstance(t, dict) else None
        if kind == "function":
            out.append(_function(t, where))
        elif kind in HOSTED_SEARCH:
            if forced.get("type") == kind:
                raise bad("tool_choice", f"'tool_choice' requires {kind}, a hosted tool that no provider behind "
                                         "this model runs")
            continue
        elif kind == "namespace" and isinstance(t.get("name"), str) and isinstance(t.get("tools"), list):
            for j, inner in enumerate(t["tools"]):
                if not isinstance(inner, dict) or inner.get("type") != "function":
                    raise bad(f"{where}.tools[{j}]", f"'{where}.tools[{j}]' must be a function tool on this model")
                flat = f"{t['name']}{SEP}{inner.get('name')}"
                names[flat] = (t["name"], inner.get("name"))
                out.append(_function(inner, f"{where}.tools[{j}]", flat))
        else:
            raise bad(where, f"'{where}' ({kind}) is not available on this model: its provider runs no hosted "
                             "tools and takes function tools only (an optional web search is left out)")
    return out


def _tool_choice(choice, names: dict):
    if choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("name"), str):
        flat = _flat(choice) if isinstance(choice.get("namespace"), str) else choice["name"]
        return {"type": "function", "function": {"name": flat}}
    raise bad("tool_choice", "'tool_choice' must be auto, none, required or a function on this model")


def _format(text: dict) -> dict | None:
    fmt = text.get("format")
    if fmt is None or (isinstance(fmt, dict) and fmt.get("type") == "text"):
        return None
    if not isinstance(fmt, dict):
        raise bad("text.format", "'text.format' must be an object")
    if fmt.get("type") == "json_object":
        return {"type": "json_object"}
    if fmt.get("type") == "json_schema" and isinstance(fmt.get("schema"), dict):
        schema = {"name": fmt.get("name") or "response", "schema": fmt["schema"]}
        for key in ("strict", "description"):
            if fmt.get(key) is not None:
                schema[key] = fmt[key]
        return {"type": "json_schema", "json_schema": schema}
    raise bad("text.format", "'text.format' must be text, json_object or json_schema with a schema")


def _text(chat: dict, text: dict, api: str) -> None:
    unknown = sorted(set(text) - {"format", "verbosity"})
    if unknown:
        raise bad(f"text.{unknown[0]}", f"'text.{clip(unknown[0])}' is not supported by this gateway's Responses API")
    fmt = _format(text)
    if fmt:
        chat["response_format"] = fmt
    verbosity = text.get("verbosity")
    if verbosity is None or verbosity == "medium":
        return
    if api != "openai":
        raise bad("text.verbosity", f"'text.verbosity' {verbosity!r} has no equivalent on the {api} provider "
                                    "(leave it out, or send medium)")
    chat["verbosity"] = verbosity


def _reasoning(chat: dict, reasoning: dict) -> None:
    unknown = sorted(set(reasoning) - {"effort", "summary", "generate_summary"})
    if unknown:
        raise bad(f"reasoning.{unknown[0]}", f"'reasoning.{clip(unknown[0])}' is not supported by this gateway")
    if reasoning.get("effort") is not None:  # summary: none is produced where the provider shows no reasoning
        chat["reasoning_effort"] = reasoning["effort"]


def _logprobs(chat: dict, body: dict) -> None:
    top = body.get("top_logprobs") or 0
    if top or "message.output_text.logprobs" in (body.get("include") or ()):
        chat["logprobs"] = True
        if top:
            chat["top_logprobs"] = top


def to_chat(body: dict, history: list[dict], api: str) -> tuple[dict, list[dict], dict]:
    """(the Chat Completions body, this request's input items, flat tool name -> (namespace, name))
    for a translated row of wire protocol `api`; `history` is the stored conversation as items."""
    check(body)
    if body.get("input") is None and not history:
        raise bad("input", "'input' is required")
    items = items_of(body.get("input"))
    messages = messages_of(history + items)
    if not messages:
        raise bad("input", "'input' must hold at least one message")
    if body.get("instructions") is not None:
        if not isinstance(body["instructions"], str):
            raise bad("instructions", "'instructions' must be a string")
        messages.insert(0, {"role": "system", "content": body["instructions"]})
    chat, names = {"model": body["model"], "messages": messages}, {}
    if body.get("max_output_tokens") is not None:
        chat["max_tokens"] = body["max_output_tokens"]
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            chat[name] = body[name]
    if body.get("user") is not None and api in ("openai", "anthropic"):
        chat["user"] = body["user"]  # elsewhere an end-user id only: it cannot change the answer
    if api == "openai":  # cache routing and abuse ids reach a provider that reads them
        chat.update({k: body[k] for k in ("prompt_cache_key", "safety_identifier") if body.get(k) is not None})
    if body.get("tools"):
        tools = _tools(body, names)
        if tools:
            chat["tools"] = tools
    if body.get("tool_choice") is not None and chat.get("tools"):
        chat["tool_choice"] = _tool_choice(body["tool_choice"], names)
    elif body.get("tool_choice") not in (None, "auto", "none"):
        raise bad("tool_choice", "'tool_choice' requires a tool, and no tool this model can use is offered")
    if body.get("parallel_tool_calls") is False and chat.get("tools"):
        chat["parallel_tool_calls"] = False
    _text(chat, body.get("text") or {}, api)
    _reasoning(chat, body.get("reasoning") or {})
    _logprobs(chat, body)
    if body.get("stream"):
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return chat, items, names


CHAT_NAMES = {"max_tokens": "max_output_tokens", "reasoning_effort": "reasoning.effort", "logprobs": "top_logprobs",
              "response_format": "text.format", "verbosity": "text.verbosity"}


def renamed(err, body: dict | None = None):
    """A chat-call refusal named in the Responses API's terms (`max_tokens` -> `max_output_tokens` …)."""
    param = err.param or ""
    head = param.split("[")[0].split(".")[0]
    if head == "messages":  # the chat messages' positions are not the input's (instructions, history)
        err.param = "input"
    elif head in ("logprobs", "top_logprobs") and not (body or {}).get("top_logprobs"):
        err.param = "include"  # asked for by `include: ["message.output_text.logprobs"]`
        err.message = err.message.replace(f"'{head}'", "'include' message.output_text.logprobs")
    elif head in CHAT_NAMES:
        err.param = CHAT_NAMES[head] + param[len(head):]
        err.message = err.message.replace(f"'{head}'", f"'{CHAT_NAMES[head]}'")
    return err


