"""Reading a JSON request body strictly: one place decides what counts as valid JSON input."""
from __future__ import annotations

import json

from flask import request

from service.errors import GatewayError, InvalidRequest


class UnsupportedMediaType(GatewayError):
    status, type, code = 415, "invalid_request_error", "invalid_content_type"


def _no_duplicates(pairs: list) -> dict:
    seen = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"duplicate key {key!r}")
        seen[key] = value
    return seen


def _no_constants(name: str):
    raise ValueError(f"{name} is not valid JSON")


def json_object() -> dict:
    """The body as a JSON object, or 415/400: wrong Content-Type, invalid UTF-8, NaN/Infinity,
    duplicate keys, nesting too deep to parse, or anything but an object."""
    mimetype = request.mimetype
    if mimetype and mimetype != "application/json" and not mimetype.endswith("+json"):
        raise UnsupportedMediaType(f"Content-Type must be application/json, got {mimetype}")
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
    return body
