"""A catalogue model's deployments (SPEC §15): their fields, their validation, and the order in
which a call tries them.

A row may list `deployments` (other keys, regions, base URLs or protocols of the same model);
a deployment's unset transport fields are the row's. A row without deployments is served as
before, by the row itself. The order: the best priority first; within a priority, a call
with an affinity key goes where rendezvous hashing by weight sends it, else `routing` decides
(weighted random, or the lowest recent latency in this process; `least_busy` is decided by
service/pipeline/deployment_health.py, which sees the calls in flight of every process).
"""
from __future__ import annotations

import hashlib
import json
import math
import random
import re
from dataclasses import dataclass, field

STRATEGIES = ("weighted", "least_busy", "latency")
# the row's fields a deployment may set for itself (unset: the row's)
TRANSPORT = ("api", "base_url", "upstream_model", "api_key_env", "connect_timeout", "read_timeout")
CAPS = ("rpm", "tpm", "max_concurrent")  # the deployment's own, across every account; never the row's
FIELDS = {"name", "weight", "priority", "enabled", *TRANSPORT, *CAPS}
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
INT_MAX = 2 ** 31 - 1
EXPLORE = 0.05  # `latency`: this share of calls goes by weight, so a slow deployment is measured again


@dataclass
class Deployment:
    """One way to serve a model: its name, choice weights, caps, and the row as it serves it."""

    name: str
    weight: int = 1
    priority: int = 0
    enabled: bool = True
    rpm: int = 0
    tpm: int = 0
    max_concurrent: int = 0
    target: object = None  # the catalogue row seen through this deployment's overrides
    explicit: bool = True  # False: the row itself (a model without deployments)
    over: dict = field(default_factory=dict)


class Target:
    """A catalogue row as one deployment serves it: the deployment's transport fields over the
    row's (name, prices, limits and everything else stay the row's). A loaded row is not
    changed (a reload makes new rows, and their deployments anew), so what is read through the
    view is kept on it: a call reads the row's fields through it some twenty times."""

    def __init__(self, row, over: dict, deployment: str):
        object.__setattr__(self, "_row", row)
        object.__setattr__(self, "deployment", deployment)
        for name, value in over.items():
            object.__setattr__(self, name, value)

    def __getattr__(self, name):  # only for what is not kept yet: the row's, kept from now on
        value = getattr(object.__getattribute__(self, "_row"), name)
        object.__setattr__(self, name, value)
        return value

    def __setattr__(self, name, value):
        raise AttributeError("a deployment's view of a row is read-only")

    @property
    def row(self):
        return object.__getattribute__(self, "_row")


def of(row) -> list[Deployment] | None:
    """The row's deployments (parsed once per loaded row), or None for a row without any."""
    row = getattr(row, "row", row)
    cached = row.__dict__.get("_deployments", False)
    if cached is not False:
        return cached
    raws = getattr(row, "deployments", None) or None
    found = None
    if raws:
        found = []
        for raw in raws:
            over = {k: raw[k] for k in TRANSPORT if raw.get(k) is not None}
            found.append(Deployment(raw["name"], raw.get("weight", 1), raw.get("priority", 0),
                                    raw.get("enabled", True), raw.get("rpm") or 0, raw.get("tpm") or 0,
                                    raw.get("max_concurrent") or 0, Target(row, over, raw["name"]),
                                    True, over))
    row.__dict__["_deployments"] = found
    return found


class Ranked(list):
    """A row's deployments by priority (service/pipeline/deployment_health.py keeps what the
    take script needs of them on it: `take`, and the usual call's offer: `offer`)."""

    take = None
    offer = None
    weighted = True  # the row's routing is `weighted`


def by_priority(row) -> Ranked:
    """The row's deployments by priority (ties in the catalogue's order), once per loaded row: the
    candidates of a call whose deployment the take script draws by weight."""
    row = getattr(row, "row", row)
    found = row.__dict__.get("_ranked")
    if found is None:
        found = row.__dict__["_ranked"] = Ranked(sorted(of(row) or (), key=lambda d: d.priority))
        found.weighted = strategy(row) == "weighted"
    return found


def strategy(row) -> str:
    return getattr(getattr(row, "row", row), "routing", None) or "weighted"


def primary(row):
    """What a call on this row is checked against before anything is held: the first enabled
    deployment of the best priority (the row itself when it has none, or none is enabled)."""
    deps = of(row)
    if not deps:
        return row
    row = getattr(row, "row", row)
    found = row.__dict__.get("_primary")
    if found is None:  # once per loaded row, as its deployments
        enabled = [d for d in deps if d.enabled] or deps
        found = row.__dict__["_primary"] = min(enabled, key=lambda d: d.priority).target
    return found


