"""`make bench`: start a static upstream (nginx `return 200`), a paced streaming upstream, the gateway
as deployed (waitress, WORKERS processes, PostgreSQL, Redis, auth, billing, limits) and a bare
Flask+waitress pass-through proxy; load them with wrk; write bench/results.md."""
from __future__ import annotations

import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from bench import scenarios
from service.server.server import raise_descriptor_limit

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
DB = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/tollgate_bench")
REDIS = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
# one gateway process against one bare-proxy process with the same threads (issue 16's setting)
WORKERS, THREADS = int(os.environ.get("BENCH_WORKERS", "1")), int(os.environ.get("BENCH_THREADS", "32"))
DURATION = int(os.environ.get("BENCH_SECONDS", "10"))
CONCURRENCY = (1, 8, 32)
IDLE = int(os.environ.get("BENCH_IDLE", "4000"))  # keep-alive connections left open beside a lone caller
PEER = os.environ.get("BENCH_PEER")  # LiteLLM's `litellm` command (`make bench-peer`), or unset
PEER_KEY = "sk-bench-peer-master-key-0123456789abcdef"  # LiteLLM refuses to start without one
BODY = {"model": "bench", "messages": [{"role": "user", "content": "Say hello in one word."}]}
ANSWER = {"id": "chatcmpl-static", "object": "chat.completion", "created": 1700000000, "model": "static",
          "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello!"},
                       "logprobs": None, "finish_reason": "stop"}],
          "usage": {"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14}}
WRK_LUA = """
wrk.method = "POST"
wrk.body = os.getenv("WRK_BODY")
wrk.headers["Content-Type"] = "application/json"
local auth = os.getenv("WRK_AUTH")
if auth and auth ~= "" then wrk.headers["Authorization"] = auth end
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def await_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


class Stack:
    """Every process of the run; stopped together."""

    def __init__(self, tmp: Path):
        self.tmp, self.procs = tmp, []

    def start(self, args, env=None, name="proc", drop=(), cwd=ROOT) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "wb")
        env = {k: v for k, v in {**os.environ, **(env or {})}.items() if k not in drop}
        proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)  # forked workers too
        for proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


def nginx_static(stack: Stack, port: int) -> None:
    body = json.dumps(ANSWER).replace("'", "\\'")
    conf = stack.tmp / "nginx.conf"
    conf.write_text(f"""worker_processes 1; daemon off; pid {stack.tmp}/nginx.pid; error_log {stack.tmp}/nginx.err;
events {{ worker_connections 1024; }}
http {{ access_log off; client_body_temp_path {stack.tmp}/nb; proxy_temp_path {stack.tmp}/np;
  fastcgi_temp_path {stack.tmp}/nf; uwsgi_temp_path {stack.tmp}/nu; scgi_temp_path {stack.tmp}/ns;
  keepalive_requests 1000000;
  server {{ listen 127.0.0.1:{port};
    location /fail/ {{ default_type application/json; return 500 '{{"error": {{"message": "boom"}}}}'; }}
    location /garbage/ {{ default_type application/json; return 200 'not json at all'; }}
    location / {{ client_body_buffer_size 64k; default_type application/json; return 200 '{body}'; }} }} }}
""")
    stack.start([shutil.which("nginx") or "/usr/sbin/nginx", "-c", str(conf), "-p", str(stack.tmp)], name="nginx")
    await_port(port)


def prepare_database() -> None:
    name = DB.rsplit("/", 1)[1]
    admin = DB.rsplit("/", 1)[0] + "/postgres"
    subprocess.run(["psql", admin, "-qc", f"DROP DATABASE IF EXISTS {name}"], check=True, capture_output=True)
    subprocess.run(["psql", admin, "-qc", f"CREATE DATABASE {name}"], check=True, capture_output=True)
    import redis

    redis.Redis.from_url(REDIS).flushdb()


def gateway_env(tmp: Path, port: int) -> dict:
    return {"DATABASE_URL": DB, "REDIS_URL": REDIS, "DATA_DIR": str(tmp), "PORT": str(port),
            "HOST": "127.0.0.1", "WORKERS": str(WORKERS), "WAITRESS_THREADS": str(THREADS),
            "JWT_SECRET_KEY": "bench-secret-key-bench-secret-key-0123456789",
            "RATE_LIMIT_DEFAULT": "100000000/minute", "HOLD_REAP_INTERVAL_SECONDS": "20",
            # the load comes from one address (loopback): a thousand streams are over the per-address cap
            "MAX_CONNECTIONS_PER_IP": "0"}


def flask(env: dict, *args) -> str:
    out = subprocess.run([PY, "-m", "flask", "--app", "wsgi", *args], cwd=ROOT, env={**os.environ, **env},
                         check=True, capture_output=True, text=True)
    return out.stdout.strip()


FRAMINGS = (("", "chunked"), (", Content-Length", "length"), (", close-delimited", "close"))


def seed(tmp: Path, env: dict, static_port: int, paced_port: int, framed: dict) -> str:
    models = tmp / "models.toml"
    models.write_text(f"""[[models]]
id = 1
name = "bench"
api = "openai"
base_url = "http://127.0.0.1:{static_port}/v1"
cost_per_1k_tokens = "0.002"

[[models]]
id = 2
name = "paced"
api = "openai"
base_url = "http://127.0.0.1:{paced_port}/v1"
cost_per_1k_tokens = "0.002"
""" + "".join(f"""
[[models]]
id = {3 + i}
name = "paced-{framing}"
api = "openai"
base_url = "http://127.0.0.1:{port}/v1"
cost_per_1k_tokens = "0.002"
""" for i, (framing, port) in enumerate(framed.items())) + scenarios.models_toml(static_port))
    flask(env, "seed-models", "--file", str(models))
    flask(env, "accounts", "topup", "bench", "1000000000")
    return flask(env, "tokens", "issue", "bench", "--expires-in", "86400")


def litellm(stack: Stack, port: int, static_port: int, paced_port: int) -> subprocess.Popen:
    """LiteLLM's proxy on the same upstreams: same worker count, no database, logging off."""
    conf = stack.tmp / "litellm.yaml"
    models = "".join(f"""  - model_name: {name}
    litellm_params: {{model: openai/{name}, api_base: "http://127.0.0.1:{p}/v1", api_key: bench}}
""" for name, p in (("bench", static_port), ("paced", paced_port)))
    conf.write_text(f"""model_list:
{models}litellm_settings: {{set_verbose: false, turn_off_message_logging: true, telemetry: false}}
""")
    proc = stack.start([PEER, "--config", str(conf), "--host", "127.0.0.1", "--port", str(port),
                        "--num_workers", str(WORKERS)], name="litellm", drop=("DATABASE_URL", "REDIS_URL"),
                       env={"LITELLM_MASTER_KEY": PEER_KEY, "LITELLM_LOG": "ERROR",
                            "LITELLM_LOCAL_MODEL_COST_MAP": "True"})
    await_port(port, 300)
    return proc


def litellm_version() -> str:
    """The version installed in LiteLLM's own virtual environment."""
    return subprocess.run([str(Path(PEER).parent / "python"), "-c",
                           "import importlib.metadata as m; print(m.version('litellm'))"],
                          capture_output=True, text=True).stdout.strip()


def peer(stack: Stack, ports: dict, results: dict) -> None:
    """LiteLLM's turn, last: started only now and stopped after, so its idle background work does
    not take CPU from the other measurements."""
    proc = litellm(stack, ports["peer"], ports["static"], ports["paced"])
    url, headers = f"http://127.0.0.1:{ports['peer']}/v1/chat/completions", {"Authorization": f"Bearer {PEER_KEY}"}
    fire(url, headers["Authorization"], 500)  # warm-up
    results["load"]["litellm proxy"] = {c: wrk(url, c, headers["Authorization"]) for c in CONCURRENCY}
    stream_lags(url, headers, 3)
    results["stream"]["litellm proxy"] = stream_lags(url, headers, 60)
    results["versions"]["litellm"] = litellm_version()
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(30)


ABLATIONS = (("everything on", ""), ("limits and caps off", "limits"), ("billing off", "billing"),
             ("access log off", "log"), ("billing and access log off", "billing,log"),
             ("billing and access log off, limits counted in process memory", "billing,log,redis-limits"),
             ("all three off", "limits,billing,log"))


def ablation(stack: Stack, env: dict, auth: str, bare_url: str) -> dict:
    """c=32 through the gateway with parts of its per-call work switched off
    (bench/ablated_server.py), one after another, then the bare proxy again for a same-time floor."""
    out = {}
    for label, off in ABLATIONS:
        port = free_port()
        # a data directory of its own: it claims the same CPU as the gateway and the bare proxy
        # (the gateway, idle meanwhile, keeps its claim on the first one in the shared directory)
        name = f"ablated-{off.replace(',', '-') or 'none'}"
        (stack.tmp / name).mkdir()
        proc = stack.start([PY, "-m", "bench.ablated_server"], name=name,
                           env={**env, "PORT": str(port), "BENCH_OFF": off, "DATA_DIR": str(stack.tmp / name)})
        await_port(port)
        url = f"http://127.0.0.1:{port}/api/v1/chat/completions"
        fire(url, auth, 500)  # warm-up
        out[label] = wrk(url, 32, auth)
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
        stack.procs.remove(proc)
    out["bare proxy"] = wrk(bare_url, 32)
    return out


def fire(url: str, auth: str, count: int, clients: int = 8, body: dict = BODY) -> int:
    """Exactly `count` calls from `clients` threads (wrk runs for a time, not a count)."""
    def client(calls: int) -> list[int]:
        session = requests.Session()
        return [session.post(url, json=body, headers={"Authorization": auth}, timeout=30).status_code
                for _ in range(calls)]

    shares = [count // clients + (i < count % clients) for i in range(clients)]
    with ThreadPoolExecutor(clients) as pool:
        statuses = [s for part in pool.map(client, shares) for s in part]
    assert statuses.count(200) == count, {s: statuses.count(s) for s in set(statuses)}
    return count


def wrk(url: str, conc: int, auth: str = "", seconds: int = DURATION, body: dict = BODY,
        lua: str = "", env: dict | None = None) -> dict:
    """wrk's numbers for a run; `lua="distinct"`: a new prompt on every call (bench/scenarios.py)."""
    script = Path(tempfile.mkstemp(suffix=".lua")[1])
    script.write_text(scenarios.DISTINCT_LUA if lua == "distinct" else WRK_LUA)
    threads = min(2, conc)
    env = {**os.environ, "WRK_BODY": json.dumps(body), "WRK_AUTH": auth, **(env or {})}
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{conc}", f"-d{seconds}s", "--latency", "-s", str(script),
                          url], capture_output=True, text=True, env=env, check=True).stdout
    script.unlink()

    def ms(label):
        m = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p50": ms("50"), "p99": ms("99"), "requests": int(re.search(r"(\d+) requests in", out).group(1)),
            "errors": int(errors.group(1)) if errors else 0}


