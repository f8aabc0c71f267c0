"""Liveness, readiness and the OpenAPI document."""
from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, current_app, g, request

from service.store.db import db
from service.web.auth import authenticate

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    return {"status": "ok"}


def _admin() -> bool:
    """Whether the caller proved an admin role (readiness is public; upstream URLs are not)."""
    if request.headers.get("Authorization") is None:
        return False
    try:
        authenticate()
    except Exception:  # noqa: BLE001 - bad credentials or no database: not proven an admin
        return False
    return bool(g.get("admin"))


def _shown(breaker: str, admin: bool) -> str:
    """A breaker's name as the caller may see it: `base URL|model` for admins, the model otherwise."""
    return breaker if admin else breaker.rsplit("|", 1)[-1]


@bp.get("/readyz")
def readyz():
    """`ok`, `degraded` (Redis down: serving without it) or `down` (no database), with reasons."""
    found = readiness(_admin())
    return found, 200 if found["status"] != "down" else 503


def readiness(admin: bool = True) -> dict:
    """The readiness checks (the console shows them too)."""
    ext = current_app.extensions["tollgate"]
    checks, reasons = {}, []
    try:
        db.execute_sql("SELECT 1")
        checks["database"] = "ok"
    except Exception as exc:  # any driver error means not ready
        checks["database"] = "down"
        reasons.append(f"database: {type(exc).__name__}")
    checks["redis"] = ext.cache.status()
    if checks["redis"] == "down":
        reasons.append("redis: unreachable, using in-process limits and caches")
    try:
        checks["catalogue"] = f"{len(ext.registry.enabled())} enabled models"
    except Exception as exc:  # the catalogue needs the database
        checks["catalogue"] = "down"
        reasons.append(f"catalogue: {type(exc).__name__}")
    tripped = {_shown(k, admin): v for k, v in ext.transport.breakers.states().items() if v != "closed"}
    checks["breakers"] = tripped
    if tripped:
        reasons.append(f"upstreams paused by their circuit breaker: {', '.join(sorted(tripped))}")
    checks["journal"] = ext.journal.depth()
    if checks["journal"]:
        reasons.append(f"journal: {checks['journal']} settles wait for the database")
    status = "down" if checks["database"] == "down" else ("degraded" if reasons else "ok")
    return {"status": status, "checks": checks, "reasons": reasons}


OPENAPI = Path(__file__).with_name("openapi.json")


@bp.get("/openapi.json")
def openapi():
    return Response(OPENAPI.read_bytes(), mimetype="application/json")
