"""The real clients of /v1/responses (issue 33), run as their users run them against a live gateway
and fake providers speaking each format: Codex CLI (`codex exec`, installed by `make agents`)
and the OpenAI Agents SDK (`Runner.run`, `Runner.run_streamed`, its default Responses model), each
with a function-call turn, on an openai, an anthropic and a gemini row (translated) and an
openai_responses row (pass-through). Each run asserts that the
text the fake produced (quoting the tool's result) reached the client and that the ledger charged
exactly what the fake's usage said."""
from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import auth, token
from tests.fakes import agent as fake
from tests.helpers import charges, holds, invariant

ROOT = Path(__file__).resolve().parent.parent
CODEX = ROOT / ".agents" / "node_modules" / ".bin" / "codex"
APIS = ["openai", "anthropic", "gemini", "openai_responses"]


@pytest.fixture
def live_gateway(gateway, live_factory, upstream):
    """The gateway's rows m-openai, m-anthropic, m-gemini, and m-openai_responses (pass-through)."""
    r = gateway.post("/api/admin/models", headers=auth("root", True), json={
        "id": 9, "name": "m-openai_responses", "api": "openai_responses", "provider": "openai",
        "upstream_model": "up", "base_url": upstream.url_for("/v1").rstrip("/"), "api_key_env": "FAKE_API_KEY",
        "cost_per_1k_tokens": "1", "max_output_tokens": 64})
    assert r.status_code == 201, r.json
    return live_factory(gateway.application)


def _ledger_matches(model: fake.AgentModel) -> None:
    """One charge per answer the fake gave, each exactly its usage at the row's price (1 credit
    per 1k tokens); no hold left."""
    answered = len(model.answers)
    assert answered >= 2
    found = charges("alice")
    assert len(found) == answered
    assert all(e.delta == -(fake.PROMPT + fake.COMPLETION) * 1000 for e in found)
    assert holds() == 0
    invariant("alice")


# -- the OpenAI Agents SDK ---------------------------------------------------------------------

@pytest.fixture
def agents_sdk(live_gateway):
    import agents  # the test extra pins it: missing is an error, never a skip
    from openai import AsyncOpenAI

    agents.set_tracing_disabled(True)
    agents.set_default_openai_api("responses")
    agents.set_default_openai_client(AsyncOpenAI(base_url=f"{live_gateway.url}/v1", api_key=token(),
                                                 max_retries=0), use_for_tracing=False)
    return agents


def _weather_agent(agents, model: str):
    @agents.function_tool
    def weather(city: str) -> str:
        """The weather in a city."""
        return f"sunny-in-{city}-42"

    return agents.Agent(name="forecaster", instructions="Use the weather tool.", tools=[weather], model=model)


@pytest.mark.parametrize("api", APIS)
def test_agents_sdk_runner_run_with_a_function_tool(agents_sdk, upstream, api):
    model = fake.serve(upstream, api, "weather", {"city": "Paris"}, "sunny-in-Paris-42")
    result = asyncio.run(agents_sdk.Runner.run(_weather_agent(agents_sdk, f"m-{api}"), "Weather in Paris?"))
    assert result.final_output == "The fake provider saw: sunny-in-Paris-42."
    assert [a["tool"] for a in model.answers] == ["weather", None]
    assert not any(a["stream"] for a in model.answers)
    _ledger_matches(model)


@pytest.mark.parametrize("api", APIS)
def test_agents_sdk_runner_run_streamed_with_a_function_tool(agents_sdk, upstream, api):
    model = fake.serve(upstream, api, "weather", {"city": "Paris"}, "sunny-in-Paris-42")

    async def run():
        streamed = agents_sdk.Runner.run_streamed(_weather_agent(agents_sdk, f"m-{api}"), "Weather in Paris?")
        deltas = [e.data.delta async for e in streamed.stream_events()
                  if e.type == "raw_response_event" and e.data.type == "response.output_text.delta"]
        return streamed, "".join(deltas)

    streamed, text = asyncio.run(run())
    assert streamed.final_output == text == "The fake provider saw: sunny-in-Paris-42."
    assert [a["tool"] for a in model.answers] == ["weather", None] and all(a["stream"] for a in model.answers)
    _ledger_matches(model)


# -- Codex CLI ---------------------------------------------------------------------------------

def _codex_home(tmp_path: Path, url: str, model: str) -> Path:
    home = tmp_path / "codex-home"
    home.mkdir()
    (home / "config.toml").write_text(f'''model = "{model}"
model_provider = "tollgate"
approval_policy = "never"
sandbox_mode = "danger-full-access"

[model_providers.tollgate]
name = "Tollgate"
base_url = "{url}/v1"
wire_api = "responses"
env_key = "TOLLGATE_API_KEY"
request_max_retries = 0
stream_max_retries = 0
''')
    return home


@pytest.mark.parametrize("api", APIS)
def test_codex_exec_runs_a_shell_command_the_model_asked_for(live_gateway, upstream, tmp_path, api):
    if not CODEX.exists():
        pytest.fail(f"Codex CLI is not installed at {CODEX}: run `make agents`")
    model = fake.serve(upstream, api, "exec_command", {"cmd": "echo tollgate-ok-$((40+2))"}, "tollgate-ok-42")
    work = tmp_path / "work"
    work.mkdir()
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "CODEX_HOME": str(_codex_home(
        tmp_path, live_gateway.url, f"m-{api}")), "TOLLGATE_API_KEY": token(), "NO_COLOR": "1",
        "RUST_LOG": "error"}
    done = subprocess.run([str(CODEX), "exec", "--skip-git-repo-check", "--dangerously-bypass-approvals-and-sandbox",
                           "-C", str(work), "Run the echo and tell me what it printed."],
                          env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "The fake provider saw: tollgate-ok-42." in done.stdout, done.stdout[-2000:] + done.stderr[-2000:]
    assert [a["tool"] for a in model.answers] == ["exec_command", None] and all(a["stream"] for a in model.answers)
    if api == "openai_responses":  # Codex's own body, as sent: its hosted web search included
        sent = model.answers[0]["body"]
        assert {"client_metadata", "prompt_cache_key", "include"} <= set(sent)
        assert {"web_search", "namespace"} <= {t["type"] for t in sent["tools"]}
    elif api == "openai":  # translated: namespaced functions flattened, the optional web search left out
        names = [t["function"]["name"] for t in model.answers[0]["body"]["tools"]]
        assert "exec_command" in names and any("__" in n for n in names) and "web_search" not in names
    _ledger_matches(model)


def test_codex_is_the_pinned_version():
    if not CODEX.exists() or shutil.which("node") is None:
        pytest.fail("Codex CLI is not installed: run `make agents`")
    out = subprocess.run([str(CODEX), "--version"], capture_output=True, text=True, timeout=60).stdout
    pinned = next(line.split("=", 1)[1].strip() for line in (ROOT / "Makefile").read_text().splitlines()
                  if line.startswith("CODEX_VERSION"))
    assert out.strip() == f"codex-cli {pinned}"
