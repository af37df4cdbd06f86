"""Retention (issue 20): which studies the limits delete, and the deletion on real files."""

from datetime import UTC, datetime

import pytest
from helpers import make_dataset, write_offline_config, write_part10

from echoes import config as config_module
from echoes.ops import integrity, retention
from echoes.processes.ingester import Ingester
from echoes.queue import jobs
from echoes.storage import spool

DAY = 86400.0
NOW = 1_000 * DAY


def summary(uid: str, days_ago: float, size: int) -> dict:
    when = datetime.fromtimestamp(NOW - days_ago * DAY, UTC).isoformat(timespec="milliseconds")
    return {"StudyInstanceUID": uid, "updated": when, "size": size}


STUDIES = [summary("1.3", 1, 400), summary("1.1", 10, 300), summary("1.2", 5, 200)]


def chosen(keep=frozenset(), days=0.0, gb=0.0) -> list[tuple[str, str]]:
    return [(d.study_uid, d.reason) for d in retention.plan(STUDIES, set(keep), NOW, days, gb)]


def test_no_limits_delete_nothing():
    assert chosen() == []


def test_retention_days_deletes_what_arrived_before():
    assert chosen(days=4) == [("1.1", "retention_days"), ("1.2", "retention_days")]
    assert chosen(days=7.5) == [("1.1", "retention_days")]


def test_max_archive_deletes_oldest_arrived_until_under():
    # 900 bytes; a limit of 600 bytes: the oldest (1.1, 300) goes, 600 is not over.
    assert chosen(gb=600e-9) == [("1.1", "max_archive_gb")]
    assert chosen(gb=500e-9) == [("1.1", "max_archive_gb"), ("1.2", "max_archive_gb")]
    assert chosen(gb=0.5) == []


def test_kept_studies_are_skipped_but_count():
    assert chosen(keep={"1.1"}, gb=700e-9) == [("1.2", "max_archive_gb")]
    assert chosen(keep={"1.1"}, gb=600e-9) == [("1.2", "max_archive_gb"), ("1.3", "max_archive_gb")]
    assert chosen(keep={"1.1"}, days=4) == [("1.2", "retention_days")]


def test_keeping_counts_every_state_but_done_and_cancelled():
    def job(study: str, state: str) -> jobs.Job:
        return jobs.Job(id=study + state, destination="D", sop_instance_uid="9",
                        study_instance_uid=study, sop_class_uid="1", transfer_syntax="",
                        path="p", origin="forward", state=state)

    states = [jobs.PENDING, jobs.RETRYING, jobs.FAILED, jobs.HELD, jobs.DONE, jobs.CANCELLED]
    assert retention.keeping(job(state, state) for state in states) == {
        jobs.PENDING: 1, jobs.RETRYING: 1, jobs.FAILED: 1, jobs.HELD: 1}


@pytest.fixture
def archive(tmp_path):
    config = config_module.load(write_offline_config(tmp_path / "home"))
    ingester = Ingester(config)
    studies = {}
    for name in ("a", "b"):
        ds = make_dataset()
        studies[name] = ds.StudyInstanceUID
        for _ in range(3):
            ds = make_dataset(study=studies[name], series=ds.SeriesInstanceUID)
            source = write_part10(ds, tmp_path / "x.dcm")
            source.rename(ingester.layout.incoming / spool.incoming_name())
    ingester.drain()
    yield ingester, config, studies
    ingester.index.close()


def test_delete_removes_files_folders_and_records(archive):
    ingester, config, studies = archive
    outcome = ingester.retention.delete(studies["a"], retention.BY_HAND)
    assert outcome["instances"] == 3
    assert ingester.index.study(studies["a"]) is None
    assert not (config.archive_dir / studies["a"]).exists()
    assert ingester.index.study(studies["b"]) is not None
    assert integrity.fsck(config) == []
    assert [e["study"] for e in retention.deletions(config)] == [studies["a"]]
    with pytest.raises(retention.DeleteRefused, match="no archived study"):
        ingester.retention.delete(studies["a"], retention.BY_HAND)


def test_study_with_open_jobs_is_refused(archive):
    ingester, config, studies = archive
    detail = ingester.index.study(studies["b"])
    ingester.jobs.queue("PACS", detail["instances"][:1], "push", NOW)
    with pytest.raises(retention.DeleteRefused, match="1 outbound jobs not done"):
        ingester.retention.delete(studies["b"], retention.BY_HAND)
    assert ingester.index.study(studies["b"]) is not None


def test_an_intent_cut_short_is_finished(archive):
    """The state a kill -9 leaves after the index write: intent and files, no records."""
    ingester, config, studies = archive
    detail = ingester.index.study(studies["a"])
    intent = {"study": studies["a"], "reason": "by hand", "bytes": 1,
              "instances": [[d["SOPInstanceUID"], d["path"]] for d in detail["instances"]]}
    folder = retention.intents_folder(config)
    folder.mkdir(parents=True)
    (folder / f"{studies['a']}.json").write_text(__import__("json").dumps(intent))
    ingester.index.remove(d["SOPInstanceUID"] for d in detail["instances"])
    assert ingester.retention.finish_intents() == 1
    assert list(folder.iterdir()) == []
    assert integrity.fsck(config, read_headers=False) == []