def with_idle(url: str, auth: str, count: int) -> dict:
    """wrk at concurrency 1 while `count` idle keep-alive connections are open to the same server
    (an nginx pool, SDK clients between calls)."""
    raise_descriptor_limit()
    address = url.split("/")[2].split(":")
    idle = [socket.create_connection((address[0], int(address[1]))) for _ in range(count)]
    try:
        return wrk(url, 1, auth)
    finally:
        for sock in idle:
            sock.close()


def waitress_loop(stack: Stack, static_port: int) -> dict:
    """The bare proxy on waitress's own poll() loop, alone and beside IDLE idle connections."""
    port = free_port()
    proc = stack.start([PY, "-m", "bench.bare_proxy", str(port), str(WORKERS), str(THREADS)],
                       env={"BARE_UPSTREAM": f"http://127.0.0.1:{static_port}/v1/chat/completions",
                            "BARE_LOOP": "waitress", "DATA_DIR": str(stack.tmp / "bare-waitress")},
                       name="bare-waitress")
    await_port(port)
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    try:
        return {0: wrk(url, 1), IDLE: with_idle(url, "", IDLE)}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


def rss_mb(parent: subprocess.Popen) -> float:
    pids = subprocess.run(["pgrep", "-P", str(parent.pid)], capture_output=True, text=True).stdout.split()
    total = 0
    for pid in pids or [str(parent.pid)]:
        status = Path(f"/proc/{pid}/status").read_text()
        total += int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))
    return total / 1024


