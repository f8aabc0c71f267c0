"""Observability: one JSON log line per request and Prometheus metrics (GET /metrics).

The relay fills `g.outcome` (model, tokens, cost, upstream latency, time to first
token); a streamed response reports when its body closes, so its numbers are final.
"""
from __future__ import annotations

import json
import logging
import re
import time
import uuid

from flask import Blueprint, Response, g, request
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from prometheus_client.core import GaugeMetricFamily

log = logging.getLogger("tollgate.access")
SAFE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
bp = Blueprint("metrics", __name__)

from service.metrics import (  # noqa: F401 - counted here and by the pipeline
    CHARGED, LATENCY, REFUSED, REQUESTS, TOKENS, TTFT, UPSTREAM,
)


class _LiveState:
    """Gauges read at scrape time: breaker states and outstanding holds."""

    def __init__(self, app):
        self.app = app

    def collect(self):
        from service.pipeline.deployment_health import gauges as deployment_gauges
        from service.store.db import Hold, db

        ext = self.app.extensions["tollgate"]
        breakers = GaugeMetricFamily("tollgate_breaker_state", "0 closed, 1 half-open, 2 open",
                                     labels=["upstream"])
        for key, state in ext.transport.breakers.states().items():
            breakers.add_metric([key], {"closed": 0, "half_open": 1, "open": 2}[state])
        yield breakers
        try:
            with db.connection_context():
                yield from deployment_gauges(ext)
        except Exception:  # a scrape must not fail because the database or Redis did
            log.warning("deployment gauges unavailable for this scrape")
        holds = GaugeMetricFamily("tollgate_holds_outstanding", "Credit holds not yet settled")
        try:
            with db.connection_context():
                holds.add_metric([], Hold.select().count())
        except Exception:  # a scrape must not fail because the database did
            holds.add_metric([], float("nan"))
        yield holds


def outcome() -> dict:
    """The current request's record; the relay adds to it."""
    return g.setdefault("outcome", {})


def _start() -> None:
    g.started = time.perf_counter()


_CHILDREN: dict = {}  # (metric, labels) -> its child: labels() checks its labels and takes a lock each time


def _child(metric, *labels):
    found = _CHILDREN.get((metric, labels))
    if found is None:
        found = _CHILDREN.setdefault((metric, labels), metric.labels(*labels))
    return found


def _emit(record: dict, started: float, status: int, endpoint: str, streamed: bool) -> None:
    latency = time.perf_counter() - started
    model = record.get("model", "")
    _child(LATENCY, endpoint).observe(latency)
    _child(REQUESTS, endpoint, model, str(status)).inc()
    if status == 429 and not record.get("upstream_status"):
        _child(REFUSED, endpoint).inc()
    if record.get("upstream_seconds") is not None:
        _child(UPSTREAM, model).observe(record["upstream_seconds"])
    if record.get("ttft_seconds") is not None:
        _child(TTFT, model).observe(record["ttft_seconds"])
    if "prompt_tokens" in record:
        _child(TOKENS, model, "prompt").inc(record["prompt_tokens"])
        _child(TOKENS, model, "completion").inc(record["completion_tokens"])
        _child(CHARGED, model).inc(record.get("cost_micro", 0))
    line = {"ts": round(time.time(), 3), "request_id": record.get("request_id"), "method": record["method"],
            "path": record["path"], "status": status, "account": record.get("account"), "model": model or None,
            "latency_ms": round(latency * 1000, 2), "streamed": streamed,
            **{k: record[k] for k in ("upstream_ms", "ttft_ms", "prompt_tokens", "completion_tokens", "cost",
                                      "estimated", "client_request_id", "error", "deployment") if k in record}}
    log.info(json.dumps(line, ensure_ascii=False), extra={"fields": line})  # JSON either way


def _finish(response):
    if request.endpoint in (None, "metrics.metrics", "health.healthz") or "started" not in g:
        return response
    record = outcome()
    account = g.get("account")
    record.update(method=request.method, path=request.path, account=account.name if account else None)
    client_id = request.headers.get("X-Request-ID", "")
    if SAFE_ID.fullmatch(client_id):
        record["client_request_id"] = client_id
        response.headers["X-Request-ID"] = client_id  # accepted and returned; ours is the body's id
    elif "X-Request-ID" not in response.headers:
        response.headers["X-Request-ID"] = record.get("request_id") or f"req-{uuid.uuid4().hex}"
    args = (record, g.started, response.status_code, request.endpoint, response.is_streamed)
    if response.is_streamed:
        response.call_on_close(lambda: _emit(*args))
    else:
        _emit(*args)
    return response


@bp.get("/metrics")
def metrics():
    return Response(generate_latest(REGISTRY), mimetype=CONTENT_TYPE_LATEST)


def init_app(app) -> None:
    """Time every request, log and count it when its body is done."""
    app.before_request(_start)
    app.after_request(_finish)
    collector = _LiveState(app)
    for old in [c for c in list(REGISTRY._collector_to_names) if isinstance(c, _LiveState)]:
        REGISTRY.unregister(old)  # one live collector per process: the newest app's
    REGISTRY.register(collector)