def _unit(key: str, name: str) -> float:
    """A uniform number in (0, 1) from a key and a deployment's name (the same on every host)."""
    digest = hashlib.blake2b(f"{key}\x00{name}".encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") + 1) / (2 ** 64 + 2)


def order(deps: list[Deployment], routing: str, affinity: str | None, latency=None,
          rng: random.Random | None = None) -> list[Deployment]:
    """The deployments in the order a call tries them: by priority; within one, rendezvous by
    weight for an affinity key, else a weighted random permutation (the first is each one's
    weight over the sum), or the lowest recent latency first (`latency(name)`, None unknown:
    tried first, so it is measured; EXPLORE of the calls go by weight, so that a deployment that
    was slow once is measured again)."""
    rng = rng or random
    if affinity is not None:
        # weighted rendezvous hashing: the highest -w / ln(u) wins, stable for a key while the set
        # of deployments is, and moving only the keys of a deployment that leaves
        score = [-d.weight / math.log(_unit(affinity, d.name)) for d in deps]
    elif routing == "latency" and latency is not None and rng.random() >= EXPLORE:
        score = []
        for d in deps:
            seen = latency(d.name)
            score.append(math.inf if seen is None else -seen)
    else:  # weighted (and the tie order of least_busy): Efraimidis-Spirakis keys u ** (1 / w)
        random_ = rng.random
        score = [random_() ** (1.0 / d.weight) for d in deps]
    ranked = sorted([(d.priority, -score[i], i) for i, d in enumerate(deps)])
    return [deps[i] for _, _, i in ranked]


def affinity_key(chat) -> str | None:
    """What keeps a client's calls on one deployment: `prompt_cache_key`, else `user`, else what a
    front door set (Anthropic `metadata.user_id`, a Responses conversation)."""
    params = chat.params
    for name in ("prompt_cache_key", "user"):
        value = params.get(name)
        if isinstance(value, str) and value:
            return value
    return getattr(chat, "affinity", None)


def conversation_key(history: list) -> str | None:
    """A Responses conversation's affinity key: its first message, the same on every turn."""
    if not history:
        return None
    first = json.dumps(history[0], sort_keys=True, ensure_ascii=False).encode()
    return "conversation:" + hashlib.blake2b(first, digest_size=16).hexdigest()


def anthropic_user(body: dict) -> str | None:
    """An Anthropic Messages request's `metadata.user_id` (its affinity key)."""
    meta = body.get("metadata")
    user = meta.get("user_id") if isinstance(meta, dict) else None
    return user if isinstance(user, str) and user else None


def validate(raws, where: str, fail, apis: tuple, env_name) -> list[dict] | None:
    """A row's `deployments` as stored (each a table of set fields), or fail(field, message)."""
    if raws is None:
        return None
    if not isinstance(raws, list):
        fail("deployments", "must be a list of tables ([[models.deployments]])")
    out, names = [], set()
    for i, raw in enumerate(raws):
        at = f"deployments[{i}]"
        if not isinstance(raw, dict):
            fail(at, "must be a table of fields")
        unknown = sorted(set(raw) - FIELDS)
        if unknown:
            fail(f"{at}.{unknown[0]}", "is not a deployment field")
        name = raw.get("name")
        if not isinstance(name, str) or not NAME.match(name):
            fail(f"{at}.name", "is required: 1 to 64 letters, digits, '.', '_' or '-'")
        if name in names:
            fail(f"{at}.name", f"{name!r} is used twice in this model")
        names.add(name)
        out.append(_one(raw, f"{at}", fail, apis, env_name))
    return out or None


def _one(raw: dict, at: str, fail, apis: tuple, env_name) -> dict:
    row = {"name": raw["name"]}
    if "api" in raw and raw["api"] not in apis:
        fail(f"{at}.api", f"must be one of {', '.join(apis)} (got {raw['api']!r})")
    for key in ("api", "base_url", "upstream_model", "api_key_env"):
        value = raw.get(key)
        if value is not None:
            if not isinstance(value, str) or not value.strip():
                fail(f"{at}.{key}", "must be a non-empty string")
            row[key] = value
    if row.get("api_key_env") and not env_name.match(row["api_key_env"]):
        fail(f"{at}.api_key_env", "must be an environment variable name ending in _API_KEY")
    for key, low in (("weight", 1), ("priority", 0), ("rpm", 1), ("tpm", 1), ("max_concurrent", 1),
                     ("connect_timeout", 1), ("read_timeout", 1)):
        value = raw.get(key)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= INT_MAX:
                fail(f"{at}.{key}", f"must be an integer from {low} to {INT_MAX}")
            row[key] = value
    if "enabled" in raw:
        if not isinstance(raw["enabled"], bool):
            fail(f"{at}.enabled", "must be true or false")
        row["enabled"] = raw["enabled"]
    return row
