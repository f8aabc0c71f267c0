"""Group commit: concurrent writes from many request threads share one database round trip.

Leader and followers: a thread whose write arrives while no batch is being written leads
and writes at once, on its own connection (an uncontended call hands nothing to another
thread). Writes that arrive meanwhile queue; when the leader is done it wakes the first
of them to lead the next batch, which is everything queued by then. Each caller returns
only after its own write committed, with its own result, so each call keeps the
guarantees of its own statement; under load N calls pay one round trip and one commit
between them. A batch that fails is retried job by job, so only a faulty write fails.
"""
from __future__ import annotations

import os
import threading
from _thread import allocate_lock


class Job:
    __slots__ = ("kind", "args", "result", "error", "lead", "_done")

    def __init__(self, kind: str, args: dict):
        self.kind, self.args, self.result, self.error, self.lead = kind, args, None, None, False
        self._done = allocate_lock()
        self._done.acquire()  # released when written, or to make this job's thread the leader


class GroupCommit:
    """`run(jobs)` executes a batch (on the leading caller's thread) and sets each job's `result`."""

    def __init__(self, run):
        self._run = run
        self._reset()
        os.register_at_fork(after_in_child=self._reset)  # a lead held by a thread of the parent

    def _reset(self) -> None:
        self._cond = threading.Condition()  # guards _queue and _busy
        self._queue: list[Job] = []
        self._busy = False

    def submit(self, kind: str, args: dict):
        """Write one job, alone or with whatever queued meanwhile; its result (or its exception)."""
        job = Job(kind, args)
        with self._cond:
            self._queue.append(job)
            self._cond.notify_all()
            if not self._busy:
                self._busy = job.lead = True
        if not job.lead:
            job._done.acquire()  # written by a leader, or made the leader
        if job.lead:
            self._lead()
        if job.error is not None:
            raise job.error
        return job.result

    def _lead(self) -> None:
        """Write everything queued (this thread's own job among it), then pass the lead on."""
        try:
            with self._cond:
                batch, self._queue = self._queue, []
            self._write(batch)
        finally:
            with self._cond:
                if self._queue:
                    successor = self._queue[0]
                    successor.lead = True
                    successor._done.release()
                else:
                    self._busy = False

    def _write(self, batch: list[Job]) -> None:
        try:
            self._run(batch)
        except BaseException as exc:  # noqa: BLE001 - handed to its caller
            if len(batch) > 1:
                for job in batch:
                    self._write([job])
                return
            batch[0].error = exc
        for job in batch:
            job._done.release()
