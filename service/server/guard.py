"""What the server refuses before the app sees a request (SPEC §18): a body over
MAX_CONTENT_LENGTH, a request head slower than REQUEST_HEAD_TIMEOUT, more than
MAX_CONNECTIONS_PER_IP connections from one client address.

* **Bodies.** waitress is told the body limit (max_request_body_size = MAX_CONTENT_LENGTH + 1):
  a declared Content-Length over it is refused with 413 as soon as the head is read, before a
  byte of the body; a chunked body is cut at the limit. Its answer is the contract's body
  (`request_too_large`), not waitress's text page, and the connection is closed.
* **Heads.** The clock starts when a connection opens, and again when the first byte of a later
  request's head arrives; a head not complete REQUEST_HEAD_TIMEOUT seconds later (silent or
  trickling) closes the connection, unless an earlier request on it is still being answered. A kept-alive connection that sends nothing between requests
  is waitress's idle timeout's (channel_timeout), as before.
* **Addresses.** A connection from an address that already holds MAX_CONNECTIONS_PER_IP is closed
  at once, before anything is read from it (a TCP close; no answer: under a flood an answer costs
  a write per attempt and the client may not read it). Peers named by TRUSTED_PROXY_ADDRESSES are
  exempt; with TRUSTED_PROXIES set and no addresses named, every peer is taken for a proxy and no
  address is capped (the proxy's own address would otherwise cap all its clients together).
"""
from __future__ import annotations

import ipaddress
import json
import logging
import threading
import time

from waitress.parser import HTTPRequestParser
from waitress.task import ErrorTask

from core.errors import GatewayError
from frontdoors import anthropic
from service.server.eventloop import Channel

log = logging.getLogger("tollgate")

WAITRESS_ERRORS = {  # waitress's own refusals, in the contract's words (SPEC §8)
    400: ("invalid_request_error", "invalid_request", "Malformed HTTP request"),
    413: ("invalid_request_error", "request_too_large", "Request body is larger than the limit"),
    431: ("invalid_request_error", "request_header_fields_too_large", "Request head is larger than the limit"),
    501: ("not_implemented", "not_implemented", "Transfer-Encoding not implemented"),
}


class ContractErrorTask(ErrorTask):
    """waitress's answer to a request it refused itself (oversized body or head, malformed head),
    with the contract's error body."""

    def execute(self):
        code = getattr(self.request.error, "code", 400)
        kind, name, message = WAITRESS_ERRORS.get(code, ("invalid_request_error", "invalid_request",
                                                         "Malformed HTTP request"))
        err = GatewayError(message, code=name)
        err.type, err.status = kind, code
        path = getattr(self.request, "path", None) or ""
        if anthropic.at_door(path):
            rid = anthropic.request_id()
            body = json.dumps(anthropic.error_body(err, rid)).encode()
            self.response_headers.append(("request-id", rid))
        else:
            body = json.dumps(err.body()).encode()
        self.status = f"{code} {getattr(self.request.error, 'reason', 'Bad Request')}"
        # HTTP/1.1 whatever the request said (a head refused for its size was never read, so
        # waitress took it for HTTP/1.0); the connection closes after it either way
        self.version = "1.1"
        self.response_headers.extend([("Content-Type", "application/json"), ("x-should-retry", "false")])
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class Parser(HTTPRequestParser):
    """waitress's parser, with two changes. A chunked body is given at most what is left of the
    limit (waitress checks the limit after taking a whole read: up to 8 KiB more was written to the
    body's buffer). A request refused at its head (a declared body over the limit) is not answered
    `100 Continue` first, which would invite the client to send the body."""

    def received(self, data):
        if self.body_rcv is not None and self.chunked:
            data = data[:max(self.adj.max_request_body_size - self.body_bytes_received, 0)]
        consumed = super().received(data)
        if self.error is not None:
            self.expect_continue = False
        return consumed


class Exempt:
    """Which peers the per-address cap does not apply to."""

    def __init__(self, proxies: int, addresses: list[str]):
        self.networks = [ipaddress.ip_network(a.strip(), strict=False) for a in addresses if a.strip()]
        self.everyone = bool(proxies) and not self.networks

    def __call__(self, host: str) -> bool:
        if self.everyone:
            return True
        try:
            ip = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        ip = getattr(ip, "ipv4_mapped", None) or ip  # ::ffff:10.0.0.5 on a dual-stack listener
        return any(ip in net for net in self.networks)


