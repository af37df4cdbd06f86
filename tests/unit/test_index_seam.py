"""The index seam: an index written by the code before it opens unchanged,
the reader's methods and version token, and query matching on the indexed keys.

The fixture (``tests/fixtures/index_9c97337``) was written by ``ArchiveIndex``
at commit 9c97337: compacted files with journals beside them, a removal, and an
object moved from one study to another.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from echoes.index import IndexReader, IndexWriter, base, open_index
from echoes.index.embedded import ArchiveIndex, EmbeddedIndex, read_studies
from echoes.index.record import InstanceRecord

FIXTURE = Path(__file__).parents[1] / "fixtures" / "index_9c97337"
CT, MR = "1.2.3.1", "1.2.3.2"


class Home:
    """What open_index reads of a configuration."""

    def __init__(self, index_path: Path) -> None:
        self.index_path = index_path
        self.database_url = ""  # the embedded backend


@pytest.fixture
def old_index(tmp_path: Path) -> Path:
    """A copy of the fixture (the writer changes what it opens)."""
    shutil.copytree(FIXTURE, tmp_path / "var")
    return tmp_path / "var" / "index.json"


@pytest.fixture
def reader(old_index: Path) -> IndexReader:
    return open_index(Home(old_index))  # type: ignore[arg-type]


def test_an_index_of_the_previous_layout_reads_unchanged(reader):
    studies = {s["StudyInstanceUID"]: s for s in reader.studies()}
    assert set(studies) == {CT, MR}
    assert studies[CT]["NumberOfInstances"] == 5 and studies[CT]["NumberOfSeries"] == 2
    assert studies[MR]["NumberOfInstances"] == 4  # three, and one moved in from study 3
    assert studies[MR]["PatientName"] == "MÜLLER^HANS"
    assert studies[MR]["ModalitiesInStudy"] == ["MR"]
    detail = reader.study(CT)
    assert detail["study"] == studies[CT]  # derived from the shard: the catalog's summary
    assert sorted(s["SeriesInstanceUID"] for s in detail["series"]) == ["1.2.3.1.1", "1.2.3.1.2"]
    assert sorted(i["SOPInstanceUID"] for i in detail["instances"]) == [
        "1.2.3.1.1.1", "1.2.3.1.1.3", "1.2.3.1.1.6", "1.2.3.1.2.4", "1.2.3.1.2.5"]
    assert [s["NumberOfSeriesRelatedInstances"] for s in sorted(
        reader.series(CT), key=lambda s: s["SeriesInstanceUID"])] == [3, 2]
    assert len(list(reader.instances())) == 9
    assert {i["StudyInstanceUID"] for i in reader.instances(MR)} == {MR}
    assert reader.study("1.2.3.3") is None and reader.series("1.2.3.3") == []


def test_the_writer_goes_on_from_an_index_of_the_previous_layout(old_index, reader):
    before, study_before = reader.version(), reader.version(CT)
    writer = open_index(Home(old_index), writer=True)  # type: ignore[arg-type]
    assert isinstance(writer, ArchiveIndex)
    try:
        record = InstanceRecord(
            SOPInstanceUID="1.2.3.1.1.7", SOPClassUID="1.2.840.10008.5.1.4.1.1.2",
            SeriesInstanceUID="1.2.3.1.1", StudyInstanceUID=CT, PatientID="P1", Modality="CT",
            path=f"{CT}/1.2.3.1.1/1.2.3.1.1.7.dcm", size=5,
            received="2026-11-29T11:00:00.000+00:00")
        assert writer.apply([record]) == []
        assert writer.remove(["1.2.3.2.1.7"]) == 1
    finally:
        writer.close()
    assert reader.version() != before and reader.version(CT) != study_before
    counts = {s["StudyInstanceUID"]: s["NumberOfInstances"] for s in reader.studies()}
    assert counts == {CT: 6, MR: 3}
    assert counts == {s["StudyInstanceUID"]: s["NumberOfInstances"]
                      for s in read_studies(old_index)}


def test_the_embedded_backend_fits_both_protocols(old_index):
    for cls, protocol in ((EmbeddedIndex, IndexReader), (ArchiveIndex, IndexWriter)):
        missing = [name for name in dir(protocol) if not name.startswith("_")
                   and not callable(getattr(cls, name, None))]
        assert not missing, (cls, missing)


def test_version_stays_while_nothing_is_written(reader):
    assert reader.version() == reader.version()
    assert reader.version(CT) == reader.version(CT)
    assert reader.version(CT) != reader.version(MR)


# -- query -----------------------------------------------------------------------------------


def uids(documents: list[dict], key: str) -> list[str]:
    return sorted(d[key] for d in documents)


@pytest.mark.parametrize(("filters", "expected"), [
    ({}, [CT, MR]),
    ({"PatientID": "P2"}, [MR]),
    ({"PatientID": "P*"}, [CT, MR]),
    ({"PatientName": "müller^hans"}, [MR]),  # names fold case
    ({"PatientName": "DOE*"}, [CT]),
    ({"PatientName": "M?LLER^*"}, [MR]),
    ({"StudyDate": "20261110-"}, [MR]),
    ({"StudyDate": "-20261110"}, [CT]),
    ({"StudyDate": "20261101"}, [CT]),
    ({"AccessionNumber": "B200"}, [MR]),
    ({"AccessionNumber": "A1*"}, [CT]),
    ({"ModalitiesInStudy": "MR"}, [MR]),
    ({"ModalitiesInStudy": "CT\\MR"}, [CT, MR]),
    ({"StudyInstanceUID": f"{CT}\\9.9.9"}, [CT]),
    ({"StudyInstanceUID": CT, "PatientID": "P2"}, []),
    ({"PatientID": ""}, [CT, MR]),  # universal
])
def test_query_studies(reader, filters, expected):
    assert uids(reader.query(base.STUDY, filters), "StudyInstanceUID") == expected


def test_query_series_and_images(reader):
    series = reader.query(base.SERIES, {"StudyInstanceUID": CT, "SeriesNumber": "2"})
    assert [(s["StudyInstanceUID"], s["SeriesInstanceUID"]) for s in series] == [
        (CT, "1.2.3.1.2")]
    assert uids(reader.query(base.SERIES, {"Modality": "MR"}), "SeriesInstanceUID") == [
        "1.2.3.2.1"]
    assert uids(reader.query(base.IMAGE, {"SeriesInstanceUID": "1.2.3.1.2"}),
                "SOPInstanceUID") == ["1.2.3.1.2.4", "1.2.3.1.2.5"]
    assert uids(reader.query(base.IMAGE, {"SOPInstanceUID": "1.2.3.3.1.10"}),
                "StudyInstanceUID") == [MR]
    assert uids(reader.query(base.IMAGE, {"PatientID": "P1", "InstanceNumber": "6"}),
                "SOPInstanceUID") == ["1.2.3.1.1.6"]
    found = reader.query(base.IMAGE, {"StudyInstanceUID": MR})
    found[0]["PatientID"] = "changed"  # the caller's own copies
    assert {i["PatientID"] for i in reader.instances(MR)} == {"P2"}


@pytest.mark.parametrize(("level", "filters", "error"), [
    ("PATIENT", {}, "level"),
    (base.STUDY, {"SeriesInstanceUID": "1.2"}, "SeriesInstanceUID"),
    (base.SERIES, {"SOPInstanceUID": "1.2"}, "SOPInstanceUID"),
    (base.STUDY, {"NoSuchKeyword": "x"}, "NoSuchKeyword"),
])
def test_query_refuses_what_it_cannot_match(reader, level, filters, error):
    with pytest.raises(ValueError, match=error):
        reader.query(level, filters)


# -- the Browser's caches need nothing but the reader protocol -------------------------------


class MemoryIndex:
    """An index reader over a dict, counting reads (any backend must fit the Browser)."""

    def __init__(self) -> None:
        self.token = 1
        self.reads = 0
        self.details = {CT: {"study": {"StudyInstanceUID": CT, "StudyDate": "20261101",
                                       "updated": "2026-11-29T10:00:00.000+00:00"},
                             "series": [], "instances": [{"SOPInstanceUID": "1.1"}]}}

    def version(self, study_uid: str | None = None) -> int:
        return self.token

    def studies(self) -> list[dict]:
        self.reads += 1
        return [detail["study"] for detail in self.details.values()]

    def study(self, study_uid: str) -> dict | None:
        self.reads += 1
        return self.details.get(study_uid)


def test_catalog_and_study_cache_read_again_only_when_the_version_moves():
    from echoes.web.catalog import StudyCatalog, StudyReader

    memory = MemoryIndex()
    catalog, studies = StudyCatalog(memory), StudyReader(memory)  # type: ignore[arg-type]
    assert [s["StudyInstanceUID"] for s in catalog.current().studies] == [CT]
    assert studies.read(CT)["instances"] == [{"SOPInstanceUID": "1.1"}]
    catalog.current(), studies.read(CT)
    assert memory.reads == 2
    memory.token += 1
    memory.details[MR] = {"study": {"StudyInstanceUID": MR}, "series": [], "instances": []}
    assert len(catalog.current().studies) == 2
    studies.read(CT)
    assert memory.reads == 4
    assert studies.read(MR) is None  # no instances: not archived
