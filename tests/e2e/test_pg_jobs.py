"""The job store on PostgreSQL: the file store's answers, claims that keep two nodes'
senders off one job, every write committed when it returns (a real server,
tests/pgserver.py)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psycopg
import pytest

from echoes.database import prepare
from echoes.queue import jobs
from echoes.queue.jobs import JobStore
from echoes.queue.postgres import CLAIM_SECONDS, PostgresJobStore

NOW = time.time()  # claims renewed by current() count from the real clock


def records(count: int, study: str = "1.2.3") -> list[dict]:
    return [{"SOPInstanceUID": f"{study}.{n}", "StudyInstanceUID": study,
             "SOPClassUID": "1.2.840.10008.5.1.4.1.1.2", "TransferSyntaxUID": "1.2.840.10008.1.2.1",
             "path": f"{study}/{n}.dcm"} for n in range(count)]


@pytest.fixture
def url(database_url: str) -> str:
    prepare(database_url)
    return database_url


@pytest.fixture
def stores(url: str):
    made: list[PostgresJobStore] = []

    def make(node: str) -> PostgresJobStore:
        made.append(PostgresJobStore(url, node))
        return made[-1]

    yield make
    for store in made:
        store.close()


def summary(store) -> list[tuple]:
    """What a job store says, without the times a file store takes from the file system."""
    return sorted((job.id, job.destination, job.state, job.attempts, job.last_error,
                   job.sop_instance_uid) for job in store.all())


def test_the_same_operations_give_the_file_stores_answers(tmp_path: Path, stores) -> None:
    files, table = JobStore(tmp_path / "outgoing"), stores("n1")
    files.create()
    for store in (files, table):
        assert store.queue("PACS", records(5), "forward", NOW) == 5
        assert store.queue("OLD", records(3, "1.2.4"), "push", NOW) == 3
        first = store.claim("PACS", NOW, 10)
        # oldest first; queued at the same time: by id (the same in both stores)
        assert [job.id for job in first] == sorted(jobs.job_id("PACS", f"1.2.3.{n}")
                                                   for n in range(5))
        store.deliver(jobs.delivered(first[0], NOW + 1))
        store.write(jobs.attempt_failed(first[1], "peer down", NOW + 1, 30, 20))
        store.write(jobs.refused(first[2], "no context", NOW + 1))
        assert store.cancel(first[3].id, NOW + 2).state == jobs.CANCELLED
        assert store.cancel("nosuchjob", NOW) is None
        assert store.rename_destination("OLD", "NEW") == 3
        assert store.cancel_destination("NEW", NOW + 3) == 3
        retried = [jobs.retried(job, NOW + 4) for job in store.open_jobs()
                   if job.state in jobs.RETRIABLE and job.destination == "PACS"]
        assert store.write_many(retried) == 3
        store.remove(first[4].id)
    assert summary(table) == summary(files)
    assert sorted(j.id for j in table.done_jobs()) == sorted(j.id for j in files.done_jobs())
    assert sorted(j.id for j in table.open_jobs()) == sorted(j.id for j in files.open_jobs())
    job = table.open_jobs()[0]
    assert table.read(job.id) == job and table.read("nosuchjob") is None


def test_a_claimed_job_is_not_taken_by_another_node_until_its_claim_runs_out(stores) -> None:
    # The clock of this test, not the module's import time: current() renews by the
    # real clock, and a suite that reaches this test CLAIM_SECONDS after importing
    # it would find node1's claims already run out.
    now = time.time()
    one, two = stores("node1"), stores("node2")
    one.queue("PACS", records(4), "forward", now)
    mine = one.claim("PACS", now, 2)
    theirs = two.claim("PACS", now, 10)
    assert len(mine) == 2 and len(theirs) == 2
    assert not {job.id for job in mine} & {job.id for job in theirs}
    assert two.current(mine[0]) is None  # the sender asks before it sends: not its job
    assert one.current(mine[0]) == mine[0]  # ... and the claimer may go on
    assert two.claim("PACS", now, 10) == theirs  # a node takes its own claims again
    later = time.time() + CLAIM_SECONDS + 1  # node1 died: its claims run out
    assert {job.id for job in two.claim("PACS", later, 10)} == {
        job.id for job in mine + theirs}


def test_a_written_state_releases_the_claim_and_is_committed_when_write_returns(
        stores, url: str) -> None:
    one, two = stores("node1"), stores("node2")
    one.queue("PACS", records(1), "forward", NOW)
    [job] = one.claim("PACS", NOW, 10)
    one.write(jobs.attempt_failed(job, "peer down", NOW, 30, 20))
    with psycopg.connect(url) as connection:  # another session sees it at once
        state, claimed = connection.execute(
            "SELECT state, claimed_by FROM jobs WHERE id = %s", (job.id,)).fetchone()
    assert (state, claimed) == (jobs.RETRYING, "")
    assert two.claim("PACS", NOW + 31, 10)[0].id == job.id


def test_senders_claiming_at_once_share_the_jobs_without_overlap(stores) -> None:
    nodes = [stores(f"node{n}") for n in range(4)]
    nodes[0].queue("PACS", records(400), "forward", NOW)
    taken: list[list[str]] = [[] for _ in nodes]

    def run(n: int) -> None:
        while True:
            got = nodes[n].claim("PACS", NOW, 7)
            if not got:
                return
            taken[n].extend(job.id for job in got)
            nodes[n].write_many(jobs.delivered(job, NOW) for job in got)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(len(nodes))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    every = [identifier for ids in taken for identifier in ids]
    assert len(every) == 400 and len(set(every)) == 400
    assert sum(1 for ids in taken if ids) >= 2  # they did run side by side


def test_version_changes_after_each_write(stores) -> None:
    store = stores("n1")
    before = store.version()
    store.queue("PACS", records(1), "forward", NOW)
    middle = store.version()
    assert middle != before and store.version() == middle
    store.remove(jobs.job_id("PACS", "1.2.3.0"))
    assert store.version() != middle


def test_record_writes_only_a_job_still_ours_as_the_file_store_does(tmp_path: Path,
                                                                     stores) -> None:
    files, table = JobStore(tmp_path / "outgoing"), stores("n1")
    files.create()
    for store in (files, table):
        store.queue("PACS", records(3), "forward", NOW)
        claimed = {job.sop_instance_uid: job for job in store.claim("PACS", NOW, 10)}
        one, two, three = (claimed[f"1.2.3.{n}"] for n in range(3))
        assert store.record(jobs.delivered(one, NOW + 1), basis=one) == jobs.PENDING
        assert store.read(one.id).state == jobs.DONE
        store.cancel(two.id, NOW + 1)  # cancelled while it was on the wire
        assert store.record(jobs.delivered(two, NOW + 2), basis=two) is None
        assert store.read(two.id).state == jobs.CANCELLED
        store.queue("PACS", records(3)[2:], "push", NOW + 5)  # queued anew meanwhile
        assert store.record(jobs.attempt_failed(three, "x", NOW + 2, 30, 20)) is None
        assert store.read(three.id).state == jobs.PENDING
        assert store.record(jobs.delivered(one, NOW + 3)) == jobs.DONE  # done again
    assert summary(table) == summary(files)
