"""Q/R C-FIND's pure parts: identifier -> query (hierarchy, levels, character
sets), documents -> answers (only the asked keys, counts, the character set
the text needs), patients from study summaries, the caching reader, and the
index keys Q/R added (old indexes still answer)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from echoes.dicom import dataset
from echoes.dicom.dimse import CANNOT_UNDERSTAND, IDENTIFIER_DOES_NOT_MATCH
from echoes.index import open_index
from echoes.index.cache import CachingReader
from echoes.index.embedded import ArchiveIndex
from echoes.index.record import InstanceRecord, read_record
from echoes.services import qr_find
from echoes.services.qr_find import (
    PATIENT_ROOT_FIND,
    STUDY_ROOT_FIND,
    FindError,
    parse_identifier,
)
from echoes.services.query import QueryService

FIXTURE = Path(__file__).parents[1] / "fixtures" / "index_9c97337"
CT, MR = "1.2.3.1", "1.2.3.2"


def identifier(**keys: str | None) -> Dataset:
    ds = Dataset()
    for name, value in keys.items():
        setattr(ds, name, value)
    return ds


def refused(model: str, **keys: str | None) -> FindError:
    with pytest.raises(FindError) as caught:
        parse_identifier(model, identifier(**keys))
    return caught.value


# -- hierarchy and levels ---------------------------------------------------------------


@pytest.mark.parametrize("model, keys", [
    (STUDY_ROOT_FIND, {}),                                          # no level
    (STUDY_ROOT_FIND, {"QueryRetrieveLevel": "FRAME"}),             # unknown level
    (STUDY_ROOT_FIND, {"QueryRetrieveLevel": "PATIENT"}),           # not in Study Root
    (STUDY_ROOT_FIND, {"QueryRetrieveLevel": "SERIES"}),            # no StudyInstanceUID
    (STUDY_ROOT_FIND, {"QueryRetrieveLevel": "SERIES", "StudyInstanceUID": ""}),
    (STUDY_ROOT_FIND, {"QueryRetrieveLevel": "SERIES", "StudyInstanceUID": "1.2\\1.3"}),
    (STUDY_ROOT_FIND, {"QueryRetrieveLevel": "IMAGE", "StudyInstanceUID": "1.2"}),
    (PATIENT_ROOT_FIND, {"QueryRetrieveLevel": "STUDY"}),           # no PatientID
    (PATIENT_ROOT_FIND, {"QueryRetrieveLevel": "STUDY", "PatientID": "P*"}),
    (PATIENT_ROOT_FIND, {"QueryRetrieveLevel": "SERIES", "StudyInstanceUID": "1.2"}),
])
def test_a_broken_hierarchy_is_a900(model, keys):
    assert refused(model, **keys).status == IDENTIFIER_DOES_NOT_MATCH


def test_patient_level_in_patient_root_and_lower_levels_with_their_unique_keys():
    query = parse_identifier(PATIENT_ROOT_FIND, identifier(
        QueryRetrieveLevel="PATIENT", PatientName="DOE*", NumberOfPatientRelatedStudies=""))
    assert query.level == "PATIENT" and query.filters == {"PatientName": "DOE*"}
    assert query.counts_asked
    query = parse_identifier(PATIENT_ROOT_FIND, identifier(
        QueryRetrieveLevel="IMAGE", PatientID="P1", StudyInstanceUID="1.2",
        SeriesInstanceUID="1.2.3", Rows=None))
    assert query.filters == {"PatientID": "P1", "StudyInstanceUID": "1.2",
                             "SeriesInstanceUID": "1.2.3"}
    assert query.fixed == {0x00100020: "P1", 0x0020000D: "1.2", 0x0020000E: "1.2.3"}
    assert [name for _tag, name in query.answer] == ["SOPInstanceUID", "Rows"]


def test_only_the_levels_keys_are_matched_and_counts_never():
    query = parse_identifier(STUDY_ROOT_FIND, identifier(
        QueryRetrieveLevel="STUDY", PatientID="P1", StudyDate="20260101-20260131",
        NumberOfStudyRelatedInstances="5", Modality="CT", PatientComments="x",
        StudyDescription=""))
    assert query.filters == {"PatientID": "P1", "StudyDate": "20260101-20260131"}
    assert [name for _tag, name in query.answer] == [
        "StudyDate", "StudyDescription", "PatientID", "StudyInstanceUID", "NumberOfInstances"]
    assert query.matching_keys() == ["PatientID", "StudyDate"]


@pytest.mark.parametrize("charset", ["ISO_IR 100", "ISO_IR 192", "", "ISO 2022 IR 6"])
def test_known_character_sets_are_accepted(charset):
    query = parse_identifier(STUDY_ROOT_FIND, identifier(
        QueryRetrieveLevel="STUDY", SpecificCharacterSet=charset))
    assert query.charset_asked and query.utf8 == (charset == "ISO_IR 192")


@pytest.mark.parametrize("charset", ["KLINGON", "ISO_IR 999", "ISO_IR 100\\BOGUS"])
def test_an_unknown_character_set_is_c000(charset):
    error = refused(STUDY_ROOT_FIND, QueryRetrieveLevel="STUDY", SpecificCharacterSet=charset)
    assert error.status == CANNOT_UNDERSTAND and len(error.comment) <= 64


def test_a_latin1_identifier_decodes_to_text():
    raw = (b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 100"
           b"\x08\x00\x52\x00CS\x06\x00STUDY "
           b"\x10\x00\x10\x00PN\x08\x00m\xfcller*")
    query = parse_identifier(STUDY_ROOT_FIND, dataset.decode_dataset(raw, False, True))
    assert query.filters == {"PatientName": "müller*"} and not query.utf8


# -- answers ------------------------------------------------------------------------


def answer(query: qr_find.FindQuery, document: dict, syntax: str = ExplicitVRLittleEndian):
    implicit = syntax == ImplicitVRLittleEndian
    little = syntax != ExplicitVRBigEndian
    tree = qr_find.response_tree(query, document, "ECHOES")
    return dataset.decode_dataset(qr_find.encode_response(query, tree, syntax), implicit,
                                  little)


STUDY_DOC = {"StudyInstanceUID": "1.2", "PatientName": "MÜLLER^HANS", "PatientID": "P1",
             "ModalitiesInStudy": ["CT", "SR"], "NumberOfSeries": 2, "NumberOfInstances": 7,
             "StudyDate": "20260102", "AccessionNumber": "A1"}


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRLittleEndian,
                                    ExplicitVRBigEndian])
def test_only_asked_keys_come_back_with_level_unique_key_and_routing(syntax):
    query = parse_identifier(STUDY_ROOT_FIND, identifier(
        QueryRetrieveLevel="STUDY", PatientID="", ModalitiesInStudy="",
        NumberOfStudyRelatedInstances="", NumberOfStudyRelatedSeries=""))
    ds = answer(query, STUDY_DOC, syntax)
    assert {element.keyword for element in ds} == {
        "QueryRetrieveLevel", "RetrieveAETitle", "InstanceAvailability", "PatientID",
        "StudyInstanceUID", "ModalitiesInStudy", "NumberOfStudyRelatedInstances",
        "NumberOfStudyRelatedSeries"}
    assert list(ds.ModalitiesInStudy) == ["CT", "SR"]
    assert ds.NumberOfStudyRelatedInstances == 7 and ds.NumberOfStudyRelatedSeries == 2
    assert ds.RetrieveAETitle == "ECHOES" and ds.InstanceAvailability == "ONLINE"


@pytest.mark.parametrize("query_charset, name, answered", [
    ("", "MÜLLER^HANS", "ISO_IR 100"),            # Latin-1 holds it, the query was not UTF-8
    ("ISO_IR 100", "MÜLLER^HANS", "ISO_IR 100"),
    ("ISO_IR 192", "MÜLLER^HANS", "ISO_IR 192"),  # a UTF-8 query gets UTF-8
    ("ISO_IR 100", "Иванов^Иван", "ISO_IR 192"),  # Latin-1 cannot: UTF-8, nothing lost
    ("ISO_IR 192", "DOE^JOHN", ""),               # ASCII: the default repertoire
])
def test_the_answer_is_in_the_character_set_its_text_needs(query_charset, name, answered):
    keys = {"QueryRetrieveLevel": "STUDY", "PatientName": ""}
    if query_charset:
        keys["SpecificCharacterSet"] = query_charset
    query = parse_identifier(STUDY_ROOT_FIND, identifier(**keys))
    ds = answer(query, {**STUDY_DOC, "PatientName": name})
    assert ds.get("SpecificCharacterSet", "") == answered
    assert str(ds.PatientName) == name  # pydicom decodes with what the answer says


def test_a_missing_document_field_is_answered_empty():
    query = parse_identifier(STUDY_ROOT_FIND, identifier(
        QueryRetrieveLevel="SERIES", StudyInstanceUID="1.2", SeriesDate="", BodyPartExamined=""))
    ds = answer(query, {"SeriesInstanceUID": "1.2.3"})  # indexed before these keys existed
    assert ds.SeriesDate == "" and ds.BodyPartExamined == "" and ds.StudyInstanceUID == "1.2"


def test_patients_group_studies_and_count_every_study_of_the_patient():
    studies = [
        {"PatientID": "P1", "PatientName": "DOE^J", "updated": "1", "NumberOfSeries": 1,
         "NumberOfInstances": 3},
        {"PatientID": "P1", "PatientName": "DOE^JOHN", "updated": "2", "NumberOfSeries": 2,
         "NumberOfInstances": 4},
        {"PatientID": "P2", "PatientName": "ROE^R", "updated": "1", "NumberOfSeries": 1,
         "NumberOfInstances": 1},
    ]
    found = qr_find.patients(studies[:1], studies)  # only the older study matched
    assert found == [{"PatientID": "P1", "PatientName": "DOE^J", "PatientBirthDate": "",
                      "PatientSex": "", "updated": "1", "NumberOfPatientRelatedStudies": 2,
                      "NumberOfPatientRelatedSeries": 3, "NumberOfPatientRelatedInstances": 7}]
    names = {p["PatientID"]: p["PatientName"] for p in qr_find.patients(studies, None)}
    assert names == {"P1": "DOE^JOHN", "P2": "ROE^R"}  # the newest study's name


# -- through the index seam (the fixture index of an earlier layout) --------------------


class Home:
    ae_title = "ECHOES"
    qr_allowed_calling_aes = ()

    def __init__(self, index_path: Path) -> None:
        self.index_path = index_path
        self.database_url = ""  # the embedded backend


@pytest.fixture
def old_index(tmp_path: Path) -> Path:
    shutil.copytree(FIXTURE, tmp_path / "var")
    return tmp_path / "var" / "index.json"


def find(index_path: Path, model: str, **keys: str) -> list[dict]:
    service = QueryService(Home(index_path))  # type: ignore[arg-type]
    return service.find(parse_identifier(model, identifier(**keys)))


def test_every_level_answers_from_an_index_of_the_previous_layout(old_index):
    patients = find(old_index, PATIENT_ROOT_FIND, QueryRetrieveLevel="PATIENT",
                    PatientName="müller*", NumberOfPatientRelatedInstances="")
    assert [p["PatientName"] for p in patients] == ["MÜLLER^HANS"]
    assert patients[0]["NumberOfPatientRelatedInstances"] == 4
    studies = find(old_index, STUDY_ROOT_FIND, QueryRetrieveLevel="STUDY",
                   PatientName="MÜLLER^?ANS")
    assert [s["StudyInstanceUID"] for s in studies] == [MR]
    series = find(old_index, STUDY_ROOT_FIND, QueryRetrieveLevel="SERIES",
                  StudyInstanceUID=CT, SeriesDate="")
    assert sorted(s["SeriesInstanceUID"] for s in series) == ["1.2.3.1.1", "1.2.3.1.2"]
    assert find(old_index, STUDY_ROOT_FIND, QueryRetrieveLevel="SERIES",
                StudyInstanceUID=CT, SeriesDate="20260101") == []  # unknown: no match
    images = find(old_index, STUDY_ROOT_FIND, QueryRetrieveLevel="IMAGE",
                  StudyInstanceUID=CT, SeriesInstanceUID="1.2.3.1.1")
    assert sorted(i["SOPInstanceUID"] for i in images) == [
        "1.2.3.1.1.1", "1.2.3.1.1.3", "1.2.3.1.1.6"]


def test_the_caching_reader_reads_again_only_after_a_write(old_index):
    reader = CachingReader(open_index(Home(old_index)))  # type: ignore[arg-type]
    first = reader.studies()
    assert reader.studies() is first
    assert reader.study(CT) is reader.study(CT)
    writer = ArchiveIndex(old_index)
    try:
        writer.apply([InstanceRecord(
            SOPInstanceUID="1.2.3.1.1.9", SOPClassUID="1.2.840.10008.5.1.4.1.1.2",
            SeriesInstanceUID="1.2.3.1.1", StudyInstanceUID=CT, PatientID="P1",
            path=f"{CT}/1.2.3.1.1/1.2.3.1.1.9.dcm", size=5,
            received="2026-12-01T11:00:00.000+00:00")])
    finally:
        writer.close()
    assert reader.studies() is not first
    assert {s["StudyInstanceUID"]: s["NumberOfInstances"] for s in reader.studies()}[CT] == 6
    assert len(reader.study(CT)["instances"]) == 6


def test_the_record_keeps_the_qr_keys(tmp_path):
    from helpers import make_dataset, write_part10

    ds = make_dataset(rows=8)
    ds.SeriesDate, ds.BodyPartExamined, ds.NumberOfFrames = "20261201", "CHEST", "1"
    for syntax in (ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian):
        record = read_record(write_part10(ds, tmp_path / f"{syntax}.dcm", syntax))
        assert (record.Rows, record.Columns, record.NumberOfFrames) == ("8", "8", "1")
        assert (record.SeriesDate, record.BodyPartExamined) == ("20261201", "CHEST")


def test_any_identifier_bytes_give_a_query_or_a_find_error():
    """Mutated identifiers (bytes flipped, cut, lengths broken): parse never raises
    anything but FindError, so no query ends in an exception and an A-ABORT."""
    import random
    from types import SimpleNamespace

    from echoes.services.find import FindRequest

    valid = dataset.encode_tree({0x00080052: "SERIES", 0x0020000D: "1.2.3", 0x00100010: "DOE*",
                                 0x00080005: "ISO_IR 100", 0x00280010: "512",
                                 0x00080020: "20260101-"}, {}, ExplicitVRLittleEndian, "ascii")
    rng = random.Random(17)
    outcomes = {"query": 0, "refused": 0}
    for _ in range(3000):
        data = bytearray(valid)
        for _flip in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.3:
            data = data[:rng.randrange(len(data))]
        for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
            request = FindRequest(None, None,  # type: ignore[arg-type]
                                  SimpleNamespace(transfer_syntax=syntax,
                                                  abstract_syntax=STUDY_ROOT_FIND), {})
            request.identifier = data
            try:
                QueryService.parse(request)
                outcomes["query"] += 1
            except FindError:
                outcomes["refused"] += 1
    assert outcomes["query"] and outcomes["refused"]


def test_an_undecodable_identifier_is_refused_without_quoting_its_values():
    raw = (b"\x08\x00\x52\x00CS\x06\x00STUDY "
           b"\x10\x00\x20\x00LO\x04\x00P123"
           b"\x28\x00\x10\x00US\x03\x00DOE")
    error = refused_raw(raw)
    assert error.status == CANNOT_UNDERSTAND and "(0028,0010)" in error.comment
    assert "DOE" not in error.comment and "P123" not in error.comment


def refused_raw(raw: bytes) -> FindError:
    with pytest.raises(FindError) as caught:
        parse_identifier(STUDY_ROOT_FIND, dataset.decode_dataset(raw, False, True))
    return caught.value


def test_the_catalog_index_narrows_but_finds_what_a_scan_finds(tmp_path):
    """Study-level queries through the caching reader's catalog index give exactly
    what the matching engine finds over every study (odd values included: ACR-NEMA
    dates, multi-valued IDs, trailing spaces, empty values)."""
    import random

    from echoes.index.embedded import EmbeddedIndex

    rng = random.Random(5)
    path = tmp_path / "index.json"
    writer = ArchiveIndex(path)
    dates = ["20260101", "20260102", "2026.01.03", "", "20251231", "20260215"]
    ids = ["P1", "P2", "P1\\P9", "P3 ", "", "p1"]
    try:
        writer.apply([InstanceRecord(
            SOPInstanceUID=f"1.9.{n}.1", SOPClassUID="1.2", SeriesInstanceUID=f"1.9.{n}",
            StudyInstanceUID=f"1.9.{n}", PatientID=rng.choice(ids),
            AccessionNumber=rng.choice(["A1", "A2", "", "A1\\A3"]), StudyID=str(n % 3),
            StudyDate=rng.choice(dates),
            PatientName=rng.choice(["DOE^J", "ROE^R", "MÜLLER^HANS", "doe^j^^", "D\\X^Y"]),
            path=f"x/{n}", size=1, received="2026") for n in range(200)])
    finally:
        writer.close()
    scan = EmbeddedIndex(path)
    cached = CachingReader(EmbeddedIndex(path))
    for filters in ({"PatientID": "P1"}, {"PatientID": "P9"}, {"PatientID": "P3"},
                    {"PatientID": "P1\\P2"}, {"PatientID": "P*"}, {"AccessionNumber": "A3"},
                    {"StudyID": "2"}, {"StudyDate": "20260103"}, {"StudyDate": "20260102-"},
                    {"StudyDate": "-20260101"}, {"StudyDate": "20260101-20260103"},
                    {"StudyDate": "20260101-20260103", "PatientID": "P2"},
                    {"StudyDate": "20260101", "PatientName": "doe*"}, {"PatientID": ""},
                    {"PatientName": "DOE*"}, {"PatientName": "doe^*"}, {"PatientName": "d*"},
                    {"PatientName": "MÜ*"}, {"PatientName": "müller^h*"},
                    {"PatientName": "R?E*"}, {"PatientName": "*OE^J"}):
        expected = sorted(d["StudyInstanceUID"] for d in scan.query("STUDY", filters))
        assert sorted(d["StudyInstanceUID"] for d in cached.query("STUDY", filters)) == \
            expected, filters
        assert expected or filters == {"PatientID": "P3"}, filters  # the cases find some
    narrowed = cached.study_candidates(qr_compile({"PatientID": "P2"}))
    assert narrowed is not None and 0 < len(narrowed) < 100  # not a scan
    narrowed = cached.study_candidates(qr_compile({"PatientName": "DOE*"}))
    assert narrowed is not None and 0 < len(narrowed) < 150
    assert cached.study_candidates(qr_compile({"PatientName": "*OE"})) is None


def qr_compile(filters: dict[str, str]):
    from echoes.index.base import compile_filters

    return compile_filters(filters)


@pytest.mark.parametrize("model", [qr_find.PATIENT_ROOT_MOVE, qr_find.STUDY_ROOT_GET])
def test_move_and_get_identifiers_follow_the_same_hierarchy(model):
    query = parse_identifier(model, identifier(
        QueryRetrieveLevel="SERIES", PatientID="P1", StudyInstanceUID="1.2",
        SeriesInstanceUID="1.2.3\\1.2.4"))
    assert query.filters["SeriesInstanceUID"] == "1.2.3\\1.2.4"
    assert refused(model, QueryRetrieveLevel="IMAGE", StudyInstanceUID="1.2",
                   PatientID="P1").status == IDENTIFIER_DOES_NOT_MATCH
