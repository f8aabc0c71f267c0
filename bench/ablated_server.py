"""`make bench` only, never to serve: the gateway with some of its per-call work switched off, to
show what each part costs. BENCH_OFF is a comma list of:

* `limits`  - no admission: no rate limits, token budget or caps (no Redis round trip, no
  X-RateLimit-* headers);
* `redis-limits` - the same admission, counted in process memory (its own work, no Redis);
* `billing` - no credit hold and no settle (no PostgreSQL round trips, nothing charged);
* `log`     - no access log line.

Everything else is `python -m service.server` as deployed.
"""
from __future__ import annotations

import logging
import os

from service.limits import admission
from service.money import billing
from service.server import server

OFF = set(filter(None, os.environ.get("BENCH_OFF", "").split(",")))
UNKNOWN = OFF - {"limits", "redis-limits", "billing", "log"}
if UNKNOWN:
    raise SystemExit(f"BENCH_OFF: unknown part(s) {sorted(UNKNOWN)}")

if "limits" in OFF:
    admission.Admission.admit = lambda self, *args, **kwargs: None
if "redis-limits" in OFF:
    admission.Admission._remote = lambda self, *args, **kwargs: None
if "billing" in OFF:
    billing.hold = lambda *args, **kwargs: None
    billing.settle = lambda *args, **kwargs: True
    billing.release = lambda *args, **kwargs: 0
if "log" in OFF:
    logging.getLogger("tollgate.access").disabled = True

if __name__ == "__main__":
    server.main()
