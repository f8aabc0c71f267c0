"""The one HTTP transport to providers: a pooled `requests.Session`, timeouts, error mapping.

Calls go straight to the Session's own urllib3 connection pool (requests' transport layer):
requests' per-call work (request preparation, cookie and setting merges, the Response
wrapper) cost ~0.2 ms of CPU per call and gave a gateway nothing (no cookies, redirects,
proxies or auth helpers toward providers). TLS is verified against the same CA bundle.
"""
from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass

import requests
import urllib3
from requests.adapters import HTTPAdapter
from requests.utils import DEFAULT_CA_BUNDLE_PATH
from urllib3.exceptions import HTTPError, NewConnectionError, ReadTimeoutError, TimeoutError as UrllibTimeout

from providers.base import Completion, parse_json
from service.pipeline.breaker import Breakers
from core.errors import (
    GatewayError, ProviderError, ProviderUnavailable, UpstreamRateLimited, UpstreamTimeout, scrub,
)

RETRY_CAP = 10.0  # seconds: a provider asking us to wait longer gets its 429 passed on instead
FINISH_GRACE = 0.05  # seconds: how long a finished stream waits for the rest of its body (the last chunk)
FINISH_BYTES = 65536  # what a finished stream reads past its last event before giving up the connection
MAX_BYTES = 256 << 20  # the most read of one answer that is not streamed, or of one line of a stream
READ_BYTES = 1 << 20  # one read of an answer that is not streamed
TLS = {"cert_reqs": "CERT_REQUIRED", "ca_certs": DEFAULT_CA_BUNDLE_PATH}


@dataclass
class Call:
    """Everything one upstream call needs."""

    adapter: object
    chat: object
    base: str
    api_key: str | None
    connect_timeout: float
    read_timeout: float
    breaker: str | None = None  # the breaker's key (a deployment's own); None: base URL + model
    retries: int | None = None  # None: the transport's; 0 when another deployment can take the call


def retryable(err: GatewayError) -> bool:
    """Connection errors, timeouts, 5xx and 429 may succeed on another try (or another model)."""
    return (isinstance(err, (ProviderUnavailable, UpstreamTimeout, UpstreamRateLimited, ProviderError))
            and getattr(err, "retry", True))


class Stream:
    """An open streaming answer: its lines as they arrive; `close()` drops the connection."""

    def __init__(self, resp: urllib3.BaseHTTPResponse, provider: str, max_bytes: int = MAX_BYTES):
        self.resp, self.provider, self.max_bytes = resp, provider, max_bytes
        self._pieces = self._reads()  # one reader for lines() and finish(): urllib3 drops the
        # connection when a chunked body's reader is abandoned midway

    def lines(self):
        """Lines as each network read arrives (none held back, whatever the framing: chunked,
        Content-Length, or a body that ends when the connection closes); a stall is an
        UpstreamTimeout, a broken connection or a line over `max_bytes` a ProviderError."""
        pending, size = [], 0  # the start of a line that goes on in a later read
        try:
            for chunk in self._pieces:
                if b"\n" not in chunk and b"\r" not in chunk:
                    lines, rest = [], chunk  # all of it goes on: kept as it is, not copied
                else:
                    lines = chunk.splitlines()
                    rest = None if chunk[-1:] in (b"\n", b"\r") else lines.pop()
                if pending and lines:
                    lines[0] = b"".join((*pending, lines[0]))  # each piece copied once: no
                    pending, size = [], 0  # quadratic cost on a line that spans many reads
                yield from lines
                if rest is not None:
                    pending.append(rest)
                    size += len(rest)
                    if size > self.max_bytes:
                        raise ProviderError(f"{self.provider} sent a stream line over "
                                            f"{self.max_bytes} bytes; the stream was cut")
        except ReadTimeoutError:
            raise UpstreamTimeout(f"{self.provider} stalled mid-stream") from None
        except (HTTPError, OSError):
            raise ProviderError(f"{self.provider} dropped the stream") from None
        if pending:
            yield b"".join(pending)

    def _reads(self):
        """Each chunk of a chunked body as it comes; else whatever one socket read returns
        (urllib3's stream() would wait for the whole body of a non-chunked answer)."""
        if self.resp.chunked:  # a chunk at a time, a long one in 64 KiB pieces
            yield from self.resp.stream(65536, decode_content=True)
            return
        while data := self.resp.read1(65536, decode_content=True):
            yield data

    def finish(self) -> None:
        """The answer is complete (its last event came): read the end of the body if it is on its
        way — a chunked body's closing chunk, which servers send with the last event — so the
        connection goes back to the pool and the next call to this upstream skips the TCP (and TLS)
        handshake; else close it. A body that ends when the connection closes is not waited for."""
        conn = self.resp.connection
        if conn is not None and conn.sock is not None and (
                self.resp.chunked or self.resp.length_remaining is not None):
            try:
                conn.sock.settimeout(FINISH_GRACE)
                left = FINISH_BYTES
                for chunk in self._pieces:
                    left -= len(chunk)
                    if left < 0:
                        break
            except (HTTPError, OSError):
                pass  # late or broken: the connection is closed below
        self.close()

    def close(self) -> None:
        """Drop the connection unless the whole body was read (then it is already back in the pool)."""
        self.resp.close()
        self.resp.release_conn()


