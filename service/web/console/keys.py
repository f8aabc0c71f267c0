"""What a key made on the console's Keys page may be. From a JWT's session: what the form asks.
From an API key's session: no broader than that key (SPEC §14) — a limit the form leaves blank is
the key's own, one broader than the key's is refused (never silently clamped), and the new key
records its parent, so the parent's revocation, models, rpm and caps bind it too (service/web/auth.py).
A key with a budget (or under one) mints no keys: a budget binds its own key's calls only."""
from __future__ import annotations

import datetime as dt

from service.store.db import ApiKey
from service.web.console import i18n, zh
from service.web.auth import lineage
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


def may_mint(parent: ApiKey | None) -> None:
    """A key's session whose key has a budget (or is under one) mints no keys: a budget binds its
    own key's calls only, and a key minted under it would spend past it."""
    if parent is not None and any(k.budget is not None for k in lineage(parent)):
        raise InvalidRequest(i18n.t("budget_mints_nothing"), param="budget")


def _at_most(field: str, asked: int | None, most: int | None) -> int | None:
    if most is None:
        return asked
    if asked is not None and asked > most:
        shown = field if i18n.lang() == "en" else zh.FIELDS.get(field, field)
        raise InvalidRequest(i18n.t("at_most_parent", shown, most), param=field)
    return asked or most


# Editing a key on its page (service/web/console/key_page.py)

PERIOD_LENGTH = {"day": 0, "week": 1, "month": 2, "total": 3}  # the same amount over a longer period is less


def edit_body(form) -> dict:
    """The key page's form as the JSON API's PATCH body, so `key_admin.fields()` validates it as
    it validates the API's: blank fields are null (no limit), numbers stay as typed when they are
    not whole numbers (and are refused there with the API's message)."""
    body: dict = {"name": (form.get("name") or "").strip() or None}
    body["models"] = [m.strip() for m in (form.get("models") or "").split(",") if m.strip()] or None
    for field in ("rpm", "max_concurrent"):
        text = (form.get(field) or "").strip()
        body[field] = int(text) if text.isascii() and text.isdigit() and len(text) < 12 else text or None
    for field in ("expires_at", "budget", "budget_period"):
        body[field] = (form.get(field) or "").strip() or None
    return body


def edited(changes: dict, session_key: ApiKey | None, key_cap: int) -> dict:
    """What a session may write (SPEC §14): a JWT's session, the changes as asked; a key's session
    (editing its own key or one minted from it), no broader than its own key — blank limits are
    the session key's, broader ones are refused, as for a key minted there (`narrowed`), and a
    budget is at most the session key's over a period at least as long."""
    if session_key is None:
        return changes
    out = narrowed(changes, session_key, key_cap)
    if session_key.budget is not None:
        if changes.get("budget") is None:
            out["budget"], out["budget_period"] = session_key.budget, session_key.budget_period or "total"
        elif changes["budget"] > session_key.budget:
            raise InvalidRequest(i18n.t("budget_over_parent", _credits(session_key.budget)), param="budget")
        own = session_key.budget_period or "total"
        if PERIOD_LENGTH[out.get("budget_period") or "total"] < PERIOD_LENGTH[own]:
            raise InvalidRequest(i18n.t("period_under_parent", i18n.t("period_" + own)), param="budget_period")
    return out


def _credits(micro: int) -> str:
    from service.web.console.views import credits

    return credits(micro)
