"""Catalogue rows: validation (shared by `make seed-models` and the admin API) and upsert."""
from __future__ import annotations

import re
import tomllib

import datetime as dt

from core import prices
from providers import ADAPTERS
from service.money.billing import to_micro, write_tx
from service.pipeline import deployments as routes
from service.store.db import AIModel, ModelPrice, utcnow
from core.errors import InvalidRequest

APIS = tuple(ADAPTERS)  # one per wire protocol the providers package implements
ENV_NAME = re.compile(r"^[A-Z][A-Z0-9_]*_API_KEY$")  # settings read provider keys from *_API_KEY
PRICES = ("cost_per_1k_tokens", *prices.COLUMNS.values(), "cost_per_1k_cache_hit_tokens")
FIELDS = {"id", "name", "provider", "api", "upstream_model", "base_url", "api_key_env", *PRICES,
          "max_output_tokens", "rpm", "aliases", "enabled", "fallbacks", "connect_timeout",
          "read_timeout", "image_tokens", "kind", "cache_ttl", "cache_scope", "deployments",
          "routing"}
KINDS = ("chat", "embedding")
CACHE_SCOPES = ("account", "global")


class RowError(InvalidRequest):
    """A catalogue row that cannot be stored; the message names the row and the field."""


def _fail(where: str, field: str, message: str):
    raise RowError(f"{where}: {field} {message}", param=field)


INT_MAX = 2 ** 31 - 1  # integer columns are 32-bit on PostgreSQL
PRICE_MAX = 10 ** 6 * 1_000_000  # micro-credits per 1k tokens