class Transport:
    """Owns the connection pool, retries and circuit breakers; each process has one."""

    def __init__(self, pool_size: int = 32, retries: int = 2, backoff: float = 0.25,
                 breakers: Breakers | None = None, max_bytes: int = MAX_BYTES):
        self.retries, self.backoff, self.max_bytes = retries, backoff, max_bytes
        self.breakers = breakers or Breakers()
        self.session = requests.Session()
        self.session.trust_env = False  # never route provider calls through ambient proxies
        mount = HTTPAdapter(pool_connections=16, pool_maxsize=pool_size, max_retries=0)
        self.session.mount("http://", mount)
        self.session.mount("https://", mount)
        self._pools: dict = {}  # base URL -> the Session's pool for its host (a lookup per call is slow)

    def _pool(self, base: str, url: str):
        """The Session's urllib3 pool for this URL's host."""
        pool = self._pools.get(base)
        if pool is None or pool.pool is None:  # not seen yet, or closed by the manager's LRU
            manager = self.session.get_adapter(url).poolmanager
            pool = manager.connection_from_url(url, pool_kwargs=TLS if url.startswith("https:") else None)
            self._pools[base] = pool
        return pool

    def _post(self, call: Call, stream: bool) -> urllib3.BaseHTTPResponse:
        """POST with up to `retries` more tries on retryable failures (jittered backoff,
        honouring Retry-After), behind the upstream's circuit breaker: a call whose every try
        failed counts once against it, however many tries it made (so one caller's few calls
        cannot open it for everyone)."""
        key = call.breaker or f"{call.base}|{call.chat.model.upstream_model}"
        self.breakers.before(key, call.chat.model.provider)
        retries = self.retries if call.retries is None else call.retries
        for attempt in range(retries + 1):
            try:
                resp = self._post_once(call, stream)
            except GatewayError as err:
                failed = retryable(err) and not isinstance(err, UpstreamRateLimited)
                if not failed:
                    # the upstream answered: the request was at fault, or the provider's limit was
                    # reached (its limit, not its failure: a 429 never opens the breaker)
                    self.breakers.success(key)
                    if not retryable(err):
                        raise
                wait = self._wait(err, attempt)
                if attempt == retries or wait is None:
                    if failed:
                        self.breakers.failure(key)
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

    def _post_once(self, call: Call, stream: bool) -> urllib3.BaseHTTPResponse:
        """One POST; the whole body read into `body` unless `stream` (at most `max_bytes`: an
        upstream that sends more is a ProviderError, its connection dropped). Failures as our errors."""
        adapter, model = call.adapter, call.chat.model
        url = adapter.url(call.base, model, stream)
        body = json.dumps(adapter.request(call.chat), ensure_ascii=False).encode()
        try:
            resp = self._pool(call.base, url).urlopen(
                # origin-form request line (path?query), as requests sends: not every server routes absolute URLs
                "POST", urllib3.util.parse_url(url).request_uri, body=body,
                headers=adapter.call_headers(call.chat, call.api_key), retries=False,
                redirect=False, assert_same_host=False, preload_content=False,
                timeout=urllib3.Timeout(connect=call.connect_timeout, read=call.read_timeout))
            if not stream or resp.status >= 400:
                resp.body = self._body(resp, model.provider)
        except UrllibTimeout as exc:
            if isinstance(exc, NewConnectionError):  # refused, unresolvable
                raise adapter.unavailable(model.provider) from None
            raise UpstreamTimeout(f"{model.provider} did not answer in time") from None
        except (HTTPError, OSError, ValueError):  # reset, TLS, protocol garbage, bad URL
            raise adapter.unavailable(model.provider) from None
        if resp.status >= 400:
            err = scrub(adapter.error(resp.status, resp.body.decode("utf-8", "replace"), model.provider),
                        [call.api_key])
            err.upstream_status = resp.status  # the router tells a 429 and a 401/403 apart by it
            if resp.status == 429 and "Retry-After" in resp.headers:
                err.headers["Retry-After"] = resp.headers["Retry-After"]
            raise err
        return resp

    def complete(self, call: Call) -> tuple[Completion, float]:
        """One non-streaming call: the completion and the upstream latency in seconds."""
        started = time.perf_counter()
        resp = self._post(call, stream=False)
        return call.adapter.response(parse_json(resp.body), call.chat), time.perf_counter() - started

    def open_stream(self, call: Call) -> Stream:
        """Start a streaming call; the caller reads `lines()` and must `close()` it."""
        return Stream(self._post(call, stream=True), call.chat.model.provider, self.max_bytes)

    def _body(self, resp: urllib3.BaseHTTPResponse, provider: str) -> bytes:
        """The whole body, its connection back in the pool; over `max_bytes` (declared, or read
        after decoding) a ProviderError, the connection dropped unread. Read in pieces of at most
        1 MiB: one read of `max_bytes` would ask for that much memory on every call."""
        pieces, size = [], 0
        declared = resp.length_remaining
        over = declared is not None and declared > self.max_bytes
        while not over and (piece := resp.read(READ_BYTES)):
            pieces.append(piece)
            size += len(piece)
            over = size > self.max_bytes
        if over:
            resp.close()
            resp.release_conn()
            err = ProviderError(f"{provider} answered with more than {self.max_bytes} bytes")
            err.retry = False  # it would send as much again
            raise err
        resp.release_conn()
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

