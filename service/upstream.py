"""The one HTTP transport to providers: a pooled `requests.Session`, timeouts, error mapping."""
from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass

import requests
from requests.adapters import HTTPAdapter

from providers.base import Completion, parse_json
from service.breaker import Breakers
from service.errors import (
    GatewayError, ProviderError, ProviderUnavailable, UpstreamRateLimited, UpstreamTimeout, unavailable,
)

RETRY_CAP = 10.0  # seconds: a provider asking us to wait longer gets its 429 passed on instead


@dataclass
class Call:
    """Everything one upstream call needs."""

    adapter: object
    chat: object
    base: str
    api_key: str | None
    connect_timeout: float
    read_timeout: float


def retryable(err: GatewayError) -> bool:
    """Connection errors, timeouts, 5xx and 429 may succeed on another try (or another model)."""
    return (isinstance(err, (ProviderUnavailable, UpstreamTimeout, UpstreamRateLimited, ProviderError))
            and getattr(err, "retry", True))


class Transport:
    """Owns the connection pool, retries and circuit breakers; each process has one."""

    def __init__(self, pool_size: int = 32, retries: int = 2, backoff: float = 0.25,
                 breakers: Breakers | None = None):
        self.retries, self.backoff = retries, backoff
        self.breakers = breakers or Breakers()
        self.session = requests.Session()
        self.session.trust_env = False  # never route provider calls through ambient proxies
        mount = HTTPAdapter(pool_connections=16, pool_maxsize=pool_size, max_retries=0)
        self.session.mount("http://", mount)
        self.session.mount("https://", mount)

    def _post(self, call: Call, stream: bool) -> requests.Response:
        """POST with up to `retries` more tries on retryable failures (jittered backoff,
        honouring Retry-After), behind the upstream's circuit breaker."""
        key = f"{call.base}|{call.chat.model.upstream_model}"
        self.breakers.before(key, call.chat.model.provider)
        for attempt in range(self.retries + 1):
            try:
                resp = self._post_once(call, stream)
            except GatewayError as err:
                if not retryable(err):
                    self.breakers.success(key)  # the upstream answered; the request was at fault
                    raise
                self.breakers.failure(key)
                wait = self._wait(err, attempt)
                if attempt == self.retries or wait is None:
                    raise
                time.sleep(wait)
                continue
            self.breakers.success(key)
            return resp
        raise AssertionError("unreachable")

    def _wait(self, err: GatewayError, attempt: int) -> float | None:
        """Seconds before the next try: the provider's Retry-After, else jittered exponential."""
        after = err.headers.get("Retry-After")
        if after is not None:
            try:
                seconds = float(after)
            except ValueError:
                return None
            return seconds if seconds <= RETRY_CAP else None
        return self.backoff * (2 ** attempt) * random.uniform(0.5, 1.5)

    def _post_once(self, call: Call, stream: bool) -> requests.Response:
        adapter, model = call.adapter, call.chat.model
        url = adapter.url(call.base, model, stream)
        body = json.dumps(adapter.request(call.chat), ensure_ascii=False).encode()
        try:
            resp = self.session.post(url, data=body, headers=adapter.headers(call.api_key),
                                     timeout=(call.connect_timeout, call.read_timeout), stream=stream)
        except requests.Timeout:
            raise UpstreamTimeout(f"{model.provider} did not answer in time") from None
        except requests.RequestException:
            raise unavailable(model.provider) from None
        if resp.status_code >= 400:
            try:
                text = resp.text
            except requests.RequestException:
                text = ""
            resp.close()
            err = _scrub(adapter.error(resp.status_code, text, model.provider), call.api_key)
            if resp.status_code == 429 and "Retry-After" in resp.headers:
                err.headers["Retry-After"] = resp.headers["Retry-After"]
            raise err
        return resp

    def complete(self, call: Call) -> tuple[Completion, float]:
        """One non-streaming call: the completion and the upstream latency in seconds."""
        started = time.perf_counter()
        resp = self._post(call, stream=False)
        try:
            payload = parse_json(resp.content)
        except requests.Timeout:
            raise UpstreamTimeout(f"{call.chat.model.provider} did not answer in time") from None
        except requests.RequestException:
            raise unavailable(call.chat.model.provider) from None
        finally:
            resp.close()
        return call.adapter.response(payload, call.chat), time.perf_counter() - started

    def open_stream(self, call: Call) -> requests.Response:
        """Start a streaming call; the caller iterates `iter_lines` and must close it."""
        return self._post(call, stream=True)


def _scrub(err: GatewayError, api_key: str | None) -> GatewayError:
    """Never echo our provider key back to a client."""
    if api_key and api_key in err.message:
        err.message = err.message.replace(api_key, "[redacted]")
    return err
