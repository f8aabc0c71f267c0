"""`python -m service.server` (make serve / make run): waitress, with a graceful stop on SIGTERM.

WORKERS > 1 binds the port once and forks that many waitress processes sharing
it (Python runs one thread at a time per process; this is how one host uses
all its cores without a second proxy). A worker that dies is replaced.

On SIGTERM the listener closes (new connections are refused, so nginx tries
another process), requests in flight get SHUTDOWN_GRACE_SECONDS to finish;
streams still open then end with the error event and are billed for what they
delivered; then the process exits.
"""
from __future__ import annotations

import _thread
import logging
import os
import signal
import socket
import threading
import time

from waitress import create_server
from werkzeug.wsgi import ClosingIterator

from config import settings
from service import create_app

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


def serve(sock: socket.socket | None = None) -> None:
    """One waitress process: on its own port, or on a listening socket it shares."""
    app = create_app()
    conf = app.config
    inflight = InFlight(app.wsgi_app)
    app.wsgi_app = inflight
    where = {"sockets": [sock]} if sock is not None else {"host": conf["HOST"], "port": conf["PORT"]}
    # channel_request_lookahead lets waitress notice a client that hung up mid-stream at once,
    # so the upstream call is closed and billing stops at what was delivered
    server = create_server(app, threads=conf["WAITRESS_THREADS"], channel_request_lookahead=1,
                           ident="tollgate", connection_limit=1000, clear_untrusted_proxy_headers=True,
                           **where)

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
    log.warning("tollgate serving on http://%s:%s (pid %d, %d threads)", conf["HOST"],
                server.effective_port, os.getpid(), conf["WAITRESS_THREADS"])
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    log.warning("tollgate worker %d stopped", os.getpid())


def _fork(sock: socket.socket) -> int:
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            serve(sock)
        except BaseException:
            log.exception("worker failed")
            code = 1
        os._exit(code)
    return pid


def supervise(conf: dict) -> None:
    """Bind once, fork WORKERS processes, replace any that die, pass SIGTERM on."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((conf["HOST"], conf["PORT"]))
    sock.listen(1024)
    workers = {_fork(sock) for _ in range(conf["WORKERS"])}
    stopping = threading.Event()

    def on_term(signum, frame):
        stopping.set()
        sock.close()  # the port closes once every worker has closed its copy too
        for pid in workers:
            os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    while workers:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        workers.discard(pid)
        if not stopping.is_set():
            log.warning("worker %d exited (%s); starting another", pid, status)
            workers.add(_fork(sock))


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
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("waitress.queue").addFilter(QueueDepthSummary())
    conf = settings.load()
    if conf["WORKERS"] > 1:
        supervise(conf)
    else:
        serve()


if __name__ == "__main__":
    main()
