"""The real local model (Gemma 3 270M on llama.cpp's OpenAI-compatible server) through the gateway."""
from __future__ import annotations

import subprocess

import openai
import pytest
import requests

from config.settings import ROOT
from tests import schemas
from tests.conftest import token
from tests.helpers import charges, holds

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


@pytest.fixture(scope="module")
def local_model():
    """Started (or found running) by scripts/local_model.sh, as `make test` and `make run` do."""
    done = subprocess.run([str(ROOT / "scripts" / "local_model.sh"), "start"], capture_output=True, text=True,
                          timeout=1800)
    assert done.returncode == 0, done.stdout + done.stderr
    return "http://127.0.0.1:8081/v1"


@pytest.fixture
def gateway(make_app, local_model, live_factory):
    app = make_app()
    runner = app.test_cli_runner()
    assert runner.invoke(args=["seed-models", "--file", str(ROOT / "config" / "models.toml")]).exit_code == 0
    return live_factory(app)


def test_local_model_answers_through_the_gateway(gateway):
    client = openai.OpenAI(base_url=f"{gateway.url}/api/v1", api_key=token("newcomer"), max_retries=0)
    result = client.chat.completions.create(
        model="gemma-3-270m", max_tokens=24, messages=[{"role": "user", "content": "Say hello."}])
    body = result.model_dump(exclude_unset=True)
    schemas.check("CreateChatCompletionResponse", body)
    assert result.choices[0].message.content.strip()
    assert result.usage.prompt_tokens > 0 and 0 < result.usage.completion_tokens <= 24
    row = charges("newcomer")[0]
    assert (row.prompt_tokens, row.completion_tokens) == (result.usage.prompt_tokens,
                                                          result.usage.completion_tokens)
    assert row.delta == 0 and not row.estimated  # free, and counted by the model server

    stream = client.chat.completions.create(
        model="gemma-3-270m", max_tokens=24, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "Count to five."}])
    chunks = [c.model_dump(exclude_unset=True) for c in stream]
    for c in chunks:
        schemas.check("CreateChatCompletionStreamResponse", c)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text.strip()
    usage = chunks[-1]["usage"]
    assert usage["completion_tokens"] > 0
    streamed = charges("newcomer")[1]
    assert (streamed.prompt_tokens, streamed.completion_tokens) == (usage["prompt_tokens"],
                                                                    usage["completion_tokens"])
    assert holds() == 0


def test_a_call_without_max_tokens_stops_at_the_rows_cap(gateway):
    """The local model is a base model that rarely emits its end token: unbounded, the README's demo
    call ran to the whole 4096-token context. The row's max_output_tokens is sent as the cap."""
    r = requests.patch(f"{gateway.url}/api/admin/models/3", json={"max_output_tokens": 12},
                       headers={"Authorization": f"Bearer {token('root', admin=True)}"}, timeout=10)
    assert r.status_code == 200, r.text
    user = openai.OpenAI(base_url=f"{gateway.url}/api/v1", api_key=token("newcomer"), max_retries=0)
    result = user.chat.completions.create(model="gemma-3-270m",
                                          messages=[{"role": "user", "content": "Tell me a long story."}])
    assert 0 < result.usage.completion_tokens <= 12
    assert result.choices[0].finish_reason in ("length", "stop")
