"""Spend reports: totals by model and by day, and the ledger as a streamed CSV file whose memory
stays flat at 100 000 rows."""
from __future__ import annotations

import csv
import datetime as dt
import io
import tracemalloc

import pytest

from service.store.db import Account, LedgerEntry, db
from tests.conftest import auth

DAY = dt.datetime(2026, 3, 1, 12, 0)


def _charges(name: str, rows: list[tuple]):
    """(model, days after DAY, prompt, completion, cached, reasoning, micro-credits) per charge."""
    acct = Account.create(name=name, balance=10 ** 12)
    LedgerEntry.insert_many([
        {"account": acct.id, "request_id": f"{name}-{i}", "model": model, "kind": "charge",
         "created": DAY + dt.timedelta(days=day), "prompt_tokens": p, "completion_tokens": c,
         "cached_tokens": cached, "reasoning_tokens": reasoning, "delta": -cost}
        for i, (model, day, p, c, cached, reasoning, cost) in enumerate(rows)]).execute()
    return acct


RANGE = {"from": "2026-03-01", "to": "2026-03-05"}


def test_summary_by_model_and_by_day(client):
    _charges("alice", [("a", 0, 100, 10, 40, 5, 1_500), ("a", 1, 200, 20, 0, 0, 2_500),
                       ("b", 1, 50, 5, 0, 0, 700), ("b", 9, 1, 1, 0, 0, 9)])  # the last is outside
    _charges("bob", [("a", 0, 1, 1, 0, 0, 1)])
    by_model = client.get("/api/v1/usage/summary", query_string={**RANGE, "group_by": "model"},
                          headers=auth()).json
    assert [(d["model"], d["calls"], d["prompt_tokens"], d["cost"]) for d in by_model["data"]] == [
        ("a", 2, 300, 0.004), ("b", 1, 50, 0.0007)]
    assert by_model["data"][0]["tokens"] == {"input": 260, "cached_input": 40, "cache_write_5m": 0,
                                             "cache_write_1h": 0, "output": 25, "reasoning": 5}
    assert by_model["total"] == {"calls": 3, "cost": 0.0047}
    by_day = client.get("/api/v1/usage/summary", query_string={**RANGE, "group_by": "day"}, headers=auth()).json
    assert [(d["day"], d["calls"], d["cost"]) for d in by_day["data"]] == [
        ("2026-03-01", 1, 0.0015), ("2026-03-02", 2, 0.0032)]
    admin = client.get("/api/admin/accounts/bob/usage/summary", query_string=RANGE,
                       headers=auth("root", True)).json
    assert admin["total"] == {"calls": 1, "cost": 0.000001}
    assert client.get("/api/admin/accounts/bob/usage/summary", headers=auth()).status_code == 403


def test_bad_ranges_and_groups_are_400(client):
    for query in ({"group_by": "hour"}, {"from": "yesterday"}, {"from": "2026-03-05", "to": "2026-03-01"}):
        r = client.get("/api/v1/usage/summary", query_string=query, headers=auth())
        assert r.status_code == 400 and r.json["error"]["param"] in ("group_by", "from"), query


def test_csv_export_of_the_callers_ledger(client):
    _charges("alice", [("a", 0, 100, 10, 40, 5, 1_500), ("b", 1, 50, 5, 0, 0, 700)])
    _charges("bob", [("a", 0, 1, 1, 0, 0, 1)])
    r = client.get("/api/v1/usage/export.csv", query_string=RANGE, headers=auth())
    assert r.status_code == 200 and r.mimetype == "text/csv"
    rows = list(csv.DictReader(io.StringIO(r.get_data(as_text=True))))
    assert [(x["request_id"], x["amount"], x["cached_input_tokens"], x["reasoning_tokens"]) for x in rows] == [
        ("alice-0", "-0.001500", "40", "5"), ("alice-1", "-0.000700", "0", "0")]
    everyone = client.get("/api/admin/usage/export.csv", query_string=RANGE, headers=auth("root", True))
    assert {x["account"] for x in csv.DictReader(io.StringIO(everyone.get_data(as_text=True)))} == {"alice", "bob"}


def _peak_while_exporting(client, rows: int) -> tuple[int, int]:
    """Rows counted and peak traced memory (bytes) while reading the whole export."""
    tracemalloc.start()
    r = client.get("/api/v1/usage/export.csv", query_string={"from": "2026-01-01", "to": "2027-01-01"},
                   headers=auth("big"), buffered=False)
    lines = 0
    for piece in r.response:
        lines += piece.count("\n") if isinstance(piece, str) else piece.count(b"\n")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    r.close()
    return lines - 1, peak


def _insert(rows: list[dict]) -> None:
    with db.atomic():
        for start in range(0, len(rows), 2000):  # within SQLite's limit on bound values
            LedgerEntry.insert_many(rows[start:start + 2000]).execute()


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)  # the export is the same code on both
def test_csv_export_of_100000_rows_streams_with_flat_memory(client):
    acct = Account.create(name="big", balance=10 ** 12)
    batch = [{"account": acct.id, "request_id": f"r{i}", "model": "m", "kind": "charge", "delta": -7,
              "created": DAY, "prompt_tokens": 10, "completion_tokens": 3} for i in range(100_000)]
    _insert(batch[:10_000])
    small_rows, small_peak = _peak_while_exporting(client, 10_000)
    _insert(batch[10_000:])
    del batch
    big_rows, big_peak = _peak_while_exporting(client, 100_000)
    assert (small_rows, big_rows) == (10_000, 100_000)
    # ten times the rows, not ten times the memory: one page at a time
    assert big_peak < small_peak * 1.5, (small_peak, big_peak)
    print(f"export peak traced memory: 10k rows {small_peak / 1e6:.2f} MB, 100k rows {big_peak / 1e6:.2f} MB")
