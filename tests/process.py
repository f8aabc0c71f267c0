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


# Ports for servers a test starts in another process, below the kernel's ephemeral range (from
# 32768): a port bind(0) picked and let go could be taken meanwhile by any outgoing connection, or
# by another pytest-xdist worker's pick. Each worker has its own thousand, taken in turn.
_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
_PORTS = iter(range(20000 + 1000 * (_WORKER % 12), 21000 + 1000 * (_WORKER % 12)))


def free_port() -> int:
    """A loopback port nothing listens on, for a server about to be started."""
    global _PORTS
    for _ in range(2000):
        port = next(_PORTS, None)
        if port is None:  # a long run: start the worker's range again
            _PORTS = iter(range(20000 + 1000 * (_WORKER % 12), 21000 + 1000 * (_WORKER % 12)))
            continue
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue  # in use
            return port
    raise RuntimeError("no free port in this worker's range")


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