def _int(raw: dict, where: str, field: str, low: int, default=None):
    value = raw.get(field, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= INT_MAX:
        _fail(where, field, f"must be an integer from {low} to {INT_MAX}")
    return value


def _str(raw: dict, where: str, field: str, default=None):
    value = raw.get(field, default)
    if value is not None and (not isinstance(value, str) or not value.strip()):
        _fail(where, field, "must be a non-empty string")
    return value


def _names(raw: dict, where: str, field: str) -> list:
    value = raw.get(field, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        _fail(where, field, "must be a list of names")
    return value


def _price(raw: dict, where: str, field: str):
    if raw.get(field) is None:
        return None
    try:
        micro = to_micro(raw[field], field)
    except InvalidRequest:
        _fail(where, field, "must be a number of credits with at most 6 decimals")
    if micro < 0:
        _fail(where, field, "must not be negative")
    if micro > PRICE_MAX:
        _fail(where, field, f"must be at most {PRICE_MAX // 1_000_000} credits")
    return micro


def validate(raw: dict, where: str, partial: bool = False) -> dict:
    """One row as column values, or a RowError naming `where` and the field."""
    if not isinstance(raw, dict):
        raise RowError(f"{where}: must be a table of fields")
    unknown = sorted(set(raw) - FIELDS)
    if unknown:
        _fail(where, unknown[0], "is not a catalogue field")
    out = {}
    if not partial or "id" in raw:
        out["id"] = _int(raw, where, "id", 1)
    if not partial or "name" in raw:
        out["name"] = _str(raw, where, "name") or _fail(where, "name", "is required")
    if not partial or "api" in raw:
        if raw.get("api") not in APIS:
            _fail(where, "api", f"must be one of {', '.join(APIS)} (got {raw.get('api')!r})")
        out["api"] = raw["api"]
    for field in ("provider", "upstream_model", "base_url", "api_key_env"):
        if field in raw or not partial:
            out[field] = _str(raw, where, field)
    if out.get("api_key_env") and not ENV_NAME.match(out["api_key_env"]):
        _fail(where, "api_key_env", "must be an environment variable name ending in _API_KEY")
    for field in PRICES:
        if field in raw or not partial:
            out[field] = _price(raw, where, field)
    if not partial and out["cost_per_1k_tokens"] is None:
        out["cost_per_1k_tokens"] = 0
    for field, low in (("max_output_tokens", 1), ("rpm", 1), ("connect_timeout", 1), ("read_timeout", 1),
                       ("image_tokens", 0), ("cache_ttl", 0)):
        if field in raw or not partial:
            out[field] = _int(raw, where, field, low, 4096 if field == "max_output_tokens" else None)
    for field in ("aliases", "fallbacks"):
        if field in raw or not partial:
            out[field] = _names(raw, where, field)
    if "kind" in raw or not partial:
        if raw.get("kind", "chat") not in KINDS:
            _fail(where, "kind", f"must be one of {', '.join(KINDS)}")
        out["kind"] = raw.get("kind", "chat")
    if "cache_scope" in raw or not partial:
        if raw.get("cache_scope", "account") not in CACHE_SCOPES:
            _fail(where, "cache_scope", f"must be one of {', '.join(CACHE_SCOPES)}")
        out["cache_scope"] = raw.get("cache_scope", "account")
    _routing(raw, where, out, partial)
    if "enabled" in raw or not partial:
        if not isinstance(raw.get("enabled", True), bool):
            _fail(where, "enabled", "must be true or false")
        out["enabled"] = raw.get("enabled", True)
    return _defaults(out) if not partial else out


def _routing(raw: dict, where: str, out: dict, partial: bool) -> None:
    """The row's deployments and routing strategy (SPEC §15)."""
    if "deployments" in raw or not partial:
        out["deployments"] = routes.validate(raw.get("deployments"), where,
                                             lambda field, message: _fail(where, field, message),
                                             APIS, ENV_NAME)
    if "routing" in raw or not partial:
        if raw.get("routing") is not None and raw["routing"] not in routes.STRATEGIES:
            _fail(where, "routing", f"must be one of {', '.join(routes.STRATEGIES)}")
        out["routing"] = raw.get("routing")


def _defaults(row: dict) -> dict:
    """Defaults that depend on other fields: provider and upstream model from name and api."""
    row["provider"] = row["provider"] or row["api"]
    if not row["upstream_model"]:
        name = row["name"]
        row["upstream_model"] = name.split(":")[0] if row["api"] == "gemini" else name
    return row


def check_unique(rows: list[dict], where: list[str]) -> None:
    """No two rows share an id, a name or an alias."""
    seen: dict = {}
    for row, place in zip(rows, where):
        for key in [("id", row["id"]), ("name", row["name"])] + [("name", a) for a in row["aliases"]]:
            if key in seen and key[1] is not None:
                raise RowError(f"{place}: duplicate {key[0]} {key[1]!r} (also in {seen[key]})",
                               param=key[0])
            seen[key] = place


def load_file(path: str) -> list[dict]:
    """Every row of a catalogue file, validated; nothing is written here."""
    try:
        with open(path, "rb") as fh:
            doc = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise RowError(f"{path}: {exc}") from None
    raws = doc.get("models", [])
    if not isinstance(raws, list):
        raise RowError(f"{path}: 'models' must be an array of tables ([[models]])")
    places = [f"{path} row {i + 1} ({r.get('name', '?') if isinstance(r, dict) else '?'})"
              for i, r in enumerate(raws)]
    rows = [validate(r, p) for r, p in zip(raws, places)]
    for row, place in zip(rows, places):
        if row["id"] is None:
            _fail(place, "id", "is required in a catalogue file")
    check_unique(rows, places)
    return rows


def upsert(rows: list[dict]) -> tuple[int, int]:
    """Insert or update rows by id, all or nothing; (created, updated)."""
    created = updated = 0
    with write_tx():
        for row in rows:
            clash = AIModel.get_or_none((AIModel.name == row["name"]) & (AIModel.id != row["id"]))
            if clash is not None:
                raise RowError(f"row {row['name']!r}: name already used by model id {clash.id}",
                               param="name")
            old = AIModel.get_or_none(AIModel.id == row["id"])
            values = {**row, "updated": utcnow()}
            if old is not None:
                AIModel.update(values).where(AIModel.id == row["id"]).execute()
                updated += 1
            else:
                AIModel.insert(values).execute()
                created += 1
            record_prices(row["id"], old, prices.resolve(row))
    return created, updated


BEGINNING = dt.datetime(1970, 1, 1)


def record_prices(model_id: int, old, new: dict) -> None:
    """Price history (inside the upsert's transaction): a change takes effect now; calls that
    began earlier keep the prices they began with. A row's first prices hold from the beginning."""
    latest = (ModelPrice.select().where(ModelPrice.model == model_id)
              .order_by(ModelPrice.effective_from.desc(), ModelPrice.id.desc()).first())
    if latest is None and old is not None:
        latest = ModelPrice.create(model=model_id, effective_from=BEGINNING, prices=prices.resolve(old))
    if latest is None:
        ModelPrice.create(model=model_id, effective_from=BEGINNING, prices=new)
    elif latest.prices != new:
        ModelPrice.create(model=model_id, effective_from=utcnow(), prices=new)
