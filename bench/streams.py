"""`make bench-streams`: N concurrent paced streams (default 1000, 40 tokens 50 ms apart) against a
chunked paced upstream, direct, through the bare relay (the stack's floor: bench/bare_proxy.py) and
through one gateway process with its default settings
(PostgreSQL, Redis, auth, billing, limits on); wall time, first-token p50/p99, chunks out =
chunks in, RSS and CPU. Writes bench/streams.md and bench/streams.json (with
BENCH_STREAM_WORKERS=N: bench/streams-workersN.*). With BENCH_PEER (`make bench-peer`), LiteLLM's
proxy runs the same streams after the gateway: bench/streams-peer.*."""
from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jwt

from config import settings

from bench.run import (PEER, PEER_KEY, PY, ROOT, Stack, await_port, flask, free_port, gateway_env, litellm,
                       litellm_version, prepare_database, usage, versions)

STREAMS = int(os.environ.get("BENCH_STREAMS", "1000"))
TOKENS = int(os.environ.get("BENCH_TOKENS", "40"))
INTERVAL = float(os.environ.get("BENCH_INTERVAL", "0.05"))
ACCOUNTS = int(os.environ.get("BENCH_ACCOUNTS", "100"))  # streams spread over accounts (per-account caps)
SECRET = "bench-secret-key-bench-secret-key-0123456789"
STAMP = re.compile(rb'"content":\s*"(\d+\.\d+)\|')


async def one_stream(port: int, path: str, token: str | None, framing_done: bytes) -> dict:
    body = json.dumps({"model": "paced", "stream": True,
                       "messages": [{"role": "user", "content": "Say hello."}]}).encode()
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
    writer.write(f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n{auth}"
                 f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    await writer.drain()
    buf, seen, first, status = b"", 0, None, None
    while True:
        data = await reader.read(65536)
        if not data:
            break
        now = time.monotonic()
        buf += data
        if status is None and b"\r\n" in buf:
            status = int(buf.split(b" ", 2)[1])
        found = len(STAMP.findall(buf))
        if found > seen and first is None:
            first = now
        seen = found
        if framing_done in buf[-64:]:
            break
    writer.close()
    return {"status": status, "chunks": seen, "ttft": (first - started) * 1000 if first else None,
            "done": (time.monotonic() - started)}


async def many(port: int, path: str, tokens: list[str | None]) -> tuple[list[dict], float]:
    started = time.monotonic()
    results = await asyncio.gather(*(one_stream(port, path, t, b"[DONE]") for t in tokens),
                                   return_exceptions=True)
    wall = time.monotonic() - started
    return [r if isinstance(r, dict) else {"status": None, "chunks": 0, "ttft": None, "error": repr(r)}
            for r in results], wall


class Sampler:
    """Peak RSS and CPU seconds of a process and its children (the workers when WORKERS > 1),
    sampled while a run goes."""

    def __init__(self, pid: int):
        self.pid, self.peak, self.running = pid, 0.0, True

    def pids(self) -> list[int]:
        children = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()
        return [self.pid, *map(int, children)]

    def cpu(self) -> float:
        return sum(seconds for seconds, _ in usage(self.pids()).values())

    def rss(self) -> float:
        total = 0
        for pid in self.pids():
            status = Path(f"/proc/{pid}/status").read_text()
            total += int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))
        return total / 1024

    async def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.rss())
            await asyncio.sleep(0.1)


def summary(results: list[dict], wall: float) -> dict:
    ttfts = sorted(r["ttft"] for r in results if r.get("ttft") is not None)
    q = statistics.quantiles(ttfts, n=100) if len(ttfts) > 1 else [ttfts[0]] * 99 if ttfts else [0] * 99
    return {"wall_s": round(wall, 2), "ttft_p50_ms": round(statistics.median(ttfts), 1) if ttfts else None,
            "ttft_p99_ms": round(q[98], 1), "complete": sum(r["chunks"] == TOKENS for r in results),
            "statuses": {str(s): sum(r["status"] == s for r in results) for s in {r["status"] for r in results}},
            "chunks_in": TOKENS * len(results), "chunks_out": sum(r["chunks"] for r in results)}


