"""The same-run comparisons of issues 34, 35 and 36 (part of `make bench`; alone with
`BENCH_ONLY=routing,log,logs_page,cache,api_key make bench`, any subset).

Each comparison runs its variants interleaved: round after round, every variant for a short wrk
run (BENCH_ROUND_SECONDS, 3 s), the order reversed every other round (A B, B A, A B ...), and
reports each variant's median over the rounds (BENCH_ROUNDS, 5). Drift of a shared, loaded
machine then falls on both sides alike.

The two targets of a difference (routing, a cache miss) are judged by alternating calls
instead (`alternate`, BENCH_ALTERNATE_SECONDS, 40 s): the variants' calls take turns over one
kept connection at c=1, and the median of each pair's difference is the verdict, with its 95%
interval. Calls a few ms apart see the same machine; on this 2-core VM the rounds' medians move
0.2–1 ms with it, more than the 0.1 ms they were to resolve, while the pairs' median is settled
to ±0.015 ms in 40 s.

* routing (issue 34): a model with three deployments, all on the static upstream, against a
  model with one; c=1 p50 and c=32 throughput in rounds, and the alternating pairs (the
  verdict: they hold the gateway's CPU and Redis's script time in series, so they bound the
  cost per call at c=32 as well). Target: at most 0.1 ms more per call.
* log (issue 35): two gateways alike but for REQUEST_LOG (true / false), c=32 throughput.
  Target: with the log, within 5% of without.
* logs_page (issue 35): 1 000 000 request-log rows for the bench account (generate_series),
  then the first Logs page: `GET /api/v1/logs` through the gateway, and the console's
  `/console/logs` after a real sign-in with an API key (reported absent if the route is not
  there). Target: under 100 ms; p50 and p99 of 50 requests.
* cache (issue 36): a cache hit (free, and at a price) against the same call on an uncached
  row (c=1 p50; target: the hit at least 5× faster), and a miss on a cached row (a new prompt
  on every call) against the same new prompts on an uncached row (target: ≤ 0.2 ms more; the
  verdict by alternating pairs; the hit's ratio stays wrk's, as a Python client's own time per
  call would shrink a ratio).
* api_key: the same call with an API key and with a JWT, alternating pairs: what a key's
  lookup in the database adds to a call (no target; SPEC §5 wants a revoked key refused at once).
* against (issue 37): this checkout's gateway against the one at the git revision BENCH_AGAINST
  (required: `BENCH_ONLY=against BENCH_AGAINST=f8551c4 make bench`), side by side on the same
  static upstream: non-streamed calls at c=1 (p50) and c=32 (req/s) and the CPU per call.
  The older code runs from a temporary `git worktree` (removed afterwards) with the same
  virtual environment, its own database (BENCH_AGAINST_DATABASE_URL) and Redis db
  (BENCH_AGAINST_REDIS_URL), migrated and seeded by its own commands. Target: no slower.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import requests

NAMES = ("routing", "log", "cache", "api_key", "against", "logs_page")  # a million log rows come last
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
SECONDS = int(os.environ.get("BENCH_ROUND_SECONDS", "3"))
ALTERNATE_SECONDS = int(os.environ.get("BENCH_ALTERNATE_SECONDS", "40"))
LOG_ROWS = int(os.environ.get("BENCH_LOG_ROWS", "1000000"))
PAGE_REQUESTS = 50
HIT_PRICE = "0.001"  # credits per 1000 tokens of a priced hit
AGAINST = os.environ.get("BENCH_AGAINST", "").strip()  # a git revision; `against` needs one
AGAINST_DB = os.environ.get("BENCH_AGAINST_DATABASE_URL")  # default: the bench's with `_against`
AGAINST_REDIS = os.environ.get("BENCH_AGAINST_REDIS_URL", "redis://127.0.0.1:6379/13")
ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("config", "core", "frontdoors", "providers", "service")  # the project's own, top level

# catalogue rows of these scenarios, next to run.py's (ids 20 and up)
MODELS = """
[[models]]
id = 20
name = "bench3"
api = "openai"
base_url = "http://127.0.0.1:{static}/v1"
cost_per_1k_tokens = "0.002"
[[models.deployments]]
name = "one"
[[models.deployments]]
name = "two"
[[models.deployments]]
name = "three"

[[models]]
id = 21
name = "cached"
api = "openai"
base_url = "http://127.0.0.1:{static}/v1"
cost_per_1k_tokens = "0.002"
cache_ttl = 3600

[[models]]
id = 22
name = "cached-priced"
api = "openai"
base_url = "http://127.0.0.1:{static}/v1"
cost_per_1k_tokens = "0.002"
cache_ttl = 3600
cost_per_1k_cache_hit_tokens = "{hit_price}"
"""

# a new prompt on every call (a cache miss every time): each wrk thread tags its prompts with
# the run's nonce, its own number and a counter
DISTINCT_LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local auth = os.getenv("WRK_AUTH")
if auth and auth ~= "" then wrk.headers["Authorization"] = auth end
local head, tail = os.getenv("WRK_HEAD"), os.getenv("WRK_TAIL")
local made = 0
function setup(thread)
  made = made + 1
  thread:set("tag", os.getenv("WRK_NONCE") .. "-" .. made)
end
local n = 0
function request()
  n = n + 1
  return wrk.format(nil, nil, nil, head .. tag .. "-" .. n .. tail)
end
"""