class Guard:
    """Per-listener state: connections per address, the cap, the head deadline."""

    def __init__(self, per_ip: int, head_timeout: float, exempt: Exempt):
        self.per_ip, self.head_timeout, self.exempt = per_ip, head_timeout, exempt
        self.open: dict[str, int] = {}
        self.lock = threading.Lock()
        self.refused = 0  # connections closed at once for their address
        self.timed_out = 0  # connections closed for a slow head
        self._warned_at = 0.0

    def admit(self, host: str) -> bool:
        """Count a new connection from `host`, or say no (the cap is reached)."""
        if self.per_ip <= 0 or self.exempt(host):
            return True
        with self.lock:
            held = self.open.get(host, 0)
            if held >= self.per_ip:
                self.refused += 1
                self._warn(host)
                return False
            self.open[host] = held + 1
        return True

    def release(self, host: str) -> None:
        with self.lock:
            held = self.open.get(host, 0) - 1
            if held > 0:
                self.open[host] = held
            else:
                self.open.pop(host, None)

    def _warn(self, host: str) -> None:
        now = time.monotonic()
        if now - self._warned_at >= 60:  # one line a minute under a flood, with the count so far
            self._warned_at = now
            log.warning("connections from %s reached MAX_CONNECTIONS_PER_IP (%d): new ones are closed "
                        "(%d refused so far)", host, self.per_ip, self.refused)


class GuardedChannel(Channel):
    """A connection that counts against its address and keeps the clock of its request head."""

    error_task_class = ContractErrorTask
    parser_class = Parser
    counted = None  # the address this connection is counted against, until it closes
    head_since = None  # monotonic time its current head began; None: no head in progress

    def __init__(self, server, sock, addr, adj, map=None):
        self.head_since = time.monotonic()
        super().__init__(server, sock, addr, adj, map=map)

    def received(self, data):
        try:
            return super().received(data)
        finally:
            request = self.request
            if request is None or request.headers_finished or request.completed:
                self.head_since = None
            elif self.head_since is None:
                self.head_since = time.monotonic()

    def del_channel(self, map=None):
        host, self.counted = self.counted, None
        if host is not None:
            self.server.guard.release(host)
        super().del_channel(map)


ACCEPT_BATCH = 64  # connections taken per wake-up of the listener (waitress takes one)


def _accept(listener):
    """waitress's handle_accept, taking up to ACCEPT_BATCH waiting connections at once (a flood of
    connects must not fill the listen queue, where the kernel drops other clients' SYNs: a second
    each), with the per-address cap applied before a channel is made."""
    def handle_accept():
        for _ in range(ACCEPT_BATCH):
            if not _accept_one(listener):
                return
            if len(listener._map) >= listener.adj.connection_limit:
                return  # readable() stops listening at the limit; it is asked between wake-ups
    return handle_accept


def _accept_one(listener) -> bool:
    """Take one waiting connection; False when none was waiting."""
    try:
        pair = listener.accept()
        if pair is None:
            return False
        conn, addr = pair
        listener.set_socket_options(conn)
    except OSError:
        return True  # the peer left before we took it (waitress logs and goes on likewise)
    addr = listener.fix_addr(addr)
    host = addr[0] if isinstance(addr, tuple) else str(addr)
    guard = listener.guard
    if not guard.admit(host):
        conn.close()
        return True
    try:
        channel = listener.channel_class(listener, conn, addr, listener.adj, map=listener._map)
    except BaseException:
        guard.release(host)
        raise
    if not (guard.per_ip <= 0 or guard.exempt(host)):
        channel.counted = host
    return True


def _maintenance(listener, guard: Guard):
    """waitress's maintenance, plus closing connections whose head is late."""
    original = listener.maintenance

    def maintenance(now):
        original(now)
        if guard.head_timeout <= 0:
            return
        cutoff = time.monotonic() - guard.head_timeout
        for channel in list(listener._map.values()):
            since = getattr(channel, "head_since", None)
            # a connection whose earlier request is still being answered (a stream) is left be: a
            # pipelined head behind it cannot be served before then anyway
            if since is not None and since < cutoff and not channel.will_close and not channel.requests:
                guard.timed_out += 1
                channel.will_close = True  # closed by the loop on its next pass
    return maintenance


def listeners_of(server) -> list:
    """The listening dispatchers of a waitress server (one, or several sharing a map)."""
    return [server] if hasattr(server, "maintenance") else [
        s for s in server.map.values() if hasattr(s, "maintenance")]


def install(server, conf: dict) -> Guard:
    """Guard every listener of `server` (after eventloop.install); the Guard, for tests and logs."""
    exempt = Exempt(conf.get("TRUSTED_PROXIES", 0), conf.get("TRUSTED_PROXY_ADDRESSES", []))
    guard = Guard(conf["MAX_CONNECTIONS_PER_IP"], conf["REQUEST_HEAD_TIMEOUT"], exempt)
    if exempt.everyone and guard.per_ip > 0:
        log.warning("TRUSTED_PROXIES is set and TRUSTED_PROXY_ADDRESSES is not: MAX_CONNECTIONS_PER_IP "
                    "applies to no peer (every peer is taken for a proxy)")
    for listener in listeners_of(server):
        listener.guard = guard
        listener.channel_class = GuardedChannel
        listener.handle_accept = _accept(listener)
        listener.maintenance = _maintenance(listener, guard)
    return guard
