"""The core (what a call is and costs) imports no web framework."""
from __future__ import annotations

import subprocess
import sys

from config.settings import ROOT


def test_core_and_providers_import_no_flask():
    """Types, errors and money math in `core`, the provider adapters and the front doors' translations
    load without Flask, werkzeug or the web layer (`service`)."""
    code = ("import sys, core.usage, core.prices, core.errors, core.types, core.chat, providers, "
            "frontdoors.anthropic; "
            "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('flask', 'werkzeug', 'service')); "
            "print(loaded); sys.exit(1 if loaded else 0)")
    _loads_no_flask(code)


def test_the_pipeline_and_money_import_no_flask():
    """The web layer is the only Flask importer: the relay (hold, call, relay, settle), the
    transport, billing, the journal, idempotency, alerts, the catalogue and the migrations do not."""
    code = ("import sys, service.pipeline.relay, service.pipeline.upstream, service.money.billing, service.money.journal, "
            "service.pipeline.idempotency, service.money.alerts, service.store.registry, service.seed, service.store.migrations; "
            "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('flask', 'werkzeug', 'flask_limiter', "
            "'flask_jwt_extended', 'flask_cors')); print(loaded); sys.exit(1 if loaded else 0)")
    _loads_no_flask(code)


def _loads_no_flask(code: str) -> None:
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_processes_starting_at_once_agree_on_one_generated_jwt_key(tmp_path):
    """data/jwt-secret is made whole or not at all: every starter reads the same key (a second
    pytest worker, or gateway worker, once met a half-made file: FileExistsError)."""
    from concurrent.futures import ThreadPoolExecutor

    from config.settings import _jwt_secret

    with ThreadPoolExecutor(8) as pool:
        keys = set(pool.map(lambda _: _jwt_secret(tmp_path), range(32)))
    assert len(keys) == 1 and (tmp_path / "jwt-secret").read_text() == keys.pop()
    assert oct((tmp_path / "jwt-secret").stat().st_mode & 0o777) == "0o600"
    assert [p.name for p in tmp_path.iterdir()] == ["jwt-secret"]  # no draft left behind


def test_breakers_any_open_follows_each_breakers_state():
    from service.pipeline.breaker import Breakers

    now = [100.0]
    breakers = Breakers(threshold=2, cooldown=30, clock=lambda: now[0])
    keys = ["dep:1:a", "dep:1:b"]
    assert not breakers.any_open(keys)  # never seen
    breakers.failure("dep:1:b")
    assert not breakers.any_open(keys) and breakers.state("dep:1:b") == "closed"
    breakers.failure("dep:1:b")
    assert breakers.any_open(keys) and breakers.state("dep:1:b") == "open"
    assert not breakers.any_open(["dep:1:a"])
    now[0] += 30  # the cool-down passed: half-open lets a probe through, so it is usable again
    assert not breakers.any_open(keys) and breakers.state("dep:1:b") == "half_open"
    breakers.success("dep:1:b")
    assert not breakers.any_open(keys) and breakers.state("dep:1:b") == "closed"
