"""The audit log (SPEC §17, issue 35): every operator action leaves one append-only row, written
in the same transaction as the change it records."""
from __future__ import annotations

from service.store.db import AuditEntry
from service.web import audit
from tests.conftest import auth


def entries() -> list[tuple]:
    return [(e.actor, e.action, e.target) for e in AuditEntry.select().order_by(AuditEntry.id)]


def test_operator_actions_are_recorded_with_who_what_and_from_where(client, admin_headers):
    root = admin_headers
    assert client.post("/api/admin/accounts/alice/credits", headers=root,
                       json={"amount": 10, "note": "invoice 7"}).status_code == 200
    assert client.post("/api/admin/accounts/alice/credits", headers=root,
                       json={"amount": -2, "note": "refund"}).status_code == 200
    assert client.post("/api/admin/accounts/alice/credits", headers=root,
                       json={"amount": -100}).status_code == 400  # refused: nothing changed, nothing recorded
    assert client.post("/api/admin/models", headers=root, json={
        "id": 9, "name": "m", "provider": "openai", "api": "openai", "cost_per_1k_tokens": "1"}).status_code == 201
    assert client.patch("/api/admin/models/9", headers=root, json={"cost_per_1k_tokens": "2"}).status_code == 200
    assert client.delete("/api/admin/models/9", headers=root).status_code == 200
    key = client.post("/api/admin/keys", headers=root, json={"account": "alice", "budget": 5}).json
    assert client.patch(f"/api/admin/keys/{key['id']}", headers=root, json={"rpm": 3}).status_code == 200
    assert client.delete(f"/api/admin/keys/{key['id']}", headers=root).status_code == 200
    assert client.delete(f"/api/admin/keys/{key['id']}", headers=root).status_code == 200  # already revoked
    assert client.patch("/api/admin/accounts/alice", headers=root, json={"log_bodies": True}).status_code == 200
    assert entries() == [
        ("root", "credits.topup", "account:alice"), ("root", "credits.adjust", "account:alice"),
        ("root", "model.create", "model:9"), ("root", "model.update", "model:9"), ("root", "model.delete", "model:9"),
        ("root", "key.create", f"key:{key['id']}"), ("root", "key.update", f"key:{key['id']}"),
        ("root", "key.revoke", f"key:{key['id']}"), ("root", "account.update", "account:alice")]
    first = AuditEntry.select().order_by(AuditEntry.id).first()
    assert first.detail == {"amount": 10, "note": "invoice 7"} and first.ip == "127.0.0.1"
    assert AuditEntry.get(AuditEntry.action == "key.create").detail["budget"] == 5


def test_the_audit_api_pages_and_filters_for_admins_only(client, admin_headers):
    for i in range(5):
        audit.record("console-user" if i % 2 else "root", "console.sign_in" if i % 2 else "credits.topup",
                     f"account:a{i}", {"i": i}, "10.0.0.1")
    page = client.get("/api/admin/audit?limit=2", headers=admin_headers).json
    assert [e["target"] for e in page["data"]] == ["account:a4", "account:a3"] and page["has_more"]
    rest = client.get(f"/api/admin/audit?before={page['data'][-1]['id']}", headers=admin_headers).json
    assert [e["target"] for e in rest["data"]] == ["account:a2", "account:a1", "account:a0"] and not rest["has_more"]
    signed = client.get("/api/admin/audit?action=console.sign_in", headers=admin_headers).json["data"]
    assert [e["actor"] for e in signed] == ["console-user", "console-user"]
    assert len(client.get("/api/admin/audit?actor=root", headers=admin_headers).json["data"]) == 3
    assert client.get("/api/admin/audit", headers=auth("alice")).status_code == 403
    assert client.get("/api/admin/audit?limit=0", headers=admin_headers).status_code == 400
    assert client.delete("/api/admin/audit", headers=admin_headers).status_code == 405  # append-only


def test_amounts_beyond_a_floats_digits_are_recorded_exactly(client, admin_headers):
    r = client.post("/api/admin/accounts/rich/credits", headers=admin_headers,
                    json={"amount": "999999999999.000001"})
    assert r.status_code == 200
    assert AuditEntry.get().detail["amount"] == "999999999999.000001"


def test_deployment_switches_are_recorded_once_per_change(client, admin_headers):
    assert client.post("/api/admin/models", headers=admin_headers, json={
        "id": 60, "name": "pool", "api": "openai", "cost_per_1k_tokens": "1",
        "deployments": [{"name": "east"}, {"name": "west"}]}).status_code == 201
    for enabled in (False, False, True):  # the second changes nothing and is not recorded
        r = client.patch("/api/admin/models/60/deployments/west", headers=admin_headers, json={"enabled": enabled})
        assert r.status_code == 200
    assert client.patch("/api/admin/models/60/deployments/north", headers=admin_headers,
                        json={"enabled": False}).status_code == 404
    switched = AuditEntry.select().where(AuditEntry.action.startswith("deployment.")).order_by(AuditEntry.id)
    assert [(e.actor, e.action, e.target, e.detail) for e in switched] == [
        ("root", "deployment.disable", "model:60", {"model": "pool", "deployment": "west"}),
        ("root", "deployment.enable", "model:60", {"model": "pool", "deployment": "west"})]
