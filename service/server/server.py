"""`python -m service.server` (make serve / make run): waitress, with a graceful stop on SIGTERM.

Sized for LLM traffic, where a call lasts seconds to minutes and capacity is the number of calls
open at once: waitress on an epoll loop (service/server/eventloop.py: no 1024-descriptor ceiling, and
idle connections cost a wake-up nothing; waitress's poll() loop where there is no epoll), a thread
per call in flight (WAITRESS_THREADS), MAX_CONNECTIONS open connections, the descriptor limit raised to what the
system allows. A client that stops reading is cut after CLIENT_WRITE_TIMEOUT seconds without
progress, and at most STREAM_BUFFER_BYTES wait in one connection's buffer. Each serving process
runs on a CPU of its own (PIN_WORKERS, service/server/cpus.py).

WORKERS > 1 binds the port once per worker (SO_REUSEPORT: the kernel spreads connections
evenly) and forks that many waitress processes (Python runs one thread at a time per process;
this is how one host uses all its cores without a second proxy). A worker that dies is replaced; workers that die
at once are restarted with exponential backoff, and after WORKER_MAX_FAILURES such deaths in a
row the master stops with the last error and a non-zero status, closing the port.

On SIGTERM the listener closes (new connections are refused, so nginx tries
another process), requests in flight get SHUTDOWN_GRACE_SECONDS to finish;
streams still open then end with the error event and are billed for what they
delivered; then the process exits.
"""
from __future__ import annotations

import _thread
import logging
import os
import resource
import signal
import socket
import sys
import threading
import time
import traceback

from waitress import create_server
from werkzeug.wsgi import ClosingIterator

from config import settings
from service import create_app
from service.server import cpus, eventloop, guard, logsink

log = logging.getLogger("tollgate")


class InFlight:
    """WSGI middleware counting requests whose response has not been closed yet."""

    def __init__(self, app):
        self.app = app
        self.count = 0
        self.changed = threading.Condition()

    def _done(self):
        with self.changed:
            self.count -= 1
            self.changed.notify_all()

    def __call__(self, environ, start_response):
        with self.changed:
            self.count += 1
        try:
            return ClosingIterator(self.app(environ, start_response), [self._done])
        except BaseException:
            self._done()
            raise

    def wait_idle(self, timeout: float) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: self.count <= 0, timeout)


def _await_flushed(server, timeout: float) -> None:
    """Responses are written by the loop thread: let it send what the workers finished."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(
            getattr(channel, "total_outbufs_len", 0) for channel in list(server._map.values())):
        time.sleep(0.01)


def _drain(server, inflight: InFlight, stopping: threading.Event, grace: float) -> None:
    if not inflight.wait_idle(grace):
        log.warning("shutdown: %d requests still running after %.0fs; ending their streams",
                    inflight.count, grace)
        stopping.set()
        inflight.wait_idle(10)
    _await_flushed(server, 5)
    log.warning("shutdown: done")
    _thread.interrupt_main()  # waitress's loop stops its workers on KeyboardInterrupt


def raise_descriptor_limit() -> int:
    """Open files up to the hard limit: every call in flight holds a client and an upstream socket."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = 1 << 20 if hard == resource.RLIM_INFINITY else hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def cut_stalled_clients(server, deadline: float) -> None:
    """waitress's periodic maintenance, plus: close connections whose pending response has not
    moved for `deadline` seconds (the client stopped reading). The app thread blocked on the
    full buffer wakes, the stream ends, the upstream call is closed and the call is billed for
    what was written."""
    listeners = [server] if hasattr(server, "maintenance") else [
        s for s in server.map.values() if hasattr(s, "maintenance")]
    for listener in listeners:
        def maintenance(now, original=listener.maintenance, listener=listener):
            original(now)
            for channel in list(listener._map.values()):
                if not (getattr(channel, "requests", None) and getattr(channel, "total_outbufs_len", 0)):
                    channel.__dict__.pop("stalled_since", None)
                    continue
                since = channel.__dict__.get("stalled_since")
                if since is None or channel.last_activity > since:
                    channel.stalled_since = now  # waiting output, first seen (or it moved since)
                elif now - since > deadline:
                    log.warning("closing a connection whose client read nothing for %.0f s", now - since)
                    channel.handle_close()

        listener.maintenance = maintenance