TICK = os.sysconf("SC_CLK_TCK")


def tree(pid: int) -> list[int]:
    """A process and every process it forked (a gateway's workers)."""
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [pid, *(p for child in children for p in tree(int(child)))]


def usage(pids) -> dict[int, tuple[float, int]]:
    """pid -> (CPU seconds, user + system; context switches, voluntary + not), all its threads."""
    out = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            switches = sum(int(n) for task in Path(f"/proc/{pid}/task").iterdir()
                           for n in re.findall(r"ctxt_switches:\s+(\d+)", (task / "status").read_text()))
        except OSError:
            continue  # gone meanwhile
        out[pid] = ((int(fields[11]) + int(fields[12])) / TICK, switches)
    return out


def services() -> dict[str, list[int]]:
    """Every PostgreSQL and Redis process of the machine (nothing else uses them during a bench)."""
    found = {}
    for label, name in (("PostgreSQL", "postgres"), ("Redis", "redis-server")):
        found[label] = [int(p) for p in subprocess.run(["pgrep", "-x", name], capture_output=True,
                                                       text=True).stdout.split()]
    return found


def metered(url: str, conc: int, auth: str, proc: subprocess.Popen, **options) -> dict:
    """wrk's numbers plus the CPU per call (ms) of the target's processes, PostgreSQL and Redis, and
    the target's context switches per call, read from /proc around the run (`options`: wrk's)."""
    groups = {"own": tree(proc.pid), **services()}
    before = {name: usage(pids) for name, pids in groups.items()}
    result = wrk(url, conc, auth, **options)
    groups.update(services())  # a backend that started during the run counts from zero
    calls = max(result["requests"], 1)
    for name, pids in groups.items():
        after, was = usage(pids), before[name]
        cpu = sum(c - was.get(pid, (0, 0))[0] for pid, (c, _) in after.items())
        result[f"cpu {name}"] = cpu / calls * 1000
        if name == "own":
            result["switches"] = sum(n - was.get(pid, (0, 0))[1] for pid, (_, n) in after.items()) / calls
    return result


