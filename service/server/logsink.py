"""The server's log on standard error, written in batches: lines gather in a buffer written every
`LOG_FLUSH_SECONDS` (as nginx's `access_log … buffer= flush=`), warnings and errors at once. So a
call's access line costs no write of its own: under load each write parks the request thread and
hands the interpreter to another (a context switch on the call's path)."""
from __future__ import annotations

import io
import json
import logging
import os
import re
import threading
import weakref

_open: weakref.WeakSet = weakref.WeakSet()  # batched handlers of this process, for fork


class BatchedStderr(logging.StreamHandler):
    def __init__(self, interval: float, fd: int = 2):
        raw = io.FileIO(os.dup(fd), "w")
        super().__init__(io.TextIOWrapper(io.BufferedWriter(raw, 1 << 16), encoding="utf-8",
                                          errors="backslashreplace"))
        self.interval = interval
        self._stopped = threading.Event()
        self._start()
        _open.add(self)

    def _start(self) -> None:
        threading.Thread(target=self._flush_every, name="log-flush", daemon=True).start()

    def _flush_every(self) -> None:
        while not self._stopped.wait(self.interval):
            self.flush()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write(self.format(record) + self.terminator)
            if record.levelno >= logging.WARNING:
                self.stream.flush()
        except RecursionError:
            raise
        except Exception:  # noqa: BLE001 - logging's own convention
            self.handleError(record)

    def close(self) -> None:
        """Write what is left and stop (logging.shutdown calls this at exit)."""
        self._stopped.set()
        _open.discard(self)
        self.acquire()
        try:
            if self.stream is not None:  # logging.shutdown closes again at exit
                self.flush()
                self.stream.close()
                self.stream = None
        finally:
            self.release()
        super().close()


def _before_fork() -> None:
    for handler in list(_open):  # nothing buffered is written twice
        handler.flush()


def _in_child() -> None:
    for handler in list(_open):  # threads do not survive fork: each worker flushes its own
        handler._start()


os.register_at_fork(before=_before_fork, after_in_child=_in_child)


# what json.dumps(ensure_ascii=False) leaves raw but a terminal or a line-based reader may take for
# a control: DEL, the C1 controls, the Unicode line and paragraph separators
_RAW_CONTROLS = re.compile("[\x7f-\x9f\u2028\u2029]")


def one_line(record: dict) -> str:
    """`record` as one line of JSON: every control character escaped, whatever the strings hold."""
    text = json.dumps(record, ensure_ascii=False, default=str)
    return _RAW_CONTROLS.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


class JsonLines(logging.Formatter):
    """Every log line one JSON object (SPEC §18). A record that carries its fields (`extra=
    {"fields": {...}}`, the access log) is those fields; any other is its time, level, logger and
    message, with the traceback as a string: a path or header a message quotes can never end the
    line or start one that looks like another record."""

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            return one_line(fields)
        line = {"ts": round(record.created, 3), "level": record.levelname.lower(), "logger": record.name,
                "message": record.getMessage()}
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return one_line(line)


def configure(flush_seconds: float) -> None:
    """INFO and above to standard error, one JSON object per line; batched when flush_seconds > 0."""
    handler = BatchedStderr(flush_seconds) if flush_seconds > 0 else logging.StreamHandler()
    handler.setFormatter(JsonLines())
    logging.basicConfig(level=logging.INFO, handlers=[handler])
