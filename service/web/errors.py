"""One error body for every failure (SPEC §8); views raise, handlers render."""
from __future__ import annotations

import logging

from flask import current_app, g, jsonify, request
from peewee import InterfaceError, OperationalError
from playhouse.pool import MaxConnectionsExceeded
from werkzeug.exceptions import HTTPException

from core.errors import (  # noqa: F401 - re-exported: the web layer's names for them
    ZH, AuthenticationFailed, DatabaseUnavailable, Forbidden, GatewayError, InsufficientCredits,
    InvalidRequest, ModelNotFound, NotFound, NotImplementedByProvider, ProviderError,
    ProviderUnavailable, RateLimited, UpstreamRateLimited, UpstreamRejected, UpstreamTimeout, scrub,
)
from frontdoors import anthropic

__all__ = ["ZH", "AuthenticationFailed", "DatabaseUnavailable", "Forbidden", "GatewayError", "InsufficientCredits",
           "InvalidRequest", "ModelNotFound", "NotFound", "NotImplementedByProvider", "ProviderError",
           "ProviderUnavailable", "RateLimited", "UpstreamRateLimited", "UpstreamRejected", "UpstreamTimeout", "scrub",
           "language", "render", "keep_error_headers", "register_error_handlers"]
log = logging.getLogger("tollgate")


def language() -> str:
    """'zh' when the client prefers Chinese, else 'en'."""
    header = request.headers.get("Accept-Language", "") if request else ""
    return "zh" if header.strip().lower().startswith("zh") else "en"


def render(err: GatewayError):
    scrub(err, current_app.config["PROVIDER_KEYS"].values())
    shape = g.get("error_body")  # a front door with its own error shape (Anthropic's)
    if shape is None and anthropic.at_door(request.path):  # refused before the door's own hook ran
        rid = anthropic.request_id()
        err.headers.setdefault("request-id", rid)  # (the door's own hook sets it on its answers)

        def shape(e):
            return anthropic.error_body(e, rid)
    response = jsonify(shape(err) if shape else err.body(language()))
    response.status_code = err.status
    for key, value in err.headers.items():
        response.headers[key] = value
    g.error_headers, g.error_code = err.headers, err.code
    g.setdefault("outcome", {})["error"] = err.code
    return response


NO_RETRY = {400, 401, 402, 403, 404, 405, 409, 413, 415, 422, 501}  # a retry cannot fix these


def keep_error_headers(response):
    """Retry headers that mean what they say (SPEC §8). flask-limiter writes Retry-After from our
    limit window on every limited answer; it stays only on our own rate-limit 429. Any other 429
    or 503 carries the Retry-After its error set (a provider's), none otherwise, and no other
    status carries one. Errors a retry cannot fix say `x-should-retry: false`, so SDKs raise at
    once. Registered before the limiter, so it runs after it."""
    own = g.get("error_headers") or {}
    for key, value in own.items():
        response.headers[key] = value
    status = response.status_code
    if status not in (429, 503) or (g.get("error_code") != "rate_limit_exceeded" and "Retry-After" not in own):
        response.headers.pop("Retry-After", None)
    if status in NO_RETRY and "x-should-retry" not in own:
        response.headers["x-should-retry"] = "false"
    return response


HTTP_CASES = {
    400: (InvalidRequest, "invalid_json", "Request body must be a JSON object"),
    404: (NotFound, "not_found", "Not found"),
    405: (InvalidRequest, "method_not_allowed", "Method not allowed"),
    413: (InvalidRequest, "request_too_large", "Request body is larger than the limit"),
    429: (RateLimited, "rate_limit_exceeded", "Rate limit exceeded"),
}


def _http_error(exc: HTTPException):
    other = ((InvalidRequest, exc.name.lower().replace(" ", "_"), exc.name) if 400 <= (exc.code or 500) < 500
             else (GatewayError, "internal_error", exc.name))  # a client's fault, or the server's
    cls, code, message = HTTP_CASES.get(exc.code, other)
    if exc.code == 429 and exc.description:
        message = f"Rate limit exceeded: {exc.description}"
    err = cls(message, code=code)
    err.status = exc.code or 500
    if exc.code == 405 and exc.valid_methods:
        err.headers["Allow"] = ", ".join(exc.valid_methods)
    return render(err)


def _database_lost(exc: Exception):
    """The database is unreachable (or its link broke): 503, and a fresh connection next time."""
    from service.money.billing import reconnect

    log.warning("database unavailable on %s %s: %s", request.method, request.path, type(exc).__name__)
    reconnect()
    return render(DatabaseUnavailable("The database is unavailable; retry the call shortly"))


def _value_error(exc: ValueError):
    """A NUL character that reached PostgreSQL in a value (psycopg2 refuses it): bad input, a 400.
    Any other ValueError is unexpected."""
    if "NUL (0x00)" in str(exc):
        return render(InvalidRequest("A value in the request contains a NUL character", code="invalid_request"))
    return _unexpected(exc)


def _unexpected(exc: Exception):
    log.exception("unhandled error on %s %s", request.method, request.path)
    return render(GatewayError("Internal server error"))


def register_error_handlers(app) -> None:
    """Turn every error into the contract body."""
    app.register_error_handler(GatewayError, render)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(OperationalError, _database_lost)
    app.register_error_handler(InterfaceError, _database_lost)
    app.register_error_handler(MaxConnectionsExceeded, _database_lost)
    app.register_error_handler(ValueError, _value_error)
    app.register_error_handler(Exception, _unexpected)
