"""`make bench-streams`: N concurrent paced streams (default 1000, 40 tokens 50 ms apart) against a
chunked paced upstream, direct, through the bare relay (a thread per stream with no gateway work:
bench/bare_proxy.py), through one gateway process with its default settings (PostgreSQL, Redis,
auth, billing, limits on) and, with one process, through the event relay (one loop thread for every
stream, no gateway work: bench/event_relay.py); wall time, first-token p50/p99, chunks out =
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
    b, e = res.get("bare") or {}, res.get("event") or {}
    columns = [("direct", d), ("bare relay", b), ("event relay", e), ("gateway", g), ("LiteLLM proxy", peer)]
    columns = [(name, r) for name, r in columns if r]

    over = {name: r["wall_s"] / d["wall_s"] for name, r in columns if r is not d}
    added = {name: round(r["ttft_p99_ms"] - d["ttft_p99_ms"], 1) for name, r in columns if r is not d}
    rows = [("wall time, s", lambda r: r["wall_s"],
             "of direct (target for the gateway: within 1.5×): " + "; ".join(f"{n} {x:.2f}×" for n, x in over.items())),
            ("first token p50, ms", lambda r: r["ttft_p50_ms"], ""),
            ("first token p99, ms", lambda r: r["ttft_p99_ms"],
             "added (target for the gateway: < 250 ms): " + "; ".join(f"{n} {x} ms" for n, x in added.items())),
            ("streams complete", lambda r: r["complete"], f"of {res['streams']}"),
            ("chunks out / in", lambda r: f"{r['chunks_out']} / {r['chunks_in']}", ""),
            ("statuses", lambda r: r["statuses"], ""),
            ("RSS peak / after, MB", lambda r: f"{r['rss_peak_mb']} / {r['rss_idle_mb']}" if "cpu_s" in r else "",
             "target < 300"),
            ("CPU, s", lambda r: r.get("cpu_s", ""), "")]
    lines = [f"# make {'bench-peer' if peer else 'bench-streams'} (streams) — {res['when']}", "",
             f"{res['streams']} concurrent streams of {TOKENS} tokens {int(INTERVAL * 1000)} ms apart, chunked "
             f"upstream (bench/stream_upstream.py, asyncio); the gateway is "
             f"{'one process' if res.get('workers', 1) == 1 else str(res['workers']) + ' worker processes'} "
             f"with its default settings, PostgreSQL and Redis, auth, billing and limits on; streams spread over "
             f"{ACCOUNTS} accounts. Machine: {res['versions']['machine']}.", ""]
    if b:
        lines += ["The bare relay is the floor of a thread per stream on this stack (bench/bare_proxy.py): Flask and "
                  "waitress with the gateway's server settings (its epoll loop, the same threads, its switch interval, one "
                  "CPU of its own) passing each upstream chunk through with requests, no auth, billing, limits or "
                  "rewriting.", ""]
    if e:
        lines += ["The event relay (bench/event_relay.py) is the same Flask and waitress with one loop thread reading "
                  "every stream's upstream socket and writing each piece into its client's connection: no thread "
                  "woken per piece.", ""]
    if peer:
        lines += [f"LiteLLM {res['versions'].get('litellm', '?')}: its proxy from its own virtual environment, "
                  "1 uvicorn worker, master key on, no database, logging off, on the same upstream, "
                  "after the gateway was stopped.", ""]
    lines += ["| | " + " | ".join(name for name, _ in columns) + " | note |", "|---" * (len(columns) + 2) + "|"]
    lines += [f"| {label} | " + " | ".join(str(value(r)) for _, r in columns) + f" | {note} |"
              for label, value, note in rows]
    return "\n".join(lines) + "\n"


async def relay_run(stack: Stack, up: int, module: str, args: list[str], name: str) -> dict:
    """The same streams through one of the bench's relays (the stack's floors), stopped before
    the gateway runs."""
    port = free_port()
    proc = stack.start([PY, "-m", module, str(port), *args],
                       env={"BARE_UPSTREAM": f"http://127.0.0.1:{up}/v1/chat/completions",
                            "DATA_DIR": str(stack.tmp / name)}, name=name)
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
        threads = settings.load()["WAITRESS_THREADS"]
        res = {"streams": STREAMS, "workers": int(env.get("WORKERS", 1)), "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "versions": versions(), "direct": summary(direct, wall),
               "bare": asyncio.run(relay_run(stack, up, "bench.bare_proxy",
                                             [str(env.get("WORKERS", 1)), str(threads)], "bare")),
               "gateway": asyncio.run(sampled_run(gw, gateway.pid, tokens))}
        if res["workers"] == 1:  # one process: the event relay has no workers of its own
            res["event"] = asyncio.run(relay_run(stack, up, "bench.event_relay", [str(threads)], "event"))
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