def lines(raw):
    """An SSE body's lines as each arrives: per chunk when chunked, else per socket read
    (requests' iter_lines would wait for the whole of a Content-Length or close-delimited body)."""
    reads = raw.stream(None) if raw.chunked else iter(lambda: raw.read1(65536), b"")
    pending = b""
    for data in reads:
        *done, pending = (pending + data).split(b"\n")
        yield from done
    if pending:
        yield pending


def stream_lags(url: str, headers: dict, runs: int, model: str = "paced") -> dict:
    """Per-chunk lag (arrival - emission), time to first token, and chunk counts over `runs` streams."""
    lags, ttfts, counts = [], [], []
    session = requests.Session()
    body = {**BODY, "model": model, "stream": True}
    for _ in range(runs):
        sent = time.monotonic()
        r = session.post(url, json=body, headers=headers, stream=True, timeout=30)
        n = 0
        for line in lines(r.raw):
            arrived = time.monotonic()
            if not line.startswith(b"data: {"):
                continue
            event = json.loads(line[6:])
            content = event["choices"][0]["delta"].get("content") if event.get("choices") else None
            if content:
                if n == 0:
                    ttfts.append((arrived - sent) * 1000)
                lags.append((arrived - float(content.rstrip("|"))) * 1000)
                n += 1
        counts.append(n)
    q = statistics.quantiles
    return {"lag_p50": statistics.median(lags), "lag_p99": q(lags, n=100)[98],
            "ttft_p50": statistics.median(ttfts), "ttft_p99": q(ttfts, n=100)[98],
            "chunks": sorted(set(counts))}


def versions() -> dict:
    from importlib.metadata import version

    def cmd(*args):
        try:
            out = subprocess.run(args, capture_output=True, text=True)
            return (out.stdout or out.stderr).strip().splitlines()[0]
        except OSError:
            return "?"

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1)) // 1024 // 1024
    return {"machine": f"{os.cpu_count()} cores ({cpu}), {mem} GiB, {platform.platform()}",
            "python": platform.python_version(), "flask": version("flask"), "waitress": version("waitress"),
            "peewee": version("peewee"), "flask-limiter": version("flask-limiter"), "postgresql": cmd("psql", "--version"),
            "redis": cmd("redis-server", "--version"), "nginx": cmd("nginx", "-v"), "wrk": cmd("wrk", "-v")}


