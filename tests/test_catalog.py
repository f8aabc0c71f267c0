"""`make seed-models` (flask seed-models): validation, idempotence, all-or-nothing; admin CRUD."""
from __future__ import annotations

import pytest

from config.settings import ROOT
from service.store import migrations
from service.store.db import AIModel
from tests.conftest import auth

GOOD = '''
[[models]]
id = 4
name = "deepseek-chat"
provider = "deepseek"
api = "openai"
base_url = "https://api.deepseek.com"
api_key_env = "DEEPSEEK_API_KEY"
cost_per_1k_tokens = "0.014"
'''


def seed(app, tmp_path, text: str):
    path = tmp_path / "models.toml"
    path.write_text(text)
    return app.test_cli_runner().invoke(args=["seed-models", "--file", str(path)])


def test_shipped_catalogue_seeds_and_is_idempotent(app):
    runner = app.test_cli_runner()
    first = runner.invoke(args=["seed-models", "--file", str(ROOT / "config" / "models.toml")])
    assert first.exit_code == 0, first.output
    rows = {m.name: m for m in AIModel.select()}
    assert rows["deepseek-chat"].id == 4 and rows["deepseek-chat"].cost_per_1k_tokens == 14_000
    assert rows["gemini-2.0-flash:generateContent"].id == 2
    assert rows["gemini-2.0-flash:generateContent"].provider == "Google"
    assert rows["gemini-2.0-flash:generateContent"].upstream_model == "gemini-2.0-flash"
    assert rows["llama2"].api == "ollama"
    assert {"openai", "anthropic"} <= {m.api for m in rows.values()}
    again = runner.invoke(args=["seed-models", "--file", str(ROOT / "config" / "models.toml")])
    assert again.exit_code == 0 and "0 created" in again.output
    assert AIModel.select().count() == len(rows)


@pytest.mark.parametrize("bad,needle", [
    ('api = "carrier-pigeon"', "api must be one of"),
    ('cost_per_1k_tokens = "-1"', "must not be negative"),
    ('cost_per_1k_tokens = "0.0000001"', "at most 6 decimals"),
    ('max_output_tokens = 0', "max_output_tokens"),
    ('colour = "blue"', "colour is not a catalogue field"),
    ('api_key_env = "sk-real-key-here"', "environment variable name"),
])
def test_bad_row_is_named_and_nothing_is_written(app, tmp_path, bad, needle):
    text = GOOD + f'''
[[models]]
id = 7
name = "broken"
api = "openai"
{bad}
'''
    if "api =" in bad:
        text = text.replace('api = "openai"\n' + bad, bad)
    result = seed(app, tmp_path, text)
    assert result.exit_code == 1
    assert "row 2 (broken)" in result.output and needle in result.output
    assert AIModel.select().count() == 0


def test_duplicate_name_is_refused(app, tmp_path):
    result = seed(app, tmp_path, GOOD + GOOD.replace("id = 4", "id = 5"))
    assert result.exit_code == 1 and "duplicate name 'deepseek-chat'" in result.output
    assert AIModel.select().count() == 0


def test_seed_updates_in_place_and_refreshes_lists(app, client, tmp_path):
    assert seed(app, tmp_path, GOOD).exit_code == 0
    listed = client.get("/api/ai-models/enabled", headers=auth()).json["data"]
    assert listed[0]["costPer1kTokens"] == 0.014
    assert seed(app, tmp_path, GOOD.replace("0.014", "0.02")).exit_code == 0
    listed = client.get("/api/ai-models/enabled", headers=auth()).json["data"]
    assert listed[0]["costPer1kTokens"] == 0.02


def test_admin_model_crud(client, admin_headers):
    r = client.post("/api/admin/models", json={"name": "m1", "api": "openai", "cost_per_1k_tokens": 0.5},
                    headers=admin_headers)
    assert r.status_code == 201 and r.json["id"] == 1 and r.json["cost_per_1k_tokens"] == 0.5
    r = client.patch("/api/admin/models/1", json={"enabled": False, "rpm": 5}, headers=admin_headers)
    assert r.status_code == 200 and r.json["enabled"] is False and r.json["rpm"] == 5
    assert client.get("/api/v1/models", headers=auth()).json["data"] == []
    r = client.patch("/api/admin/models/1", json={"api": "nope"}, headers=admin_headers)
    assert r.status_code == 400 and r.json["error"]["param"] == "api"
    assert client.delete("/api/admin/models/1", headers=admin_headers).status_code == 200
    assert client.get("/api/admin/models/1", headers=admin_headers).status_code == 404


def test_admin_api_needs_admin_role(client):
    r = client.get("/api/admin/models", headers=auth("bob"))
    assert r.status_code == 403 and r.json["error"]["code"] == "forbidden"


def test_schema_version_recorded_and_upgrade_is_idempotent(app):
    assert migrations.current_version() == migrations.STEPS[-1][0]
    assert migrations.upgrade() == []
    result = app.test_cli_runner().invoke(args=["db", "upgrade"])
    assert result.exit_code == 0 and "nothing to do" in result.output


def test_the_model_list_says_which_models_can_answer(client, admin_headers, upstream):
    """A fresh machine listed six models of which five could not answer, with nothing saying which."""
    rows = [{"name": "up", "api": "openai", "base_url": upstream.url_for("/v1")},
            {"name": "refused", "api": "openai", "base_url": "http://127.0.0.1:9/v1"},
            {"name": "keyless", "api": "openai", "base_url": upstream.url_for("/v1"),
             "api_key_env": "UNSET_PROVIDER_API_KEY"}]
    for row in rows:
        assert client.post("/api/admin/models", json=row, headers=admin_headers).status_code == 201
    listed = {m["id"]: m["ready"] for m in client.get("/v1/models", headers=auth()).json["data"]}
    assert listed == {"up": True, "refused": False, "keyless": False}
    assert client.get("/v1/models/refused", headers=auth()).json["ready"] is False
    assert client.get("/v1/models/up", headers=auth()).json["ready"] is True


def test_a_key_restricted_to_some_models_lists_and_retrieves_only_those(client, admin_headers, upstream):
    """SPEC §14: a key can do no more than its models allow; its model list showed every row (and
    retrieving one it cannot call was a 200) while its calls on them were 403."""
    for name in ("one", "two", "three"):
        row = {"name": name, "api": "openai", "base_url": upstream.url_for("/v1")}
        assert client.post("/api/admin/models", json=row, headers=admin_headers).status_code == 201
    key = client.post("/api/admin/keys", json={"account": "kay", "models": ["one", "two"]},
                      headers=admin_headers).json["key"]
    as_key = {"Authorization": f"Bearer {key}"}
    for headers in (as_key, as_key, auth()):  # (the second from the cache)
        listed = [m["id"] for m in client.get("/v1/models", headers=headers).json["data"]]
        assert listed == (["one", "two"] if headers is as_key else ["one", "two", "three"])
    assert client.get("/v1/models/one", headers=as_key).status_code == 200
    r = client.get("/v1/models/three", headers=as_key)
    assert r.status_code == 404 and r.json["error"]["code"] == "model_not_found"
