"""One CPU per worker process (PIN_WORKERS): every thread of a process runs on the CPU it claims.

A process's threads take turns holding the interpreter. Spread over several CPUs, a thread woken
by its socket on one CPU asks for the interpreter that a thread on another holds, and the two
hand it back and forth through the kernel; kept on one CPU, the woken thread simply runs when
the one before it waits. `make bench` at concurrency 32, the same process moved with taskset
between runs: 70 context switches and 2.7 ms of CPU per call spread over two CPUs, 9 and 1.65 ms
on one, 369 → 600 calls/s (README, Benchmarks).

Processes share the CPUs through claim files in the data directory: each takes the first CPU
it may run on whose file no live process holds locked (flock, freed by the kernel when the
process ends), so the instances of one host (tollgate@PORT, or WORKERS) spread over its CPUs
one per CPU. When every CPU is claimed, the process runs unpinned.
"""
from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path

log = logging.getLogger("tollgate")
_claimed: list[int] = []  # the CPU this process claimed, once it has (its claim file stays open)


def pin(directory: str | Path) -> int | None:
    """Claim a CPU no other process with this data directory holds, and move every thread of this
    process onto it (threads started later inherit it); the CPU, or None (none free, or the
    system cannot pin)."""
    if _claimed:
        return _claimed[0]
    if not hasattr(os, "sched_setaffinity"):
        return None
    for cpu in sorted(os.sched_getaffinity(0)):
        try:
            Path(directory).mkdir(parents=True, exist_ok=True)
            fd = os.open(Path(directory) / f"cpu-{cpu}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            log.warning("not pinned to a CPU: cannot write claim files in %s (%s)", directory, exc.strerror)
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)  # another process runs on it
            continue
        _claimed.append(cpu)  # `fd` stays open: the lock lasts as long as the process
        for tid in os.listdir("/proc/self/task"):
            try:
                os.sched_setaffinity(int(tid), {cpu})
            except ProcessLookupError:  # a thread that ended meanwhile
                pass
        return cpu
    log.warning("not pinned to a CPU: every CPU this process may use is claimed by another")
    return None

