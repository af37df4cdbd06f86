"""Unit tests for echoes.queue.jobs: job ids, the state machine, the file format, JobStore."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from echoes.queue import jobs, open_job_store

NOW = 1_700_000_000.0

RECORD = {
    "SOPInstanceUID": "1.2.3.4.5.6",
    "StudyInstanceUID": "1.2.3.4",
    "SOPClassUID": "1.2.840.10008.5.1.4.1.1.7",
    "TransferSyntaxUID": "1.2.840.10008.1.2.1",
    "path": "1.2.3.4/1.2.3.4.5/1.2.3.4.5.6.dcm",
}


def make_job(destination: str = "PACS", sop: str = "1.2.3.4.5.6", **changes) -> jobs.Job:
    job = jobs.new_job(destination, {**RECORD, "SOPInstanceUID": sop}, "forward", NOW)
    return replace(job, **changes)


# -- job_id ----------------------------------------------------------------------


def test_job_id_is_stable():
    assert jobs.job_id("PACS", "1.2.3") == jobs.job_id("PACS", "1.2.3")


def test_job_id_distinct_per_destination_and_sop_uid():
    ids = {
        jobs.job_id("PACS", "1.2.3"),
        jobs.job_id("PACS", "1.2.4"),
        jobs.job_id("OTHER", "1.2.3"),
        jobs.job_id("OTHER", "1.2.4"),
    }
    assert len(ids) == 4


def test_job_id_does_not_confuse_concatenations():
    assert jobs.job_id("PACS1", "2.3") != jobs.job_id("PACS", "12.3")


def test_job_id_is_a_safe_file_name():
    identifier = jobs.job_id("PACS", "1.2.3")
    assert len(identifier) == 20
    assert all(c in "0123456789abcdef" for c in identifier)


# -- new_job ---------------------------------------------------------------------


def test_new_job_from_index_record():
    job = jobs.new_job("PACS", RECORD, "push", NOW)
    assert job.id == jobs.job_id("PACS", RECORD["SOPInstanceUID"])
    assert job.destination == "PACS"
    assert job.sop_instance_uid == RECORD["SOPInstanceUID"]
    assert job.study_instance_uid == RECORD["StudyInstanceUID"]
    assert job.sop_class_uid == RECORD["SOPClassUID"]
    assert job.transfer_syntax == RECORD["TransferSyntaxUID"]
    assert job.path == RECORD["path"]
    assert job.origin == "push"
    assert job.state == jobs.PENDING
    assert job.attempts == 0
    assert job.last_error == ""
    assert job.next_attempt == NOW
    assert job.created == NOW
    assert job.updated == NOW


def test_new_job_without_transfer_syntax():
    record = {k: v for k, v in RECORD.items() if k != "TransferSyntaxUID"}
    job = jobs.new_job("PACS", record, "forward", NOW)
    assert job.transfer_syntax == ""


def test_new_job_same_object_same_destination_same_id():
    first = jobs.new_job("PACS", RECORD, "forward", NOW)
    again = jobs.new_job("PACS", RECORD, "push", NOW + 50)
    assert first.id == again.id
    assert jobs.new_job("OTHER", RECORD, "forward", NOW).id != first.id


# -- transitions -----------------------------------------------------------------


def test_delivered():
    job = make_job(attempts=1, state=jobs.RETRYING, next_attempt=NOW + 5)
    done = jobs.delivered(job, NOW + 10, "0xB000 warning")
    assert done.state == jobs.DONE
    assert done.attempts == 2
    assert done.last_error == "0xB000 warning"
    assert done.next_attempt == 0.0
    assert done.updated == NOW + 10
    assert done.created == job.created
    assert job.state == jobs.RETRYING  # frozen: the original is untouched


def test_delivered_without_note_clears_error():
    job = make_job(last_error="earlier failure")
    assert jobs.delivered(job, NOW).last_error == ""


def test_attempt_failed_retries_after_interval():
    job = make_job()
    later = jobs.attempt_failed(job, "peer down", NOW + 1, retry_interval=60, max_attempts=3)
    assert later.state == jobs.RETRYING
    assert later.attempts == 1
    assert later.last_error == "peer down"
    assert later.next_attempt == NOW + 1 + 60
    assert later.updated == NOW + 1


def test_attempt_failed_from_retrying_keeps_counting():
    job = make_job(state=jobs.RETRYING, attempts=1)
    later = jobs.attempt_failed(job, "again", NOW + 2, retry_interval=30, max_attempts=3)
    assert later.state == jobs.RETRYING
    assert later.attempts == 2
    assert later.next_attempt == NOW + 32


def test_attempt_failed_reaching_max_attempts_fails():
    job = make_job(state=jobs.RETRYING, attempts=2)
    last = jobs.attempt_failed(job, "still down", NOW + 3, retry_interval=30, max_attempts=3)
    assert last.state == jobs.FAILED
    assert last.attempts == 3
    assert last.last_error == "still down"
    assert last.next_attempt == 0.0
    assert last.updated == NOW + 3


def test_attempt_failed_with_max_attempts_one_fails_at_once():
    last = jobs.attempt_failed(make_job(), "down", NOW, retry_interval=30, max_attempts=1)
    assert last.state == jobs.FAILED
    assert last.attempts == 1


def test_attempt_failed_sequence_until_failed():
    job = make_job()
    states = []
    for step in range(4):
        job = jobs.attempt_failed(job, "x", NOW + step, retry_interval=10, max_attempts=4)
        states.append(job.state)
    assert states == [jobs.RETRYING, jobs.RETRYING, jobs.RETRYING, jobs.FAILED]
    assert job.attempts == 4


@pytest.mark.parametrize("state", [jobs.PENDING, jobs.RETRYING])
def test_refused_fails_at_once(state):
    job = make_job(state=state, attempts=1, next_attempt=NOW + 100)
    failed = jobs.refused(job, "peer rejected SOP class", NOW + 4)
    assert failed.state == jobs.FAILED
    assert failed.attempts == 2
    assert failed.last_error == "peer rejected SOP class"
    assert failed.next_attempt == 0.0
    assert failed.updated == NOW + 4


def test_retried_resets_to_pending():
    job = make_job(state=jobs.FAILED, attempts=5, last_error="gave up", next_attempt=0.0)
    again = jobs.retried(job, NOW + 100)
    assert again.state == jobs.PENDING
    assert again.attempts == 0
    assert again.last_error == ""
    assert again.next_attempt == NOW + 100
    assert again.updated == NOW + 100
    assert again.created == job.created
    assert again.is_due(NOW + 100)


@pytest.mark.parametrize("state", [jobs.RETRYING, jobs.FAILED, jobs.CANCELLED])
def test_retried_from_every_retriable_state(state):
    job = make_job(state=state, attempts=4, last_error="0xA700", next_attempt=NOW + 30)
    again = jobs.retried(job, NOW + 1)
    assert (again.state, again.attempts, again.last_error) == (jobs.PENDING, 0, "")
    assert again.is_due(NOW + 1)


@pytest.mark.parametrize("state", [jobs.DONE, jobs.PENDING])
def test_retried_leaves_done_and_pending_jobs_alone(state):
    """A done job is not sent again by a retry (issue 14), a pending one waits already."""
    job = make_job(state=state, attempts=1 if state == jobs.DONE else 0, updated=NOW + 5)
    assert jobs.retried(job, NOW + 40) is job
    assert state not in jobs.RETRIABLE


@pytest.mark.parametrize("state", [jobs.PENDING, jobs.RETRYING, jobs.FAILED])
def test_cancelled_from_a_job_not_delivered(state):
    job = make_job(state=state, attempts=2, last_error="0xA700 out of resources",
                   next_attempt=NOW + 30)
    withdrawn = jobs.cancelled(job, NOW + 40)
    assert withdrawn.state == jobs.CANCELLED
    assert withdrawn.next_attempt == 0.0
    assert withdrawn.updated == NOW + 40
    assert (withdrawn.attempts, withdrawn.last_error) == (2, "0xA700 out of resources")
    assert withdrawn.created == job.created
    assert not withdrawn.is_due(NOW + 1e9)


@pytest.mark.parametrize("state", [jobs.DONE, jobs.CANCELLED])
def test_cancelled_leaves_finished_jobs_alone(state):
    job = make_job(state=state, updated=NOW + 5)
    assert jobs.cancelled(job, NOW + 40) is job


def test_cancelled_is_terminal_but_not_failed():
    assert jobs.CANCELLED in jobs.STATES
    assert jobs.CANCELLED not in jobs.ACTIVE
    assert jobs.CANCELLED in jobs.FINISHED
    assert jobs.CANCELLED != jobs.FAILED


def test_retried_brings_a_cancelled_job_back():
    job = jobs.cancelled(make_job(attempts=3, last_error="e"), NOW + 1)
    again = jobs.retried(job, NOW + 2)
    assert (again.state, again.attempts, again.last_error) == (jobs.PENDING, 0, "")
    assert again.is_due(NOW + 2)


# -- is_due ----------------------------------------------------------------------


@pytest.mark.parametrize("state", [jobs.PENDING, jobs.RETRYING])
def test_active_jobs_due_when_their_time_has_come(state):
    job = make_job(state=state, next_attempt=NOW)
    assert not job.is_due(NOW - 0.001)
    assert job.is_due(NOW)
    assert job.is_due(NOW + 1000)


@pytest.mark.parametrize("state", [jobs.FAILED, jobs.CANCELLED, jobs.DONE])
def test_finished_jobs_never_due(state):
    job = make_job(state=state, next_attempt=0.0)
    assert not job.is_due(NOW)
    assert not job.is_due(NOW + 1e9)


# -- encode / decode -------------------------------------------------------------


def test_encode_decode_round_trip():
    job = make_job(state=jobs.RETRYING, attempts=3, last_error="0xA700 out of resources",
                   next_attempt=NOW + 60.5, updated=NOW + 0.5)
    data = jobs.encode(job)
    assert isinstance(data, bytes)
    assert json.loads(data) == asdict(job)
    assert jobs.decode(data) == job


@pytest.mark.parametrize("state", jobs.STATES)
def test_round_trip_every_state(state):
    job = make_job(state=state)
    assert jobs.decode(jobs.encode(job)) == job


def test_encode_is_deterministic():
    assert jobs.encode(make_job()) == jobs.encode(make_job())


@pytest.mark.parametrize("data", [
    b"",
    b"not json at all",
    b"{\"id\": ",
    b"\xff\xfe\x00garbage",
    b"[1, 2, 3]",
    b"null",
    b"42",
])
def test_decode_garbage_raises_value_error(data):
    with pytest.raises(ValueError):
        jobs.decode(data)


def test_decode_unknown_state_raises_value_error():
    values = asdict(make_job())
    values["state"] = "sending"
    with pytest.raises(ValueError, match="unknown state"):
        jobs.decode(json.dumps(values).encode())


@pytest.mark.parametrize("field", ["id", "destination", "sop_instance_uid", "path", "origin"])
def test_decode_missing_field_raises_value_error(field):
    values = asdict(make_job())
    del values[field]
    with pytest.raises(ValueError):
        jobs.decode(json.dumps(values).encode())


def test_decode_unknown_field_raises_value_error():
    values = {**asdict(make_job()), "colour": "blue"}
    with pytest.raises(ValueError):
        jobs.decode(json.dumps(values).encode())


def test_decode_fills_defaults_for_optional_fields():
    values = asdict(make_job())
    for optional in ("state", "attempts", "last_error", "next_attempt", "created", "updated"):
        del values[optional]
    job = jobs.decode(json.dumps(values).encode())
    assert job.state == jobs.PENDING
    assert job.attempts == 0


# -- JobStore --------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> jobs.JobStore:
    return jobs.JobStore(tmp_path / "outgoing")


def count_reads(monkeypatch) -> list[str]:
    calls: list[str] = []
    original = jobs.JobStore._load

    def counting(self, folder, identifier):
        calls.append(identifier)
        return original(self, folder, identifier)

    monkeypatch.setattr(jobs.JobStore, "_load", counting)
    return calls


def test_write_read_remove(store):
    job = make_job()
    store.write(job)
    assert store.path_for(job.id) == store.folder / f"{job.id}.json"
    assert store.path_for(job.id).read_bytes() == jobs.encode(job)
    assert store.read(job.id) == job
    store.remove(job.id)
    assert not store.path_for(job.id).exists()
    assert store.read(job.id) is None


def test_write_creates_folder(store):
    assert not store.folder.exists()
    store.write(make_job(), durable=False)
    assert store.folder.is_dir()


def test_write_replaces_same_job(store):
    job = make_job()
    store.write(job)
    failed = jobs.refused(job, "no", NOW + 1)
    store.write(failed)
    assert store.read(job.id) == failed
    assert [p.name for p in store.folder.iterdir()] == [f"{job.id}.json"]


def test_read_missing_job_is_none(store):
    assert store.read("0123456789abcdef0123") is None


def test_remove_missing_job_is_harmless(store):
    store.remove("0123456789abcdef0123")


def test_write_many_returns_count(store):
    batch = [make_job(sop=f"1.2.3.{n}") for n in range(5)]
    assert store.write_many(batch) == 5
    assert sorted(j.id for j in store.all()) == sorted(j.id for j in batch)
    for job in batch:
        assert store.read(job.id) == job


def test_write_many_accepts_a_generator(store):
    assert store.write_many(make_job(sop=f"1.2.{n}") for n in range(3)) == 3


def test_write_many_nothing(store):
    assert store.write_many([]) == 0


def test_all_on_missing_folder_is_empty(store):
    assert store.all() == []


def test_all_returns_every_job(store):
    batch = [make_job(sop=f"1.2.3.{n}") for n in range(4)]
    store.write_many(batch)
    found = {job.id: job for job in store.all()}
    assert found == {job.id: job for job in batch}


def test_all_rereads_only_changed_files(store, monkeypatch):
    first, second, third = (make_job(sop=f"1.2.3.{n}") for n in range(3))
    store.write_many([first, second, third])
    calls = count_reads(monkeypatch)

    assert len(store.all()) == 3
    assert sorted(calls) == sorted([first.id, second.id, third.id])

    calls.clear()
    assert len(store.all()) == 3
    assert calls == []

    changed = jobs.attempt_failed(second, "peer down", NOW + 1, 60, 5)
    store.write(changed)
    calls.clear()
    found = {job.id: job for job in store.all()}
    assert calls == [second.id]
    assert found[second.id] == changed
    assert found[first.id] == first


def test_all_notices_change_of_mtime_alone(store, monkeypatch):
    job = make_job()
    store.write(job)
    store.all()
    calls = count_reads(monkeypatch)
    path = store.path_for(job.id)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    store.all()
    assert calls == [job.id]


def test_all_sees_new_and_removed_jobs(store, monkeypatch):
    first = make_job(sop="1.1")
    store.write(first)
    store.all()
    calls = count_reads(monkeypatch)

    second = make_job(sop="1.2")
    store.write(second)
    assert {j.id for j in store.all()} == {first.id, second.id}
    assert calls == [second.id]

    store.remove(first.id)
    assert [j.id for j in store.all()] == [second.id]

    # Removed behind the store's back (another process): gone from all() too.
    store.path_for(second.id).unlink()
    assert store.all() == []


def test_all_ignores_dot_files_and_other_names(store, monkeypatch):
    job = make_job()
    store.write(job)
    other = make_job(sop="9.9")
    data = jobs.encode(other)
    (store.folder / f".{other.id}.json").write_bytes(data)
    (store.folder / f"{other.id}.json.tmp").write_bytes(data)
    (store.folder / f"{other.id}.txt").write_bytes(data)
    (store.folder / other.id).write_bytes(data)
    (store.folder / "README").write_text("hello")
    calls = count_reads(monkeypatch)
    assert store.all() == [job]
    assert calls == [job.id]


def test_broken_job_file_is_skipped(store, caplog):
    good = make_job(sop="1.1")
    store.write(good)
    broken = store.folder / "0123456789abcdef0123.json"
    broken.write_bytes(b"{ this is not a job")
    values = asdict(make_job(sop="1.3"))
    values["state"] = "lost"
    strange = store.folder / f"{values['id']}.json"
    strange.write_bytes(json.dumps(values).encode())

    assert store.read("0123456789abcdef0123") is None
    assert store.read(values["id"]) is None
    assert store.all() == [good]
    assert store.all() == [good]
    assert "unreadable" in caplog.text


def test_repaired_job_file_is_picked_up(store):
    job = make_job()
    store.folder.mkdir(parents=True)
    store.path_for(job.id).write_bytes(b"garbage")
    assert store.all() == []
    store.write(job)
    assert store.all() == [job]


def test_atomic_write_leaves_no_temporary_files(store):
    batch = [make_job(sop=f"1.2.{n}") for n in range(3)]
    for job in batch:
        store.write(job)
        store.write(jobs.delivered(job, NOW + 1), durable=False)
    store.write_many(batch)
    names = sorted(p.name for p in store.folder.iterdir() if p.is_file())
    assert names == sorted(f"{job.id}.json" for job in batch)
    done = sorted(p.name for p in store.done_folder.iterdir())
    assert done == sorted(f"{job.id}.json" for job in batch)


def test_delivered_jobs_leave_the_folder_the_sender_watches(store):
    first, second = make_job(sop="1.2.1"), make_job(sop="1.2.2")
    store.write_many([first, second])
    delivered = jobs.delivered(first, NOW + 1)
    store.write(delivered, durable=False)
    assert not store.path_for(first.id).exists()
    assert store.done_path_for(first.id).exists()
    assert store.open_jobs() == [second]
    assert sorted(store.all(), key=lambda j: j.id) == sorted([delivered, second],
                                                             key=lambda j: j.id)
    assert store.read(first.id) == delivered


def test_a_delivered_job_queued_again_is_the_open_one(store):
    job = make_job()
    store.write(jobs.delivered(job, NOW + 1))
    again = jobs.new_job(job.destination, {**RECORD, "SOPInstanceUID": job.sop_instance_uid},
                         "push", NOW + 5)
    store.write(again)
    assert store.read(job.id) == again
    assert store.all() == [again] and store.open_jobs() == [again]
    store.remove(job.id)
    assert store.read(job.id) is None and store.all() == []


# -- JobStore.queue, current, cancel ---------------------------------------------


def records(count: int) -> list[dict]:
    return [{**RECORD, "SOPInstanceUID": f"1.2.3.4.5.{n}", "path": f"1.2/{n}.dcm"}
            for n in range(count)]


def test_queue_writes_a_pending_job_per_record(store):
    assert store.queue("PACS", records(3), "push", NOW) == 3
    found = sorted(store.all(), key=lambda job: job.sop_instance_uid)
    assert found == [jobs.new_job("PACS", record, "push", NOW) for record in records(3)]
    assert all(job.is_due(NOW) for job in found)


def test_queue_accepts_a_generator_and_nothing(store):
    assert store.queue("PACS", (r for r in records(2)), "forward", NOW) == 2
    assert store.queue("PACS", [], "push", NOW) == 0


def test_queue_again_revives_cancelled_and_failed_jobs(store):
    store.queue("PACS", records(2), "push", NOW)
    first, second = sorted(store.all(), key=lambda job: job.sop_instance_uid)
    store.cancel(first.id, NOW + 1)
    store.write(jobs.refused(second, "no", NOW + 1))
    store.queue("PACS", records(2), "push", NOW + 2)
    assert {job.state for job in store.all()} == {jobs.PENDING}
    assert len(store.all()) == 2


def test_queue_for_two_destinations_keeps_both(store):
    store.queue("PACS", records(2), "push", NOW)
    store.queue("VIEWER", records(2), "push", NOW)
    assert sorted(job.destination for job in store.all()) == ["PACS", "PACS", "VIEWER", "VIEWER"]


def test_current_costs_no_read_while_unchanged(store, monkeypatch):
    store.queue("PACS", records(1), "push", NOW)
    (job,) = store.all()
    calls = count_reads(monkeypatch)
    assert store.current(job) is job
    assert calls == []


def test_current_sees_a_cancel(store):
    store.queue("PACS", records(1), "push", NOW)
    (job,) = store.all()
    other = jobs.JobStore(store.folder)  # another process, as far as files go
    other.cancel(job.id, NOW + 1)
    current = store.current(job)
    assert current is not None and current.state == jobs.CANCELLED


def test_current_sees_a_rewrite_of_same_size_and_mtime(store):
    job = make_job(attempts=1)
    store.write(job)
    (cached,) = store.all()
    path = store.path_for(job.id)
    before = path.stat()
    store.write(replace(job, attempts=2))  # same length
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size
    current = store.current(cached)
    assert current is not None and current.attempts == 2


def test_current_of_a_removed_job_is_none(store):
    store.queue("PACS", records(1), "push", NOW)
    (job,) = store.all()
    store.path_for(job.id).unlink()
    assert store.current(job) is None


def test_current_of_a_job_never_listed_reads_it(store):
    job = make_job()
    store.write(job)
    assert store.current(job) == job


def test_cancel_by_id(store):
    store.queue("PACS", records(1), "push", NOW)
    (job,) = store.all()
    withdrawn = store.cancel(job.id, NOW + 3)
    assert withdrawn == jobs.cancelled(job, NOW + 3)
    assert store.read(job.id) == withdrawn
    assert store.cancel(job.id, NOW + 4) == withdrawn  # twice: unchanged
    assert store.cancel("0123456789abcdef0123", NOW) is None


def test_cancel_leaves_a_done_job_done(store):
    done = jobs.delivered(make_job(), NOW + 1)
    store.write(done)
    assert store.cancel(done.id, NOW + 2) == done
    assert store.read(done.id) == done


def test_new_job_reads_only_the_record_fields() -> None:
    """The ingester hands new_job only jobs.RECORD_FIELDS of an index record."""
    record = {"SOPInstanceUID": "1.2.3", "StudyInstanceUID": "1.2", "SOPClassUID": "1.2.840.1",
              "TransferSyntaxUID": "1.2.840.10008.1.2.1", "path": "a/b/c.dcm",
              "PatientName": "ignored"}
    narrow = {name: record[name] for name in jobs.RECORD_FIELDS}
    assert jobs.new_job("PACS", narrow, "forward", NOW) == jobs.new_job("PACS", record,
                                                                       "forward", NOW)


def test_rename_destination_moves_open_jobs(tmp_path):
    store = jobs.JobStore(tmp_path / "outgoing")
    store.queue("OLD", records(3), "forward", NOW)
    first, second, third = sorted(store.all(), key=lambda job: job.sop_instance_uid)
    store.write(jobs.delivered(first, NOW + 1))
    store.write(jobs.attempt_failed(second, "Connection refused", NOW + 1, 30, 20))

    assert store.rename_destination("OLD", "NEW") == 2
    after = {(job.destination, job.sop_instance_uid): job for job in store.all()}
    assert after[("OLD", first.sop_instance_uid)].state == jobs.DONE  # history stays
    moved = after[("NEW", second.sop_instance_uid)]
    assert moved.id == jobs.job_id("NEW", second.sop_instance_uid)
    assert (moved.state, moved.attempts, moved.last_error) == (jobs.RETRYING, 1,
                                                               "Connection refused")
    assert after[("NEW", third.sop_instance_uid)].state == jobs.PENDING
    assert not store.path_for(second.id).exists() and not store.path_for(third.id).exists()
    assert jobs.JobStore(tmp_path / "outgoing").read(moved.id) == moved  # on disk
    assert store.rename_destination("OLD", "NEW") == 0


def test_deliver_moves_the_file_and_reads_back_delivered(tmp_path):
    """The sender's fast path: one rename; read back, it is the job delivered."""
    import os
    import time as clock

    store = jobs.JobStore(tmp_path / "outgoing")
    store.done_folder.mkdir(parents=True)  # as the sender makes it at start
    store.queue("PACS", records(2), "forward", NOW)
    plain, warned = sorted(store.all(), key=lambda job: job.sop_instance_uid)
    plain = jobs.attempt_failed(plain, "Connection refused", NOW + 1, 30, 20)
    store.write(plain)
    inode = os.stat(store.path_for(plain.id)).st_ino
    before = clock.time()
    store.deliver(jobs.delivered(plain, clock.time()))
    assert not store.path_for(plain.id).exists()
    assert os.stat(store.done_path_for(plain.id)).st_ino == inode  # moved, not rewritten
    fresh = jobs.JobStore(tmp_path / "outgoing").read(plain.id)
    assert (fresh.state, fresh.attempts, fresh.last_error, fresh.next_attempt) == (
        jobs.DONE, 2, "", 0.0)
    assert before - 1 <= fresh.updated <= clock.time() + 1
    assert [job.id for job in store.done_jobs()] == [plain.id]
    assert plain.id not in {job.id for job in store.open_jobs()}

    noted = jobs.delivered(warned, NOW + 5, "0xB000 warning: coercion")
    store.deliver(noted)  # a warning note is kept: written in full
    assert jobs.JobStore(tmp_path / "outgoing").read(warned.id) == noted