def models_toml(static_port: int) -> str:
    return MODELS.format(static=static_port, hit_price=HIT_PRICE)


def wanted() -> tuple[bool, list[str]]:
    """(run the standard scenarios?, the new ones to run) from BENCH_ONLY (unset: everything, and
    `against` when BENCH_AGAINST names a revision)."""
    only = [n.strip() for n in os.environ.get("BENCH_ONLY", "").split(",") if n.strip()]
    unknown = set(only) - set(NAMES) - {"standard"}
    if unknown:
        raise SystemExit(f"BENCH_ONLY: unknown {sorted(unknown)}; choose from standard, {', '.join(NAMES)}")
    if "against" in only and not AGAINST:
        raise SystemExit("BENCH_ONLY=against needs BENCH_AGAINST=<git revision> (e.g. f8551c4): "
                         "the commit to compare this checkout with")
    chosen = [n for n in NAMES if n in only or not only and (n != "against" or AGAINST)]
    if "against" in chosen and subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", "-q",
                                               f"{AGAINST}^{{commit}}"], capture_output=True).returncode:
        raise SystemExit(f"BENCH_AGAINST={AGAINST}: no such commit in {ROOT}")
    return not only or "standard" in only, chosen


def body(model: str, content: str = "Say hello in one word.") -> dict:
    return {"model": model, "messages": [{"role": "user", "content": content}]}


def distinct(model: str) -> dict:
    """WRK_HEAD / WRK_TAIL around a per-call tag for DISTINCT_LUA."""
    text = json.dumps(body(model, "Say hello in one word. @@TAG@@"))
    head, tail = text.split("@@TAG@@")
    return {"WRK_HEAD": head, "WRK_TAIL": tail, "WRK_NONCE": uuid.uuid4().hex[:12]}


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def interleave(variants: dict, rounds: int = ROUNDS) -> dict:
    """Run every variant once per round, the order reversed every other round; each variant's
    list of results."""
    out = {label: [] for label in variants}
    labels = list(variants)
    for i in range(rounds):
        for label in (labels if i % 2 == 0 else labels[::-1]):
            out[label].append(variants[label]())
    return out


def med(runs: list[dict], field: str) -> float:
    return statistics.median(r[field] for r in runs)


def summary(runs: dict, fields=("rps", "p50", "p99", "cpu")) -> dict:
    """Medians per variant, with the rounds kept."""
    return {label: {**{f: med(rs, f) for f in fields}, "errors": sum(r["errors"] for r in rs),
                    "rounds": [{f: r[f] for f in fields} for r in rs]}
            for label, rs in runs.items()}


def paired(res: dict, a: str, b: str, value) -> float:
    """The median over the rounds of value(a's run) − value(b's run) of the same round: the two
    ran one after the other, so drift between rounds (a loaded machine) falls out. Shown beside
    the difference of the medians, which the verdicts use."""
    return statistics.median(value(x) - value(y) for x, y in zip(res[a]["rounds"], res[b]["rounds"]))


def alternate(url: str, auth: str, bodies: dict, compare: dict | None = None,
              seconds: float = ALTERNATE_SECONDS, auths: dict | None = None) -> dict:
    """c=1 over one kept connection, the variants' calls alternating (A B, B A, ...) for `seconds`:
    each variant's p50, and the median over the pairs of its latency less the first variant's in
    the same pair, with a distribution-free 95% interval (order statistics of the binomial). Two
    calls a few ms apart see the same machine, so its drift falls out; rounds of wrk 3 s apart do
    not (on this 2-core VM a round's p50 moves 0.2–1 ms with the machine). bodies: label ->
    body(i) -> bytes (the i-th call's); compare: name -> (label, label) of the differences wanted
    (default: each variant less the first); auths: label -> its Authorization, where not `auth`."""
    session = requests.Session()
    labels = list(bodies)
    headers = {label: {"Authorization": (auths or {}).get(label, auth), "Content-Type": "application/json"}
               for label in labels}
    lat, errors, i = {label: [] for label in labels}, 0, 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for label in (labels if i % 2 == 0 else labels[::-1]):
            data = bodies[label](i)
            started = time.perf_counter()
            r = session.post(url, data=data, headers=headers[label], timeout=30)
            lat[label].append((time.perf_counter() - started) * 1000)
            errors += r.status_code != 200
        i += 1
    out = {"pairs": i, "seconds": seconds, "errors": errors,
           "p50": {label: statistics.median(v) for label, v in lat.items()}, "paired": {}}
    for name, (a, b) in (compare or {label: (label, labels[0]) for label in labels[1:]}).items():
        diffs = sorted(x - y for x, y in zip(lat[a], lat[b]))
        n = len(diffs)
        k = max(0, int(n / 2 - 1.96 * math.sqrt(n) / 2))
        out["paired"][name] = {"median": statistics.median(diffs), "low": diffs[k], "high": diffs[n - 1 - k]}
    return out


def _bytes(model: str, content: str | None = None):
    fixed = json.dumps(body(model) if content is None else body(model, content)).encode()
    return lambda i: fixed


