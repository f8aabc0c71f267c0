"""Authentication (SPEC §5): JWTs from outside systems, API keys, and every failure's body."""
from __future__ import annotations

import datetime as dt
import hashlib

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from service.store.db import Account, ApiKey
from tests import schemas
from tests.conftest import SECRET, auth, token
from tests.fakes import openai as fake_openai

MSGS = [{"role": "user", "content": "hi"}]
PROTECTED = [("post", "/api/v1/chat/completions"), ("post", "/v1/chat/completions"),
             ("post", "/api/chat/stream"), ("get", "/api/v1/models"), ("get", "/api/v1/models/x"),
             ("get", "/api/ai-models/enabled"), ("get", "/api/v1/account"), ("get", "/api/v1/usage"),
             ("get", "/api/admin/models"), ("post", "/api/admin/keys"),
             ("get", "/api/admin/accounts/alice")]


def unauthorized(r, code: str):
    assert r.status_code == 401, r.get_data(as_text=True)
    schemas.check("ErrorResponse", r.json)
    assert r.json["error"]["type"] == "authentication_error" and r.json["error"]["code"] == code
    assert r.json["success"] is False


@pytest.mark.parametrize("method,path", PROTECTED)
def test_every_api_endpoint_needs_credentials(client, method, path):
    unauthorized(getattr(client, method)(path, json={"messages": MSGS}), "missing_token")


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_health_answers_without_credentials(client, path):
    assert client.get(path).status_code == 200


def rsa_pair():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public.decode()


def none_token(name="alice"):
    return pyjwt.encode({"sub": name, "role": "admin"}, None, algorithm="none")


@pytest.mark.parametrize("bad,code", [
    (lambda: token(expires_in=-60), "token_expired"),
    (lambda: token(secret="another-secret-of-sufficient-length-123"), "invalid_token"),
    (none_token, "invalid_token"),
    (lambda: token(algorithm="HS512"), "invalid_token"),
    (lambda: "abc.def.ghi", "invalid_token"),
    (lambda: pyjwt.encode({"role": "admin"}, SECRET, algorithm="HS256"), "invalid_token"),
    (lambda: "sk-not-a-real-key", "invalid_token"),
])
def test_bad_tokens_rejected(client, bad, code):
    r = client.get("/api/v1/account", headers={"Authorization": f"Bearer {bad()}"})
    unauthorized(r, code)


def test_wrong_scheme_rejected(client):
    unauthorized(client.get("/api/v1/account", headers={"Authorization": "Basic abc"}), "invalid_token")


def test_outside_hs256_jwt_creates_account_with_new_credits(make_app):
    client = make_app(NEW_ACCOUNT_CREDITS="2.5").test_client()
    r = client.get("/api/v1/account", headers=auth("newbie"))
    assert r.status_code == 200
    assert r.json == {"account": "newbie", "balance": 2.5, "held": 0.0, "currency": "credits"}
    assert client.get("/api/v1/account", headers=auth("newbie")).json["balance"] == 2.5


def test_rs256_public_key_accepts_outside_tokens_and_rejects_confusion(make_app):
    private, public = rsa_pair()
    client = make_app(JWT_ALGORITHM="RS256", JWT_PUBLIC_KEY=public, JWT_SECRET_KEY=None).test_client()
    now = dt.datetime.now(dt.timezone.utc)
    good = pyjwt.encode({"sub": "carol", "exp": now + dt.timedelta(minutes=5)}, private, algorithm="RS256")
    r = client.get("/api/v1/account", headers={"Authorization": f"Bearer {good}"})
    assert r.status_code == 200 and r.json["account"] == "carol"
    # algorithm confusion: an HS256 token signed with the public key as the secret
    forged = pyjwt.api_jws.PyJWS()
    forged._algorithms["HS256"].prepare_key = lambda key: key.encode() if isinstance(key, str) else key
    body = b'{"sub":"carol","role":"admin"}'
    confused = forged.encode(body, public, algorithm="HS256")
    unauthorized(client.get("/api/v1/account", headers={"Authorization": f"Bearer {confused}"}),
                 "invalid_token")
    unauthorized(client.get("/api/v1/account", headers={"Authorization": f"Bearer {none_token()}"}),
                 "invalid_token")