def standard_scenarios(stack: Stack, env: dict, ports: dict, framed: dict, urls: dict, auth: str,
                       gateway: subprocess.Popen, bare: subprocess.Popen, results: dict) -> None:
    """`make bench`'s scenarios from before issues 34-36: memory, load, idle connections, the
    ablation and streams."""
    auths = {"gateway": auth}
    results["memory"] = {}
    warm = fire(urls["gateway"], auth, 2000)
    results["memory"]["after 2 000"] = (warm, rss_mb(gateway))
    more = fire(urls["gateway"], auth, 18000)
    results["memory"]["after 20 000"] = (warm + more, rss_mb(gateway))
    procs = {"gateway": gateway, "bare proxy": bare}
    results["load"] = {name: {c: metered(url, c, auths.get(name, ""), procs[name]) if name in procs
                              else wrk(url, c) for c in CONCURRENCY}
                       for name, url in urls.items()}
    results["idle"] = {name: {0: load[1], IDLE: with_idle(urls[name], auths.get(name, ""), IDLE)}
                       for name, load in results["load"].items() if name in procs}
    results["idle"]["bare proxy on waitress's loop"] = waitress_loop(stack, ports["static"])
    results["ablation"] = ablation(stack, env, auth, urls["bare proxy"])
    results["stream"] = {}
    for label, framing in FRAMINGS:  # the same stream, framed three ways
        port = framed.get(framing, ports["paced"])
        model = "paced" if framing == "chunked" else f"paced-{framing}"
        direct = f"http://127.0.0.1:{port}/v1/chat/completions"
        stream_lags(direct, {}, 3, model)  # warm both paths
        stream_lags(urls["gateway"], {"Authorization": auth}, 3, model)
        results["stream"][f"direct{label}"] = stream_lags(direct, {}, 60, model)
        results["stream"][f"gateway{label}"] = stream_lags(urls["gateway"], {"Authorization": auth}, 60,
                                                           model)


def measure() -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="tollgate-bench-"))
    stack = Stack(tmp)
    ports = {k: free_port() for k in ("static", "paced", "gateway", "bare", "peer")}
    try:
        nginx_static(stack, ports["static"])
        stack.start([PY, "-m", "bench.paced_upstream", str(ports["paced"])], name="paced")
        await_port(ports["paced"])
        framed = {framing: free_port() for _, framing in FRAMINGS[1:]}  # the paced one is chunked
        for framing, port in framed.items():
            stack.start([PY, "-m", "bench.stream_upstream", str(port), framing, "20", "0.01"],
                        name=f"paced-{framing}")
            await_port(port)
        prepare_database()
        env = gateway_env(tmp, ports["gateway"])
        token = seed(tmp, env, ports["static"], ports["paced"], framed)
        auth = f"Bearer {token}"
        gateway = stack.start([PY, "-m", "service.server"], env=env, name="gateway")
        bare = stack.start([PY, "-m", "bench.bare_proxy", str(ports["bare"]), str(WORKERS), str(THREADS)],
                    env={"BARE_UPSTREAM": f"http://127.0.0.1:{ports['static']}/v1/chat/completions",
                         "DATA_DIR": str(tmp / "bare")}, name="bare")
        await_port(ports["gateway"])
        await_port(ports["bare"])
        urls = {"upstream": f"http://127.0.0.1:{ports['static']}/v1/chat/completions",
                "bare proxy": f"http://127.0.0.1:{ports['bare']}/v1/chat/completions",
                "gateway": f"http://127.0.0.1:{ports['gateway']}/api/v1/chat/completions"}
        results = {"versions": versions()}
        standard, chosen = scenarios.wanted()
        if standard:
            standard_scenarios(stack, env, ports, framed, urls, auth, gateway, bare, results)
        if PEER:
            peer(stack, ports, results)
        elif chosen:
            results["scenarios"] = scenarios.run(chosen, {
                "stack": stack, "env": env, "urls": urls, "auth": auth, "db": DB, "redis": REDIS, "py": PY,
                "models": tmp / "models.toml", "base": f"http://127.0.0.1:{ports['gateway']}", "fire": fire,
                "flask": flask, "metered": metered, "gateway": gateway,
                "free_port": free_port, "await_port": await_port})
        results["settings"] = {"workers": WORKERS, "threads": THREADS, "seconds": DURATION}
        return results
    finally:
        stack.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def cpu_lines(r: dict) -> str:
    rows = "\n".join(
        f"| {name} | {c} | {m['cpu own']:.2f} | {m['switches']:.1f} | {m['cpu PostgreSQL']:.2f} | {m['cpu Redis']:.2f} |"
        for name, by_c in r["load"].items() for c, m in by_c.items() if "cpu own" in m)
    return f"""
## CPU per call, by process (the same runs)

CPU time (user + system) from /proc around each run, divided by its calls; PostgreSQL and Redis
count all their processes. A lone call (concurrency 1) costs more CPU than one among many: the
group commit shares PostgreSQL's statements and commits only between calls that overlap, and a
process that idles at each round trip resumes on cold caches.

| target | concurrency | its own CPU, ms | its context switches | PostgreSQL CPU, ms | Redis CPU, ms |
|---|---|---|---|---|---|
{rows}
"""