def _fresh(model: str, nonce: str):
    """A new prompt on every call (a cache miss every time)."""
    return lambda i: json.dumps(body(model, f"Say hello in one word. {nonce}-{model}-{i}")).encode()


# --- the scenarios ----------------------------------------------------------------------------

def metering(ctx, proc):
    """wrk through `proc`, with its CPU per call (ms, all its threads, from /proc) as `cpu`."""
    def run(url, conc, auth, **options):
        result = ctx["metered"](url, conc, auth, proc, **options)
        result["cpu"] = result["cpu own"]
        return result
    return run


def routing(ctx) -> dict:
    """A model with three deployments against one, same gateway, interleaved."""
    wrk, url, auth = metering(ctx, ctx["gateway"]), ctx["urls"]["gateway"], ctx["auth"]
    for model in ("bench", "bench3"):
        ctx["fire"](url, auth, 300, body=body(model))
    variants = {}
    for label, model in (("one deployment", "bench"), ("three deployments", "bench3")):
        for conc in (1, 32):
            variants[f"{label}, c={conc}"] = (lambda m=model, c=conc:
                                             wrk(url, c, auth, seconds=SECONDS, body=body(m)))
    res = summary(interleave(variants))
    c1 = res["three deployments, c=1"]["p50"] - res["one deployment, c=1"]["p50"]
    per_call = 1000 / res["three deployments, c=32"]["rps"] - 1000 / res["one deployment, c=32"]["rps"]
    cpu = {f"c={c}": res[f"three deployments, c={c}"]["cpu"] - res[f"one deployment, c={c}"]["cpu"] for c in (1, 32)}
    one, three = "one deployment, c={}", "three deployments, c={}"
    pairs = {"p50 c=1": paired(res, three.format(1), one.format(1), lambda r: r["p50"]),
             "per call c=32": paired(res, three.format(32), one.format(32), lambda r: 1000 / r["rps"]),
             "cpu c=1": paired(res, three.format(1), one.format(1), lambda r: r["cpu"]),
             "cpu c=32": paired(res, three.format(32), one.format(32), lambda r: r["cpu"])}
    alt = alternate(url, auth, {"one deployment": _bytes("bench"), "three deployments": _bytes("bench3")})
    added = alt["paired"]["three deployments"]
    return {"variants": res, "added_p50_c1_ms": c1, "added_per_call_c32_ms": per_call, "added_cpu_ms": cpu,
            "paired_ms": pairs, "alternating": alt,
            # the verdict: the alternating calls' paired difference at c=1 (it holds the gateway's CPU
            # and Redis's script time in series, so it bounds the cost per call at c=32 too)
            "target_ms": 0.1, "met": added["median"] <= 0.1, "load": load_average()}


def request_log(ctx) -> dict:
    """Two gateways alike but for REQUEST_LOG, c=32 throughput, interleaved."""
    stack, env, auth = ctx["stack"], ctx["env"], ctx["auth"]
    urls, procs, meters = {}, [], {}
    try:
        for label, on in (("log on", "true"), ("log off", "false")):
            port = ctx["free_port"]()
            data = stack.tmp / f"log-{on}"  # a data directory of its own: it claims the same CPU
            data.mkdir()
            proc = stack.start([ctx["py"], "-m", "service.server"], name=f"gateway-log-{on}",
                               env={**env, "PORT": str(port), "DATA_DIR": str(data), "REQUEST_LOG": on})
            procs.append(proc)
            meters[label] = metering(ctx, proc)
            ctx["await_port"](port)
            urls[label] = f"http://127.0.0.1:{port}/api/v1/chat/completions"
            ctx["fire"](urls[label], auth, 500)
        res = summary(interleave({label: (lambda u=u, m=meters[label]: m(u, 32, auth, seconds=SECONDS))
                                  for label, u in urls.items()}))
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
            stack.procs.remove(proc)
    ratio = res["log on"]["rps"] / res["log off"]["rps"]
    pairs = {"ratio": statistics.median(x["rps"] / y["rps"] for x, y in zip(res["log on"]["rounds"],
                                                                              res["log off"]["rounds"])),
             "cpu": paired(res, "log on", "log off", lambda r: r["cpu"])}
    return {"variants": res, "ratio": ratio, "added_cpu_ms": res["log on"]["cpu"] - res["log off"]["cpu"],
            "paired": pairs, "target": 0.95, "met": ratio >= 0.95, "load": load_average()}


def psql(db_url: str, sql: str) -> str:
    return subprocess.run(["psql", db_url, "-qAtc", sql], check=True, capture_output=True, text=True).stdout.strip()