def test_api_key_lifecycle(client, admin_headers, add_model, upstream, topup):
    add_model(id=1, name="m1", api="openai", base_url=upstream.url_for("/v1"))
    add_model(id=2, name="m2", api="openai", base_url=upstream.url_for("/v1"))
    upstream.expect_request("/v1/chat/completions").respond_with_json(fake_openai.completion())
    r = client.post("/api/admin/keys", json={"account": "dave", "name": "ci", "models": ["m1"]},
                    headers=admin_headers)
    assert r.status_code == 201
    key, key_id = r.json["key"], r.json["id"]
    assert key.startswith("sk-") and r.json["account"] == "dave"
    stored = ApiKey.get_by_id(key_id)
    assert stored.key_hash == hashlib.sha256(key.encode()).hexdigest() and key not in str(stored.__data__)
    headers = {"Authorization": f"Bearer {key}"}
    assert client.get("/api/v1/account", headers=headers).json["account"] == "dave"
    r = client.post("/api/v1/chat/completions", json={"model": "m1", "messages": MSGS}, headers=headers)
    assert r.status_code == 200
    r = client.post("/api/v1/chat/completions", json={"model": "m2", "messages": MSGS}, headers=headers)
    assert r.status_code == 403 and r.json["error"]["code"] == "forbidden"
    assert client.delete(f"/api/admin/keys/{key_id}", headers=admin_headers).status_code == 200
    unauthorized(client.get("/api/v1/account", headers=headers), "invalid_token")


def test_a_key_read_by_its_prepared_query_is_the_key_peewee_reads(app, client, admin_headers):
    """The key lookup of every call (service/store/prepared.py) reads the same key and account,
    every field converted, as peewee's own query, on SQLite and PostgreSQL; a parent by id too."""
    from service.web import auth as authn

    expires = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1)).isoformat()
    r = client.post("/api/admin/keys", headers=admin_headers, json={
        "account": "fay", "name": "ci", "models": ["m1", "m2"], "rpm": 7, "max_concurrent": 3,
        "expires_at": expires, "budget": 2, "budget_period": "day"})
    assert r.status_code == 201
    digest = hashlib.sha256(r.json["key"].encode()).hexdigest()
    with app.app_context():
        ours = authn._BY_HASH.first(digest)
        theirs = ApiKey.select(ApiKey, Account).join(Account).where(ApiKey.key_hash == digest).first()
        assert ours.__data__ == theirs.__data__ and ours.account.__data__ == theirs.account.__data__
        assert ours.models == ["m1", "m2"] and isinstance(ours.expires_at, dt.datetime) and ours.account.name == "fay"
        assert not ours._dirty and not ours.account._dirty
        assert authn._BY_ID.first(ours.id).__data__ == ours.__data__
        assert authn._BY_HASH.first("0" * 64) is None and authn._BY_ID.first(ours.id + 1) is None


def test_expired_api_key(client, admin_headers):
    past = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1)).isoformat()
    r = client.post("/api/admin/keys", json={"account": "erin", "expires_at": past}, headers=admin_headers)
    headers = {"Authorization": f"Bearer {r.json['key']}"}
    unauthorized(client.get("/api/v1/account", headers=headers), "token_expired")


def test_non_admin_gets_403_on_admin_endpoints(client):
    for method, path in [("post", "/api/admin/keys"), ("post", "/api/admin/accounts/x/credits"),
                         ("get", "/api/admin/accounts/x"), ("delete", "/api/admin/models/1")]:
        r = getattr(client, method)(path, json={}, headers=auth("mallory"))
        assert r.status_code == 403 and r.json["error"]["type"] == "permission_error"


def test_auth_not_required_mode_uses_local_account(make_app):
    client = make_app(AUTH_REQUIRED=False).test_client()
    assert client.get("/api/v1/account").json["account"] == "local"
    assert Account.get_or_none(Account.name == "local") is not None


def test_cli_issues_tokens_and_keys(app, client):
    runner = app.test_cli_runner()
    out = runner.invoke(args=["tokens", "issue", "frank", "--admin"])
    assert out.exit_code == 0
    minted = out.output.strip()
    assert client.get("/api/admin/models", headers={"Authorization": f"Bearer {minted}"}).status_code == 200
    out = runner.invoke(args=["keys", "create", "frank"])
    key = out.output.strip().split(": ")[1]
    assert client.get("/api/v1/account", headers={"Authorization": f"Bearer {key}"}).json["account"] == "frank"
    out = runner.invoke(args=["accounts", "topup", "frank", "3.25"])
    assert out.exit_code == 0 and "3.25" in out.output
    out = runner.invoke(args=["accounts", "show", "frank"])
    assert "'balance': 3.25" in out.output
