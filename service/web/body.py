"""Reading a JSON request body strictly: one place decides what counts as valid JSON input."""
from __future__ import annotations

import json
import re

from flask import request

from core.errors import clip
from service.web.errors import GatewayError, InvalidRequest


class UnsupportedMediaType(GatewayError):
    status, type, code = 415, "invalid_request_error", "invalid_content_type"


def _no_duplicates(pairs: list) -> dict:
    seen = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"duplicate key {clip(repr(key))}")
        seen[key] = value
    return seen


def _no_constants(name: str):
    raise ValueError(f"{name} is not valid JSON")


MAX_DEPTH = 64  # nesting of objects and lists; real requests stay far below it
SURROGATE = re.compile("[\ud800-\udfff]")


def check_tree(body) -> None:
    """400 for nesting deeper than MAX_DEPTH or a string with a lone surrogate (valid JSON,
    but no UTF-8 encoding exists for it): checked before anything is encoded or translated."""
    stack = [(body, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            if not value.isascii() and SURROGATE.search(value):
                raise InvalidRequest("Request body contains an unpaired UTF-16 surrogate (\\ud800-\\udfff)",
                                     code="invalid_json")
            continue
        if isinstance(value, dict):
            children = [*value.keys(), *value.values()]
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > MAX_DEPTH:
            raise InvalidRequest(f"Request body is nested too deeply (at most {MAX_DEPTH} levels)",
                                 code="invalid_json")
        stack.extend((child, depth + 1) for child in children)


def json_object() -> dict:
    """The body as a JSON object, or 415/400: wrong Content-Type or a compressed body, invalid UTF-8, NaN/Infinity,
    duplicate keys, nesting too deep to parse, or anything but an object."""
    mimetype = request.mimetype
    if mimetype and mimetype != "application/json" and not mimetype.endswith("+json"):
        raise UnsupportedMediaType(f"Content-Type must be application/json, got {clip(mimetype)}")
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in ("", "identity"):
        raise UnsupportedMediaType(f"Content-Encoding {clip(encoding)} is not accepted; send the body uncompressed",
                                   code="unsupported_content_encoding")
    raw = request.get_data(cache=True)
    try:
        body = json.loads(raw, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except RecursionError:
        raise InvalidRequest("Request body is nested too deeply", code="invalid_json") from None
    except ValueError as exc:
        detail = str(exc) if "duplicate key" in str(exc) or "not valid JSON" in str(exc) else "invalid JSON"
        raise InvalidRequest(f"Request body must be a JSON object ({detail})", code="invalid_json") from None
    if not isinstance(body, dict):
        raise InvalidRequest("Request body must be a JSON object", code="invalid_json")
    check_tree(body)
    return body


def int_arg(name: str, default: int | None, low: int, high: int) -> int | None:
    """A query parameter as an integer from `low` to `high` (ASCII digits only: int() takes
    others, and some it refuses with a ValueError), `default` when absent, else 400 naming it."""
    raw = request.args.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or not low <= int(raw) <= high:
        raise InvalidRequest(f"'{name}' must be an integer between {low} and {high}", param=name)
    return int(raw)


HEADER_KEYS = ("HTTP_", "CONTENT_TYPE", "CONTENT_LENGTH")  # a request's headers in the WSGI environ


def no_nul_characters() -> None:
    """400 for a NUL character (U+0000) in the path, a query parameter or a header value, before
    any view: no legitimate request carries one, and no stored text may hold one (PostgreSQL
    refuses it, which would otherwise be a 500 wherever the value reaches a query)."""
    environ, where = request.environ, None
    query = environ.get("QUERY_STRING", "")
    if "\x00" in request.path:
        where = "path"
    elif ("%00" in query or "\x00" in query) and any(
            "\x00" in k or "\x00" in v for k, v in request.args.items(multi=True)):
        where = "query"
    elif any("\x00" in v for k, v in environ.items() if k.startswith(HEADER_KEYS) and isinstance(v, str)):
        where = "header"  # (the headers as the server read them: no header object made)
    if where:
        raise InvalidRequest(f"The request's {where} contains a NUL character", code="invalid_request")

