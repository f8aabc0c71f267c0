"""Fixtures: the app on SQLite and on PostgreSQL, real Redis, tokens, fake upstreams, a live server."""
from __future__ import annotations

import datetime as dt
import os
import threading
import urllib.parse

import jwt as pyjwt
import pytest
import redis
from pytest_httpserver import HTTPServer

from service import create_app
from service.server import eventloop
from service.store.db import SchemaVersion, TABLES, db, is_postgres
from tests.fakes import openai as fake_openai
from tests.fakes.tcp_proxy import TcpProxy

SECRET = "test-secret-key-that-is-long-enough-for-hs256"
PG_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("REDIS_URL_TEST") or os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/15"


def _worker_database(url: str, worker: str) -> str:
    """A PostgreSQL database of this pytest-xdist worker's own (`test_gw1` beside `test`),
    created on first use: workers drop and create tables, so they cannot share one."""
    import psycopg2

    parts = urllib.parse.urlparse(url)
    name = f"{parts.path.lstrip('/')}_{worker}"
    conn = psycopg2.connect(url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if cur.fetchone() is None:
                try:
                    cur.execute(f'CREATE DATABASE "{name}"')
                except psycopg2.errors.DuplicateDatabase:  # another run made it meanwhile
                    pass
    finally:
        conn.close()
    return parts._replace(path=f"/{name}").geturl()


def _worker_redis(url: str, index: int) -> str:
    """A Redis db number of this worker's own, counting down from the base (15, 14, …): the
    fixtures flush their db."""
    parts = urllib.parse.urlparse(url)
    base = int(parts.path.lstrip("/") or 0)
    if index > base:
        raise RuntimeError(f"{index + 1} test workers need Redis dbs below {base}: set REDIS_URL_TEST")
    return parts._replace(path=f"/{base - index}").geturl()


# Under pytest-xdist (`make test` runs the suite on several workers) each worker has its own
# PostgreSQL database and Redis db; a file's tests run on one worker (`--dist loadfile`), so the
# Redis Cluster's tests, which flush it, never run at once.
WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if WORKER:
    PG_URL = _worker_database(PG_URL, WORKER)
    REDIS_URL = _worker_redis(REDIS_URL, int(WORKER.removeprefix("gw")))


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'tollgate.db'}"
        return
    yield PG_URL


def _drop_all():
    postgres = is_postgres(db)
    db.drop_tables(TABLES + [SchemaVersion], safe=True, **({"cascade": True} if postgres else {}))


def settings(tmp_path, db_url, **extra) -> dict:
    conf = {
        "DATA_DIR": str(tmp_path), "DATABASE_URL": db_url, "REDIS_URL": None,
        "JWT_SECRET_KEY": SECRET, "JWT_ALGORITHM": "HS256", "JWT_PUBLIC_KEY": None,
        "AUTH_REQUIRED": True, "RATE_LIMIT_DEFAULT": "10000/minute", "HOLD_REAP_INTERVAL_SECONDS": 0,
        "NEW_ACCOUNT_CREDITS": "0", "DEFAULT_MODEL": "llama2", "PROVIDER_KEYS": {},
        "OLLAMA_HOST": "http://127.0.0.1:9", "UPSTREAM_CONNECT_TIMEOUT": 2,
        "UPSTREAM_READ_TIMEOUT": 10, "UPSTREAM_BACKOFF": 0.01, "BREAKER_THRESHOLD": 0,
    }
    conf.update(extra)
    return conf


@pytest.fixture
def make_app(tmp_path, db_url):
    """Build an app with setting overrides; tables are dropped afterwards."""
    made = []
    if db_url.startswith("postgres"):
        from service.store.db import open_database

        db.initialize(open_database(db_url))
        _drop_all()

    def build(**extra):
        app = create_app(settings(tmp_path, db_url, **extra))
        made.append(app)
        return app

    yield build
    for app in made:  # stop each app's hold keeper before its tables go
        stop = app.extensions.get("tollgate_reaper_stop")
        if stop is not None:
            stop.set()
        app.extensions["tollgate_alerts"].stop.set()
        if "tollgate_log" in app.extensions:  # its last rows written before the tables go
            app.extensions["tollgate_log"].close()
        app.extensions["tollgate"].free_charges.close()
    if made or db_url.startswith("postgres"):
        _drop_all()
        db.close()


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def client(app):
    return app.test_client()


def token(name: str = "alice", admin: bool = False, secret: str = SECRET, expires_in: int = 3600,
          algorithm: str = "HS256", **claims) -> str:
    """A JWT as an outside login system would mint it (PyJWT)."""
    now = dt.datetime.now(dt.timezone.utc)
    body = {"sub": name, "iat": now, "exp": now + dt.timedelta(seconds=expires_in), **claims}
    if admin:
        body["role"] = "admin"
    return pyjwt.encode(body, secret, algorithm=algorithm)


def auth(name: str = "alice", admin: bool = False) -> dict:
    return {"Authorization": f"Bearer {token(name, admin)}"}


@pytest.fixture
def admin_headers():
    return auth("root", admin=True)


