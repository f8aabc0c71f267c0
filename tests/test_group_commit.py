"""Group commit: writes queued while the writer is busy go out together; results stay per job."""
from __future__ import annotations

import threading

import pytest

from service.money.group_commit import GroupCommit


class Writer:
    """A batch runner whose first batch waits until the test lets it go."""

    def __init__(self):
        self.batches, self.started, self.release = [], threading.Event(), threading.Event()
        self.commit = GroupCommit(self.run)

    def run(self, jobs):
        self.batches.append([j.args["n"] for j in jobs])
        if len(self.batches) == 1:
            self.started.set()
            assert self.release.wait(10)
        if any(j.args.get("bad") for j in jobs):
            raise ValueError("bad write")
        for job in jobs:
            job.result = job.args["n"] * 10

    def submit_all(self, jobs: list[dict]) -> tuple[dict, dict]:
        """Submit the first job, queue the rest behind it, then let the writer go."""
        results, errors = {}, {}

        def submit(args):
            try:
                results[args["n"]] = self.commit.submit("write", args)
            except ValueError as exc:
                errors[args["n"]] = str(exc)

        first = threading.Thread(target=submit, args=(jobs[0],))
        first.start()
        assert self.started.wait(10)  # the writer is busy with the first batch
        cond = self.commit._cond
        threads = [threading.Thread(target=submit, args=(args,)) for args in jobs[1:]]
        with cond:
            for t in threads:
                t.start()
            assert cond.wait_for(lambda: len(self.commit._queue) == len(threads), 10)
        self.release.set()
        for t in [first, *threads]:
            t.join(10)
        return results, errors


def test_jobs_queued_behind_a_busy_writer_share_one_batch():
    w = Writer()
    results, errors = w.submit_all([{"n": i} for i in range(6)])
    assert w.batches[0] == [0] and sorted(w.batches[1]) == [1, 2, 3, 4, 5] and len(w.batches) == 2
    assert results == {i: i * 10 for i in range(6)} and errors == {}


def test_a_failing_job_fails_alone():
    w = Writer()
    results, errors = w.submit_all([{"n": 0}, {"n": 1}, {"n": 2, "bad": True}, {"n": 3}])
    assert errors == {2: "bad write"}
    assert results == {0: 0, 1: 10, 3: 30}
    assert sorted(w.batches[1]) == [1, 2, 3] and sorted(map(tuple, w.batches[2:])) == [(1,), (2,), (3,)]


def test_an_error_reaches_the_caller():
    commit = GroupCommit(lambda jobs: (_ for _ in ()).throw(ValueError("database gone")))
    with pytest.raises(ValueError, match="database gone"):
        commit.submit("write", {})


def test_an_uncontended_write_runs_on_the_callers_own_thread():
    threads = []

    def run(jobs):
        threads.append(threading.current_thread())
        for job in jobs:
            job.result = "ok"

    commit = GroupCommit(run)
    assert [commit.submit("write", {}) for _ in range(3)] == ["ok"] * 3
    assert threads == [threading.current_thread()] * 3


def test_the_lead_passes_on_after_an_error():
    w = Writer()
    results, errors = w.submit_all([{"n": 0, "bad": True}, {"n": 1}, {"n": 2}])
    assert errors == {0: "bad write"} and results == {1: 10, 2: 20}
    assert w.commit.submit("write", {"n": 3}) == 30 and not w.commit._busy


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)  # group commit is PostgreSQL's
def test_a_leader_never_waits_for_a_pooled_connection_its_followers_hold(make_app):
    """PostgreSQL: callers queued behind a batch may hold every pooled connection (a request takes
    one for its lookups before it holds); the leader writes on the group commit's own connection,
    so the batch goes through (before: the leader waited for the pool, 30 s, for ever under load)."""
    from service.money import billing
    from service.store.db import Account, Hold, db

    make_app(DB_POOL_SIZE=2)
    ids = [billing.account(f"pool-{i}", new_credits=1000).id for i in range(3)]
    db.close()
    gate, started, real = threading.Event(), threading.Event(), billing._group._run
    first = [True]

    def run(jobs):
        if first[0]:
            first[0] = False
            started.set()
            assert gate.wait(10)
        real(jobs)

    billing._group._run = run
    done = []

    def hold(i, keep_connection):
        if keep_connection:
            Account.get_by_id(ids[i])  # this thread now holds a pooled connection
        billing.hold(ids[i], f"pool-r{i}", 10, 60)
        done.append(i)
        db.close()

    try:
        leader = threading.Thread(target=hold, args=(0, False))
        leader.start()
        assert started.wait(10)
        followers = [threading.Thread(target=hold, args=(i, True)) for i in (1, 2)]
        for t in followers:
            t.start()
        cond = billing._group._cond
        with cond:
            assert cond.wait_for(lambda: len(billing._group._queue) == 2, 10)  # the pool is empty
        gate.set()
        for t in [leader, *followers]:
            t.join(15)
        assert sorted(done) == [0, 1, 2]
        assert Hold.select().where(Hold.request_id.startswith("pool-r")).count() == 3
    finally:
        billing._group._run = real
        gate.set()
