"""Every console sign-in leaves an audit row (SPEC §17, issue 35), succeeded or not: who (the
account, or what a refused credential claimed), by key or JWT, from which address, never the
credential. On SQLite and PostgreSQL (`db_url`)."""
from __future__ import annotations

import json
import re

from service.store.db import AuditEntry, ConsoleSession
from tests.conftest import token

FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')


def sign_in(client, credential: str, address: str = "10.1.2.3") -> int:
    """The sign-in form as a browser sends it, from `address`; the answer's status."""
    field = FIELD.search(client.get("/console/login").get_data(as_text=True)).group(1)
    return client.post("/console/login", data={"credential": credential, "csrf_token": field},
                       environ_base={"REMOTE_ADDR": address}).status_code


def rows() -> list[AuditEntry]:
    return list(AuditEntry.select().where(AuditEntry.action.startswith("console.")).order_by(AuditEntry.id))


def assert_no_secret(credential: str) -> None:
    """No part of the credential beyond what the keys page shows reaches an audit row."""
    text = json.dumps([[e.actor, e.action, e.target, e.detail, e.ip] for e in AuditEntry.select()])
    assert credential not in text and credential[8:24] not in text


def test_sign_ins_by_jwt_and_by_key_are_recorded_with_who_how_and_where(app, client, admin_headers):
    jwt = token("root", admin=True)
    assert sign_in(app.test_client(), jwt) == 302
    key = client.post("/api/admin/keys", headers=admin_headers, json={"account": "alice", "name": "laptop"}).json
    assert sign_in(app.test_client(), key["key"], "10.9.8.7") == 302
    assert ConsoleSession.select().count() == 2
    by_jwt, by_key = rows()
    assert (by_jwt.actor, by_jwt.action, by_jwt.target, by_jwt.ip) == ("root", "console.sign_in", "account:root",
                                                                       "10.1.2.3")
    assert by_jwt.detail == {"by": "jwt", "admin": True}
    assert (by_key.actor, by_key.action, by_key.target, by_key.ip) == ("alice", "console.sign_in", "account:alice",
                                                                       "10.9.8.7")
    assert by_key.detail == {"by": "key", "key_id": key["id"], "prefix": key["key"][:7]}
    assert_no_secret(jwt)
    assert_no_secret(key["key"])


def test_refused_sign_ins_are_recorded_with_what_they_claimed(client, admin_headers):
    forged = token("root", admin=True, secret="not-the-gateways-secret-" + "x" * 24)
    expired = token("alice", expires_in=-60)
    key = client.post("/api/admin/keys", headers=admin_headers, json={"account": "alice"}).json
    assert client.delete(f"/api/admin/keys/{key['id']}", headers=admin_headers).status_code == 200
    unknown = "sk-" + "q" * 43
    for credential in (forged, expired, key["key"], unknown, "my password"):
        assert sign_in(client, credential) == 401
    assert ConsoleSession.select().count() == 0
    assert [(e.actor, e.action, e.target, e.ip) for e in rows()] == [
        ("root", "console.sign_in_failed", "account:root", "10.1.2.3"),
        ("alice", "console.sign_in_failed", "account:alice", "10.1.2.3"),
        ("alice", "console.sign_in_failed", "account:alice", "10.1.2.3"),  # a revoked key names its account
        ("?", "console.sign_in_failed", None, "10.1.2.3"),
        ("?", "console.sign_in_failed", None, "10.1.2.3")]
    assert [e.detail for e in rows()] == [
        {"by": "jwt", "reason": "Invalid token"}, {"by": "jwt", "reason": "Token has expired"},
        {"by": "key", "reason": "Invalid API key", "key_id": key["id"], "prefix": key["key"][:7]},
        {"by": "key", "reason": "Invalid API key"}, {"by": "unknown", "reason": "Invalid token"}]
    for credential in (forged, expired, key["key"], unknown, "my password"):
        assert_no_secret(credential)
    listed = client.get("/api/admin/audit?action=console.sign_in_failed", headers=admin_headers).json["data"]
    assert len(listed) == 5  # what the admin API serves


def test_the_address_is_the_clients_behind_a_trusted_proxy(make_app):
    client = make_app(TRUSTED_PROXIES=1).test_client()
    field = FIELD.search(client.get("/console/login").get_data(as_text=True)).group(1)
    assert client.post("/console/login", data={"credential": token("alice"), "csrf_token": field},
                       headers={"X-Forwarded-For": "203.0.113.5"}).status_code == 302
    assert [(e.actor, e.ip) for e in rows()] == [("alice", "203.0.113.5")]


def test_tries_refused_unchecked_by_the_throttle_or_a_stale_form_leave_no_row(make_app):
    client = make_app(CONSOLE_SIGNIN_FREE_PER_IP=1, CONSOLE_SIGNIN_BACKOFF_SECONDS=600).test_client()
    assert [sign_in(client, f"sk-guess{i}") for i in range(3)] == [401, 401, 429]
    assert client.post("/console/login", data={"credential": "sk-x", "csrf_token": "stale"}).status_code == 403
    assert [e.action for e in rows()] == ["console.sign_in_failed"] * 2  # the two that were checked