@pytest.fixture
def topup(client, admin_headers):
    """Give an account credits through the admin API."""

    def give(name: str, amount) -> dict:
        r = client.post(f"/api/admin/accounts/{name}/credits", json={"amount": amount},
                        headers=admin_headers)
        assert r.status_code == 200, r.json
        return r.json

    return give


@pytest.fixture
def add_model(client, admin_headers):
    """Add a catalogue row through the admin API."""

    def add(**row) -> dict:
        row.setdefault("provider", row.get("api", "openai"))
        r = client.post("/api/admin/models", json=row, headers=admin_headers)
        assert r.status_code == 201, r.json
        return r.json

    return add


@pytest.fixture
def upstream():
    """A fake provider: a real threaded HTTP server on loopback."""
    server = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    server.start()
    yield server
    server.clear()
    server.stop()


@pytest.fixture
def redis_url():
    """The real Redis, a dedicated db number, flushed before and after."""
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    yield REDIS_URL
    client.flushdb()


@pytest.fixture
def redis_proxy(redis_url):
    """A TCP proxy in front of the test Redis: cut it for an outage, count its round trips;
    `redis_proxy.url` reaches the test's Redis database through it."""
    target = urllib.parse.urlparse(redis_url)
    proxy = TcpProxy(target.hostname, target.port or 6379)
    proxy.url = f"redis://127.0.0.1:{proxy.port}{target.path}"
    yield proxy
    proxy.close()


class Live:
    """The app served by waitress on a loopback port, in a thread."""

    def __init__(self, app, server=None, **adj):
        from waitress import create_server

        if server is None:
            server = create_server(app, host="127.0.0.1", port=0, **{"threads": 8, "channel_request_lookahead": 1,
                                                                     **adj})
            eventloop.install(server)  # the gateway's loop, as service.server runs it
        self.server = server  # or one built as service.server builds it (server.make_server)
        self.port = self.server.effective_port
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()

    def close(self):
        """Close every connection and the listener on the loop thread, between two polls (closed
        from here, a descriptor could vanish under the loop's select()), and let the loop end."""
        def stop():
            for channel in list(self.server._map.values()):
                channel.close()

        try:
            self.server.trigger.pull_trigger(stop)
        except OSError:  # the loop's wake-up pipe is gone already: close from here, as waitress does
            self.server.close()
            return
        self.thread.join(10)


@pytest.fixture
def live(app):
    server = Live(app)
    yield server
    server.close()


@pytest.fixture
def live_factory():
    """Serve any app with waitress on a loopback port (closed afterwards)."""
    servers = []

    def start(app):
        servers.append(Live(app))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def store(request, redis_url):
    """Where limits are counted: the real Redis (default), or in process (`memory`: no Redis)."""
    return None if getattr(request, "param", "redis") == "memory" else redis_url


@pytest.fixture
def limited(make_app, store, upstream):
    """An app on the real Redis (or counting in process, see `store`) with models m1 (rpm 2) and m2
    behind a fake OpenAI upstream."""
    def build(**extra):
        app = make_app(REDIS_URL=store, **extra)
        client = app.test_client()
        for row in ({"id": 1, "name": "m1", "rpm": 2}, {"id": 2, "name": "m2"}):
            r = client.post("/api/admin/models", headers=auth("root", True),
                            json={**row, "api": "openai", "base_url": upstream.url_for("/v1")})
            assert r.status_code == 201
        upstream.expect_request("/v1/chat/completions").respond_with_json(fake_openai.completion("ok", 10, 15))
        return app, client
    return build


PROVIDER_KEY = "provider-secret-key-123"
BASES = {"openai": "/v1", "ollama": "/", "gemini": "/", "anthropic": "/"}


@pytest.fixture
def gateway(make_app, upstream):
    """Rows m-openai, m-ollama, m-gemini, m-anthropic (ids 1-4, upstream model `up`, 1 credit per
    1k tokens, cap 64) behind one fake server; alice has 100 credits."""
    app = make_app(PROVIDER_KEYS={"FAKE_API_KEY": PROVIDER_KEY})
    client = app.test_client()
    for i, (api, base) in enumerate(BASES.items()):
        r = client.post("/api/admin/models", headers=auth("root", True), json={
            "id": i + 1, "name": f"m-{api}", "api": api, "upstream_model": "up",
            "base_url": upstream.url_for(base).rstrip("/"), "api_key_env": "FAKE_API_KEY",
            "cost_per_1k_tokens": "1", "max_output_tokens": 64})
        assert r.status_code == 201
    client.post("/api/admin/accounts/alice/credits", json={"amount": 100}, headers=auth("root", True))
    return client


@pytest.fixture
def browser(tmp_path):
    """Debian's headless Chromium driven by Selenium (tests/browser.py), quit afterwards."""
    from tests.browser import chromium

    driver = chromium(tmp_path / "chromium")
    yield driver
    driver.quit()


@pytest.fixture
def outage(db_url, tmp_path):
    """The database made unreachable and brought back (tests/helpers.py's Outage)."""
    from tests.helpers import Outage

    found = Outage(db_url, tmp_path)
    yield found
    found.close()