def make_server(app, conf: dict, files: int, **where):
    """waitress as the gateway runs it, on `where` (host and port, or sockets): the epoll loop,
    stalled readers cut, and the guards against hostile traffic (service/server/guard.py). `files` is
    the descriptor limit, which bounds the connections taken."""
    # maintenance (idle, stalled and slow-head connections) runs every `interval` seconds
    interval = max(1, int(min(conf["CLIENT_WRITE_TIMEOUT"] / 3, conf["REQUEST_HEAD_TIMEOUT"] / 2 or 10)))
    # channel_request_lookahead lets waitress notice a client that hung up mid-stream at once,
    # so the upstream call is closed and billing stops at what was delivered
    server = create_server(app, threads=conf["WAITRESS_THREADS"], channel_request_lookahead=1,
                           ident="tollgate", connection_limit=min(conf["MAX_CONNECTIONS"], max(files // 2 - 16, 64)),
                           clear_untrusted_proxy_headers=True, asyncore_use_poll=True,
                           outbuf_high_watermark=conf["STREAM_BUFFER_BYTES"],
                           # a body over the limit is refused before it is read (waitress: 1 GB to a temp file)
                           max_request_body_size=conf["MAX_CONTENT_LENGTH"] + 1,
                           backlog=4096,  # as listeners() binds for WORKERS > 1 (capped by net.core.somaxconn)
                           cleanup_interval=interval, **where)
    eventloop.install(server)
    cut_stalled_clients(server, conf["CLIENT_WRITE_TIMEOUT"])
    guard.install(server, conf)
    return server


def serve(sock: socket.socket | None = None) -> None:
    """One waitress process: on its own port, or on a listening socket it shares."""
    app = create_app()
    conf = app.config
    # a thread waiting for the interpreter wakes every switch interval to ask for it: with a
    # thousand streams at the 5 ms default the switching took a third of the process's CPU
    sys.setswitchinterval(conf["SWITCH_INTERVAL"])
    cpu = cpus.pin(conf["DATA_DIR"]) if conf["PIN_WORKERS"] else None
    inflight = InFlight(app.wsgi_app)
    app.wsgi_app = inflight
    where = {"sockets": [sock]} if sock is not None else {"host": conf["HOST"], "port": conf["PORT"]}
    server = make_server(app, conf, raise_descriptor_limit(), **where)

    def on_term(signum, frame):
        if getattr(on_term, "seen", False):
            return
        on_term.seen = True
        log.warning("shutdown: SIGTERM, no new connections; %d requests in flight", inflight.count)
        server.accepting = False

        def close_listener():  # on the loop thread, between two polls: never under a select()
            server.del_channel()
            server.socket.close()

        server.trigger.pull_trigger(close_listener)
        threading.Thread(target=_drain, daemon=True, name="drain",
                         args=(server, inflight, app.extensions["tollgate"].stopping,
                               conf["SHUTDOWN_GRACE_SECONDS"])).start()

    signal.signal(signal.SIGTERM, on_term)
    # the drain ends the loop with interrupt_main(): SIGINT must raise here even when this process
    # inherited it ignored (started in the background) or a supervisor's handler (forked later)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    log.warning("tollgate serving on http://%s:%s (pid %d, %d threads, %s)", conf["HOST"],
                server.effective_port, os.getpid(), conf["WAITRESS_THREADS"],
                "any CPU" if cpu is None else f"CPU {cpu}")
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:  # (a loop that failed too: its worker then ends by os._exit, which runs no atexit)
        _write_what_is_held(app)
    log.warning("tollgate worker %d stopped", os.getpid())


def _write_what_is_held(app) -> None:
    """What this worker holds for the database and Redis, written before it ends."""
    request_log = app.extensions.get("tollgate_log")
    if request_log is not None:  # the rows of the last calls
        request_log.close()
    free = getattr(app.extensions.get("tollgate"), "free_charges", None)
    if free is not None:  # the ledger rows of the last free cache hits (service/money/free_charges.py)
        free.close()
    fleet = getattr(app.extensions.get("tollgate"), "fleet", None)
    if fleet is not None:  # the deployments' counts of the last calls (service/pipeline/deployment_health.py)
        fleet.flush()


def _fork(sock: socket.socket, others=()) -> tuple[int, int]:
    """A worker serving `sock`; (pid, the read end of a pipe carrying its last error)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        for other in others:  # the other workers' sockets: theirs to serve
            if other is not sock:
                other.close()
        code = 0
        try:
            serve(sock)
        except BaseException as exc:
            log.exception("worker failed")
            os.write(write, "".join(traceback.format_exception_only(exc)).strip().encode()[-2000:])
            code = 1
        os._exit(code)
    os.close(write)
    return pid, read


def listeners(host: str, port: int, count: int) -> list[socket.socket]:
    """The port, bound once per worker with SO_REUSEPORT so the kernel spreads new connections
    evenly between the workers (with one shared socket, whichever worker wakes first accepts:
    500 streams all went to one of two workers). Without SO_REUSEPORT: one socket, shared."""
    reuse = hasattr(socket, "SO_REUSEPORT")
    socks = []
    for _ in range(count if reuse else 1):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind((host, port))
        except OSError:
            sock.close()
            for other in socks:
                other.close()
            raise
        sock.listen(4096)
        port = port or sock.getsockname()[1]
        socks.append(sock)
    return socks if reuse else socks * count


def supervise(conf: dict) -> None:
    """Bind once per worker, fork WORKERS processes (worker i serves socket i; its replacement
    gets the same socket, so nothing queued on it is lost), replace any that die, pass SIGTERM
    on. Workers that die within WORKER_MIN_UPTIME seconds of their start are restarted after an
    exponential backoff; WORKER_MAX_FAILURES such deaths in a row stop everything with the last
    error (exit 1)."""
    socks = listeners(conf["HOST"], conf["PORT"], conf["WORKERS"])
    raise_descriptor_limit()
    workers: dict[int, tuple[float, int, int]] = {}
    stopping = threading.Event()

    def start(slot: int) -> None:
        pid, errors = _fork(socks[slot], socks)
        workers[pid] = (time.monotonic(), errors, slot)

    def on_term(signum, frame):
        stopping.set()
        for sock in set(socks):
            sock.close()  # the port closes once every worker has closed its copy too
        for pid in workers:
            os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    for slot in range(conf["WORKERS"]):
        start(slot)
    failures, last_error = 0, ""
    while workers:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        started, errors, slot = workers.pop(pid)
        error = os.read(errors, 4096).decode("utf-8", "replace") or f"exit status {status}"
        os.close(errors)
        if stopping.is_set():
            continue
        quick = time.monotonic() - started < conf["WORKER_MIN_UPTIME"]
        failures, last_error = (failures + 1, error) if quick else (0, error)
        if failures >= conf["WORKER_MAX_FAILURES"]:
            log.error("giving up: %d workers in a row died within %.0f s of starting; last error: %s",
                      failures, conf["WORKER_MIN_UPTIME"], last_error)
            on_term(signal.SIGTERM, None)
            for other in list(workers):
                os.waitpid(other, 0)
            sys.exit(1)
        delay = min(conf["WORKER_BACKOFF"] * 2 ** (failures - 1), 30.0) if quick else 0.0
        log.warning("worker %d exited (%s); starting another%s", pid, error.splitlines()[-1][:200],
                    f" in {delay:.1f} s" if delay else "")
        if not stopping.wait(delay):
            start(slot)


class QueueDepthSummary(logging.Filter):
    """waitress warns "Task queue depth is N" each time a request waits for a free thread (under
    load, about one request in seven): let one through per `every` seconds, with a count."""

    def __init__(self, every: float = 60.0, clock=time.monotonic):
        super().__init__()
        self.every, self.clock, self.quiet, self.next_at = every, clock, 0, 0.0

    def filter(self, record: logging.LogRecord) -> bool:
        now = self.clock()
        if now < self.next_at:
            self.quiet += 1
            return False
        if self.quiet:
            record.msg = f"{record.getMessage()} ({self.quiet} more such warnings in the last {self.every:.0f} s)"
            record.args = ()
        self.quiet, self.next_at = 0, now + self.every
        return True


def main() -> None:
    conf = settings.load()
    logsink.configure(conf["LOG_FLUSH_SECONDS"])
    logging.getLogger("waitress.queue").addFilter(QueueDepthSummary())
    if conf["WORKERS"] > 1:
        supervise(conf)
    else:
        serve()


if __name__ == "__main__":
    main()
