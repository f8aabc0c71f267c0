"""Soak: 20 000 mixed good, bad and failing calls against the gateway as deployed (not a unit test).

Afterwards the gateway's thread count and memory must be back near where they started, no hold
may remain, and every account must satisfy SPEC §9: balance = sum of its ledger, held = 0.
Run: .venv/bin/python scripts/soak.py [CALLS]   (writes bench/soak.md)
"""
from __future__ import annotations

import os
import random
import re
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg2
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.run import (  # noqa: E402
    DB, PY, ROOT, Stack, await_port, flask, free_port, gateway_env, nginx_static, prepare_database,
)

CALLS = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000


def proc_stats(parent) -> tuple[int, float]:
    """(threads, RSS MiB) summed over the gateway's worker processes."""
    pids = os.popen(f"pgrep -P {parent.pid}").read().split() or [str(parent.pid)]
    threads = rss = 0
    for pid in pids:
        status = Path(f"/proc/{pid}/status").read_text()
        threads += int(re.search(r"Threads:\s+(\d+)", status).group(1))
        rss += int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024
    return threads, rss


def calls(url: str, tokens: list[str]):
    """A random call: most good, some invalid, some to failing or dead upstreams, some streams."""
    good = {"model": "good", "messages": [{"role": "user", "content": "hi"}]}
    kinds = [("good", good, 60), ("stream", {**good, "stream": True}, 10),
             ("bad json", "{not json", 5), ("bad param", {**good, "temperature": 9}, 5),
             ("unknown model", {**good, "model": "nope"}, 5), ("failing", {**good, "model": "failing"}, 5),
             ("dead", {**good, "model": "dead"}, 5), ("garbage", {**good, "model": "garbage"}, 5)]
    names, bodies, weights = zip(*[(k, b, w) for k, b, w in kinds])
    session = requests.Session()

    def one(_):
        i = random.choices(range(len(names)), weights)[0]
        headers = {"Authorization": f"Bearer {random.choice(tokens)}", "Content-Type": "application/json"}
        body = bodies[i]
        kwargs = {"data": body} if isinstance(body, str) else {"json": body}
        r = session.post(url, headers=headers, timeout=30, **kwargs)
        r.content  # read streams to the end
        return names[i], r.status_code

    return one


def check_money() -> list[str]:
    problems = []
    with psycopg2.connect(DB) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM hold")
        if cur.fetchone()[0]:
            problems.append("holds remain")
        cur.execute("""SELECT a.name, a.balance, a.held, COALESCE(SUM(l.delta), 0) FROM account a
                       LEFT JOIN ledgerentry l ON l.account_id = a.id GROUP BY a.id""")
        for name, balance, held, total in cur.fetchall():
            if balance != total or held != 0 or balance < 0:
                problems.append(f"{name}: balance {balance}, held {held}, ledger {total}")
    return problems


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="tollgate-soak-"))
    stack = Stack(tmp)
    static, port = free_port(), free_port()
    try:
        nginx_static(stack, static)
        prepare_database()
        env = gateway_env(tmp, port) | {"UPSTREAM_RETRIES": "1", "UPSTREAM_BACKOFF": "0.01",
                                        "BREAKER_THRESHOLD": "0"}
        models = tmp / "models.toml"
        rows = {"good": f"http://127.0.0.1:{static}/v1", "failing": f"http://127.0.0.1:{static}/fail",
                "garbage": f"http://127.0.0.1:{static}/garbage", "dead": "http://127.0.0.1:9/v1"}
        models.write_text("".join(f'[[models]]\nid = {i + 1}\nname = "{n}"\napi = "openai"\nbase_url = "{u}"\n'
                                  f'cost_per_1k_tokens = "0.5"\n\n' for i, (n, u) in enumerate(rows.items())))
        flask(env, "seed-models", "--file", str(models))
        tokens = []
        for i in range(20):
            flask(env, "accounts", "topup", f"soak{i}", "1" if i < 5 else "100000")  # some run dry: 402s
            tokens.append(flask(env, "tokens", "issue", f"soak{i}"))
        gateway = stack.start([PY, "-m", "service.server"], env=env, name="gateway")
        await_port(port)
        url = f"http://127.0.0.1:{port}/api/v1/chat/completions"
        one = calls(url, tokens)
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(one, range(200)))  # warm-up
        time.sleep(1)  # let worker threads settle before the baseline (measurement, not a test wait)
        start = proc_stats(gateway)
        began = time.monotonic()
        with ThreadPoolExecutor(16) as pool:
            outcomes = Counter(pool.map(one, range(CALLS)))
        elapsed = time.monotonic() - began
        time.sleep(2)
        end = proc_stats(gateway)
        problems = check_money()
    finally:
        stack.stop()
    lines = [f"# Soak: {CALLS} mixed calls in {elapsed:.0f} s ({CALLS / elapsed:.0f}/s), 16 clients", "",
             "| call | status | count |", "|---|---|---|"]
    lines += [f"| {kind} | {status} | {n} |" for (kind, status), n in sorted(outcomes.items())]
    lines += ["", f"* threads: {start[0]} before, {end[0]} after",
              f"* RSS: {start[1]:.1f} MiB before, {end[1]:.1f} MiB after ({(end[1] - start[1]) / start[1]:+.1%})",
              f"* 5xx other than the failing upstreams' 502/503: "
              f"{sum(n for (k, s), n in outcomes.items() if s >= 500 and k not in ('failing', 'dead', 'garbage'))}",
              f"* credits invariant (SPEC §9) and holds: {'holds, none left' if not problems else problems}"]
    report = "\n".join(lines) + "\n"
    (ROOT / "bench" / "soak.md").write_text(report)
    print(report)
    sys.exit(1 if problems or end[0] > start[0] + 4 else 0)


if __name__ == "__main__":
    main()