async def sampled_run(port: int, pid: int, tokens: list[str]) -> dict:
    """One stream per token against `port`, with the RSS and CPU of process `pid` and its children."""
    sampler = Sampler(pid)
    task = asyncio.create_task(sampler.run())
    cpu = sampler.cpu()
    results, wall = await many(port, "/v1/chat/completions", tokens)
    sampler.running = False
    await task
    out = summary(results, wall)
    out.update(rss_peak_mb=round(sampler.peak, 1), cpu_s=round(sampler.cpu() - cpu, 2),
               rss_idle_mb=round(sampler.rss(), 1))
    return out


def render(res: dict) -> str:
    d, g, peer = res["direct"], res["gateway"], res.get("litellm")
    b = res.get("bare") or {}
    added = round(g["ttft_p99_ms"] - d["ttft_p99_ms"], 1)
    p = peer or {}

    def chunks(r):
        return f"{r['chunks_out']} / {r['chunks_in']}" if r else None

    def rss(r):
        return f"{r['rss_peak_mb']} / {r['rss_idle_mb']}" if r else None

    rows = [("wall time, s", d["wall_s"], b.get("wall_s"), g["wall_s"], p.get("wall_s"),
             f"within 1.5× of direct: {g['wall_s'] / d['wall_s']:.2f}×" + (
                 f"; the bare relay {b['wall_s'] / d['wall_s']:.2f}×" if b else "")),
            ("first token p50, ms", d["ttft_p50_ms"], b.get("ttft_p50_ms"), g["ttft_p50_ms"], p.get("ttft_p50_ms"), ""),
            ("first token p99, ms", d["ttft_p99_ms"], b.get("ttft_p99_ms"), g["ttft_p99_ms"], p.get("ttft_p99_ms"),
             f"added p99 {added} ms (target < 250)" + (
                 f"; the bare relay {round(b['ttft_p99_ms'] - d['ttft_p99_ms'], 1)} ms" if b else "")),
            ("streams complete", d["complete"], b.get("complete"), g["complete"], p.get("complete"),
             f"of {res['streams']}"),
            ("chunks out / in", chunks(d), chunks(b), chunks(g), chunks(peer), ""),
            ("statuses", d["statuses"], b.get("statuses"), g["statuses"], p.get("statuses"), ""),
            ("RSS peak / after, MB", "", rss(b), rss(g), rss(peer), "target < 300"),
            ("CPU, s", "", b.get("cpu_s"), g["cpu_s"], p.get("cpu_s"), "")]
    lines = [f"# make {'bench-peer' if peer else 'bench-streams'} (streams) — {res['when']}", "",
             f"{res['streams']} concurrent streams of {TOKENS} tokens {int(INTERVAL * 1000)} ms apart, chunked "
             f"upstream (bench/stream_upstream.py, asyncio); the gateway is "
             f"{'one process' if res.get('workers', 1) == 1 else str(res['workers']) + ' worker processes'} "
             f"with its default settings, PostgreSQL and Redis, auth, billing and limits on; streams spread over "
             f"{ACCOUNTS} accounts. Machine: {res['versions']['machine']}.", ""]
    if b:
        lines += ["The bare relay is the floor this stack allows (bench/bare_proxy.py): Flask and waitress with "
                  "the gateway's server settings (poll loop, the same threads, its switch interval, one CPU of its own) passing each "
                  "upstream chunk through with requests, no auth, billing, limits or rewriting.", ""]
    if peer:
        lines += [f"LiteLLM {res['versions'].get('litellm', '?')}: its proxy from its own virtual environment, "
                  "1 uvicorn worker, master key on, no database, logging off, on the same upstream, "
                  "after the gateway was stopped.", ""]
    head = ["direct", "bare relay", "gateway"] + (["LiteLLM proxy"] if peer else [])
    lines += ["| | " + " | ".join(head) + " | note |", "|---" * (len(head) + 2) + "|"]
    lines += [f"| {row[0]} | " + " | ".join("" if v is None else str(v) for v in row[1:1 + len(head)])
              + f" | {row[-1]} |" for row in rows]
    return "\n".join(lines) + "\n"