def idle_lines(r: dict) -> str:
    """A lone caller beside IDLE open keep-alive connections, against the same caller alone."""
    if "idle" not in r:
        return ""
    rows = "\n".join(f"| {name} | {idle} | {res['rps']:.0f} | {res['p50']:.2f} | {res['p99']:.2f} |"
                     for name, runs in r["idle"].items() for idle, res in runs.items())
    return f"""
## Idle connections (concurrency 1)

A lone caller while other clients hold keep-alive connections open and idle (an nginx pool, SDK
clients between calls). The gateway and the bare proxy run on the gateway's loop
(service/server/eventloop.py, epoll), which looks only at the connections that changed; the last rows are
the bare proxy on waitress's own poll() loop, which asks every open connection on every wake-up.

| target | idle connections | requests/s | p50 ms | p99 ms |
|---|---|---|---|---|
{rows}
"""


def peer_lines(r: dict) -> str:
    """The side-by-side lines of `make bench-peer` (nothing without a peer in the run)."""
    peer = r["load"].get("litellm proxy")
    if not peer:
        return ""
    gw, up = r["load"]["gateway"], r["load"]["upstream"]
    per_c = ", ".join(f"{gw[c]['rps'] / peer[c]['rps']:.1f}× at c={c}" for c in CONCURRENCY)
    return (f"* LiteLLM proxy {r['versions'].get('litellm', '?')} (its own virtual environment, {WORKERS} "
            f"uvicorn workers, master key on, no database, logging off), same upstream, same run:\n"
            f"  Tollgate's throughput is {per_c}; LiteLLM adds "
            f"{peer[1]['p50'] - up[1]['p50']:.2f} ms p50 at c=1\n")


def ablation_lines(r: dict) -> str:
    runs = r.get("ablation")
    if not runs:
        return ""
    floor = runs["bare proxy"]["rps"]
    rows = "\n".join(f"| {label} | {run['rps']:.0f} | {run['p50']:.2f} | {run['rps'] / floor:.0%} |"
                     for label, run in runs.items())
    return f"""
## What each part costs (concurrency 32, one run each, back to back)

`bench/ablated_server.py` is the deployed gateway with parts of its per-call work switched off;
it exists only for this table.

| gateway | requests/s | p50 ms | of the bare proxy |
|---|---|---|---|
{rows}
"""


