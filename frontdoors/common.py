"""What the front doors share: field errors and the walk over a request's tools."""
from __future__ import annotations

from core.errors import InvalidRequest


def bad(param: str, message: str) -> InvalidRequest:
    return InvalidRequest(message, param=param)


def function_tools(tools, read, refusal: str) -> list[dict]:
    """Chat Completions function tools from a front door's list: read(tool) gives (name,
    description, parameters, strict) or None for a tool this gateway cannot offer (a 400 saying
    `refusal`)."""
    if not isinstance(tools, list):
        raise bad("tools", "'tools' must be a list")
    out = []
    for i, t in enumerate(tools):
        found = read(t) if isinstance(t, dict) and isinstance(t.get("name"), str) else None
        if found is None:
            raise bad(f"tools[{i}]", f"'tools[{i}]' must be {refusal}")
        name, description, parameters, strict = found
        fn = {"name": name}
        if parameters is not None:
            fn["parameters"] = parameters
        if description:
            fn["description"] = description
        if strict is not None:
            fn["strict"] = strict
        out.append({"type": "function", "function": fn})
    return out