async def bare_run(stack: Stack, up: int, workers: int) -> dict:
    """The same streams through the bare relay (the stack's floor), stopped before the gateway runs."""
    port = free_port()
    proc = stack.start([PY, "-m", "bench.bare_proxy", str(port), str(workers), str(settings.load()["WAITRESS_THREADS"])],
                       env={"BARE_UPSTREAM": f"http://127.0.0.1:{up}/v1/chat/completions",
                            "DATA_DIR": str(stack.tmp / "bare")}, name="bare")
    await_port(port)
    await many(port, "/v1/chat/completions", [None] * 20)
    out = await sampled_run(port, proc.pid, [None] * STREAMS)
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(30)
    return out


async def peer_run(stack: Stack, up: int) -> tuple[dict, str]:
    """LiteLLM's proxy on the same upstream, the same streams (`make bench-peer`)."""
    port = free_port()
    proc = litellm(stack, port, up, up)
    await asyncio.gather(*(one_stream(port, "/v1/chat/completions", PEER_KEY, b"[DONE]") for _ in range(20)))
    return await sampled_run(port, proc.pid, [PEER_KEY] * STREAMS), litellm_version()


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="tollgate-streams-"))
    stack = Stack(tmp)
    up, gw = free_port(), free_port()
    try:
        stack.start([PY, "-m", "bench.stream_upstream", str(up), "chunked", str(TOKENS), str(INTERVAL)],
                    name="upstream")
        await_port(up)
        prepare_database()
        env = {k: v for k, v in gateway_env(tmp, gw).items() if k not in ("WORKERS", "WAITRESS_THREADS")}
        env.update(NEW_ACCOUNT_CREDITS="100000", RATE_LIMIT_DEFAULT="100000000/minute")
        if os.environ.get("BENCH_STREAM_WORKERS"):  # processes sharing the port (default: one, the target's)
            env["WORKERS"] = os.environ["BENCH_STREAM_WORKERS"]
        (tmp / "models.toml").write_text(f'[[models]]\nid = 1\nname = "paced"\napi = "openai"\n'
                                         f'base_url = "http://127.0.0.1:{up}/v1"\ncost_per_1k_tokens = "0.002"\n')
        flask(env, "seed-models", "--file", str(tmp / "models.toml"))
        gateway = stack.start([PY, "-m", "service.server"], env=env, name="gateway")
        await_port(gw)
        now = int(time.time())
        tokens = [jwt.encode({"sub": f"bench-{i % ACCOUNTS}", "iat": now, "exp": now + 3600}, SECRET,
                             algorithm="HS256") for i in range(STREAMS)]
        asyncio.run(many(up, "/v1/chat/completions", [None] * 20))  # warm-up
        asyncio.run(many(gw, "/v1/chat/completions", tokens[:ACCOUNTS]))  # accounts created, pools warm
        direct, wall = asyncio.run(many(up, "/v1/chat/completions", [None] * STREAMS))
        res = {"streams": STREAMS, "workers": int(env.get("WORKERS", 1)), "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "versions": versions(), "direct": summary(direct, wall),
               "bare": asyncio.run(bare_run(stack, up, int(env.get("WORKERS", 1)))),
               "gateway": asyncio.run(sampled_run(gw, gateway.pid, tokens))}
        if PEER:  # the gateway stopped first: LiteLLM alone on the machine with the upstream
            os.killpg(gateway.pid, signal.SIGTERM)
            gateway.wait(30)
            res["litellm"], res["versions"]["litellm"] = asyncio.run(peer_run(stack, up))
    finally:
        stack.stop()
    name = "streams" if res["workers"] == 1 else f"streams-workers{res['workers']}"
    name += "-peer" if PEER else ""
    (ROOT / "bench" / f"{name}.json").write_text(json.dumps(res, indent=1) + "\n")
    (ROOT / "bench" / f"{name}.md").write_text(render(res))
    sys.stdout.write(render(res))


if __name__ == "__main__":
    main()
