"""The console's Logs pages and key pages keep each account to its own (issue 35), on SQLite and
PostgreSQL: another account's calls and keys are neither listed nor shown nor changed; a page
lists what `GET /api/v1/logs` lists to the same credential; a key's session changes only its own
key and the keys minted from it, never broader than its own; a bad filter is a form message."""
from __future__ import annotations

import re

import pytest

from service.store.db import ApiKey
from tests.conftest import auth, token
from tests.fakes import openai as fake_openai

FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')
DETAIL = re.compile(r'href="/console/logs/([^"?]+)"')


def console(app, credential: str):
    """A test client signed in to the console through the form; `.csrf` is its session's token."""
    client = app.test_client()
    field = FIELD.search(client.get("/console/login").get_data(as_text=True)).group(1)
    signed = client.post("/console/login", data={"credential": credential, "csrf_token": field})
    assert signed.status_code == 302, signed.get_data(as_text=True)
    client.csrf = FIELD.search(client.get("/console/keys").get_data(as_text=True)).group(1)
    return client


def minted_key(gateway, name: str = "alice", **limits) -> tuple[int, str]:
    made = gateway.post("/api/admin/keys", headers=auth("root", True), json={"account": name, **limits}).json
    return made["id"], made["key"]


def calls(gateway, upstream, *credentials) -> None:
    upstream.expect_request("/v1/chat/completions").respond_with_json(fake_openai.completion("ok", 10, 15))
    for headers in credentials:
        assert gateway.post("/v1/chat/completions", headers=headers, json={
            "model": "m-openai", "messages": [{"role": "user", "content": "hi"}]}).status_code == 200
    assert gateway.application.extensions["tollgate_log"].flush(10)


def listed(client, query: str = "") -> list[str]:
    page = client.get(f"/console/logs{query}")
    assert page.status_code == 200
    return DETAIL.findall(page.get_data(as_text=True))


def api_ids(gateway, headers: dict) -> list[str]:
    return [r["request_id"] for r in gateway.get("/api/v1/logs?limit=50", headers=headers).json["data"]]


@pytest.fixture
def two_accounts(gateway, upstream):
    """alice (a JWT call and one with her key) and bob (one call with his key), logged."""
    gateway.post("/api/admin/accounts/bob/credits", json={"amount": 10}, headers=auth("root", True))
    alice_key, alice_plain = minted_key(gateway)
    bob_key, bob_plain = minted_key(gateway, "bob")
    calls(gateway, upstream, auth(), {"Authorization": f"Bearer {alice_plain}"},
          {"Authorization": f"Bearer {bob_plain}"})
    return {"alice_key": (alice_key, alice_plain), "bob_key": (bob_key, bob_plain)}


def test_the_logs_page_lists_only_its_accounts_calls_as_the_api_does(gateway, two_accounts):
    alice = console(gateway.application, token("alice"))
    mine, theirs = api_ids(gateway, auth()), api_ids(gateway, auth("bob"))
    assert listed(alice) == mine and len(mine) == 2 and len(theirs) == 1
    bob_key = two_accounts["bob_key"][0]
    assert listed(alice, f"?key_id={bob_key}") == []
    assert alice.get(f"/console/logs/{theirs[0]}").status_code == 404
    assert alice.get(f"/console/logs/{mine[0]}").status_code == 200
    bob = console(gateway.application, token("bob"))
    assert listed(bob) == theirs and bob.get(f"/console/logs/{mine[0]}").status_code == 404


def test_a_key_session_sees_what_its_key_sees_on_the_api(gateway, two_accounts):
    _, plain = two_accounts["alice_key"]
    session = console(gateway.application, plain)
    headers = {"Authorization": f"Bearer {plain}"}
    assert listed(session) == api_ids(gateway, headers) == api_ids(gateway, auth())
    for request_id in api_ids(gateway, headers):  # the API shows each row to the key; so does its session
        assert gateway.get(f"/api/v1/logs/{request_id}", headers=headers).status_code == 200
        assert session.get(f"/console/logs/{request_id}").status_code == 200


def test_another_accounts_key_is_neither_shown_nor_changed(gateway, two_accounts):
    alice = console(gateway.application, token("alice"))
    bob_key, alice_key = two_accounts["bob_key"][0], two_accounts["alice_key"][0]
    assert alice.get(f"/console/keys/{alice_key}").status_code == 200  # her own key has its page
    assert alice.get(f"/console/keys/{bob_key}").status_code == 404
    changed = alice.post(f"/console/keys/{bob_key}", data={"csrf_token": alice.csrf, "rpm": "1", "budget": "0"})
    assert changed.status_code == 404
    row = ApiKey.get_by_id(bob_key)
    assert (row.rpm, row.budget) == (None, None)
    assert f"/console/keys/{bob_key}" not in alice.get("/console/keys").get_data(as_text=True)


