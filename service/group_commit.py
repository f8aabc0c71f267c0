"""Group commit: concurrent writes from many request threads share one database round trip.

Request threads hand their write to one writer thread per process and wait for it; the
writer takes everything queued, runs it as one statement (one transaction) and wakes each
caller with its own result. Nothing returns before its own write committed, so each call
keeps the guarantees of its own statement; under load N calls pay one round trip and one
commit between them. A batch that fails is retried job by job, so only a faulty write fails.
"""
from __future__ import annotations

import os
import threading
from _thread import allocate_lock


class Job:
    __slots__ = ("kind", "args", "result", "error", "_done")

    def __init__(self, kind: str, args: dict):
        self.kind, self.args, self.result, self.error = kind, args, None, None
        self._done = allocate_lock()
        self._done.acquire()


class GroupCommit:
    """`run(jobs)` executes a batch on the writer thread and sets each job's `result`."""

    def __init__(self, run):
        self._run = run
        self._reset()
        os.register_at_fork(after_in_child=self._reset)  # the writer thread does not survive a fork

    def _reset(self) -> None:
        self._cond = threading.Condition()
        self._queue: list[Job] = []
        self._started = False

    def submit(self, kind: str, args: dict):
        """Queue one write, wait until it is committed; its result (or its exception)."""
        job = Job(kind, args)
        with self._cond:
            if not self._started:
                threading.Thread(target=self._loop, daemon=True, name="group-commit").start()
                self._started = True
            self._queue.append(job)
            self._cond.notify()
        job._done.acquire()
        if job.error is not None:
            raise job.error
        return job.result

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue:
                    self._cond.wait()
                batch, self._queue = self._queue, []
            self._write(batch)

    def _write(self, batch: list[Job]) -> None:
        try:
            self._run(batch)
        except BaseException as exc:  # noqa: BLE001 - handed to its caller; the writer lives on
            if len(batch) > 1:
                for job in batch:
                    self._write([job])
                return
            batch[0].error = exc
        for job in batch:
            job._done.release()
