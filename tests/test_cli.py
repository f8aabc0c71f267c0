"""The `tollgate` console command installed with the package runs the ops commands."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

TOLLGATE = Path(sys.executable).parent / "tollgate"


def run(tmp_path, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "DATA_DIR": str(tmp_path), "DATABASE_URL": f"sqlite:///{tmp_path / 't.db'}",
           "REDIS_URL": "", "HOLD_REAP_INTERVAL_SECONDS": "0"}
    return subprocess.run([str(TOLLGATE), *args], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)


def test_the_tollgate_command_creates_tops_up_and_shows_an_account(tmp_path):
    assert run(tmp_path, "accounts", "create", "demo").returncode == 0
    assert run(tmp_path, "accounts", "topup", "demo", "2.5").returncode == 0
    shown = run(tmp_path, "accounts", "show", "demo")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout.replace("'", '"'))["balance"] == 2.5


def test_the_tollgate_command_fails_with_a_message_for_an_unknown_account(tmp_path):
    shown = run(tmp_path, "accounts", "show", "nobody")
    assert shown.returncode == 1 and "no account named nobody" in shown.stderr