def edit(client, key_id: int, **form):
    return client.post(f"/console/keys/{key_id}", data={"csrf_token": client.csrf, **form})


def test_a_key_session_changes_only_its_own_line_and_never_broader(gateway):
    own, plain = minted_key(gateway, rpm=5)
    sibling, _ = minted_key(gateway)
    session = console(gateway.application, plain)
    assert session.post("/console/keys", data={"csrf_token": session.csrf, "name": "child"}).status_code == 303
    child = ApiKey.get(ApiKey.parent_id == own).id
    assert edit(session, sibling, rpm="1").status_code == 403 and ApiKey.get_by_id(sibling).rpm is None
    assert "at most 5" in edit(session, child, rpm="6").get_data(as_text=True)
    assert edit(session, child, rpm="2", budget="4", budget_period="month").status_code == 303
    row = ApiKey.get_by_id(child)
    assert (row.rpm, row.budget, row.budget_period) == (2, 4_000_000, "month")
    minted = edit(session, own, budget="3")  # keys were minted under it: a budget would not bind them
    assert minted.status_code == 400 and "minted" in minted.get_data(as_text=True)
    assert edit(session, own, rpm="").status_code == 303  # blank: the key's own, not removed
    assert (ApiKey.get_by_id(own).rpm, ApiKey.get_by_id(own).budget) == (5, None)
    jwt = console(gateway.application, token("alice"))  # the account's own session may widen
    forged = jwt.post(f"/console/keys/{own}", data={"rpm": "50"})  # but not from a form without its token
    assert forged.status_code == 403 and ApiKey.get_by_id(own).rpm == 5
    assert edit(jwt, own, rpm="50").status_code == 303 and ApiKey.get_by_id(own).rpm == 50


def test_a_budgeted_key_session_keeps_its_budget_and_mints_nothing(gateway):
    own, plain = minted_key(gateway, rpm=5, budget=5, budget_period="week")
    session = console(gateway.application, plain)
    refused = session.post("/console/keys", data={"csrf_token": session.csrf, "name": "child"})
    assert refused.status_code == 400 and "A key with a budget cannot make keys" in refused.get_data(as_text=True)
    assert "at most 5 credits" in edit(session, own, budget="6", budget_period="week").get_data(as_text=True)
    shorter = edit(session, own, budget="5", budget_period="day")  # 5 a day is more than 5 a week
    assert shorter.status_code == 400 and "no shorter" in shorter.get_data(as_text=True)
    assert edit(session, own, rpm="", budget="").status_code == 303  # blank: the key's own, not removed
    row = ApiKey.get_by_id(own)
    assert (row.rpm, row.budget, row.budget_period) == (5, 5_000_000, "week")
    assert edit(session, own, budget="4", budget_period="month").status_code == 303  # narrower: saved
    jwt = console(gateway.application, token("alice"))
    assert edit(jwt, own, budget="", budget_period="week").status_code == 303  # the account may lift it
    assert ApiKey.get_by_id(own).budget is None


@pytest.mark.parametrize("query, message", [
    ("/console/logs?status=abc", "between 100 and 599"),
    ("/console/logs?status=99", "between 100 and 599"),
    ("/console/logs?from=yesterday", "unix time or an ISO 8601"),
    ("/console/logs?to=0001-01-01T00:00", "between 1970-01-01 and 9999-12-31"),
    ("/console/logs?key_id=-1", "key_id"),
    ("/console/logs?before=1e9", "before"),
    ("/console/logs?limit=1000", "between 1 and 100"),
    ("/console/?from=2026-02-30", "unix time or an ISO 8601"),
    ("/console/?from=2026-12-07&to=2026-12-01", "before"),
    ("/console/?to=99999-01-01", "9999-12-31"),
])
def test_a_bad_filter_or_range_is_a_message_on_the_form(gateway, query, message):
    alice = console(gateway.application, token("alice"))
    page = alice.get(query)
    assert page.status_code == 400 and message in page.get_data(as_text=True).replace("&#39;", "'")


def test_the_last_day_of_the_calendar_is_a_range_not_an_error(gateway):
    alice = console(gateway.application, token("alice"))
    assert alice.get("/console/?from=9999-12-30&to=9999-12-31").status_code == 200
    zh = alice.get("/console/logs?status=abc", headers={"Accept-Language": "zh-CN"}).get_data(as_text=True)
    assert "状态码必须是 100 到 599 之间的整数" in zh
