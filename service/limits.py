"""Rate-limit keys and the dynamic limits of SPEC §10 (flask-limiter does the counting)."""
from __future__ import annotations

from flask import current_app, g, request


def limit_key() -> str:
    """The caller: its account when authenticated, else its client address."""
    account = g.get("account")
    if account is not None:
        return f"acct:{account.name}"
    return f"ip:{request.remote_addr or 'unknown'}"


def default_limit() -> str:
    return current_app.config["RATE_LIMIT_DEFAULT"]


def model_key() -> str:
    model = g.get("model")
    return f"{limit_key()}:model:{model.id if model else '-'}"


def model_limit() -> str:
    model = g.get("model")
    return f"{model.rpm}/minute" if model is not None and model.rpm else "1000000/minute"


def no_model_limit() -> bool:
    model = g.get("model")
    return model is None or not model.rpm


def key_key() -> str:
    key = g.get("api_key")
    return f"key:{key.id if key else '-'}"


def key_limit() -> str:
    key = g.get("api_key")
    return f"{key.rpm}/minute" if key is not None and key.rpm else "1000000/minute"


def no_key_limit() -> bool:
    key = g.get("api_key")
    return key is None or not key.rpm
