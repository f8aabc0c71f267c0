"""A console session is its credential (SPEC §14, issue 32): a key's session can do no more than
the key on the API, keys minted there are no broader than it, and a session ends with its
credential. Sign-in is throttled per address and per credential. Driven over HTTP on a live
server, as a browser's forms and the playground's fetch drive it."""
from __future__ import annotations

import datetime as dt
import json
import re
import threading
import time

import pytest
import requests
from werkzeug import Response

from service.store.db import ApiKey, ConsoleSession, LedgerEntry, utcnow
from tests.conftest import auth, token
from tests.fakes import openai as fake_openai

FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')


def gated(upstream, gate: threading.Event) -> None:
    """The fake provider streams a first chunk, then the rest once `gate` is set (an unstreamed
    call is answered at once)."""
    def handler(request):
        if not request.get_json().get("stream"):
            return Response(json.dumps(fake_openai.completion("hi", 3, 1)), mimetype="application/json")

        def events():
            yield fake_openai.chunk({"role": "assistant", "content": ""})
            gate.wait(60)  # a bound for a test that fails, never reached by one that passes
            yield fake_openai.chunk({"content": "hi"}, finish="stop")
            yield fake_openai.chunk({}, usage={"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
                                    choices=False)
            yield b"data: [DONE]\n\n"
        return Response(events(), mimetype="text/event-stream")

    upstream.clear_all_handlers()
    upstream.expect_request("/v1/chat/completions").respond_with_handler(handler)


@pytest.fixture
def site(gateway, upstream, live_factory):
    """The gateway (m-openai ... and p-free, all on the fake provider) served live."""
    r = gateway.post("/api/admin/models", headers=auth("root", True), json={
        "id": 9, "name": "p-free", "api": "openai", "upstream_model": "up", "provider": "openai",
        "base_url": upstream.url_for("/v1").rstrip("/"), "api_key_env": "FAKE_API_KEY", "cost_per_1k_tokens": "1"})
    assert r.status_code == 201
    gate = threading.Event()
    gate.set()
    gated(upstream, gate)
    server = live_factory(gateway.application)
    server.gate = gate
    return server


def console(site, credential: str) -> requests.Session:
    """A browser-like client signed in through the form; `.csrf` is its session's token."""
    browser = requests.Session()
    field = FIELD.search(browser.get(f"{site.url}/console/login").text).group(1)
    signed = browser.post(f"{site.url}/console/login", data={"credential": credential, "csrf_token": field},
                          allow_redirects=False)
    assert signed.status_code == 302, signed.text
    browser.csrf = FIELD.search(browser.get(f"{site.url}/console/keys").text).group(1)
    return browser


def restricted_key(site, **limits) -> tuple[int, str]:
    """The issue's key: models ["p-free"], rpm 1, max_concurrent 1, two minutes to live."""
    body = {"account": "alice", "models": ["p-free"], "rpm": 1, "max_concurrent": 1,
            "expires_at": int(time.time()) + 120, **limits}
    made = requests.post(f"{site.url}/api/admin/keys", json=body, headers=auth("root", True)).json()
    return made["id"], made["key"]


def play(browser, site, model: str) -> requests.Response:
    return browser.post(f"{site.url}/console/playground/chat", json={"model": model, "prompt": "hi"},
                        headers={"X-CSRF-Token": browser.csrf})


def api_chat(site, key: str, model: str, stream: bool = False) -> requests.Response:
    return requests.post(f"{site.url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                         json={"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream},
                         stream=stream)


def test_a_restricted_keys_session_plays_only_what_the_key_may(site):
    key_id, key = restricted_key(site)
    browser = console(site, key)
    other = play(browser, site, "m-openai")  # the API answers 403 for this key: so does the console
    assert other.status_code == 403 and other.json()["error"]["code"] == "forbidden"
    assert "m-openai" not in browser.get(f"{site.url}/console/playground").text
    assert "m-openai" not in browser.get(f"{site.url}/console/models").text
    assert play(browser, site, "p-free").status_code == 200
    again = play(browser, site, "p-free")  # rpm 1, counted with the key's API calls
    assert again.status_code == 429 and again.json()["error"]["code"] == "rate_limit_exceeded"
    assert api_chat(site, key, "p-free").status_code == 429
    session = ConsoleSession.get(ConsoleSession.key_id == key_id)
    assert session.expires_at <= ApiKey.get_by_id(key_id).expires_at  # the key's expiry ends it


