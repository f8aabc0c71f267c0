"""The audit rows of console sign-ins (SPEC §17: every console sign-in, succeeded or not): who, by
key or JWT, from which address. Never the credential: a key is named by its id and the prefix
the keys page shows, and only when it is a key the gateway issued; a JWT by the subject it claims."""
from __future__ import annotations

from flask import request

from service.store.db import Account, ApiKey
from service.web import audit
from service.web.auth import key_hash
from service.web.console.signin import subject


def succeeded(name: str, key: ApiKey | None, admin: bool) -> None:
    """`console.sign_in` (in the transaction that opens the session)."""
    detail = {"by": "key", "key_id": key.id, "prefix": key.prefix} if key is not None else {"by": "jwt", "admin": admin}
    audit.record(name, "console.sign_in", f"account:{name}", detail, request.remote_addr)


def failed(credential: str, reason: str) -> None:
    """`console.sign_in_failed`: the actor is the account the credential claimed ("?" when it
    claims none), the detail says how it was refused."""
    name, detail = None, {"by": "jwt", "reason": reason}
    if credential.startswith("sk-"):
        detail["by"] = "key"
        key = (ApiKey.select(ApiKey, Account).join(Account)
               .where(ApiKey.key_hash == key_hash(credential)).first())
        if key is not None:  # revoked or expired: a key we issued, so its prefix is no secret
            name = key.account.name
            detail.update(key_id=key.id, prefix=key.prefix)
    else:
        name = subject(credential)
        if credential.count(".") != 2:  # not even shaped like a JWT
            detail["by"] = "unknown"
    audit.record(name or "?", "console.sign_in_failed", f"account:{name}" if name else None, detail,
                 request.remote_addr)
