"""What a key made on the console's Keys page may be. From a JWT's session: what the form asks.
From an API key's session: no broader than that key (SPEC §14) — a limit the form leaves blank is
the key's own, one broader than the key's is refused (never silently clamped), and the new key
records its parent, so the parent's revocation, models, rpm and caps bind it too (service/web/auth.py)."""
from __future__ import annotations

import datetime as dt

from service.store.db import ApiKey
from service.web.console import i18n, zh
from service.web.errors import InvalidRequest

FIELDS = ("models", "rpm", "max_concurrent", "expires_at")


def parse(form) -> dict:
    """The form's limits: models (comma-separated), rpm and max_concurrent (positive integers),
    expires_at (a date and time, UTC); blank fields are None."""
    out: dict = {"name": (form.get("name") or "").strip()[:255] or None}
    models = [m.strip() for m in (form.get("models") or "").split(",") if m.strip()]
    out["models"] = models or None
    for field in ("rpm", "max_concurrent"):
        text = (form.get(field) or "").strip()
        if text and (not text.isdigit() or not 1 <= int(text) <= 2 ** 31 - 1):
            raise InvalidRequest(f"'{field}' must be a positive integer", param=field)
        out[field] = int(text) if text else None
    text = (form.get("expires_at") or "").strip()
    try:
        out["expires_at"] = dt.datetime.fromisoformat(text).replace(tzinfo=None) if text else None
    except ValueError:
        raise InvalidRequest(i18n.t("bad_expiry"), param="expires_at") from None
    return out


def narrowed(asked: dict, parent: ApiKey | None, key_cap: int) -> dict:
    """The limits of a key minted from `parent`'s session (None: a JWT's, as asked). `key_cap` is
    MAX_CONCURRENT_PER_KEY, the cap of a key without its own (0: none)."""
    if parent is None:
        return asked
    out = dict(asked)
    if parent.models:
        extra = sorted(set(asked["models"] or []) - set(parent.models))
        if extra:
            raise InvalidRequest(i18n.t("models_not_allowed", ", ".join(extra)), param="models")
        out["models"] = asked["models"] or list(parent.models)
    out["rpm"] = _at_most("rpm", asked["rpm"], parent.rpm)
    out["max_concurrent"] = _at_most("max_concurrent", asked["max_concurrent"], parent.max_concurrent or key_cap or None)
    if parent.expires_at is not None:
        if asked["expires_at"] is not None and asked["expires_at"] > parent.expires_at:
            raise InvalidRequest(i18n.t("outlives_parent", f"{parent.expires_at:%Y-%m-%d %H:%M:%S}"),
                                 param="expires_at")
        out["expires_at"] = asked["expires_at"] or parent.expires_at
    return out


def _at_most(field: str, asked: int | None, most: int | None) -> int | None:
    if most is None:
        return asked
    if asked is not None and asked > most:
        shown = field if i18n.lang() == "en" else zh.FIELDS.get(field, field)
        raise InvalidRequest(i18n.t("at_most_parent", shown, most), param=field)
    return asked or most
