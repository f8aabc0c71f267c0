"""Every error Tollgate answers with (SPEC §8): status, type, code and message, in English or
Chinese. No web framework here: the web layer renders them (service/web/errors.py)."""
from __future__ import annotations

from core.secrets import hide_secrets

# Chinese wording per code; `{}` takes the same argument as the English message.
ZH = {
    "invalid_json": "请求体必须是 JSON 对象",
    "invalid_messages": "messages 必须是非空数组",
    "model_not_found": "不支持的模型: {}",
    "insufficient_credits": "积分余额不足，请充值",
    "key_budget_exceeded": "该 API 密钥本周期的剩余预算不足以支付本次调用",
    "missing_token": "未认证，请提供 token",
    "invalid_token": "token 无效",
    "token_expired": "token 已过期",
    "forbidden": "权限不足",
    "request_too_large": "请求体过大",
    "rate_limit_exceeded": "请求过于频繁，请稍后再试",
    "too_many_sign_ins": "登录失败次数过多，请 {} 秒后再试",
    "upstream_timeout": "模型服务响应超时",
    "generation_failed": "生成响应失败",
    "internal_error": "服务器内部错误",
    "not_found": "接口不存在",
    "method_not_allowed": "不支持的请求方法",
    "ollama_unavailable": "Ollama 服务不可用，请确认 Ollama 正在运行。",
    "database_unavailable": "数据库暂不可用，请稍后重试",
}


ECHO_MAX = 200  # the most of a client's own input an error quotes back (SPEC §18)


def clip(value, most: int = ECHO_MAX) -> str:
    """A client's value as an error quotes it: at most `most` characters, an ellipsis where cut."""
    text = str(value)
    return text if len(text) <= most else text[:most - 1] + "…"


class GatewayError(Exception):
    """Root of every error Tollgate answers with; subclasses fix status/type/code."""

    status = 500
    type = "internal_error"
    code = "internal_error"

    def __init__(self, message: str, param: str | None = None, code: str | None = None,
                 arg: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.message = message
        self.param = None if param is None else clip(param)  # often the name of a field the client sent
        self.arg = None if arg is None else clip(arg)
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
        super().__init__(f"Unsupported model: {clip(name)}", param="model", arg=clip(name))


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
    """What the gateway cannot do on a row at all (its protocol, embeddings on a provider without
    them): the catalogue's limit, not the request's."""
    status, type, code = 501, "not_implemented", "not_implemented"


class UnsupportedParameter(InvalidRequest):
    """A parameter (or value) the chosen row's provider cannot honour: a 400 naming it (SPEC §7:
    a translated row maps each field or answers 400 naming it), with OpenAI's code for it. A
    fallback row that cannot honour it is passed over."""
    code = "unsupported_parameter"


class DatabaseUnavailable(GatewayError):
    status, type, code = 503, "service_unavailable", "database_unavailable"


def scrub(err: GatewayError, secrets) -> GatewayError:
    """Never echo a secret back to a client (HTTP error bodies and in-stream error events alike):
    each of `secrets` (the provider keys) found in the message is replaced, then whatever looks
    like one (an upstream may quote a key, a bearer token or a JWT it was sent)."""
    for secret in secrets:
        if secret and len(secret) >= 8 and secret in err.message:
            err.message = err.message.replace(secret, "[redacted]")
    err.message = hide_secrets(err.message)
    return err
