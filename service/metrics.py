"""The Prometheus metrics the pipeline and money code count (no Flask; GET /metrics is
service/web/observe.py)."""
from __future__ import annotations

from prometheus_client import Counter, Histogram

BUCKETS = (.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120)
REQUESTS = Counter("tollgate_requests_total", "HTTP requests", ["endpoint", "model", "status"])
LATENCY = Histogram("tollgate_request_seconds", "Request latency (to the last byte)", ["endpoint"],
                    buckets=BUCKETS)
UPSTREAM = Histogram("tollgate_upstream_seconds", "Upstream latency (to the answer or the stream's "
                     "first byte)", ["model"], buckets=BUCKETS)
TTFT = Histogram("tollgate_time_to_first_token_seconds", "Time to the first streamed token", ["model"],
                 buckets=BUCKETS)
TOKENS = Counter("tollgate_tokens_total", "Tokens billed", ["model", "kind"])
CHARGED = Counter("tollgate_credits_charged_micro_total", "Micro-credits charged", ["model"])
OVERRUNS = Counter("tollgate_overrun_micro_total", "Micro-credits a provider reported beyond a call's "
                   "hold, absorbed by the gateway", ["model"])
ALERTS = Counter("tollgate_alerts_total", "Low-balance alert deliveries", ["outcome"])
REFUSED = Counter("tollgate_rate_limit_refusals_total", "Calls refused by a rate limit", ["endpoint"])
CACHE_HITS = Counter("tollgate_cache_hits_total", "Calls answered from the response cache", ["model"])
CACHE_MISSES = Counter("tollgate_cache_misses_total", "Calls on a cached row the cache could not answer",
                       ["model"])
CACHE_SAVED = Counter("tollgate_cache_saved_micro_total", "Micro-credits cache hits saved their callers "
                      "(the original's price at the row's prices, less the hit's)", ["model"])
