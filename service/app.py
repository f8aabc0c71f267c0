"""The app factory's body: config -> database -> extensions -> blueprints -> error handlers."""
from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from dataclasses import dataclass, field

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from config import settings
from service.limits.admission import Admission
from service.limits.limit_storage import OneTripRedisStorage
from service.limits.rates import TokenBudget
from service.limits.slots import Slots
from service.metrics import ALERTS
from service.money import alerts, billing
from service.money.journal import Journal
from service.pipeline import idempotency
from service.pipeline.breaker import Breakers
from service.pipeline.deployment_health import Fleet
from service.pipeline.readiness import Reachability
from service.pipeline.upstream import Transport
from service.store import migrations
from service.store.cache import Cache
from service.store.db import CONNECTIONS_BESIDE_POOL, connection_budget, db, give_back, open_database
from service.store.registry import Registry
from service.web.body import no_nul_characters
from service.web.calls import add_rate_headers
from service.web.errors import keep_error_headers, register_error_handlers
from service.web.extensions import cors, jwt, limiter
from service.web.jsonout import ExactJSONProvider

log = logging.getLogger("tollgate")


@dataclass
class Tollgate:
    """Per-process state the views share."""

    cache: Cache
    registry: Registry
    transport: Transport
    budget: TokenBudget
    journal: Journal
    owner: str  # this process, as the owner of the holds its calls take
    slots: Slots
    admission: Admission
    stopping: threading.Event = field(default_factory=threading.Event)  # set: end open streams
    accounts: dict = field(default_factory=dict)  # account name -> Caller (ids never change)
    verified: dict = field(default_factory=dict)  # JWT -> its verified claims
    reach: Reachability = field(default_factory=Reachability)  # upstreams' last TCP probes
    fleet: Fleet | None = None  # the state of every deployment (service/pipeline/deployment_health.py)
    free_charges: object = None  # free cache hits' ledger rows, after the answer (service/money/free_charges.py)


def limit_storage_uri(redis_url: str | None) -> str:
    """Our one-round-trip Redis storage (service/limits/limit_storage.py) for redis:// and rediss://."""
    if not redis_url:
        return "memory://"
    ours = OneTripRedisStorage.STORAGE_SCHEME  # importing it registers these schemes with limits
    scheme = redis_url.split("://", 1)[0]
    return f"tollgate+{redis_url}" if f"tollgate+{scheme}" in ours else redis_url


def _extension_config(conf: dict) -> dict:
    """Each extension's own keys, derived from our settings."""
    algorithm = conf["JWT_ALGORITHM"]
    return {
        "JWT_DECODE_ALGORITHMS": [algorithm],
        "JWT_TOKEN_LOCATION": ["headers"],
        "RATELIMIT_STORAGE_URI": limit_storage_uri(conf["REDIS_URL"]),
        "RATELIMIT_STORAGE_OPTIONS": {"socket_timeout": 0.25, "socket_connect_timeout": 0.25}
        if conf["REDIS_URL"] else {},
        "RATELIMIT_IN_MEMORY_FALLBACK_ENABLED": True,
        "RATELIMIT_HEADERS_ENABLED": True,
        "RATELIMIT_STRATEGY": "moving-window",
        "RATELIMIT_KEY_PREFIX": "tollgate",
        "NEW_ACCOUNT_CREDITS_MICRO": billing.to_micro(conf["NEW_ACCOUNT_CREDITS"], "NEW_ACCOUNT_CREDITS"),
    }


def keep_money(ext: Tollgate, ttl: int) -> None:
    """One maintenance tick: apply journalled settles (the database is back), extend the holds of
    this process's calls in flight, release holds whose process is gone (expired)."""
    ext.slots.renew()
    fleet = getattr(ext, "fleet", None)  # None until create_app has made it
    if fleet is not None:
        fleet.renew()
        fleet.flush()
        fleet.forget_stale()
    ext.journal.replay(billing.apply_journalled)
    billing.extend(ext.owner, ttl)
    idempotency.extend(ext.owner, ttl)
    billing.reap()
    idempotency.reap()


def _start_reaper(app: Flask, interval: float, ttl: int) -> None:
    """Run a maintenance tick now and then every `interval` seconds (a third of the hold TTL at
    most, so a live call's hold never expires) on a daemon thread."""
    ext = app.extensions["tollgate"]
    try:
        keep_money(ext, ttl)
    except billing.DB_ERRORS:
        log.warning("hold maintenance: database unavailable at start; retrying every tick")
        billing.reconnect()
    if interval <= 0:
        return
    tick = min(interval, ttl / 3, app.config["CONCURRENCY_LEASE_SECONDS"] / 3)

    def loop():
        while not stop.wait(tick):
            try:
                with db.connection_context():
                    keep_money(ext, ttl)
            except billing.DB_ERRORS:
                log.warning("hold maintenance: database unavailable; retrying next tick")
            except Exception:  # a failed sweep is retried on the next tick
                log.exception("hold maintenance failed")

    stop = threading.Event()
    app.extensions["tollgate_reaper_stop"] = stop
    threading.Thread(target=loop, name="hold-keeper", daemon=True).start()


def _give_back_connection(exc=None) -> None:
    """A request's connection goes back to the pool when the request ends (a stream's body runs
    later and takes one only to settle)."""
    give_back()


