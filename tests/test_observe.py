"""Logs, metrics and the OpenAPI document."""
from __future__ import annotations

import json
import logging

from prometheus_client.parser import text_string_to_metric_families

from service.store.db import LedgerEntry
from tests.conftest import auth, token
from tests.fakes import openai as fake_openai

MSGS = [{"role": "user", "content": "a secret prompt"}]


def samples(client) -> dict:
    r = client.get("/metrics")
    assert r.status_code == 200 and r.mimetype == "text/plain"
    out = {}
    for family in text_string_to_metric_families(r.get_data(as_text=True)):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(snapshot: dict, name: str, **labels) -> float:
    return sum(v for (n, ls), v in snapshot.items()
               if n == name and all(dict(ls).get(k) == val for k, val in labels.items()))


def test_metrics_parse_and_match_the_ledger(client, add_model, upstream, topup):
    add_model(id=1, name="obs", api="openai", base_url=upstream.url_for("/v1"), cost_per_1k_tokens="1")
    topup("alice", 10)
    before = samples(client)
    upstream.expect_ordered_request("/v1/chat/completions").respond_with_json(fake_openai.completion("a", 10, 5))
    upstream.expect_ordered_request("/v1/chat/completions").respond_with_json(fake_openai.completion("b", 7, 3))
    upstream.expect_ordered_request("/v1/chat/completions").respond_with_json({"error": {"message": "x"}}, status=400)
    for _ in range(3):
        client.post("/api/v1/chat/completions", json={"model": "obs", "messages": MSGS}, headers=auth())
    after = samples(client)
    charged = -sum(e.delta for e in LedgerEntry.select().where(LedgerEntry.kind == "charge"))
    assert total(after, "tollgate_credits_charged_micro_total", model="obs") - \
        total(before, "tollgate_credits_charged_micro_total", model="obs") == charged == 25_000
    assert total(after, "tollgate_tokens_total", model="obs", kind="prompt") - \
        total(before, "tollgate_tokens_total", model="obs", kind="prompt") == 17
    assert total(after, "tollgate_requests_total", model="obs", status="200") - \
        total(before, "tollgate_requests_total", model="obs", status="200") == 2
    assert total(after, "tollgate_requests_total", model="obs", status="400") - \
        total(before, "tollgate_requests_total", model="obs", status="400") == 1
    assert total(after, "tollgate_holds_outstanding") == 0
    assert total(after, "tollgate_upstream_seconds_count", model="obs") > 0


def test_one_json_log_line_per_request_without_secrets(client, add_model, upstream, topup, caplog):
    add_model(id=1, name="obs", api="openai", base_url=upstream.url_for("/v1"), cost_per_1k_tokens="1")
    topup("alice", 10)
    upstream.expect_request("/v1/chat/completions").respond_with_json(fake_openai.completion("a", 10, 5))
    jwt = token()
    with caplog.at_level(logging.INFO, logger="tollgate.access"):
        r = client.post("/api/v1/chat/completions", json={"model": "obs", "messages": MSGS},
                        headers={"Authorization": f"Bearer {jwt}", "X-Request-ID": "client-42"})
    assert r.headers["X-Request-ID"] == "client-42"
    lines = [json.loads(rec.getMessage()) for rec in caplog.records if rec.name == "tollgate.access"]
    assert len(lines) == 1
    line = lines[0]
    assert line["request_id"] == r.json["id"] and line["client_request_id"] == "client-42"
    assert (line["account"], line["model"], line["status"]) == ("alice", "obs", 200)
    assert (line["prompt_tokens"], line["completion_tokens"], line["cost"]) == (10, 5, 0.015)
    assert line["latency_ms"] > 0 and line["upstream_ms"] > 0
    text = caplog.text
    assert "secret prompt" not in text and jwt not in text


def test_request_id_generated_when_absent(client):
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").headers["X-Request-ID"].startswith("req-")


def test_openapi_document_covers_every_route(app, client):
    doc = client.get("/openapi.json").json
    assert doc["openapi"].startswith("3.1")
    documented = {(m.upper(), path) for path, ops in doc["paths"].items() for m in ops}
    served = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint in ("static", "favicon") or rule.endpoint.startswith("console."):  # not the API
            continue
        path = rule.rule.replace("<path:name>", "{name}").replace("<int:model_id>", "{model_id}") \
            .replace("<int:key_id>", "{key_id}").replace("<name>", "{name}").replace("<response_id>", "{response_id}") \
            .replace("<request_id>", "{request_id}")
        served |= {(m, path) for m in rule.methods - {"HEAD", "OPTIONS"}}
    assert documented == served


def test_waitress_queue_warnings_are_summarised_once_a_minute():
    from service.server.server import QueueDepthSummary

    now = [1000.0]
    logger = logging.getLogger("tests.waitress.queue")
    logger.propagate = False
    seen = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logger.addHandler(handler)
    logger.addFilter(QueueDepthSummary(60, clock=lambda: now[0]))
    for depth in (1, 2, 3, 1):
        logger.warning("Task queue depth is %d", depth)
    now[0] += 61
    logger.warning("Task queue depth is %d", 5)
    assert seen == ["Task queue depth is 1", "Task queue depth is 5 (3 more such warnings in the last 60 s)"]