def fill_log(db_url: str, account_id: int, keys: list[int], rows: int) -> float:
    """`rows` request-log rows for one account, spread over models, statuses, keys, endpoints and
    the last ~23 days (inside the default 30 days' retention); the seconds it took."""
    key_array = "ARRAY[" + ",".join(map(str, keys)) + ",NULL]::int[]"
    started = time.monotonic()
    psql(db_url, f"""
INSERT INTO request_log (request_id, account_id, key_id, created, endpoint, model, deployment, status,
    error_code, latency_ms, upstream_ms, ttft_ms, prompt_tokens, completion_tokens, cost, cache_hit,
    estimated, stream)
SELECT 'benchlog-' || g, {account_id}, ({key_array})[1 + g % {len(keys) + 1}],
       (now() AT TIME ZONE 'utc') - ({rows} - g) * interval '2 seconds',
       (ARRAY['chat','chat','chat','messages','responses','embeddings'])[1 + g % 6],
       (ARRAY['bench','bench3','cached','gpt-4o-mini','deepseek-chat','claude-sonnet','qwen-plus'])[1 + g % 7],
       CASE WHEN g % 7 = 1 THEN (ARRAY['one','two','three'])[1 + g % 3] END,
       s.status, CASE s.status WHEN 200 THEN NULL WHEN 429 THEN 'rate_limited'
         WHEN 402 THEN 'insufficient_credits' WHEN 502 THEN 'upstream_error' ELSE 'invalid_request' END,
       50 + g % 2000, 40 + g % 1900, CASE WHEN g % 3 = 0 THEN 20 + g % 400 END,
       g % 3000, g % 800, g % 5000, g % 13 = 0, g % 97 = 0, g % 3 = 0
FROM generate_series(1, {rows}) g,
     LATERAL (SELECT (ARRAY[200,200,200,200,200,200,200,429,402,502,400])[1 + g % 11] AS status) s;
ANALYZE request_log;""")
    return time.monotonic() - started


def timed(session: requests.Session, url: str, count: int, **kwargs) -> dict:
    """`count` GETs one after another (after 5 not counted): status, p50, p99, worst (ms)."""
    for _ in range(5):
        session.get(url, timeout=30, **kwargs)
    times, statuses = [], set()
    for _ in range(count):
        started = time.perf_counter()
        r = session.get(url, timeout=30, **kwargs)
        times.append((time.perf_counter() - started) * 1000)
        statuses.add(r.status_code)
    return {"statuses": sorted(statuses), "p50": statistics.median(times),
            "p99": statistics.quantiles(times, n=100, method="inclusive")[98], "worst": max(times), "requests": count,
            "rows": len(r.json().get("data", [])) if r.headers.get("Content-Type", "").startswith(
                "application/json") else None}


def console_sign_in(base: str, api_key: str) -> requests.Session:
    """The console's own sign-in: fetch the form, post it with its token and the key."""
    session = requests.Session()
    form = session.get(f"{base}/console/login", timeout=30)
    form.raise_for_status()
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)
    done = session.post(f"{base}/console/login", data={"csrf_token": token, "credential": api_key},
                        allow_redirects=False, timeout=30)
    if done.status_code != 302:
        raise RuntimeError(f"console sign-in answered {done.status_code}")
    return session


def logs_page(ctx) -> dict:
    db_url, base = ctx["db"], ctx["base"]
    account_id = int(psql(db_url, "SELECT id FROM account WHERE name = 'bench'"))
    keys, plain = [], []
    for i in range(3):
        out = ctx["flask"](ctx["env"], "keys", "create", "bench", "--label", f"bench-logs-{i}")
        found = re.match(r"id (\d+): (\S+)", out)
        keys.append(int(found.group(1)))
        plain.append(found.group(2))
    before = int(psql(db_url, "SELECT count(*) FROM request_log"))
    seconds = fill_log(db_url, account_id, keys, LOG_ROWS)
    total = int(psql(db_url, "SELECT count(*) FROM request_log"))
    out = {"rows": total, "rows_before": before, "fill_seconds": seconds}
    api = requests.Session()
    api.headers["Authorization"] = ctx["auth"]
    out["GET /api/v1/logs"] = timed(api, f"{base}/api/v1/logs", PAGE_REQUESTS)
    out["GET /api/v1/logs?model=gpt-4o-mini&status=429"] = timed(
        api, f"{base}/api/v1/logs?model=gpt-4o-mini&status=429", PAGE_REQUESTS)
    console = console_sign_in(base, plain[0])
    probe = console.get(f"{base}/console/logs", timeout=30, allow_redirects=False)
    if probe.status_code == 404:
        out["GET /console/logs"] = {"absent": True, "status": 404}
    else:
        out["GET /console/logs"] = timed(console, f"{base}/console/logs", PAGE_REQUESTS, allow_redirects=False)
    measured = [v for v in out.values() if isinstance(v, dict) and "p50" in v]
    out.update(target_ms=100, met=all(v["p99"] < 100 and v["statuses"] == [200] for v in measured),
               load=load_average())
    return out


