"""A gateway as deployed: `python -m service.server` in its own process, on a free port."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Gateway:
    """Start, await readiness, signal and stop a gateway process."""

    def __init__(self, env: dict, log_path: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
        full.update({"PORT": str(self.port), "HOST": "127.0.0.1", **env})
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "service.server"], cwd=ROOT, env=full,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        try:
            self._await_ready()
        except BaseException:  # not left running: the caller has nothing to stop
            self.stop()
            raise

    def _await_ready(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"gateway exited: {Path(self.log.name).read_text()}"
            try:
                # the port is bound before the workers start: a connection may wait in its
                # queue until a worker has started, so the answer may take the whole start-up
                wait = max(1.0, deadline - time.monotonic())
                if requests.get(f"{self.url}/healthz", timeout=(1, wait)).status_code == 200:
                    return
            except requests.ConnectionError:
                time.sleep(0.05)
        raise AssertionError("gateway did not start")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