def _warn_of_connection_budget(conf: dict) -> None:
    """A warning at start-up when WORKERS x (DB_POOL_SIZE + 3) exceeds PostgreSQL's
    max_connections: under a burst the pools would take them all and calls fail with 503."""
    budget = connection_budget(conf["WORKERS"], conf["DB_POOL_SIZE"])
    if budget and budget[0] > budget[1]:
        log.warning("PostgreSQL allows %d connections (max_connections) but WORKERS=%d x (DB_POOL_SIZE=%d + %d) "
                    "= %d may be opened by this gateway alone: lower DB_POOL_SIZE or WORKERS, or raise "
                    "max_connections (docs/hostile-traffic.md, sizing)", budget[1], conf["WORKERS"],
                    conf["DB_POOL_SIZE"], CONNECTIONS_BESIDE_POOL, budget[0])


class _Flask(Flask):
    json_provider_class = ExactJSONProvider  # credits beyond a float's 15 digits stay exact

    def ensure_sync(self, func):
        """Every view and hook here (and in the extensions) is a plain function: Flask's check of
        each for a coroutine, ten a request, is skipped."""
        return func


def create_app(overrides: dict | None = None) -> Flask:
    """Build the app; `overrides` replaces settings (tests)."""
    app = _Flask(__name__)
    conf = settings.load()
    conf.update(overrides or {})
    app.config.update(conf)
    app.config.update(_extension_config(conf))
    app.json.sort_keys = False
    app.json.ensure_ascii = False

    db.initialize(open_database(conf["DATABASE_URL"], conf["DB_POOL_SIZE"]))
    migrations.upgrade()
    _warn_of_connection_budget(conf)
    db.close()
    app.teardown_appcontext(_give_back_connection)

    app.after_request(keep_error_headers)  # before the limiter's, so it runs after it
    app.after_request(add_rate_headers)  # a call's rate-limit headers (service/web/calls.py)
    jwt.init_app(app)
    # the API's CORS; never on console pages (their forms and cookies are for this site only)
    cors.init_app(app, resources={r"^/(?!console(/|$)).*": {}}, origins=conf["CORS_ORIGINS"], expose_headers=[
        "X-Request-ID", "X-Cache", "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset", "Retry-After",
        "request-id", "x-should-retry"])  # (the last two: Anthropic's SDK reads them)
    limiter.init_app(app)
    if not conf["REDIS_URL"]:
        log.warning("REDIS_URL is not set: rate limits and caches are per process (in memory)")
    cache = Cache(conf["REDIS_URL"])
    # flask-limiter retries a dead Redis on its own backoff (up to 32 s); our cache notices sooner
    cache.on_recovery.append(lambda: setattr(limiter, "_storage_dead", False))
    owner = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    budget = TokenBudget(conf.get("TOKEN_LIMIT_PER_MINUTE", 0), conf["REDIS_URL"], cache)
    slots = Slots(cache, conf["CONCURRENCY_LEASE_SECONDS"])
    app.extensions["tollgate"] = Tollgate(
        cache, Registry(cache),
        Transport(conf["WAITRESS_THREADS"] * 2, conf["UPSTREAM_RETRIES"], conf["UPSTREAM_BACKOFF"],
                  Breakers(conf["BREAKER_THRESHOLD"], conf["BREAKER_COOLDOWN"]), conf["UPSTREAM_MAX_BYTES"]),
        budget, Journal(conf["DATA_DIR"], owner), owner, slots, Admission(cache, slots, budget))
    ext = app.extensions["tollgate"]
    ext.fleet = Fleet(cache, ext.transport.breakers, conf["CONCURRENCY_LEASE_SECONDS"],
                      conf["DEPLOYMENT_COOLDOWN_SECONDS"], conf["DEPLOYMENT_STATS_SECONDS"])

    from service import cli
    from service.money import free_charges
    from service.pipeline import answer_cache
    from service.web import (
        account, admin, audit, catalog, chat, deployment_admin, embeddings, health, key_admin, logs_api, messages,
        observe, request_log, responses, tracing,
    )

    answer_cache.init_app(app)
    ext.free_charges = free_charges.start(conf)  # a free cache hit's ledger row, written after its answer

    observe.init_app(app)
    request_log.init_app(app)  # after observe's: its hook runs first and names the request id
    tracing.init_app(app)
    app.before_request(no_nul_characters)  # after observe's: the refusal is timed and logged
    for module in (chat, messages, responses, embeddings, catalog, account, admin, deployment_admin, health,
                   observe, logs_api, key_admin, audit):
        app.register_blueprint(module.bp)
    if conf.get("CONSOLE_ENABLED", True):
        from service.web.console.pages import bp as console

        app.register_blueprint(console)
    register_error_handlers(app)
    cli.register(app)
    if conf["TRUSTED_PROXIES"]:
        n = conf["TRUSTED_PROXIES"]
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n, x_host=n)
    _start_reaper(app, conf["HOLD_REAP_INTERVAL_SECONDS"], conf["HOLD_TTL_SECONDS"])
    app.config["LOW_BALANCE_ALERTS_MICRO"] = alerts.threshold_micro(conf)
    deliverer = alerts.Deliverer(conf, ALERTS)
    app.extensions["tollgate_alerts"] = deliverer
    deliverer.start()
    return app
