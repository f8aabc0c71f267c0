"""Claude Code, the real client (`claude -p`, installed by `make test` at the version in the
Makefile), through a live gateway to a fake model on an openai, an anthropic, a gemini and an ollama row:
the model asks for Claude Code's Read tool on a file in the test's folder, Claude Code runs it
and sends the result back, the model answers with what the file held — all streamed. The text
reaches Claude Code's output and the ledger charged what the fake's usage said, call by call."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import auth, token
from tests.fakes.agents import PATHS, ScriptedModel
from tests.helpers import charges, holds, invariant

# the Makefile's pinned install; TEST_CLAUDE_CODE names another `claude` to try (docs/agents.md)
CLAUDE = Path(os.environ.get("TEST_CLAUDE_CODE")
              or Path(__file__).resolve().parent.parent / ".agents" / "node_modules" / ".bin" / "claude")


@pytest.fixture(autouse=True)
def installed():
    """Never skipped: `make test` installs Claude Code (make agents); a run without it fails here."""
    assert CLAUDE.exists(), f"Claude Code is not installed at {CLAUDE}: run `make agents`"


def _claude(tmp_path: Path, base_url: str, model: str, prompt: str, key_variable: str) -> dict:
    """`claude -p` with its answer as JSON, no network but the gateway: its own home, no
    updater, telemetry, error reports or other traffic, every model name set to the row's; the
    gateway's token in `key_variable` (ANTHROPIC_API_KEY: `x-api-key`; ANTHROPIC_AUTH_TOKEN:
    `Authorization: Bearer`)."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "ANTHROPIC_BASE_URL": base_url,
           key_variable: token(), "DISABLE_AUTOUPDATER": "1", "DISABLE_TELEMETRY": "1",
           "DISABLE_ERROR_REPORTING": "1", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
           "ANTHROPIC_DEFAULT_HAIKU_MODEL": model, "ANTHROPIC_DEFAULT_SONNET_MODEL": model,
           "ANTHROPIC_DEFAULT_OPUS_MODEL": model, "ANTHROPIC_SMALL_FAST_MODEL": model}
    run = subprocess.run([str(CLAUDE), "-p", prompt, "--model", model, "--output-format", "json",
                          "--allowedTools", "Read"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, (run.stdout, run.stderr)
    return json.loads(run.stdout)


def _noting(app, answered: list):
    """The WSGI app, noting each request's path and status."""
    def noted(environ, start_response):
        def start(status, headers, *exc):
            answered.append((environ["PATH_INFO"], status))
            return start_response(status, headers, *exc)
        return app(environ, start)
    return noted


@pytest.mark.parametrize("api,key_variable", [("openai", "ANTHROPIC_API_KEY"), ("anthropic", "ANTHROPIC_API_KEY"),
                                              ("gemini", "ANTHROPIC_AUTH_TOKEN"), ("ollama", "ANTHROPIC_API_KEY")])
def test_claude_code_reads_a_file_through_the_gateway(gateway, upstream, live_factory, tmp_path, api,
                                                      key_variable):
    note = tmp_path / "note.txt"
    secret = f"tollgate-{api}-7f3a"
    note.write_text(secret + "\n")
    fake = ScriptedModel(api, "Read", {"file_path": str(note)}, secret)
    for path in (PATHS[api] if isinstance(PATHS[api], tuple) else (PATHS[api],)):
        upstream.expect_request(path).respond_with_handler(fake.handler)
    # Claude Code asks for 32 000 output tokens over a ~76 kB prompt: the hold needs the credits
    gateway.post("/api/admin/accounts/alice/credits", json={"amount": 10000}, headers=auth("root", True))
    answered: list[tuple[str, str]] = []  # (path, status) of every request Claude Code made
    live = live_factory(_noting(gateway.application, answered))

    out = _claude(tmp_path, live.url, f"m-{api}", "What does note.txt in this folder say? Use the Read tool.",
                  key_variable)

    assert out["is_error"] is False and out["result"] == fake.answer()
    # nothing refused on the way (Claude Code retries some 400s without the field: 2.1.332's
    # deferred tools got through that way before they were served)
    assert [status for path, status in answered if path.startswith("/v1/messages")] == ["200 OK"] * 2, answered
    assert len(fake.calls) == 2 and all(c.get("stream") or api == "gemini" for c in fake.calls)
    if api == "anthropic":  # as Claude Code sent them, with the row's model
        assert {"context_management", "thinking", "output_config", "metadata"} <= set(fake.calls[0])
        assert fake.calls[0]["model"] == "up"
    assert secret not in json.dumps(fake.calls[0]) and secret in json.dumps(fake.calls[1])
    charged = [-row.delta for row in charges("alice")]
    assert charged == [sum(u) * 1000 for u in fake.usage]  # 1 credit per 1k tokens, every class
    reported = out["usage"]
    assert reported["output_tokens"] == sum(u[3] for u in fake.usage)
    assert (reported["input_tokens"] + reported["cache_read_input_tokens"]
            + reported["cache_creation_input_tokens"]) == sum(u[0] + u[1] + u[2] for u in fake.usage)
    assert holds() == 0
    invariant("alice")
