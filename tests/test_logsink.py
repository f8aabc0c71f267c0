"""The server's log written in batches (service/server/logsink.py): lines wait for the next flush,
warnings go at once, nothing is lost or written twice across a fork."""
from __future__ import annotations

import logging
import os
import select

from service.server.logsink import BatchedStderr


def readable(fd: int, timeout: float = 0.0) -> bytes:
    """What the pipe holds now (or within `timeout`)."""
    got = b""
    while select.select([fd], [], [], timeout)[0]:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        got += chunk
        timeout = 0.0
    return got


def logger_to(handler: logging.Handler, name: str) -> logging.Logger:
    log = logging.getLogger(name)
    log.handlers, log.propagate, log.level = [handler], False, logging.INFO
    return log


def test_lines_wait_for_the_flush_and_warnings_go_at_once():
    r, w = os.pipe()
    handler = BatchedStderr(interval=3600, fd=w)
    try:
        log = logger_to(handler, "tollgate.test.batched")
        for i in range(3):
            log.info("line %d", i)
        assert readable(r) == b""  # no write per line
        log.warning("careful")
        assert readable(r) == b"line 0\nline 1\nline 2\ncareful\n"  # in order, with what waited
        log.info("last")
    finally:
        handler.close()  # what is left is written on close (logging.shutdown at exit)
    assert readable(r) == b"last\n"
    os.close(r)
    os.close(w)


def test_the_flusher_writes_waiting_lines_on_its_own():
    r, w = os.pipe()
    handler = BatchedStderr(interval=0.05, fd=w)
    try:
        logger_to(handler, "tollgate.test.timer").info("no warning, no close")
        assert readable(r, timeout=5) == b"no warning, no close\n"
    finally:
        handler.close()
        os.close(r)
        os.close(w)


def test_a_forked_worker_flushes_its_own_lines_and_nothing_is_written_twice():
    r, w = os.pipe()
    seen_r, seen_w = os.pipe()
    handler = BatchedStderr(interval=3600, fd=w)  # the parent's flusher will not write in this test
    log = logger_to(handler, "tollgate.test.forked")
    try:
        log.info("before the fork")
        handler.interval = 0.05  # the worker's own flusher, started after the fork, uses this
        pid = os.fork()
        if pid == 0:
            log.info("from the worker")
            os.read(seen_r, 1)  # the parent saw the line: only the worker's flusher could write it
            os._exit(0)  # skips logging.shutdown
        got = b""
        try:
            while b"from the worker" not in got:
                more = readable(r, timeout=5)
                assert more, f"the worker's line never came; got {got!r}"
                got += more
        finally:
            os.write(seen_w, b"x")  # the worker may exit now
            os.close(seen_w)
            assert os.waitpid(pid, 0)[1] == 0
    finally:
        handler.close()  # the parent's buffer: "before the fork" must not be in it any more
    got += readable(r)
    assert got.decode().splitlines() == ["before the fork", "from the worker"]
    for fd in (r, w, seen_r):
        os.close(fd)
