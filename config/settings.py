"""The only module that reads the environment (and `.env`, when present)."""
from __future__ import annotations

import os
import secrets
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _bool(value: str | None, default: bool) -> bool:
    if value is None or value == "":
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


def _jwt_secret(data_dir: Path) -> str:
    """The HS256 key: JWT_SECRET_KEY, else one generated once into data/jwt-secret (0600)."""
    path = data_dir / "jwt-secret"
    if path.exists():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(48)
    draft = data_dir / f".jwt-secret.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key)
    try:
        os.link(draft, path)  # whole or not at all: processes starting at once agree on one key
    except FileExistsError:
        key = path.read_text().strip()  # another process was first
    finally:
        os.unlink(draft)
    return key


def load() -> dict:
    """Read every setting once, with safe defaults (SPEC §3)."""
    try:
        from dotenv import load_dotenv

        load_dotenv(ROOT / ".env", override=False)
    except ImportError:  # python-dotenv is a dependency; tolerate its absence
        pass
    env = os.environ.get
    data_dir = Path(env("DATA_DIR", str(ROOT / "data")))
    algorithm = env("JWT_ALGORITHM", "HS256")
    public_key = env("JWT_PUBLIC_KEY") or None
    conf = {
        "HOST": env("HOST", "127.0.0.1"),
        "PORT": int(env("PORT", "4321")),
        "DATA_DIR": str(data_dir),
        "DATABASE_URL": env("DATABASE_URL") or f"sqlite:///{data_dir / 'tollgate.db'}",
        "DB_POOL_SIZE": int(env("DB_POOL_SIZE", "32")),  # database connections per process
        "REDIS_URL": env("REDIS_URL") or None,
        "JWT_ALGORITHM": algorithm,
        "JWT_PUBLIC_KEY": public_key,
        "AUTH_REQUIRED": _bool(env("AUTH_REQUIRED"), True),
        "DEFAULT_MODEL": env("DEFAULT_MODEL", "gemma-3-270m"),
        "NEW_ACCOUNT_CREDITS": env("NEW_ACCOUNT_CREDITS", "0"),
        "RATE_LIMIT_DEFAULT": env("RATE_LIMIT_DEFAULT", "60/minute"),
        "TOKEN_LIMIT_PER_MINUTE": int(env("TOKEN_LIMIT_PER_MINUTE", "0")),
        "CORS_ORIGINS": [o.strip() for o in env("CORS_ORIGINS", "*").split(",") if o.strip()],
        "MAX_CONTENT_LENGTH": int(env("MAX_CONTENT_LENGTH", "4194304")),
        "UPSTREAM_CONNECT_TIMEOUT": float(env("UPSTREAM_CONNECT_TIMEOUT", "5")),
        "UPSTREAM_READ_TIMEOUT": float(env("UPSTREAM_READ_TIMEOUT", "120")),
        "UPSTREAM_RETRIES": int(env("UPSTREAM_RETRIES", "2")),
        "UPSTREAM_BACKOFF": float(env("UPSTREAM_BACKOFF", "0.25")),
        # the most read of an answer that is not streamed, or of one line of a stream (256 MiB:
        # 2048 embeddings of 3072 floats as JSON are ~130 MB)
        "UPSTREAM_MAX_BYTES": int(env("UPSTREAM_MAX_BYTES", str(256 << 20))),
        "BREAKER_THRESHOLD": int(env("BREAKER_THRESHOLD", "5")),
        "BREAKER_COOLDOWN": float(env("BREAKER_COOLDOWN", "30")),
        "OLLAMA_HOST": env("OLLAMA_HOST", "http://localhost:11434"),
        "MODELS_FILE": env("MODELS_FILE", str(ROOT / "config" / "models.toml")),
        # a call in flight holds a thread for its whole life (seconds to minutes): see README, sizing
        "WAITRESS_THREADS": int(env("WAITRESS_THREADS", "1024")),
        "MAX_CONNECTIONS": int(env("MAX_CONNECTIONS", "10000")),
        "CLIENT_WRITE_TIMEOUT": float(env("CLIENT_WRITE_TIMEOUT", "30")),
        "STREAM_BUFFER_BYTES": int(env("STREAM_BUFFER_BYTES", str(1 << 20))),
        "WORKERS": int(env("WORKERS", "1")),
        # how long a running thread keeps the interpreter before it must hand it on (Python's 5 ms
        # default wakes every waiting thread every 5 ms: with a thousand streams, a third of the CPU)
        "SWITCH_INTERVAL": float(env("SWITCH_INTERVAL", "0.05")),
        # each serving process on a CPU of its own, claimed through files in DATA_DIR (service/server/cpus.py)
        "PIN_WORKERS": _bool(env("PIN_WORKERS"), True),
        # the server's log is written every this many seconds (warnings and errors at once); 0: per line
        "LOG_FLUSH_SECONDS": float(env("LOG_FLUSH_SECONDS", "0.2")),
        "WORKER_MIN_UPTIME": float(env("WORKER_MIN_UPTIME", "10")),
        "WORKER_BACKOFF": float(env("WORKER_BACKOFF", "0.5")),
        "WORKER_MAX_FAILURES": int(env("WORKER_MAX_FAILURES", "5")),
        # calls in flight at once (0: no cap); a key's own max_concurrent overrides the key cap
        "MAX_CONCURRENT_PER_ACCOUNT": int(env("MAX_CONCURRENT_PER_ACCOUNT", "128")),
        "MAX_CONCURRENT_PER_KEY": int(env("MAX_CONCURRENT_PER_KEY", "0")),
        "CONCURRENCY_LEASE_SECONDS": float(env("CONCURRENCY_LEASE_SECONDS", "60")),
        # a deployment that answered 429 without a Retry-After is left out this long (SPEC §15)
        "DEPLOYMENT_COOLDOWN_SECONDS": float(env("DEPLOYMENT_COOLDOWN_SECONDS", "30")),
        "DEPLOYMENT_STATS_SECONDS": float(env("DEPLOYMENT_STATS_SECONDS", "1")),
        "SHUTDOWN_GRACE_SECONDS": float(env("SHUTDOWN_GRACE_SECONDS", "30")),
        "TRUSTED_PROXIES": int(env("TRUSTED_PROXIES", "0")),
        # hostile traffic (docs/hostile-traffic.md): the peers exempt from MAX_CONNECTIONS_PER_IP
        # (addresses or networks; unset with TRUSTED_PROXIES > 0: every peer), the most connections
        # one client address may hold (0: no cap), seconds for a request head to arrive in full
        "TRUSTED_PROXY_ADDRESSES": [a.strip() for a in env("TRUSTED_PROXY_ADDRESSES", "").split(",") if a.strip()],
        "MAX_CONNECTIONS_PER_IP": int(env("MAX_CONNECTIONS_PER_IP", "512")),
        "REQUEST_HEAD_TIMEOUT": float(env("REQUEST_HEAD_TIMEOUT", "10")),
        # a hold expires HOLD_TTL_SECONDS after its process last extended it (every tick while
        # its call runs); the reaper releases expired holds every HOLD_REAP_INTERVAL_SECONDS
        "HOLD_TTL_SECONDS": int(env("HOLD_TTL_SECONDS", "60")),
        "HOLD_REAP_INTERVAL_SECONDS": float(env("HOLD_REAP_INTERVAL_SECONDS", "20")),
        "IMAGE_TOKENS": int(env("IMAGE_TOKENS", "3000")),  # prompt tokens held per image part
        # the response cache (SPEC §16): the largest answer kept, and the in-process cache's bound
        "CACHE_MAX_ENTRY_BYTES": int(env("CACHE_MAX_ENTRY_BYTES", str(1 << 20))),
        "CACHE_MEMORY_BYTES": int(env("CACHE_MEMORY_BYTES", str(64 << 20))),
        # JWTs: an `exp` claim is required unless JWT_ALLOW_NO_EXP; JWT_MAX_LIFETIME_SECONDS
        # (0: no cap) refuses tokens whose exp lies further from their iat (or now)
        "JWT_ALLOW_NO_EXP": _bool(env("JWT_ALLOW_NO_EXP"), False),
        "JWT_MAX_LIFETIME_SECONDS": int(env("JWT_MAX_LIFETIME_SECONDS", "0")),
        # low-balance alerts: off without a webhook URL; LOW_BALANCE_THRESHOLD (credits, 0: none)
        # applies to accounts without their own threshold
        "ALERT_WEBHOOK_URL": env("ALERT_WEBHOOK_URL") or None,
        "ALERT_WEBHOOK_SECRET": env("ALERT_WEBHOOK_SECRET", ""),
        "LOW_BALANCE_THRESHOLD": env("LOW_BALANCE_THRESHOLD", "0"),
        "ALERT_POLL_SECONDS": float(env("ALERT_POLL_SECONDS", "5")),
        "ALERT_MAX_ATTEMPTS": int(env("ALERT_MAX_ATTEMPTS", "20")),
        # the web console at /console (off: no route answers there)
        "CONSOLE_ENABLED": _bool(env("CONSOLE_ENABLED"), True),
        "CONSOLE_SESSION_HOURS": int(env("CONSOLE_SESSION_HOURS", "12")),
        # failed console sign-ins: free ones per client address and per credential, then each try
        # waits BACKOFF seconds, doubling up to BACKOFF_MAX; failures are forgotten after WINDOW
        "CONSOLE_SIGNIN_FREE_PER_IP": int(env("CONSOLE_SIGNIN_FREE_PER_IP", "10")),
        "CONSOLE_SIGNIN_FREE_PER_CREDENTIAL": int(env("CONSOLE_SIGNIN_FREE_PER_CREDENTIAL", "5")),
        "CONSOLE_SIGNIN_BACKOFF_SECONDS": float(env("CONSOLE_SIGNIN_BACKOFF_SECONDS", "1")),
        "CONSOLE_SIGNIN_BACKOFF_MAX_SECONDS": float(env("CONSOLE_SIGNIN_BACKOFF_MAX_SECONDS", "900")),
        "CONSOLE_SIGNIN_WINDOW_SECONDS": float(env("CONSOLE_SIGNIN_WINDOW_SECONDS", "3600")),
        # the request log (docs/logs-and-budgets.md): rows kept LOG_RETENTION_DAYS, bodies (when an
        # account or key keeps them) LOG_BODY_RETENTION_DAYS, each body cut at LOG_BODY_MAX_BYTES
        "REQUEST_LOG": _bool(env("REQUEST_LOG"), True),
        "LOG_RETENTION_DAYS": int(env("LOG_RETENTION_DAYS", "30")),
        "LOG_BODY_RETENTION_DAYS": int(env("LOG_BODY_RETENTION_DAYS", "7")),
        "LOG_BODY_MAX_BYTES": int(env("LOG_BODY_MAX_BYTES", "65536")),
        "LOG_QUEUE_SIZE": int(env("LOG_QUEUE_SIZE", "10000")),
        "LOG_BATCH_SIZE": int(env("LOG_BATCH_SIZE", "500")),
        "LOG_WRITE_SECONDS": float(env("LOG_WRITE_SECONDS", "0.5")),  # the writer writes what gathered this often
        "LOG_PRUNE_SECONDS": float(env("LOG_PRUNE_SECONDS", "3600")),
        "LOG_RETRY_SECONDS": float(env("LOG_RETRY_SECONDS", "1")),  # a batch the database refused, again
        # traces: OTLP/HTTP to this endpoint (unset: none); OTEL_* settings are the SDK's own
        "OTEL_EXPORTER_OTLP_ENDPOINT": env("OTEL_EXPORTER_OTLP_ENDPOINT") or None,
        "OTEL_SERVICE_NAME": env("OTEL_SERVICE_NAME", "tollgate"),
        # provider keys are read through this mapping only, by the variable name a row names
        "PROVIDER_KEYS": {k: v for k, v in os.environ.items() if k.endswith("_API_KEY")},
    }
    if algorithm.startswith("HS"):
        conf["JWT_SECRET_KEY"] = env("JWT_SECRET_KEY") or _jwt_secret(data_dir)
    else:
        conf["JWT_SECRET_KEY"] = env("JWT_SECRET_KEY") or None
    return conf
