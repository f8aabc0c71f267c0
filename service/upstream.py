"""The one HTTP transport to providers: a pooled `requests.Session`, timeouts, error mapping."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass

import requests
from requests.adapters import HTTPAdapter

from providers.base import Completion, parse_json
from service.errors import GatewayError, UpstreamTimeout, unavailable


@dataclass
class Call:
    """Everything one upstream call needs."""

    adapter: object
    chat: object
    base: str
    api_key: str | None
    connect_timeout: float
    read_timeout: float


class Transport:
    """Owns the connection pool; each process has one."""

    def __init__(self, pool_size: int = 32):
        self.session = requests.Session()
        self.session.trust_env = False  # never route provider calls through ambient proxies
        mount = HTTPAdapter(pool_connections=16, pool_maxsize=pool_size, max_retries=0)
        self.session.mount("http://", mount)
        self.session.mount("https://", mount)

    def _post(self, call: Call, stream: bool) -> requests.Response:
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
            raise _scrub(adapter.error(resp.status_code, text, model.provider), call.api_key)
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
