"""Routing and retention through the seams on PostgreSQL (issue 20): held jobs
(forward_when = study) kept out of the sender's claims in the file store and the jobs
table alike, then claimed as one study; a deletion through the PostgreSQL index."""

from __future__ import annotations

import time
from pathlib import Path

from echoes.config import RemoteAE
from echoes.database import prepare
from echoes.queue import jobs, routing
from echoes.queue.jobs import JobStore
from echoes.queue.postgres import PostgresJobStore

NOW = time.time()


def held(study: str, count: int, created: float) -> list[jobs.Job]:
    return [routing.hold(jobs.new_job("WHOLE", {
        "SOPInstanceUID": f"{study}.{n}", "StudyInstanceUID": study,
        "SOPClassUID": "1.2.840.10008.5.1.4.1.1.2", "path": f"{study}/{n}.dcm"},
        "forward", created)) for n in range(count)]


def test_held_jobs_wait_then_go_together_in_both_stores(tmp_path: Path,
                                                        database_url: str) -> None:
    prepare(database_url)
    files, table = JobStore(tmp_path / "outgoing"), PostgresJobStore(database_url, "n1")
    files.create()
    remotes = {"WHOLE": RemoteAE("WHOLE", "h", 104, True, forward_when="study",
                                 stable_study_seconds=10)}
    try:
        for store in (files, table):
            store.write_many(held("1.2.3", 3, NOW - 20) + held("1.2.4", 2, NOW - 5))
            assert store.claim("WHOLE", NOW, 100) == []
            assert store.due_destinations(NOW) == set()
            waiting = store.held_jobs()
            assert len(waiting) == 5
            released, look = routing.release_stable(waiting, remotes, NOW)
            assert {job.study_instance_uid for job in released} == {"1.2.3"}
            assert look == NOW + 5
            store.write_many(released)
            claimed = store.claim("WHOLE", NOW, 100)
            assert sorted(job.sop_instance_uid for job in claimed) == [
                "1.2.3.0", "1.2.3.1", "1.2.3.2"]
            assert len(store.held_jobs()) == 2
    finally:
        table.close()


def test_deletion_through_the_postgres_index(tmp_path: Path, database_url: str) -> None:
    """Retention's deletion on the PostgreSQL index seam: records, files, the intent."""
    from helpers import make_dataset, write_offline_config, write_part10

    from echoes import config as config_module
    from echoes.ops import integrity, retention
    from echoes.processes.ingester import Ingester
    from echoes.storage import spool

    config = config_module.load(write_offline_config(tmp_path / "home",
                                                     database_url=database_url))
    ingester = Ingester(config)
    try:
        kept, gone = make_dataset(), make_dataset()
        for ds in (kept, gone, make_dataset(study=gone.StudyInstanceUID)):
            write_part10(ds, tmp_path / "x.dcm").rename(
                ingester.layout.incoming / spool.incoming_name())
        assert ingester.drain() == 3
        outcome = ingester.retention.delete(gone.StudyInstanceUID, retention.BY_HAND)
        assert outcome["instances"] == 2
        assert [s["StudyInstanceUID"] for s in ingester.index.studies()] == [
            kept.StudyInstanceUID]
        assert not list(retention.intents_folder(config).iterdir())
        assert integrity.fsck(config, read_headers=False) == []
    finally:
        ingester.index.close()
        ingester.jobs.close()
