"""The app factory's body: config -> database -> extensions -> blueprints -> error handlers."""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from config import settings
from service import billing, migrations
from service.breaker import Breakers
from service.cache import Cache
from service.db import open_database
from service.errors import keep_error_headers, register_error_handlers
from service.extensions import cors, db, jwt, limiter
from service.limit_storage import OneTripRedisStorage
from service.limits import TokenBudget
from service.registry import Registry
from service.upstream import Transport

log = logging.getLogger("tollgate")


@dataclass
class Tollgate:
    """Per-process state the views share."""

    cache: Cache
    registry: Registry
    transport: Transport
    budget: TokenBudget
    stopping: threading.Event = field(default_factory=threading.Event)  # set: end open streams
    accounts: dict = field(default_factory=dict)  # account name -> Caller (ids never change)
    verified: dict = field(default_factory=dict)  # JWT -> its verified claims


def limit_storage_uri(redis_url: str | None) -> str:
    """Our one-round-trip Redis storage (service/limit_storage.py) for redis:// and rediss://."""
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


def _start_reaper(app: Flask, interval: float) -> None:
    """Release expired holds now and every `interval` seconds (daemon thread)."""
    billing.reap()
    if interval <= 0:
        return

    def loop():
        while not stop.wait(interval):
            try:
                with db.connection_context():
                    billing.reap()
            except Exception:  # a failed sweep is retried on the next tick
                log.exception("hold reaper failed")

    stop = threading.Event()
    app.extensions["tollgate_reaper_stop"] = stop
    threading.Thread(target=loop, name="hold-reaper", daemon=True).start()


def create_app(overrides: dict | None = None) -> Flask:
    """Build the app; `overrides` replaces settings (tests)."""
    app = Flask(__name__)
    conf = settings.load()
    conf.setdefault("REAPER_INTERVAL", 60)
    conf.update(overrides or {})
    app.config.update(conf)
    app.config.update(_extension_config(conf))
    app.json.sort_keys = False
    app.json.ensure_ascii = False

    db.initialize(open_database(conf["DATABASE_URL"]))
    migrations.upgrade()

    app.after_request(keep_error_headers)  # before the limiter's, so it runs after it
    jwt.init_app(app)
    cors.init_app(app, origins=conf["CORS_ORIGINS"], expose_headers=[
        "X-Request-ID", "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset", "Retry-After"])
    limiter.init_app(app)
    if not conf["REDIS_URL"]:
        log.warning("REDIS_URL is not set: rate limits and caches are per process (in memory)")
    cache = Cache(conf["REDIS_URL"])
    # flask-limiter retries a dead Redis on its own backoff (up to 32 s); our cache notices sooner
    cache.on_recovery.append(lambda: setattr(limiter, "_storage_dead", False))
    app.extensions["tollgate"] = Tollgate(
        cache, Registry(cache),
        Transport(conf["WAITRESS_THREADS"] * 2, conf["UPSTREAM_RETRIES"], conf["UPSTREAM_BACKOFF"],
                  Breakers(conf["BREAKER_THRESHOLD"], conf["BREAKER_COOLDOWN"])),
        TokenBudget(conf.get("TOKEN_LIMIT_PER_MINUTE", 0), conf["REDIS_URL"], cache))

    from service import account, admin, catalog, chat, cli, health, observe

    observe.init_app(app)
    for module in (chat, catalog, account, admin, health, observe):
        app.register_blueprint(module.bp)
    register_error_handlers(app)
    cli.register(app)
    if conf["TRUSTED_PROXIES"]:
        n = conf["TRUSTED_PROXIES"]
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n, x_host=n)
    _start_reaper(app, conf["REAPER_INTERVAL"])
    return app
