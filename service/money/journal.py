"""The settle journal (SPEC §9.2): money changes that could not reach the database wait here.

A call the provider answered must be charged even when the database is away at that moment.
Its settle (or a hold's release) is appended to a per-process file under DATA_DIR as one JSON
line, fsync'd before the client is answered. When the database answers again any process
replays every journal file (a file lock keeps two from replaying the same file at once) and
deletes it once each line is applied. Settles are idempotent by request id (the ledger's
unique key), so a line applied twice, after a crash mid-replay, still charges once.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
from pathlib import Path

log = logging.getLogger("tollgate")
PATTERN = "journal-*.jsonl"


class Journal:
    """Append (durably) and replay money operations that missed the database."""

    def __init__(self, directory: str | Path, owner: str):
        self.directory = Path(directory)
        self.path = self.directory / f"journal-{owner}.jsonl"
        self._lock = threading.Lock()

    def append(self, entry: dict) -> None:
        """Write one operation and fsync it: it survives a crash once this returns."""
        line = (json.dumps(entry, separators=(",", ":")) + "\n").encode()
        self.directory.mkdir(parents=True, exist_ok=True)
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
        log.warning("journal: %s %s written to %s (database unavailable)", entry.get("op"),
                    entry.get("rid"), self.path.name)

    def files(self) -> list[Path]:
        return sorted(self.directory.glob(PATTERN)) if self.directory.is_dir() else []

    def depth(self) -> int:
        """Operations waiting in every journal of this data directory."""
        total = 0
        for path in self.files():
            try:
                total += path.read_bytes().count(b"\n")
            except FileNotFoundError:
                continue  # replayed and removed meanwhile
        return total

    def replay(self, apply) -> int:
        """apply(entry) for each waiting operation, file by file; a file is removed once every
        line in it is applied. A failing apply (the database still away) stops the replay."""
        applied = 0
        for path in self.files():
            applied += self._replay_file(path, apply)
        return applied

    def _replay_file(self, path: Path, apply) -> int:
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return 0
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if not os.path.exists(path) or os.fstat(fd).st_nlink == 0:
                return 0  # another process replayed and removed it while we waited
            with self._lock if path == self.path else contextlib.nullcontext():
                with open(fd, "rb", closefd=False) as fh:
                    lines = [line for line in fh.read().splitlines() if line.strip()]
                for line in lines:
                    try:
                        entry = json.loads(line)
                    except ValueError:  # a line torn by a crash while it was written: never acknowledged
                        log.error("journal: skipping an unreadable line in %s", path.name)
                        continue
                    apply(entry)
                os.unlink(path)
            log.warning("journal: %d operations from %s applied", len(lines), path.name)
            return len(lines)
        finally:
            os.close(fd)