def test_a_keys_cap_on_calls_in_flight_holds_in_the_playground(site):
    _, key = restricted_key(site, rpm=None)
    browser = console(site, key)
    site.gate.clear()
    held = api_chat(site, key, "p-free", stream=True)  # one call in flight on the API
    assert held.status_code == 200
    chunks = held.iter_content(64)  # kept: a dropped iterator closes the connection, ending the call
    next(chunks)
    refused = play(browser, site, "p-free")
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "concurrency_limit_exceeded"
    site.gate.set()
    assert b"".join(chunks).endswith(b"data: [DONE]\n\n")


def test_a_key_minted_from_a_keys_session_is_no_broader(site):
    key_id, key = restricted_key(site)
    browser = console(site, key)
    for broader in ({"models": "m-openai"}, {"rpm": "5"}, {"max_concurrent": "2"},
                    {"expires_at": (utcnow() + dt.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")}):
        refused = browser.post(f"{site.url}/console/keys", data={"csrf_token": browser.csrf, "name": "x", **broader},
                               allow_redirects=False)
        assert refused.status_code == 400 and 'class="error"' in refused.text, broader
    assert ApiKey.select().count() == 1
    made = browser.post(f"{site.url}/console/keys", data={"csrf_token": browser.csrf, "name": "child"},
                        allow_redirects=False)
    assert made.status_code == 303 or made.status_code == 302
    child = ApiKey.get(ApiKey.name == "child")
    parent = ApiKey.get_by_id(key_id)
    assert (child.models, child.rpm, child.max_concurrent, child.expires_at, child.parent_id) == \
        (["p-free"], 1, 1, parent.expires_at, key_id)
    plain = re.search(r'id="new-key">(sk-[^<]+)<', browser.get(f"{site.url}/console/keys").text).group(1)
    assert api_chat(site, plain, "m-openai").status_code == 403
    assert api_chat(site, key, "p-free").status_code == 200  # the parent's minute is spent ...
    assert api_chat(site, plain, "p-free").status_code == 429  # ... for its children too
    child_session = console(site, plain)
    requests.delete(f"{site.url}/api/admin/keys/{key_id}", headers=auth("root", True))
    assert api_chat(site, plain, "p-free").status_code == 401  # the child dies with its parent
    assert child_session.get(f"{site.url}/console/keys", allow_redirects=False).status_code == 302  # its session too


def test_a_budget_and_minted_keys_never_meet(site):
    """A budget binds its own key's calls only, so a budgeted key's session mints no key (one
    minted under it would spend past the budget), and a key keys were minted from takes no budget."""
    key_id, key = restricted_key(site, budget=1, budget_period="day")
    browser = console(site, key)
    refused = browser.post(f"{site.url}/console/keys", data={"csrf_token": browser.csrf, "name": "child"},
                           allow_redirects=False)
    assert refused.status_code == 400 and "A key with a budget cannot make keys" in refused.text
    assert ApiKey.select().count() == 1
    parent_id, parent = restricted_key(site)
    unbudgeted = console(site, parent)
    made = unbudgeted.post(f"{site.url}/console/keys", data={"csrf_token": unbudgeted.csrf, "name": "child"},
                           allow_redirects=False)
    assert made.status_code == 303, made.text
    later = requests.patch(f"{site.url}/api/admin/keys/{parent_id}", json={"budget": 5}, headers=auth("root", True))
    assert later.status_code == 400 and later.json()["error"]["param"] == "budget", later.text
    assert "minted" in later.json()["error"]["message"] and ApiKey.get_by_id(parent_id).budget is None
    child = ApiKey.get(ApiKey.name == "child")
    requests.delete(f"{site.url}/api/admin/keys/{child.id}", headers=auth("root", True))
    assert requests.patch(f"{site.url}/api/admin/keys/{parent_id}", json={"budget": 5},
                          headers=auth("root", True)).status_code == 200  # once they are revoked


def test_revoking_the_key_ends_its_session(site):
    key_id, key = restricted_key(site)
    browser = console(site, key)
    assert requests.delete(f"{site.url}/api/admin/keys/{key_id}", headers=auth("root", True)).status_code == 200
    page = browser.get(f"{site.url}/console/keys", allow_redirects=False)
    assert page.status_code == 302 and "/console/login?ended=1" in page.headers["Location"]
    minted = browser.post(f"{site.url}/console/keys", data={"csrf_token": browser.csrf, "name": "after"},
                          allow_redirects=False)
    assert minted.status_code == 302 and ApiKey.select().count() == 1
    played = play(browser, site, "p-free")
    assert played.status_code == 401 and played.json()["error"]["type"] == "authentication_error"
    assert ConsoleSession.select().count() == 0


def test_a_session_ends_when_its_admin_jwt_expires(site):
    """The issue's admin JWT with exp a moment ahead: once the clock passes exp, the admin API
    says 401 and the console's top-up form writes nothing. The test waits on the clock in a
    bounded loop for at most the two seconds the token has left."""
    exp = int(time.time()) + 2
    jwt = token("root", admin=True, exp=exp)
    browser = console(site, jwt)
    assert ConsoleSession.get().expires_at == dt.datetime.fromtimestamp(exp, dt.timezone.utc).replace(tzinfo=None)
    while time.time() < exp:  # bounded: exp is at most 2 s away
        time.sleep(0.05)
    assert requests.get(f"{site.url}/api/admin/accounts/alice", headers={"Authorization": f"Bearer {jwt}"}
                        ).status_code == 401
    before = LedgerEntry.select().count()
    posted = browser.post(f"{site.url}/console/admin/accounts/alice/credits",
                          data={"csrf_token": browser.csrf, "amount": "1000"}, allow_redirects=False)
    assert posted.status_code == 302 and "/console/login" in posted.headers["Location"]
    assert LedgerEntry.select().count() == before


@pytest.mark.parametrize("store", ["redis", "memory"], indirect=True)
def test_three_hundred_wrong_credentials_are_throttled(make_app, store, live_factory):
    site = live_factory(make_app(REDIS_URL=store))
    visitor, statuses = requests.Session(), []
    started = time.monotonic()
    for i in range(300):
        field = FIELD.search(visitor.get(f"{site.url}/console/login").text).group(1)
        answer = visitor.post(f"{site.url}/console/login", data={"credential": f"sk-guess{i}", "csrf_token": field})
        statuses.append(answer.status_code)
        if answer.status_code == 429:
            assert int(answer.headers["Retry-After"]) >= 1 and "Too many failed sign-ins" in answer.text
    elapsed = time.monotonic() - started
    assert statuses[:10] == [401] * 10 and statuses[10] == 401  # ten free, the eleventh starts the wait
    assert statuses.count(401) <= 10 + 1 + int(elapsed).bit_length() + 1, (statuses.count(401), elapsed)
    assert statuses.count(429) >= 280
    as_json = visitor.post(f"{site.url}/console/login", data={"credential": "sk-x"},
                           headers={"Accept": "application/json"})
    assert as_json.status_code == 429 and as_json.json()["error"]["code"] == "too_many_sign_ins"
    assert as_json.json()["error"]["type"] == "rate_limit_error" and "Retry-After" in as_json.headers


def test_sign_ins_are_throttled_in_process_while_redis_is_down(make_app, redis_proxy, live_factory):
    site = live_factory(make_app(REDIS_URL=redis_proxy.url))
    redis_proxy.cut()
    visitor, statuses = requests.Session(), []
    for i in range(14):
        field = FIELD.search(visitor.get(f"{site.url}/console/login").text).group(1)
        statuses.append(visitor.post(f"{site.url}/console/login",
                                     data={"credential": f"sk-guess{i}", "csrf_token": field}).status_code)
    assert statuses[:11] == [401] * 11 and statuses[11:] == [429] * 3


def test_one_credential_is_throttled_from_any_address(make_app, live_factory):
    """Forged tokens for one subject meet in its credential bucket, whatever their addresses."""
    site = live_factory(make_app(TRUSTED_PROXIES=1))
    statuses = []
    for i in range(8):
        visitor = requests.Session()
        field = FIELD.search(visitor.get(f"{site.url}/console/login").text).group(1)
        forged = token("root", admin=True, secret="guess-" + "x" * 40 + str(i))
        statuses.append(visitor.post(f"{site.url}/console/login", data={"credential": forged, "csrf_token": field},
                                     headers={"X-Forwarded-For": f"10.0.0.{i}"}).status_code)
    assert statuses[:6] == [401] * 6 and statuses[6:] == [429, 429]


def test_a_sign_in_form_token_is_good_for_one_try(site):
    visitor = requests.Session()
    field = FIELD.search(visitor.get(f"{site.url}/console/login").text).group(1)
    first = visitor.post(f"{site.url}/console/login", data={"credential": "sk-wrong", "csrf_token": field})
    visitor.cookies.set("tollgate_login", field, path="/console/login")  # the old token, sent again
    again = visitor.post(f"{site.url}/console/login", data={"credential": "sk-wrong", "csrf_token": field})
    assert (first.status_code, again.status_code) == (401, 403)


def test_a_minted_keys_embeddings_count_under_its_parents_rpm(site, gateway, upstream):
    r = gateway.post("/api/admin/models", headers=auth("root", True), json={
        "id": 21, "name": "e-free", "api": "openai", "kind": "embedding", "upstream_model": "up",
        "base_url": upstream.url_for("/v1").rstrip("/"), "api_key_env": "FAKE_API_KEY", "cost_per_1k_tokens": "1"})
    assert r.status_code == 201
    upstream.expect_request("/v1/embeddings").respond_with_json({
        "object": "list", "model": "up", "usage": {"prompt_tokens": 2, "total_tokens": 2},
        "data": [{"object": "embedding", "index": 0, "embedding": [0.5, -0.5]}]})
    _, key = restricted_key(site, models=["p-free", "e-free"], max_concurrent=None)
    browser = console(site, key)
    shown = browser.post(f"{site.url}/console/keys", data={"csrf_token": browser.csrf, "name": "child"}).text
    plain = re.search(r'id="new-key">(sk-[^<]+)<', shown).group(1)  # the page after the redirect
    embed = requests.post(f"{site.url}/v1/embeddings", headers={"Authorization": f"Bearer {plain}"},
                          json={"model": "e-free", "input": "hi"})
    assert embed.status_code == 200  # the child's embeddings work ...
    assert api_chat(site, key, "p-free").status_code == 429  # ... and took the parent's only call this minute


# issue 36: the playground's compare mode (several models in one call)


def compare(browser, site, models) -> requests.Response:
    return browser.post(f"{site.url}/console/playground/chat", json={"models": models, "prompt": "hi"},
                        headers={"X-CSRF-Token": browser.csrf})


@pytest.mark.parametrize("models, status, code, param", [
    (["p-free"], 400, "invalid_parameter", "models"),  # one model: the single playground's job
    (["p-free", "m-openai", "m-ollama", "m-gemini", "m-anthropic"], 400, "invalid_parameter", "models"),  # five
    ("p-free,m-openai", 400, "invalid_parameter", "models"),
    (["p-free", "nope"], 404, "model_not_found", "model"),
    (["p-free", "m-openai"], 403, "forbidden", "models"),  # the session's key may not use m-openai
])
def test_compare_refusals_are_the_contracts_body(site, upstream, models, status, code, param):
    _, key = restricted_key(site, rpm=None)
    refused = compare(console(site, key), site, models)
    body = refused.json()
    assert refused.status_code == status and (body["error"]["code"], body["error"]["param"]) == (code, param)
    assert (body["success"], body["data"], body["message"]) == (False, None, body["error"]["message"])
    assert upstream.log == [] and LedgerEntry.select().where(LedgerEntry.kind == "charge").count() == 0


@pytest.mark.parametrize("body", [[{"models": ["p-free", "m-openai"]}], "p-free", None])
def test_a_playground_body_that_is_not_a_json_object_is_400(site, upstream, body):
    browser = console(site, token("alice"))
    refused = browser.post(f"{site.url}/console/playground/chat", headers={"X-CSRF-Token": browser.csrf},
                           **({"data": ""} if body is None else {"json": body}))
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid_json" and upstream.log == []


def test_each_compared_model_is_one_call_under_the_keys_rpm(site, upstream):
    _, key = restricted_key(site, models=["p-free", "m-openai"], rpm=2, max_concurrent=None)
    browser = console(site, key)
    answered = compare(browser, site, ["p-free", "m-openai"])
    assert answered.status_code == 200
    chunks = [json.loads(line[6:]) for line in answered.text.split("\n\n") if line.startswith("data: {")]
    usage = chunks[-1]["usage"]
    assert [m["model"] for m in usage["by_model"]] == ["p-free", "m-openai"]
    charged = {e.model: e for e in LedgerEntry.select().where(LedgerEntry.kind == "charge")}
    assert {m["model"]: round(m["cost"] * 1_000_000) for m in usage["by_model"]} == \
        {name: -e.delta for name, e in charged.items()}  # paid by the session's account, a row each
    assert len({e.parallel_group for e in charged.values()}) == 1
    assert play(browser, site, "p-free").status_code == 429  # the key's two calls this minute are spent
    assert api_chat(site, key, "p-free").status_code == 429