def report(r: dict) -> str:
    load, stream, mem, v = r["load"], r["stream"], r["memory"], r["versions"]
    up, bare, gw = load["upstream"], load["bare proxy"], load["gateway"]
    ratio = gw[32]["rps"] / bare[32]["rps"]
    added_c1 = gw[1]["p50"] - up[1]["p50"]
    ttft_added = {label or ", chunked": stream[f"gateway{label}"]["ttft_p50"] - stream[f"direct{label}"]["ttft_p50"]
                  for label, _ in FRAMINGS}
    lag_added = stream["gateway"]["lag_p50"] - stream["direct"]["lag_p50"]
    (n1, rss1), (n2, rss2) = mem["after 2 000"], mem["after 20 000"]
    growth = (rss2 - rss1) / rss1
    rows = "\n".join(
        f"| {name} | {c} | {load[name][c]['rps']:.0f} | {load[name][c]['p50']:.2f} | {load[name][c]['p99']:.2f} | "
        f"{load[name][c]['requests']} | {load[name][c]['errors']} |"
        for name in load for c in CONCURRENCY)
    stream_rows = "\n".join(
        f"| {name} | {st['ttft_p50']:.2f} | {st['ttft_p99']:.2f} | {st['lag_p50']:.3f} | {st['lag_p99']:.3f} | "
        f"{st['chunks']} |" for name, st in stream.items())
    ok = lambda good: "met" if good else "NOT met"  # noqa: E731
    return f"""# Benchmark results

Produced by `make {'bench-peer' if PEER else 'bench'}` (bench/run.py) on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.

* machine: {v['machine']}
* versions: Python {v['python']}, Flask {v['flask']}, waitress {v['waitress']}, Peewee {v['peewee']},
  Flask-Limiter {v['flask-limiter']};
  {v['postgresql']}; {v['redis']}; {v['nginx']}; {v['wrk']}
* gateway as deployed: `python -m service.server` with WORKERS={r['settings']['workers']} processes ×
  {r['settings']['threads']} waitress threads sharing one port, PostgreSQL, Redis, a JWT on every call,
  credit hold + settle on every call (group commit: concurrent calls of a process share one
  statement and one commit; each call returns only after its own settle committed), rate limits and
  caps on (moving windows and leases taken by one Redis script per call, never reached), the access
  log written every 0.2 s (LOG_FLUSH_SECONDS).
* static upstream: nginx `return 200` with a fixed chat.completion body (cheap enough not to be the
  bottleneck). Paced upstreams: a waitress app streaming 20 chunks 10 ms apart (chunked), and
  bench/stream_upstream.py sending the same stream with a Content-Length and close-delimited;
  each chunk stamped with its emission time (CLOCK_MONOTONIC, shared by every process).
* bare proxy: Flask + waitress, same processes, threads, CPU pinning and server loop (service/server/eventloop.py), a
  pooled `requests.Session` passing the body through: no auth, no billing, no limits — the floor our stack allows.
* load: wrk, {r['settings']['seconds']} s per run, `-t min(2, c)`; everything (load generator
  included) shares the same {os.cpu_count()} cores, so absolute numbers are lower than on a separate load host.

## Non-streaming

| target | concurrency | requests/s | p50 ms | p99 ms | requests | non-2xx |
|---|---|---|---|---|---|---|
{rows}

* gateway / bare proxy throughput at concurrency 32: **{ratio:.1%}** (target ≥ 75%: {ok(ratio >= 0.75)})
* added p50 latency at concurrency 1 (gateway − upstream): **{added_c1:.2f} ms** (target < 1.5 ms: {ok(added_c1 < 1.5)})
{cpu_lines(r)}{idle_lines(r)}{peer_lines(r)}{ablation_lines(r)}
## Streaming (60 streams each way, 20 chunks 10 ms apart, three upstream framings)

| path | TTFT p50 ms | TTFT p99 ms | chunk lag p50 ms | chunk lag p99 ms | chunks per stream |
|---|---|---|---|---|---|
{stream_rows}

* added time to first token, p50 (target < 3 ms on each framing): {"; ".join(
    f"{label[2:]} **{ms:.2f} ms** ({ok(ms < 3)})" for label, ms in ttft_added.items())}
* added delay per chunk (arrival − emission, gateway − direct), p50: **{lag_added:.3f} ms**
  (target < 1 ms: {ok(lag_added < 1)})
* chunks out = chunks in: {ok(all(st['chunks'] == [20] for st in stream.values()))}

## Memory (RSS of all gateway workers)

| after | calls | RSS MiB |
|---|---|---|
| warm-up | {n1} | {rss1:.1f} |
| long run | {n2} | {rss2:.1f} |

* growth from 2 000 to 20 000 calls: **{growth:+.1%}** (target within 10%: {ok(abs(growth) <= 0.10)})
"""


def main() -> None:
    scenarios.wanted()  # BENCH_ONLY (and BENCH_AGAINST) checked before anything starts
    results = measure()
    name = "results-peer" if PEER else "results"
    out, raw = ROOT / "bench" / f"{name}.md", ROOT / "bench" / f"{name}.json"
    # the scenarios not run this time stay as they were (each shows when it ran)
    kept = json.loads(raw.read_text()) if raw.exists() else {}
    found = {**kept.get("scenarios", {}), **results.get("scenarios", {})}
    if "load" in results:
        results["scenarios"] = found
        out.write_text(report(results) + "\n" + scenarios.lines(found))
    else:  # BENCH_ONLY without the standard scenarios: theirs stay too
        results = {**kept, "scenarios": found}
        out.write_text(scenarios.merge_markdown(out.read_text() if out.exists() else "# Benchmark results\n",
                                                scenarios.lines(found)))
    raw.write_text(json.dumps(results, indent=1, default=str))
    print(out.read_text())


if __name__ == "__main__":
    main()
