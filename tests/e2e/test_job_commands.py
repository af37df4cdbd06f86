"""echoes cancel, queue, retry and check on a job store, each a real `echoes` process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from echoes.queue import jobs, open_job_store

NOW = 1_700_000_000.0


def records(count: int) -> list[dict]:
    """``count`` index records of one study, as the ingester hands them to the queue."""
    return [{"SOPInstanceUID": f"1.2.3.4.5.{n}", "StudyInstanceUID": "1.2.3.4",
             "SOPClassUID": "1.2.840.10008.5.1.4.1.1.7",
             "TransferSyntaxUID": "1.2.840.10008.1.2.1", "path": f"1.2/{n}.dcm"}
            for n in range(count)]

# -- cancel across the commands: echoes cancel, queue, retry, check ----------------


@pytest.fixture
def home(tmp_path: Path):
    from helpers import write_config

    from echoes import config as config_module

    path = write_config(tmp_path / "home")
    path.write_text(path.read_text() + "\n[ae:PACS]\nhost = 127.0.0.1\nport = 104\n")
    return config_module.load(path)


def echoes(config, *args: str):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "echoes", "--config", str(config.path), *args],
                          capture_output=True, text=True, timeout=60)


def test_cancel_command_queue_and_retry(home):
    store = open_job_store(home)
    store.queue("PACS", records(3), "push", NOW)
    first, second, third = sorted(store.all(), key=lambda job: job.sop_instance_uid)
    store.write(jobs.delivered(third, NOW + 1))

    done = echoes(home, "cancel", first.id)
    assert done.returncode == 0, done.stderr
    assert first.id in done.stdout and "cancelled" in done.stdout
    assert store.read(first.id).state == jobs.CANCELLED

    refused = echoes(home, "cancel", third.id)
    assert refused.returncode == 1
    assert "done already" in refused.stderr
    assert store.read(third.id).state == jobs.DONE
    missing = echoes(home, "cancel", "0123456789abcdef0123")
    assert (missing.returncode, missing.stderr.strip()) == (1, "echoes: no job "
                                                              "0123456789abcdef0123")

    listing = echoes(home, "queue")
    assert "PACS (127.0.0.1:104): 1 pending, 0 retrying, 0 failed, 1 cancelled, 1 done" \
        in listing.stdout
    assert f"cancelled {first.id}" in listing.stdout
    document = json.loads(echoes(home, "queue", "--json").stdout)["PACS"]
    assert (document["pending"], document["failed"], document["cancelled"]) == (1, 0, 1)
    assert {job["id"]: job["state"] for job in document["jobs"]} == {
        first.id: jobs.CANCELLED, second.id: jobs.PENDING}

    assert echoes(home, "retry", "--failed").stdout.strip() == "0 jobs queued again"
    assert store.read(first.id).state == jobs.CANCELLED
    assert echoes(home, "retry", first.id).returncode == 0
    assert store.read(first.id).state == jobs.PENDING


def test_retry_command_refuses_done_and_pending_jobs(home):
    """echoes retry JOB_ID agrees with the API (409 for a done job): a done or
    pending job is refused on stderr with exit 1 and left as it is; retrying,
    failed and cancelled ones are queued again from zero (issue 14, item 12).
    """
    store = open_job_store(home)
    store.queue("PACS", records(5), "push", NOW)
    done, pending, retrying, failed, cancelled = sorted(store.all(),
                                                        key=lambda job: job.sop_instance_uid)
    store.done_folder.mkdir(exist_ok=True)
    store.deliver(jobs.delivered(done, NOW + 1))  # as the sender records it: one rename
    store.write(jobs.attempt_failed(retrying, "0xA700 out of resources", NOW + 1, 30, 20))
    store.write(jobs.refused(failed, "0xA900 data set does not match", NOW + 1))
    store.write(jobs.cancelled(cancelled, NOW + 1))
    before = {path: path.read_bytes() for path in store.folder.rglob("*.json")}

    refused = echoes(home, "retry", done.id)
    assert refused.returncode == 1 and refused.stdout == ""
    assert f"echoes: job {done.id} is done already (delivered " in refused.stderr
    assert "push the study again" in refused.stderr
    waiting = echoes(home, "retry", pending.id)
    assert waiting.returncode == 1 and waiting.stdout == ""
    assert f"echoes: job {pending.id} is pending already" in waiting.stderr
    assert {path: path.read_bytes() for path in store.folder.rglob("*.json")} == before
    assert not store.path_for(done.id).exists()  # not queued again beside the done one
    assert (store.read(done.id).state, store.read(pending.id).state) == (jobs.DONE,
                                                                         jobs.PENDING)

    for job in (retrying, failed, cancelled):
        again = echoes(home, "retry", job.id)
        assert (again.returncode, again.stdout.strip()) == (0, "1 jobs queued again")
        assert (store.read(job.id).state, store.read(job.id).attempts) == (jobs.PENDING, 0)


def test_check_does_not_alarm_on_cancelled_jobs(home):
    from echoes.ops import health
    store = open_job_store(home)
    store.queue("PACS", records(2), "push", NOW)
    first, second = store.all()
    store.cancel(first.id, NOW + 1)
    store.cancel(second.id, NOW + 1)
    assert health.outbound_queue(home) == []  # old (created long ago) but cancelled
    store.write(jobs.refused(store.read(second.id), "no", NOW + 2))
    assert [p.severity for p in health.outbound_queue(home)] == [health.CRITICAL]


def test_cancel_a_whole_destination(home):
    store = open_job_store(home)
    store.queue("PACS", records(4), "push", NOW)
    store.queue("OTHER", records(1), "push", NOW)
    first, second, third, fourth = sorted(
        (job for job in store.all() if job.destination == "PACS"),
        key=lambda job: job.sop_instance_uid)
    store.write(jobs.delivered(first, NOW + 1))
    store.write(jobs.refused(second, "0xA900 data set does not match", NOW + 1))
    store.write(jobs.cancelled(third, NOW + 1))

    done = echoes(home, "cancel", "--destination", "PACS")
    assert (done.returncode, done.stdout.strip()) == (0, "2 jobs to PACS cancelled")
    states = {job.id: job.state for job in store.all()}
    assert states[first.id] == jobs.DONE  # delivered stays delivered
    assert states[second.id] == states[third.id] == states[fourth.id] == jobs.CANCELLED
    assert store.read(second.id).last_error == "0xA900 data set does not match"
    assert [job.state for job in store.all() if job.destination == "OTHER"] == [jobs.PENDING]
    again = echoes(home, "cancel", "--destination", "PACS")
    assert again.stdout.strip() == "0 jobs to PACS cancelled"
    neither = echoes(home, "cancel")
    assert neither.returncode == 2 and "JOB_ID" in neither.stderr