def test_deliver_without_a_done_folder_writes_the_job(tmp_path):
    store = jobs.JobStore(tmp_path / "outgoing")
    store.queue("PACS", records(1), "forward", NOW)
    (job,) = store.all()
    done = jobs.delivered(job, NOW + 3)
    store.deliver(done)
    assert jobs.JobStore(tmp_path / "outgoing").read(job.id) == done
    assert not store.path_for(job.id).exists()


# -- the store as a seam: one constructor, a version token, shared by threads ------


@pytest.fixture
def home(tmp_path: Path):
    """A configuration that serves nothing (unit tests open no socket)."""
    from helpers import write_offline_config

    from echoes import config as config_module

    return config_module.load(write_offline_config(tmp_path / "home"))


def test_open_job_store_is_the_spool_outgoing_folder(home):
    store = open_job_store(home)
    assert store.folder == home.spool_dir / "outgoing"
    assert store.version() is None  # nothing queued yet: no folder
    store.create()
    assert store.done_folder.is_dir()


def test_version_moves_with_every_queued_job(store):
    store.queue("PACS", records(1), "push", NOW)
    before = store.version()
    assert before is not None
    time.sleep(0.01)
    store.queue("PACS", records(2)[1:], "push", NOW)
    assert store.version() != before


def test_one_store_shared_by_threads_sees_every_job(store):
    """Readers scanning while writers queue and the sender delivers: no error, and
    the last scan holds exactly what is on disk."""
    import threading

    store.create()
    errors: list[BaseException] = []
    stop = threading.Event()

    def read() -> None:
        try:
            while not stop.is_set():
                store.open_jobs()
                store.all()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    readers = [threading.Thread(target=read) for _ in range(3)]
    for thread in readers:
        thread.start()
    try:
        for number in range(40):
            store.queue("PACS", [records(40)[number]], "push", NOW)
        for job in store.open_jobs()[:10]:
            store.deliver(jobs.delivered(job, NOW + 1))
    finally:
        stop.set()
        for thread in readers:
            thread.join()
    assert not errors
    assert len(store.open_jobs()) == 30
    assert len(store.all()) == 40
