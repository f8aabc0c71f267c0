"""`make bench` only, never to serve: the gateway with some of its per-call work switched off, to
show what each part costs. BENCH_OFF is a comma list of:

* `limits`  - flask-limiter disabled (no Redis round trip, no X-RateLimit-* headers);
* `redis-limits` - flask-limiter kept, counting in process memory (its own work, no Redis);
* `billing` - no credit hold and no settle (no PostgreSQL round trips, nothing charged);
* `log`     - no access log line.

Everything else is `python -m service.server` as deployed.
"""
from __future__ import annotations

import logging
import os

from service import app as app_factory, billing, server

OFF = set(filter(None, os.environ.get("BENCH_OFF", "").split(",")))
UNKNOWN = OFF - {"limits", "redis-limits", "billing", "log"}
if UNKNOWN:
    raise SystemExit(f"BENCH_OFF: unknown part(s) {sorted(UNKNOWN)}")

if "limits" in OFF:
    from service.extensions import limiter

    build = server.create_app

    def create_app(*args, **kwargs):
        app = build(*args, **kwargs)
        limiter.enabled = False
        return app

    server.create_app = create_app
if "redis-limits" in OFF:
    app_factory.limit_storage_uri = lambda redis_url: "memory://"
if "billing" in OFF:
    billing.hold = lambda *args, **kwargs: None
    billing.settle = lambda *args, **kwargs: True
    billing.release = lambda *args, **kwargs: 0
if "log" in OFF:
    logging.getLogger("tollgate.access").disabled = True

if __name__ == "__main__":
    server.main()
