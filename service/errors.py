"""One error body for every failure (SPEC §8); views raise, handlers render."""
from __future__ import annotations

import logging

from flask import current_app, g, jsonify, request
from peewee import InterfaceError, OperationalError
from playhouse.pool import MaxConnectionsExceeded
from werkzeug.exceptions import HTTPException

log = logging.getLogger("tollgate")

# Chinese wording per code; `{}` takes the same argument as the English message.
ZH = {
    "invalid_json": "请求体必须是 JSON 对象",
    "invalid_messages": "messages 必须是非空数组",
    "model_not_found": "不支持的模型: {}",
    "insufficient_credits": "积分余额不足，请充值",
    "missing_token": "未认证，请提供 token",
    "invalid_token": "token 无效",
    "token_expired": "token 已过期",
    "forbidden": "权限不足",
    "request_too_large": "请求体过大",
    "rate_limit_exceeded": "请求过于频繁，请稍后再试",
    "upstream_timeout": "模型服务响应超时",
    "generation_failed": "生成响应失败",
    "internal_error": "服务器内部错误",
    "not_found": "接口不存在",
    "method_not_allowed": "不支持的请求方法",
    "ollama_unavailable": "Ollama 服务不可用，请确认 Ollama 正在运行。",
    "database_unavailable": "数据库暂不可用，请稍后重试",
}


class GatewayError(Exception):
    """Root of every error Tollgate answers with; subclasses fix status/type/code."""

    status = 500
    type = "internal_error"
    code = "internal_error"

    def __init__(self, message: str, param: str | None = None, code: str | None = None,
                 arg: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.arg = arg
        self.headers = headers or {}
        if code:
            self.code = code

    def body(self, lang: str = "en") -> dict:
        """The contract body, in English or Chinese."""
        message = self.message
        if lang == "zh" and self.code in ZH:
            message = ZH[self.code].format(self.arg or "")
        error = {"message": message, "type": self.type, "param": self.param, "code": self.code}
        return {"error": error, "success": False, "message": message, "data": None}


class InvalidRequest(GatewayError):
    status, type, code = 400, "invalid_request_error", "invalid_parameter"


class ModelNotFound(GatewayError):
    status, type, code = 404, "invalid_request_error", "model_not_found"

    def __init__(self, name):
        super().__init__(f"Unsupported model: {name}", param="model", arg=str(name))


class NotFound(GatewayError):
    status, type, code = 404, "invalid_request_error", "not_found"


class AuthenticationFailed(GatewayError):
    status, type, code = 401, "authentication_error", "invalid_token"


class Forbidden(GatewayError):
    status, type, code = 403, "permission_error", "forbidden"


class InsufficientCredits(GatewayError):
    status, type, code = 402, "insufficient_credits", "insufficient_credits"

    def __init__(self):
        super().__init__("Insufficient credits, please top up")


class RateLimited(GatewayError):
    status, type, code = 429, "rate_limit_error", "rate_limit_exceeded"


class ProviderUnavailable(GatewayError):
    status, type, code = 503, "service_unavailable", "provider_unavailable"


class UpstreamTimeout(GatewayError):
    status, type, code = 504, "timeout_error", "upstream_timeout"


class ProviderError(GatewayError):
    status, type, code = 502, "api_error", "generation_failed"


class UpstreamRejected(GatewayError):
    status, type, code = 400, "invalid_request_error", "upstream_invalid_request"


class UpstreamRateLimited(GatewayError):
    status, type, code = 429, "rate_limit_error", "upstream_rate_limited"


class NotImplementedByProvider(GatewayError):
    status, type, code = 501, "not_implemented", "not_implemented"


class DatabaseUnavailable(GatewayError):
    status, type, code = 503, "service_unavailable", "database_unavailable"


def scrub(err: GatewayError, secrets) -> GatewayError:
    """Never echo a provider key back to a client: each of `secrets` found in the message is
    replaced (HTTP error bodies and in-stream error events alike)."""
    for secret in secrets:
        if secret and len(secret) >= 8 and secret in err.message:
            err.message = err.message.replace(secret, "[redacted]")
    return err


def language() -> str:
    """'zh' when the client prefers Chinese, else 'en'."""
    header = request.headers.get("Accept-Language", "") if request else ""
    return "zh" if header.strip().lower().startswith("zh") else "en"


def render(err: GatewayError):
    scrub(err, current_app.config["PROVIDER_KEYS"].values())
    response = jsonify(err.body(language()))
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
    cls, code, message = HTTP_CASES.get(exc.code, (GatewayError, "internal_error", exc.name))
    if exc.code == 429 and exc.description:
        message = f"Rate limit exceeded: {exc.description}"
    err = cls(message, code=code)
    err.status = exc.code or 500
    if exc.code == 405 and exc.valid_methods:
        err.headers["Allow"] = ", ".join(exc.valid_methods)
    return render(err)


def _database_lost(exc: Exception):
    """The database is unreachable (or its link broke): 503, and a fresh connection next time."""
    from service.billing import reconnect

    log.warning("database unavailable on %s %s: %s", request.method, request.path, type(exc).__name__)
    reconnect()
    return render(DatabaseUnavailable("The database is unavailable; retry the call shortly"))


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
    app.register_error_handler(Exception, _unexpected)
