"""Extension objects, created with no app; `create_app` binds them."""
from __future__ import annotations

from flask import g, request
from flask_cors import CORS
from flask_jwt_extended import JWTManager
from flask_limiter import Limiter

from service.limits.rates import account_key

CALL_DOORS = ("chat", "messages", "responses", "embeddings")  # their limits: service/limits/admission.py


def caller_key() -> str:
    """flask-limiter's caller: the account when authenticated, else the client address."""
    account = g.get("account")
    if account is not None:
        return account_key(account.name)
    return f"{{ip:{request.remote_addr or 'unknown'}}}"


jwt = JWTManager()
cors = CORS()
limiter = Limiter(key_func=caller_key, headers_enabled=True)


@limiter.request_filter
def _admitted_elsewhere() -> bool:
    """flask-limiter skips the call doors: the pipeline's admission takes their limits."""
    return request.blueprint in CALL_DOORS
