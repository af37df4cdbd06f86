"""Ingester on real files: archive layout, idempotence, rejected files, crash leftovers."""

import os
from pathlib import Path

import pytest
from helpers import make_dataset, write_offline_config, write_part10

from echoes import config as config_module
from echoes.index import embedded as index
from echoes.index import record
from echoes.processes.ingester import Ingester
from echoes.storage import durable, spool


def make_ingester(tmp_path):
    config = config_module.load(write_offline_config(tmp_path / "home"))
    return Ingester(config), config


def publish(path, layout):
    """Into ``incoming/`` as the store SCP puts it there (publish_incoming)."""
    folder = os.open(layout.incoming, os.O_RDONLY | os.O_DIRECTORY)
    written = os.open(path, os.O_RDONLY)
    try:
        return spool.publish_incoming(written, path, layout, folder)
    finally:
        os.close(written)
        os.close(folder)


def spool_file(layout, ds, tmp_path):
    return publish(write_part10(ds, tmp_path / "x.dcm"), layout)


def test_archives_indexes_and_replaces(tmp_path):
    ingester, config = make_ingester(tmp_path)
    ds = make_dataset(patient_id="A")
    spool_file(ingester.layout, ds, tmp_path)
    ds.PatientID = "B"
    spool_file(ingester.layout, ds, tmp_path)
    assert ingester.drain() == 1  # the later copy wins within one batch
    target = (config.archive_dir / ds.StudyInstanceUID / ds.SeriesInstanceUID
              / f"{ds.SOPInstanceUID}.dcm")
    assert target.exists()
    assert not spool.pending_incoming(ingester.layout)
    assert index.read_studies(config.index_path)[0]["PatientID"] == "B"
    spool_file(ingester.layout, ds, tmp_path)  # sent again later: still one record
    ingester.drain()
    assert index.read_studies(config.index_path)[0]["NumberOfInstances"] == 1


def test_unparseable_file_goes_to_rejected_and_ingest_goes_on(tmp_path):
    ingester, config = make_ingester(tmp_path)
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"\x00" * 50)
    publish(junk, ingester.layout)
    good = make_dataset()
    spool_file(ingester.layout, good, tmp_path)
    assert ingester.drain() == 1
    assert len(list(ingester.layout.rejected.iterdir())) == 1
    assert index.read_studies(config.index_path)[0]["StudyInstanceUID"] == good.StudyInstanceUID


def test_study_moved_removes_old_file(tmp_path):
    ingester, config = make_ingester(tmp_path)
    ds = make_dataset()
    spool_file(ingester.layout, ds, tmp_path)
    ingester.drain()
    old_study = ds.StudyInstanceUID
    ds.StudyInstanceUID = "1.2.3.999"
    spool_file(ingester.layout, ds, tmp_path)
    ingester.drain()
    files = list(config.archive_dir.rglob("*.dcm"))
    assert len(files) == 1 and files[0].parts[-3] == "1.2.3.999"
    assert [s["StudyInstanceUID"] for s in index.read_studies(config.index_path)] == ["1.2.3.999"]
    assert old_study not in str(files[0])


def test_wakes_on_arrivals_only(tmp_path):
    """The ingester's own reads and moves in incoming/ must not wake it (CPU)."""
    import os
    import threading

    from echoes.processes.ingester import watch_arrivals

    incoming = tmp_path / "incoming"
    incoming.mkdir()
    wake = threading.Event()
    observer = watch_arrivals(incoming, wake)
    try:
        staged = tmp_path / "staged.dcm"
        staged.write_bytes(b"x")
        os.replace(staged, incoming / "a.dcm")  # how the store SCP delivers
        assert wake.wait(5)
        wake.clear()
        (incoming / "a.dcm").read_bytes()  # what the ingester does with it
        os.replace(incoming / "a.dcm", tmp_path / "archived.dcm")
        durable.fsync_dir(incoming)
        assert not wake.wait(1)
        (incoming / "b.dcm").write_bytes(b"y")  # created in place also counts
        assert wake.wait(5)
    finally:
        observer.stop()
        observer.join(5)


def _record_pairs(tmp_path):
    """(file, record by dcmread, record by the walk) for pydicom's test files and
    generated objects with non-ASCII names in three syntaxes."""
    import dataclasses

    import pydicom
    from helpers import make_dataset, write_part10

    files = sorted(Path(pydicom.__file__).parent.joinpath("data", "test_files").rglob("*.dcm"))
    names = [("MÜLLER^HANS", "ISO_IR 100"), ("山田^太郎", "ISO_IR 192"),
             ("Buc^Jérôme", "ISO_IR 192"), ("PLAIN^NAME  ", None)]
    for number, (name, charset) in enumerate(names):
        ds = make_dataset()
        ds.PatientName, ds.InstanceNumber, ds.SeriesNumber = name, " 7", "12 "
        if charset:
            ds.SpecificCharacterSet = charset
        for syntax in ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"):
            files.append(write_part10(ds, tmp_path / f"{number}-{syntax}.dcm", syntax=syntax))
    for path in files:
        try:
            expected = record._read_record_with_dcmread(path)
        except Exception:
            continue  # pydicom cannot read it either
        got = record.read_record(path)
        # "received" comes from the spool name, or the clock for other names
        yield path, dataclasses.replace(expected, received=""), dataclasses.replace(got,
                                                                                    received="")


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_read_record_by_walk_equals_dcmread(tmp_path):
    pairs = list(_record_pairs(tmp_path))
    assert len(pairs) > 60
    for path, expected, got in pairs:
        assert got == expected, path.name