def cache(ctx) -> dict:
    """Hits (free, priced) and an uncached call of the same body at c=1; misses (a new prompt each
    call) on a cached row and the same on an uncached row; interleaved."""
    wrk, url, auth = metering(ctx, ctx["gateway"]), ctx["urls"]["gateway"], ctx["auth"]
    for model in ("bench", "cached", "cached-priced"):  # warm, and store the two hits' answers
        ctx["fire"](url, auth, 100, body=body(model))
    check = requests.post(url, json=body("cached"), headers={"Authorization": auth}, timeout=30)
    assert check.headers.get("X-Cache") == "HIT", check.headers
    for model in ("bench", "cached"):
        wrk(url, 8, auth, seconds=2, lua="distinct", env=distinct(model))  # warm the miss paths
    variants = {
        "hit (free)": lambda: wrk(url, 1, auth, seconds=SECONDS, body=body("cached")),
        f"hit ({HIT_PRICE}/1k tokens)": lambda: wrk(url, 1, auth, seconds=SECONDS, body=body("cached-priced")),
        "uncached row": lambda: wrk(url, 1, auth, seconds=SECONDS, body=body("bench")),
        "miss (cached row, new prompts)": lambda: wrk(url, 1, auth, seconds=SECONDS, lua="distinct",
                                                      env=distinct("cached")),
        "uncached row, new prompts": lambda: wrk(url, 1, auth, seconds=SECONDS, lua="distinct",
                                                 env=distinct("bench")),
    }
    res = summary(interleave(variants))
    uncached = res["uncached row"]["p50"]
    speedups = {label: uncached / res[label]["p50"] for label in res if label.startswith("hit")}
    miss_added = res["miss (cached row, new prompts)"]["p50"] - res["uncached row, new prompts"]["p50"]
    miss_cpu = res["miss (cached row, new prompts)"]["cpu"] - res["uncached row, new prompts"]["cpu"]
    miss, new = "miss (cached row, new prompts)", "uncached row, new prompts"
    pairs = {"miss p50": paired(res, miss, new, lambda r: r["p50"]), "miss cpu": paired(res, miss, new, lambda r: r["cpu"])}
    nonce = uuid.uuid4().hex[:12]
    alt = alternate(url, auth, {new: _fresh("bench", nonce), miss: _fresh("cached", nonce)})
    miss_paired = alt["paired"][miss]["median"]
    return {"variants": res, "hit_speedup": speedups, "hit_target": 5.0, "miss_added_cpu_ms": miss_cpu,
            "paired_ms": pairs, "alternating": alt, "alternating_miss_ms": miss_paired,
            "miss_added_ms": miss_added, "miss_target_ms": 0.2,
            # the verdicts: a hit by wrk's p50s (a Python client's own ~1 ms per call would shrink
            # the ratio); a miss by the alternating calls' paired difference (a difference keeps
            # the client's time out)
            "met_hit": all(s >= 5 for s in speedups.values()), "met_miss": miss_paired <= 0.2,
            "load": load_average()}


def api_key(ctx) -> dict:
    """The same call with an API key (a database lookup per call: SPEC §5 wants a revoked key
    refused at once, in every process) and with a JWT (verified once, then remembered), by
    alternating pairs."""
    url = ctx["urls"]["gateway"]
    found = re.match(r"id (\d+): (\S+)", ctx["flask"](ctx["env"], "keys", "create", "bench", "--label", "bench-auth"))
    key = f"Bearer {found.group(2)}"
    ctx["fire"](url, key, 300, body=body("bench"))
    alt = alternate(url, ctx["auth"], {"JWT": _bytes("bench"), "API key": _bytes("bench")}, auths={"API key": key})
    return {"alternating": alt, "load": load_average()}


# Started as `python -c BOOT <root> <packages> serve|check` with cwd=<root> and PYTHONPATH=<root>: it
# prints where each of the project's packages was imported from and stops if any came from
# outside <root> (the package is installed in editable mode, pointing at another checkout);
# `serve` then runs `python -m service.server` in the same process.
BOOT = r"""
import json, os, runpy, sys
root, names, then = os.path.realpath(sys.argv[1]), sys.argv[2].split(","), sys.argv[3]
where = {name: os.path.realpath(__import__(name).__file__) for name in names}
print("bench-imports " + json.dumps(where), file=sys.stderr, flush=True)
outside = {name: path for name, path in where.items() if not path.startswith(root + os.sep)}
if outside:
    sys.exit(f"bench: imported from outside {root}: {outside}")
if then == "serve":
    sys.argv = ["service.server"]
    runpy.run_module("service.server", run_name="__main__", alter_sys=True)
"""


def git(root: Path, *args) -> str:
    return subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def fresh_database(db_url: str, redis_url: str) -> None:
    """`db_url` dropped and created empty (through the server's `postgres` database); `redis_url`'s
    db flushed."""
    name, admin = db_url.rsplit("/", 1)[1], db_url.rsplit("/", 1)[0] + "/postgres"
    for sql in (f"DROP DATABASE IF EXISTS {name}", f"CREATE DATABASE {name}"):
        subprocess.run(["psql", admin, "-qc", sql], check=True, capture_output=True)
    import redis

    redis.Redis.from_url(redis_url).flushdb()


def packages(root: Path) -> str:
    return ",".join(n for n in PACKAGES if (root / n / "__init__.py").exists())


def imports(log: str, root: Path) -> dict:
    """The boot's record of where the packages came from, relative to `root`; fails without one."""
    found = re.search(r"^bench-imports (.*)$", log, re.M)
    if not found:
        raise RuntimeError(f"no import record from the gateway at {root}:\n{log[-3000:]}")
    real = os.path.realpath(root)
    return {"root": real, "packages": {name: os.path.relpath(path, real)
                                       for name, path in json.loads(found.group(1)).items()}}


def serve(ctx, root: Path, env: dict, name: str) -> tuple[subprocess.Popen, dict]:
    """A gateway from the code at `root` (cwd and PYTHONPATH), through BOOT; waits until it listens
    and returns it with where its packages came from."""
    proc = ctx["stack"].start([ctx["py"], "-c", BOOT, str(root), packages(root), "serve"], name=name,
                              env={**env, "PYTHONPATH": str(root)}, cwd=root)
    log = ctx["stack"].tmp / f"{name}.log"
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            ctx["await_port"](int(env["PORT"]), 0.5)
            break
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
    return proc, imports(log.read_text(), root)


def against(ctx) -> dict:
    """This checkout's gateway against the one at BENCH_AGAINST, side by side on the same static
    upstream, interleaved: c=1 p50 and c=32 throughput, with each one's CPU per call."""
    stack, root, auth = ctx["stack"], ROOT, ctx["auth"]
    commit = git(root, "rev-parse", "--verify", f"{AGAINST}^{{commit}}")
    this = {"commit": git(root, "rev-parse", "HEAD"),
            "changed": bool(git(root, "status", "--porcelain", "--untracked-files=no"))}
    old_db = AGAINST_DB or ctx["db"] + "_against"
    if old_db == ctx["db"] or AGAINST_REDIS == ctx["redis"]:
        raise SystemExit("against: BENCH_AGAINST_DATABASE_URL and BENCH_AGAINST_REDIS_URL must differ "
                         "from BENCH_DATABASE_URL and BENCH_REDIS_URL (a database and a Redis db each)")
    tree = Path(tempfile.mkdtemp(prefix="tollgate-against-")) / "tree"
    git(root, "worktree", "add", "--detach", str(tree), commit)
    procs = []
    try:
        # the older code: its own database, migrated and seeded by its own commands
        fresh_database(old_db, AGAINST_REDIS)
        old_data = stack.tmp / "against-old-seed"
        old_data.mkdir()
        old_env = {**ctx["env"], "DATABASE_URL": old_db, "REDIS_URL": AGAINST_REDIS, "DATA_DIR": str(old_data),
                   "PYTHONPATH": str(tree)}

        def old(*args, script=("-m", "flask", "--app", "wsgi")) -> str:
            out = subprocess.run([ctx["py"], *script, *args], cwd=tree, env={**os.environ, **old_env},
                                 capture_output=True, text=True)
            if out.returncode:
                raise RuntimeError(f"at {AGAINST}: {' '.join(args)} failed:\n{out.stdout}{out.stderr}")
            return out.stdout.strip()

        old("check", script=("-c", BOOT, str(tree), packages(tree)))  # the seed's imports: the tree's
        old("seed-models", "--file", str(ctx["models"]))  # the same catalogue as this checkout's
        old("accounts", "topup", "bench", "1000000000")
        old_auth = "Bearer " + old("tokens", "issue", "bench", "--expires-in", "86400")

        targets, found = {}, {}
        for side, code, env, key in (("this checkout", root, ctx["env"], auth),
                                     (f"at {AGAINST}", tree, old_env, old_auth)):
            port = ctx["free_port"]()
            data = stack.tmp / f"against-{len(targets)}"  # a data directory of its own: both claim the same CPU
            data.mkdir()
            proc, found[side] = serve(ctx, code, {**env, "PORT": str(port), "DATA_DIR": str(data)},
                                      f"gateway-against-{len(targets)}")
            procs.append(proc)
            url = f"http://127.0.0.1:{port}/api/v1/chat/completions"
            ctx["fire"](url, key, 500)  # warm-up, every call answered 200
            targets[side] = (url, key, metering(ctx, proc))
        variants = {f"{side}, c={conc}": (lambda u=u, k=k, m=m, c=conc: m(u, c, k, seconds=SECONDS))
                    for conc in (1, 32) for side, (u, k, m) in targets.items()}
        res = summary(interleave(variants))
        schema = {side: int(psql(db, "SELECT max(version) FROM schema_version"))  # each migrated its own
                  for side, db in zip(targets, (ctx["db"], old_db))}
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
            stack.procs.remove(proc)
        git(root, "worktree", "remove", "--force", str(tree))
        shutil.rmtree(tree.parent, ignore_errors=True)
    new, was = list(targets)
    c1, c32 = (res[f"{new}, c=1"], res[f"{was}, c=1"]), (res[f"{new}, c=32"], res[f"{was}, c=32"])

    def rounds_no_slower(pair, field, higher_better):
        return sum((a[field] >= b[field]) if higher_better else (a[field] <= b[field])
                   for a, b in zip(pair[0]["rounds"], pair[1]["rounds"]))

    out = {"variants": res, "this": this, "against": {"rev": AGAINST, "commit": commit}, "imports": found,
           "schema": schema, "sides": [new, was],
           "p50_c1_ms": c1[0]["p50"] - c1[1]["p50"], "rps_c32_ratio": c32[0]["rps"] / c32[1]["rps"],
           "cpu_ms": {"c=1": c1[0]["cpu"] - c1[1]["cpu"], "c=32": c32[0]["cpu"] - c32[1]["cpu"]},
           "rounds_no_slower": {"p50 c=1": rounds_no_slower(c1, "p50", False),
                                "req/s c=32": rounds_no_slower(c32, "rps", True),
                                "cpu c=1": rounds_no_slower(c1, "cpu", False),
                                "cpu c=32": rounds_no_slower(c32, "cpu", False)},
           "load": load_average()}
    out["met"] = out["p50_c1_ms"] <= 0 and out["rps_c32_ratio"] >= 1
    return out


RUNNERS = {"routing": routing, "log": request_log, "logs_page": logs_page, "cache": cache, "against": against,
           "api_key": api_key}


def run(names: list[str], ctx: dict) -> dict:
    """The chosen scenarios, in NAMES' order (the log comparison before a million rows are added)."""
    out = {}
    for name in names:
        started = time.monotonic()
        load = load_average()
        out[name] = {**RUNNERS[name](ctx), "load_before": load,
                     "seconds": round(time.monotonic() - started, 1),
                     "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                     "rounds": ROUNDS, "round_seconds": SECONDS}
    return out


# --- the report -------------------------------------------------------------------------------

BEGIN, END = "<!-- scenarios: begin -->", "<!-- scenarios: end -->"


def _ok(good: bool) -> str:
    return "met" if good else "NOT met"


def _rounds(v: dict) -> str:
    return ", ".join("%.0f/%.2f/%.2f" % (r["rps"], r["p50"], r["cpu"]) for r in v["rounds"])


def _variant_rows(res: dict) -> str:
    return "\n".join(f"| {label} | {v['rps']:.0f} | {v['p50']:.2f} | {v['p99']:.2f} | {v['cpu']:.3f} | "
                     f"{_rounds(v)} | {v['errors']} |" for label, v in res.items())


HEAD = ("| variant | requests/s | p50 ms | p99 ms | gateway CPU ms per call | "
        "each round: req/s / p50 ms / CPU ms | non-2xx |\n|---|---|---|---|---|---|---|")


def lines(found: dict | None) -> str:
    """The scenarios' section of bench/results.md (between markers, so BENCH_ONLY can replace it)."""
    if not found:
        return ""
    parts = [BEGIN, "## Same-run comparisons (issues 34, 35, 36, 37)", "",
             "Variants interleaved: every round runs each for a short wrk run, the order reversed every "
             "other round; medians over the rounds. The gateway's CPU per call (all its threads, from "
             "/proc around each run) moves far less with the machine's load than latency does. Load "
             "average (1, 5, 15 min) before and after each scenario. "
             "`BENCH_ONLY=routing,log,cache,api_key,logs_page make bench` re-runs them alone "
             "(`against` with `BENCH_AGAINST=<git revision>`)."]
    if "routing" in found:
        r = found["routing"]
        parts += ["", f"### Routing: three deployments against one (issue 34; {r['when']}, "
                  f"{r['rounds']} rounds × {r['round_seconds']} s, load {r['load_before']} → {r['load']})", "",
                  HEAD, _variant_rows(r["variants"]), "",
                  f"* added per call: c=1 p50 **{r['added_p50_c1_ms']:+.3f} ms**, c=32 (1/throughput) "
                  f"**{r['added_per_call_c32_ms']:+.3f} ms** (target ≤ 0.1 ms: {_ok(r['met'])}); the gateway's "
                  f"CPU per call: {r['added_cpu_ms']['c=1']:+.3f} ms at c=1, {r['added_cpu_ms']['c=32']:+.3f} ms at c=32"]
        if "paired_ms" in r:
            q = r["paired_ms"]
            parts += [f"* the same, as the median of each round's difference: c=1 p50 {q['p50 c=1']:+.3f} ms, "
                      f"c=32 {q['per call c=32']:+.3f} ms per call; CPU {q['cpu c=1']:+.3f} ms at c=1, "
                      f"{q['cpu c=32']:+.3f} ms at c=32"]
        if "alternating" in r:
            a = r["alternating"]
            d = a["paired"]["three deployments"]
            parts += [f"* **the verdict's measure**: {a['pairs']} pairs of calls alternating over one kept connection "
                      f"at c=1 ({a['seconds']} s; p50 {a['p50']['one deployment']:.3f} / "
                      f"{a['p50']['three deployments']:.3f} ms; {a['errors']} non-200): three deployments add "
                      f"**{d['median']:+.3f} ms** per call (median of the pairs' differences; 95% interval "
                      f"{d['low']:+.3f} … {d['high']:+.3f}); target ≤ 0.1 ms: {_ok(r['met'])}"]
    if "log" in found:
        r = found["log"]
        parts += ["", f"### Request log on against off, c=32 (issue 35; {r['when']}, "
                  f"{r['rounds']} rounds × {r['round_seconds']} s, load {r['load_before']} → {r['load']})", "",
                  HEAD, _variant_rows(r["variants"]), "",
                  f"* with the log: **{r['ratio']:.1%}** of the throughput without (target ≥ 95%: {_ok(r['met'])}); "
                  f"the gateway's CPU per call {r['added_cpu_ms']:+.3f} ms"]
        if "paired" in r:
            parts += [f"* the same, as the median of each round's ratio: {r['paired']['ratio']:.1%}; CPU "
                      f"{r['paired']['cpu']:+.3f} ms per call"]
    if "logs_page" in found:
        r = found["logs_page"]
        rows = []
        for label, v in r.items():
            if isinstance(v, dict) and v.get("absent"):
                rows.append(f"| `{label}` | absent (404: the console has no Logs page in this build) | | | |")
            elif isinstance(v, dict) and "p50" in v:
                rows.append(f"| `{label}` | {v['statuses']} | {v['p50']:.2f} | {v['p99']:.2f} | {v['worst']:.2f} |")
        parts += ["", f"### The first Logs page over {r['rows']:,} request-log rows (issue 35; {r['when']}, "
                  f"load {r['load_before']} → {r['load']})", "",
                  f"{r['rows'] - r['rows_before']:,} rows inserted for the bench account with generate_series "
                  f"in {r['fill_seconds']:.1f} s (then ANALYZE); {PAGE_REQUESTS} requests each, one after another, "
                  "over a kept connection, timed by the client.", "",
                  "| request | statuses | p50 ms | p99 ms | worst ms |", "|---|---|---|---|---|", *rows, "",
                  f"* under 100 ms at p99 (every page measured): {_ok(r['met'])}"]
    if "cache" in found:
        r = found["cache"]
        speed = "; ".join(f"{label} **{s:.2f}×**" for label, s in r["hit_speedup"].items())
        parts += ["", f"### Response cache, c=1 (issue 36; {r['when']}, {r['rounds']} rounds × "
                  f"{r['round_seconds']} s, load {r['load_before']} → {r['load']})", "",
                  HEAD, _variant_rows(r["variants"]), "",
                  f"* a hit against the uncached row (p50 ratio): {speed} (target ≥ 5×: {_ok(r['met_hit'])})",
                  f"* a miss on a cached row over the uncached row, the same new prompts: "
                  f"{r['miss_added_ms']:+.3f} ms p50 (wrk's rounds); the gateway's "
                  f"CPU per call {r['miss_added_cpu_ms']:+.3f} ms"]
        if "paired_ms" in r:
            q = r["paired_ms"]
            parts += [f"* the miss, as the median of each round's difference: {q['miss p50']:+.3f} ms p50, "
                      f"CPU {q['miss cpu']:+.3f} ms per call"]
        if "alternating" in r:
            a = r["alternating"]
            d = a["paired"]["miss (cached row, new prompts)"]
            p50 = " / ".join(f"{v:.3f}" for v in a["p50"].values())
            parts += [f"* **the miss verdict's measure**: {a['pairs']} pairs of calls, new prompts on the uncached "
                      f"and the cached row alternating over one kept connection at c=1 ({a['seconds']} s; p50 {p50} "
                      f"ms; {a['errors']} non-200): a miss adds **{d['median']:+.3f} ms** (median of the pairs' "
                      f"differences; 95% interval {d['low']:+.3f} … {d['high']:+.3f}); target ≤ 0.2 ms: "
                      f"{_ok(r['met_miss'])}"]
    if "api_key" in found:
        a = found["api_key"]["alternating"]
        d = a["paired"]["API key"]
        parts += ["", f"### An API key against a JWT, c=1 ({found['api_key']['when']}, load "
                  f"{found['api_key']['load_before']} → {found['api_key']['load']})", "",
                  f"* {a['pairs']} pairs of the same call, with a JWT and with an API key, alternating over one "
                  f"kept connection ({a['seconds']} s; p50 {a['p50']['JWT']:.3f} / {a['p50']['API key']:.3f} ms; "
                  f"{a['errors']} non-200): the key's lookup adds **{d['median']:+.3f} ms** per call (median of the "
                  f"pairs' differences; 95% interval {d['low']:+.3f} … {d['high']:+.3f})"]
    if "against" in found:
        r = found["against"]
        new, was = r["sides"]
        this = r["this"]["commit"][:10] + (" with uncommitted changes" if r["this"]["changed"] else "")
        n = r["rounds"]
        won = r["rounds_no_slower"]
        parts += ["", f"### This checkout against {r['against']['rev']} (issue 37; {r['when']}, {n} rounds × "
                  f"{r['round_seconds']} s, load {r['load_before']} → {r['load']})", "",
                  f"This checkout ({this}) and `{r['against']['rev']}` ({r['against']['commit'][:10]}, from a "
                  "temporary git worktree), two gateways side by side on the same static upstream, each with "
                  "its own database and Redis db, seeded alike by its own commands; the same virtual "
                  "environment. Each serving process imported " + ", ".join(f"`{name}`" for name in
                                                                  r["imports"][was]["packages"])
                  + " from its own tree (checked in the process at start: it stops otherwise); schema "
                  f"versions: {r['schema'][new]} here, {r['schema'][was]} at {r['against']['rev']}.", "",
                  HEAD, _variant_rows(r["variants"]), "",
                  f"* c=1 p50: **{r['p50_c1_ms']:+.3f} ms** against {r['against']['rev']} (no slower in "
                  f"{won['p50 c=1']} of {n} rounds); c=32 throughput: **{r['rps_c32_ratio']:.1%}** of it (no slower in "
                  f"{won['req/s c=32']} of {n} rounds)",
                  f"* the gateway's CPU per call: {r['cpu_ms']['c=1']:+.3f} ms at c=1 ({won['cpu c=1']} of {n} "
                  f"rounds no more), {r['cpu_ms']['c=32']:+.3f} ms at c=32 ({won['cpu c=32']} of {n})",
                  f"* no slower (median p50 at c=1 and median req/s at c=32): {_ok(r['met'])}"]
    parts += [END, ""]
    return "\n".join(parts)


def merge_markdown(old: str, section: str) -> str:
    """`old` with its scenarios section replaced by `section` (appended when it had none)."""
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        return head + section.rstrip("\n") + rest.split(END, 1)[1]
    return old.rstrip("\n") + "\n\n" + section
