"""The worklist directory without sockets: parsing both JSON forms, validation,
trees to pydicom data sets, the in-memory directory, its indexes and the watcher."""

from __future__ import annotations

import io
import json
import os
import random
import time
from pathlib import Path
from typing import Any

import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import PersonName

from echoes.worklist import files as worklist
from echoes.worklist.files import (
    MAX_FILE_BYTES,
    InvalidWorklistFile,
    WorklistDirectory,
    WorklistWatcher,
    parse_bytes,
    parse_file,
    to_dataset,
    tree_is_ascii,
)
from echoes.worklist.match import QueryKey, compile_query

PATIENT_NAME = 0x00100010
PATIENT_ID = 0x00100020
BIRTH_DATE = 0x00100030
SEX = 0x00100040
ACCESSION = 0x00080050
REFERRING = 0x00080090
PROCEDURE_ID = 0x00401001
PRIORITY = 0x00401003
SPS = 0x00400100
STATION_AE = 0x00400001
START_DATE = 0x00400002
START_TIME = 0x00400003
PERFORMER = 0x00400006
MODALITY = 0x00080060
STUDY_UID = 0x0020000D
PREGNANCY_STATUS = 0x001021C0  # US
PATIENT_WEIGHT = 0x00101030  # DS
NUMBER_OF_FRAMES = 0x00280008  # IS

#: The example of SPEC.md, keyword form.
SPEC_KEYWORDS: dict[str, Any] = {
    "PatientName": "DOE^JANE",
    "PatientID": "12345",
    "PatientBirthDate": "19700101",
    "PatientSex": "F",
    "AccessionNumber": "A1001",
    "ReferringPhysicianName": "WHO^DR",
    "RequestedProcedureID": "RP1001",
    "RequestedProcedurePriority": "ROUTINE",
    "ScheduledProcedureStepSequence": [{
        "Modality": "CT",
        "ScheduledStationAETitle": "CT01",
        "ScheduledProcedureStepStartDate": "20261130",
        "ScheduledProcedureStepStartTime": "0930",
        "ScheduledPerformingPhysicianName": "RAD^ONE",
    }],
}

#: The same item in the DICOM JSON model (PS3.18 Annex F).
SPEC_JSON_MODEL: dict[str, Any] = {
    "00100010": {"vr": "PN", "Value": [{"Alphabetic": "DOE^JANE"}]},
    "00100020": {"vr": "LO", "Value": ["12345"]},
    "00100030": {"vr": "DA", "Value": ["19700101"]},
    "00100040": {"vr": "CS", "Value": ["F"]},
    "00080050": {"vr": "SH", "Value": ["A1001"]},
    "00080090": {"vr": "PN", "Value": [{"Alphabetic": "WHO^DR"}]},
    "00401001": {"vr": "SH", "Value": ["RP1001"]},
    "00401003": {"vr": "SH", "Value": ["ROUTINE"]},
    "00400100": {"vr": "SQ", "Value": [{
        "00080060": {"vr": "CS", "Value": ["CT"]},
        "00400001": {"vr": "AE", "Value": ["CT01"]},
        "00400002": {"vr": "DA", "Value": ["20261130"]},
        "00400003": {"vr": "TM", "Value": ["0930"]},
        "00400006": {"vr": "PN", "Value": [{"Alphabetic": "RAD^ONE"}]},
    }]},
}

SPEC_TREE = {
    PATIENT_NAME: "DOE^JANE",
    PATIENT_ID: "12345",
    BIRTH_DATE: "19700101",
    SEX: "F",
    ACCESSION: "A1001",
    REFERRING: "WHO^DR",
    PROCEDURE_ID: "RP1001",
    PRIORITY: "ROUTINE",
    SPS: [{
        MODALITY: "CT",
        STATION_AE: "CT01",
        START_DATE: "20261130",
        START_TIME: "0930",
        PERFORMER: "RAD^ONE",
    }],
}


def encode(document: Any) -> bytes:
    return json.dumps(document).encode("utf-8")


# -- parse_bytes: valid files ------------------------------------------------------


def test_keyword_form_of_spec() -> None:
    assert parse_bytes(encode(SPEC_KEYWORDS)) == SPEC_TREE


def test_json_model_of_spec_gives_the_same_tree() -> None:
    assert parse_bytes(encode(SPEC_JSON_MODEL)) == SPEC_TREE


def test_json_model_example_of_the_brief() -> None:
    document = {"00100010": {"vr": "PN", "Value": [{"Alphabetic": "DOE^JANE"}]},
                "00400100": {"vr": "SQ", "Value": [{"00080060": {"vr": "CS",
                                                                 "Value": ["CT"]}}]}}
    keywords = {"PatientName": "DOE^JANE", "ScheduledProcedureStepSequence": [{"Modality": "CT"}]}
    expected = {PATIENT_NAME: "DOE^JANE", SPS: [{MODALITY: "CT"}]}
    assert parse_bytes(encode(document)) == expected
    assert parse_bytes(encode(keywords)) == expected


def test_lowercase_hex_tags_are_read() -> None:
    assert parse_bytes(encode({"0040a0b0": {"vr": "US", "Value": []},
                               "0011001f": {"vr": "LO", "Value": ["X"]},
                               "00100020": {"vr": "LO", "Value": ["P1"]}})) == {
        0x0040A0B0: "", PATIENT_ID: "P1"}


def test_multi_valued_lists_in_both_forms() -> None:
    keywords = {"ScheduledProcedureStepSequence": [
        {"ScheduledStationAETitle": ["CT01", "CT02"], "Modality": "CT"}]}
    model = {"00400100": {"vr": "SQ", "Value": [{
        "00400001": {"vr": "AE", "Value": ["CT01", "CT02"]},
        "00080060": {"vr": "CS", "Value": ["CT"]}}]}}
    expected = {SPS: [{STATION_AE: "CT01\\CT02", MODALITY: "CT"}]}
    assert parse_bytes(encode(keywords)) == expected
    assert parse_bytes(encode(model)) == expected


def test_several_sequence_items() -> None:
    tree = parse_bytes(encode({"PatientID": "P1", "ScheduledProcedureStepSequence": [
        {"Modality": "CT"}, {"Modality": "MR"}, {}]}))
    assert tree == {PATIENT_ID: "P1", SPS: [{MODALITY: "CT"}, {MODALITY: "MR"}, {}]}


def test_numbers_for_is_and_ds() -> None:
    keywords = {"PatientWeight": 72.5, "NumberOfFrames": 3, "PatientSize": 2}
    model = {"00101030": {"vr": "DS", "Value": [72.5]},
             "00280008": {"vr": "IS", "Value": [3]},
             "00101020": {"vr": "DS", "Value": [2]}}
    expected = {PATIENT_WEIGHT: "72.5", NUMBER_OF_FRAMES: "3", 0x00101020: "2"}
    assert parse_bytes(encode(keywords)) == expected
    assert parse_bytes(encode(model)) == expected
    # DICOM strings are accepted for numeric VRs too.
    assert parse_bytes(encode({"PatientWeight": "72.5"})) == {PATIENT_WEIGHT: "72.5"}


@pytest.mark.parametrize(("document", "expected"), [
    ({"PregnancyStatus": 4}, {PREGNANCY_STATUS: "4"}),
    ({"PregnancyStatus": "4"}, {PREGNANCY_STATUS: "4"}),
    ({"001021C0": {"vr": "US", "Value": [4]}}, {PREGNANCY_STATUS: "4"}),
    ({"00100028": {"vr": "US", "Value": [1, 2, 3]}}, {0x00100028: "1\\2\\3"}),
    ({"00081161": {"vr": "UL", "Value": [4000000000]}}, {0x00081161: "4000000000"}),
    ({"00189219": {"vr": "SS", "Value": [-5]}}, {0x00189219: "-5"}),
    ({"00109431": {"vr": "FL", "Value": [12.5]}}, {0x00109431: "12.5"}),
])
def test_numbers_for_binary_vrs(document: dict, expected: dict) -> None:
    assert parse_bytes(encode(document)) == expected


def test_person_name_groups_as_object() -> None:
    name = {"Alphabetic": "YAMADA^TARO", "Ideographic": "山田^太郎"}
    expected = {PATIENT_NAME: "YAMADA^TARO=山田^太郎"}
    assert parse_bytes(encode({"00100010": {"vr": "PN", "Value": [name]}})) == expected
    assert parse_bytes(encode({"PatientName": name})) == expected
    phonetic = {"Phonetic": "ヤマダ^タロウ"}
    assert parse_bytes(encode({"PatientName": phonetic})) == {PATIENT_NAME: "==ヤマダ^タロウ"}
    # Trailing empty groups are dropped.
    assert parse_bytes(encode({"PatientName": {"Alphabetic": "A^B", "Ideographic": ""}})) == {
        PATIENT_NAME: "A^B"}


def test_null_values_are_empty() -> None:
    keywords = {"PatientName": None, "PatientID": None, "PatientBirthDate": None}
    model = {"00100010": {"vr": "PN", "Value": [None]},
             "00100020": {"vr": "LO"},
             "00100030": {"vr": "DA", "Value": []},
             "00400100": {"vr": "SQ"}}
    assert parse_bytes(encode(keywords)) == {PATIENT_NAME: "", PATIENT_ID: "", BIRTH_DATE: ""}
    assert parse_bytes(encode(model)) == {
        PATIENT_NAME: "", PATIENT_ID: "", BIRTH_DATE: "", SPS: []}


def test_private_tags_in_json_model_are_skipped() -> None:
    document = {"00091001": {"vr": "LO", "Value": ["VENDOR"]},
                "00290010": {"vr": "LO", "Value": ["SIEMENS CSA HEADER"]},
                "00291010": {"vr": "OB", "InlineBinary": "AAAA"},
                "00100020": {"vr": "LO", "Value": ["P1"]},
                "00400100": {"vr": "SQ", "Value": [{
                    "00431001": {"vr": "XX", "Value": [1]},
                    "00080060": {"vr": "CS", "Value": ["CT"]}}]}}
    assert parse_bytes(encode(document)) == {PATIENT_ID: "P1", SPS: [{MODALITY: "CT"}]}


def test_free_text_keeps_backslashes() -> None:
    assert parse_bytes(encode({"PatientComments": "a\\b"})) == {0x00104000: "a\\b"}


# -- parse_bytes: invalid files ----------------------------------------------------

INVALID: list[tuple[str, bytes, str]] = [
    ("broken JSON", b'{"PatientID": "1",', "not JSON"),
    ("not UTF-8", b'{"PatientName": "M\xfcller^Hans"}', "not UTF-8"),
    ("top level list", encode([{"PatientID": "1"}]), "not a JSON object"),
    ("top level string", encode("PatientID"), "not a JSON object"),
    ("empty object", b"{}", "empty object"),
    ("unknown keyword", encode({"PatientsName": "DOE^JANE"}),
     "PatientsName: unknown attribute keyword"),
    ("number for PN", encode({"PatientName": 12}), "PatientName: .*number"),
    ("number for LO", encode({"PatientID": 12345}), "PatientID: .*number"),
    ("string for sequence", encode({"ScheduledProcedureStepSequence": "CT"}),
     "ScheduledProcedureStepSequence: a sequence must be a list"),
    ("object for sequence", encode({"ScheduledProcedureStepSequence": {"Modality": "CT"}}),
     "ScheduledProcedureStepSequence"),
    ("string Value for SQ", encode({"00400100": {"vr": "SQ", "Value": "CT"}}),
     "ScheduledProcedureStepSequence: Value must be a list"),
    ("string Value", encode({"00100020": {"vr": "LO", "Value": "P1"}}),
     "PatientID: Value must be a list"),
    ("sequence item not object", encode({"ScheduledProcedureStepSequence": ["CT"]}),
     r"ScheduledProcedureStepSequence\[0\]: not an object"),
    ("nested list for LO", encode({"PatientID": [["P1"]]}), "PatientID: .*a list"),
    ("nested list for PN", encode({"PatientName": [["DOE"]]}), "PatientName: .*a list"),
    ("list in model Value", encode({"00100020": {"vr": "LO", "Value": [["P1"]]}}),
     "PatientID: .*a list"),
    ("object for LO", encode({"PatientID": {"Alphabetic": "P1"}}), "PatientID: .*an object"),
    ("true for LO", encode({"PatientID": True}), "PatientID: .*true/false"),
    ("false for PN", encode({"PatientName": False}), "PatientName: .*true/false"),
    ("true for DS", encode({"PatientWeight": True}), "PatientWeight: .*true/false"),
    ("bad DA", encode({"ScheduledProcedureStepSequence": [
        {"ScheduledProcedureStepStartDate": "2026-11-30"}]}),
     r"ScheduledProcedureStepSequence\[0\]\.ScheduledProcedureStepStartDate: .*2026-11-30"),
    ("bad DA in second item", encode({"ScheduledProcedureStepSequence": [
        {"Modality": "CT"}, {"ScheduledProcedureStepStartDate": "20261399x"}]}),
     r"ScheduledProcedureStepSequence\[1\]\.ScheduledProcedureStepStartDate"),
    ("bad TM", encode({"ScheduledProcedureStepSequence": [
        {"ScheduledProcedureStepStartTime": "25"}]}),
     r"ScheduledProcedureStepSequence\[0\]\.ScheduledProcedureStepStartTime"),
    ("lowercase CS", encode({"ScheduledProcedureStepSequence": [{"Modality": "ct"}]}),
     r"ScheduledProcedureStepSequence\[0\]\.Modality: .*'ct'"),
    ("lowercase CS top level", encode({"PatientSex": "f"}), "PatientSex"),
    ("over-long LO", encode({"PatientID": "X" * 65}), "PatientID: .*65"),
    ("over-long in model", encode({"00100020": {"vr": "LO", "Value": ["X" * 65]}}),
     "PatientID: .*65"),
    ("bad UID", encode({"StudyInstanceUID": "1.2.abc"}), "StudyInstanceUID: not a valid UID"),
    ("long UID", encode({"StudyInstanceUID": "1.2." + "3" * 70}),
     "StudyInstanceUID: longer than 64"),
    ("backslash in value", encode({"PatientID": "P1\\P2"}), "PatientID: backslash"),
    ("vr mismatch", encode({"00100010": {"vr": "LO", "Value": ["DOE^JANE"]}}),
     "PatientName: vr LO where the dictionary says PN"),
    ("vr mismatch in sequence", encode({"00400100": {"vr": "SQ", "Value": [
        {"00080060": {"vr": "LO", "Value": ["CT"]}}]}}),
     r"ScheduledProcedureStepSequence\[0\]\.Modality: vr LO"),
    ("missing vr", encode({"00100010": {"Value": ["DOE^JANE"]}}), "PatientName: missing vr"),
    ("element not an object", encode({"00100020": "P1"}),
     "PatientID: expected an object with vr and Value"),
    ("InlineBinary", encode({"00100010": {"vr": "PN", "InlineBinary": "AAAA"}}),
     "PatientName: binary"),
    ("BulkDataURI", encode({"00100020": {"vr": "LO", "BulkDataURI": "http://x/1"}}),
     "PatientID: binary"),
    ("binary VR", encode({"7FE00010": {"vr": "OB", "InlineBinary": "AAAA"}}),
     "PixelData: binary"),
    ("binary keyword", encode({"PixelData": "AAAA"}), "PixelData: binary"),
    ("unknown name group", encode({"PatientName": {"Alphabetic": "A", "Kanji": "B"}}),
     "PatientName: unknown name group Kanji"),
    ("name group not string", encode({"PatientName": {"Alphabetic": 5}}),
     "PatientName: name groups must be strings"),
    ("number for text in model", encode({"00100020": {"vr": "LO", "Value": [5]}}),
     "PatientID: LO wants a string"),
]


@pytest.mark.parametrize(("data", "pattern"), [(data, pattern) for _, data, pattern in INVALID],
                         ids=[case for case, _, _ in INVALID])
def test_invalid_files(data: bytes, pattern: str) -> None:
    with pytest.raises(InvalidWorklistFile, match=pattern):
        parse_bytes(data)


@pytest.mark.parametrize("document", [
    {"PatientID": ["P1", "P2"]},
    {"00100020": {"vr": "LO", "Value": ["P1", "P2"]}},
])
def test_list_for_a_single_valued_attribute(document: dict) -> None:
    with pytest.raises(InvalidWorklistFile, match="PatientID"):
        parse_bytes(encode(document))


def test_parse_file_size_limit(tmp_path: Path) -> None:
    body = encode({"PatientID": "P1"})
    fits = tmp_path / "fits.json"
    fits.write_bytes(body + b" " * (MAX_FILE_BYTES - len(body)))
    assert parse_file(fits) == {PATIENT_ID: "P1"}
    large = tmp_path / "large.json"
    large.write_bytes(body + b" " * (MAX_FILE_BYTES + 1 - len(body)))
    with pytest.raises(InvalidWorklistFile, match=f"larger than {MAX_FILE_BYTES}"):
        parse_file(large)


def test_parse_file_missing(tmp_path: Path) -> None:
    with pytest.raises(InvalidWorklistFile, match="cannot read"):
        parse_file(tmp_path / "gone.json")


# -- trees to data sets ------------------------------------------------------------


def assert_dataset_matches(dataset: Any, tree: dict) -> None:
    assert set(dataset.keys()) == set(tree)
    for tag, value in tree.items():
        element = dataset[tag]
        if isinstance(value, list):
            assert element.VR == "SQ"
            assert len(element.value) == len(value)
            for item, child in zip(element.value, value, strict=True):
                assert_dataset_matches(item, child)
        elif value == "":
            assert element.is_empty
        elif element.VR in worklist.INTEGER_VRS | worklist.FLOAT_VRS:
            convert = int if element.VR in worklist.INTEGER_VRS else float
            numbers = [convert(part) for part in value.split("\\")]
            got = list(element.value) if isinstance(element.value, MultiValue) else [
                element.value]
            assert got == numbers
            assert all(type(number) is convert for number in got)
        elif isinstance(element.value, MultiValue):
            assert [str(part) for part in element.value] == value.split("\\")
        elif isinstance(element.value, PersonName):
            assert str(element.value) == value
        else:
            assert str(element.value) == value


def test_to_dataset_values_and_sequences() -> None:
    tree = {**SPEC_TREE, STUDY_UID: "1.2.3.4", PATIENT_WEIGHT: "72.5",
            SPS: [{MODALITY: "CT", STATION_AE: "CT01\\CT02"}, {MODALITY: "MR"}, {}]}
    dataset = to_dataset(tree)
    assert dataset.PatientName == "DOE^JANE"
    assert dataset.PatientID == "12345"
    assert dataset.StudyInstanceUID == "1.2.3.4"
    assert dataset.ScheduledProcedureStepSequence[0].Modality == "CT"
    assert list(dataset.ScheduledProcedureStepSequence[0].ScheduledStationAETitle) == [
        "CT01", "CT02"]
    assert dataset.ScheduledProcedureStepSequence[1].Modality == "MR"
    assert len(dataset.ScheduledProcedureStepSequence[2]) == 0
    assert_dataset_matches(dataset, tree)


def test_to_dataset_binary_numbers_are_numbers() -> None:
    tree = {PREGNANCY_STATUS: "4", 0x00100028: "1\\2\\3", 0x00109431: "12.5",
            0x00081161: "1\\4000000000", 0x00189219: "-5"}
    dataset = to_dataset(tree)
    assert dataset.PregnancyStatus == 4
    assert isinstance(dataset.PregnancyStatus, int)
    assert list(dataset[0x00100028].value) == [1, 2, 3]
    assert dataset[0x00109431].value == 12.5
    assert list(dataset[0x00081161].value) == [1, 4000000000]
    assert dataset[0x00189219].value == -5
    assert_dataset_matches(dataset, tree)


def test_to_dataset_empty_values() -> None:
    tree = {PATIENT_NAME: "", PATIENT_ID: "", PREGNANCY_STATUS: "", SPS: []}
    dataset = to_dataset(tree)
    assert dataset[PATIENT_NAME].is_empty
    assert dataset[PREGNANCY_STATUS].is_empty
    assert dataset[SPS].VR == "SQ" and len(dataset[SPS].value) == 0


def test_to_dataset_takes_query_vrs() -> None:
    tree = {PATIENT_ID: "P1", SPS: [{STATION_AE: "CT01"}], 0x00110010: "PRIVATE"}
    vrs = {PATIENT_ID: "SH", SPS: ("SQ", {STATION_AE: "LO"}), 0x00110010: "LO"}
    dataset = to_dataset(tree, vrs)
    assert dataset[PATIENT_ID].VR == "SH"
    assert dataset[SPS].value[0][STATION_AE].VR == "LO"
    assert dataset[0x00110010].VR == "LO"
    # An empty value asked for as a sequence comes back as an empty sequence.
    assert to_dataset({SPS: ""}, {SPS: "SQ"})[SPS].VR == "SQ"


@pytest.mark.parametrize(("implicit", "little"), [(True, True), (False, True), (False, False)])
def test_to_dataset_round_trip_through_pydicom(implicit: bool, little: bool) -> None:
    tree = parse_bytes(encode({**SPEC_KEYWORDS, "PatientWeight": 72.5, "NumberOfFrames": 3,
                               "StudyInstanceUID": "1.2.826.0.1.3680043.10.1.1",
                               "PatientComments": ""}))
    tree[PREGNANCY_STATUS] = "4"
    buffer = DicomBytesIO()
    buffer.is_implicit_VR = implicit
    buffer.is_little_endian = little
    write_dataset(buffer, to_dataset(tree))
    decoded = read_dataset(io.BytesIO(buffer.getvalue()), implicit, little)
    assert_dataset_matches(decoded, tree)


def test_tree_is_ascii() -> None:
    assert tree_is_ascii(SPEC_TREE)
    assert tree_is_ascii({})
    assert not tree_is_ascii({**SPEC_TREE, PATIENT_NAME: "Müller^Hans"})
    nested = {PATIENT_ID: "P1", SPS: [{MODALITY: "CT"}, {PERFORMER: "山田^太郎"}]}
    assert not tree_is_ascii(nested)


# -- the directory -------------------------------------------------------------------


def write(folder: Path, name: str, document: Any) -> Path:
    path = folder / name
    path.write_bytes(document if isinstance(document, bytes) else encode(document))
    return path


def rename_in(folder: Path, name: str, document: Any) -> Path:
    """As a RIS does it: a temporary name first, then a rename."""
    temporary = write(folder, f".{name}.tmp", document)
    os.rename(temporary, folder / name)
    return folder / name


def names(directory: WorklistDirectory) -> list[str]:
    return [item.name for item in directory.items()]


def patient(number: int) -> dict:
    return {"PatientID": f"P{number}", "PatientName": f"PATIENT^{number}"}


@pytest.fixture
def loaded(tmp_path: Path) -> WorklistDirectory:
    write(tmp_path, "c.json", patient(3))
    write(tmp_path, "a.json", patient(1))
    write(tmp_path, "b.json", SPEC_KEYWORDS)
    write(tmp_path, "bad.json", {"PatientsName": "DOE^JANE"})
    write(tmp_path, "broken.json", b"{")
    write(tmp_path, ".hidden.json", patient(9))
    write(tmp_path, "x.txt", patient(9))
    write(tmp_path, "x.json.tmp", patient(9))
    (tmp_path / "folder.json").mkdir()
    directory = WorklistDirectory(tmp_path, quiet=True)
    directory.load()
    return directory


def test_load(loaded: WorklistDirectory) -> None:
    assert names(loaded) == ["a.json", "b.json", "c.json"]
    assert len(loaded) == 3
    assert loaded.items()[1].tree == SPEC_TREE
    assert loaded.items()[0].tree == {PATIENT_ID: "P1", PATIENT_NAME: "PATIENT^1"}
    invalid = loaded.invalid()
    assert list(invalid) == ["bad.json", "broken.json"]
    assert "PatientsName" in invalid["bad.json"]
    assert "not JSON" in invalid["broken.json"]


def test_load_missing_folder(tmp_path: Path) -> None:
    directory = WorklistDirectory(tmp_path / "absent")
    directory.load()
    assert directory.items() == ()
    assert directory.invalid() == {}


def test_items_signature(loaded: WorklistDirectory) -> None:
    item = loaded.items()[0]
    stat = os.stat(loaded.folder / item.name)
    assert item.signature == (stat.st_ino, stat.st_size, stat.st_mtime_ns)


def test_reload_keeps_unchanged_and_sees_changes(loaded: WorklistDirectory) -> None:
    before = {item.name: item for item in loaded.items()}
    (loaded.folder / "c.json").unlink()
    (loaded.folder / "bad.json").unlink()
    write(loaded.folder, "d.json", patient(4))
    loaded.load()
    assert names(loaded) == ["a.json", "b.json", "d.json"]
    assert loaded.items()[0] is before["a.json"]
    assert list(loaded.invalid()) == ["broken.json"]


def test_snapshot_is_cached_until_a_change(loaded: WorklistDirectory) -> None:
    snapshot = loaded.snapshot()
    assert loaded.snapshot() is snapshot
    assert len(snapshot) == 3
    write(loaded.folder, "e.json", patient(5))
    loaded.refresh("e.json")
    assert loaded.snapshot() is not snapshot
    assert len(snapshot) == 3  # an old snapshot does not change
    assert names(loaded) == ["a.json", "b.json", "c.json", "e.json"]


def test_refresh_after_rewrite_of_same_size(loaded: WorklistDirectory) -> None:
    path = loaded.folder / "a.json"
    stat = os.stat(path)
    write(loaded.folder, "a.json", patient(7))
    # Same size and, as on a coarse-timestamp file system, the same mtime.
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert os.stat(path).st_size == stat.st_size
    loaded.refresh("a.json")  # as for a read of the file: the signature did not move
    assert loaded.items()[0].tree[PATIENT_ID] == "P1"
    loaded.refresh("a.json", force=True)  # as the watcher does when a writer closes it
    assert loaded.items()[0].tree[PATIENT_ID] == "P7"


def test_refresh_sees_a_file_renamed_over_with_same_size_and_mtime(
        loaded: WorklistDirectory) -> None:
    path = loaded.folder / "a.json"
    stat = os.stat(path)
    temporary = write(loaded.folder, ".a.json.tmp", patient(7))
    os.utime(temporary, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # e.g. ``cp -p``
    os.rename(temporary, path)
    loaded.refresh("a.json")  # not forced: the inode tells the new file apart
    assert loaded.items()[0].tree[PATIENT_ID] == "P7"


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the files ``worklist.parse_file`` reads from now on, in order."""
    names: list[str] = []
    real = worklist.parse_file

    def counting(path: Path) -> Any:
        names.append(path.name)
        return real(path)

    monkeypatch.setattr(worklist, "parse_file", counting)
    return names


def test_refresh_of_unchanged_files_reads_nothing(loaded: WorklistDirectory,
                                                  parses: list[str]) -> None:
    for name in ("a.json", "b.json", "bad.json", "broken.json"):
        loaded.refresh(name)
    loaded.load()
    assert parses == []  # valid or not, an unchanged file is not parsed again
    write(loaded.folder, "bad.json", {"PatientsName": "STILL^WRONG"})
    loaded.refresh("bad.json")
    assert parses == ["bad.json"]


def test_refresh_after_delete(loaded: WorklistDirectory) -> None:
    (loaded.folder / "b.json").unlink()
    loaded.refresh("b.json")
    assert names(loaded) == ["a.json", "c.json"]
    (loaded.folder / "bad.json").unlink()
    loaded.refresh("bad.json")
    assert list(loaded.invalid()) == ["broken.json"]


def test_refresh_after_rename_in(loaded: WorklistDirectory) -> None:
    rename_in(loaded.folder, "aa.json", patient(11))
    loaded.refresh(".aa.json.tmp")  # the temporary name is ignored
    loaded.refresh("aa.json")
    assert names(loaded) == ["a.json", "aa.json", "b.json", "c.json"]
    assert loaded.items()[1].tree[PATIENT_ID] == "P11"


def test_refresh_of_ignored_names(loaded: WorklistDirectory) -> None:
    for name in (".hidden.json", "x.txt", "x.json.tmp"):
        loaded.refresh(name)
    assert names(loaded) == ["a.json", "b.json", "c.json"]
    assert list(loaded.invalid()) == ["bad.json", "broken.json"]


def test_refresh_of_a_directory_named_json(loaded: WorklistDirectory) -> None:
    loaded.refresh("folder.json")
    assert list(loaded.invalid()) == ["bad.json", "broken.json"]


def test_file_becoming_valid_again_leaves_invalid(loaded: WorklistDirectory) -> None:
    write(loaded.folder, "bad.json", patient(8))
    loaded.refresh("bad.json")
    assert "bad.json" not in loaded.invalid()
    assert "bad.json" in names(loaded)
    # ... and invalid once more: out of the items, back in invalid().
    write(loaded.folder, "bad.json", {"PatientID": 8})
    loaded.refresh("bad.json")
    assert "bad.json" not in names(loaded)
    assert "PatientID" in loaded.invalid()["bad.json"]


def test_valid_file_becoming_invalid(loaded: WorklistDirectory) -> None:
    rename_in(loaded.folder, "a.json", b"not json")
    loaded.refresh("a.json")
    assert names(loaded) == ["b.json", "c.json"]
    assert "not JSON" in loaded.invalid()["a.json"]


def test_invalid_file_logged_once_per_reason(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write(tmp_path, "bad.json", {"PatientsName": "X"})
    directory = WorklistDirectory(tmp_path)
    with caplog.at_level("WARNING", logger="echoes.worklist"):
        directory.load()
        directory.refresh("bad.json")
        directory.refresh("bad.json")
    assert len([r for r in caplog.records if "bad.json" in r.getMessage()]) == 1


def test_poll_rescans_when_the_folder_changed(tmp_path: Path) -> None:
    write(tmp_path, "a.json", patient(1))
    past = time.time_ns() - 60 * 10**9
    os.utime(tmp_path, ns=(past, past))
    directory = WorklistDirectory(tmp_path, quiet=True)
    directory.load()
    directory.poll()
    assert names(directory) == ["a.json"]
    rename_in(tmp_path, "b.json", patient(2))
    directory.poll()
    assert names(directory) == ["a.json", "b.json"]
    os.utime(tmp_path, ns=(past, past))
    directory.load()
    (tmp_path / "a.json").unlink()
    directory.poll()
    assert names(directory) == ["b.json"]


# -- the snapshot's indexes against a linear filter ------------------------------------

MODALITIES = ["CT", "MR", "US", "CR", "NM"]
STATIONS = ["CT01", "CT02", "MR01", "US01", "CR01", "NM01"]
DATES = [f"202611{day:02d}" for day in range(20, 31)] + ["20261201", "20261202"]


def random_document(rng: random.Random) -> dict:
    document: dict[str, Any] = {"PatientName": rng.choice(["DOE^JANE", "SMITH^JOHN", "ROE^R"])}
    if rng.random() < 0.9:
        document["PatientID"] = f"P{rng.randrange(40):03d}"
    if rng.random() < 0.8:
        document["AccessionNumber"] = rng.choice([f"A{rng.randrange(60):03d}", "", " A001"])
    steps = []
    for _ in range(rng.choice([0, 1, 1, 1, 2, 3])):
        step: dict[str, Any] = {}
        if rng.random() < 0.9:
            step["Modality"] = rng.choice(MODALITIES)
        if rng.random() < 0.9:
            station = rng.choice(STATIONS)
            step["ScheduledStationAETitle"] = (
                [station, rng.choice(STATIONS)] if rng.random() < 0.2 else station)
        if rng.random() < 0.9:
            step["ScheduledProcedureStepStartDate"] = rng.choice(DATES + [""])
        if rng.random() < 0.7:
            minutes = rng.choice(["00", "30"])
            step["ScheduledProcedureStepStartTime"] = f"{rng.randrange(24):02d}{minutes}"
        steps.append(step)
    if steps or rng.random() < 0.5:
        document["ScheduledProcedureStepSequence"] = steps
    return document


def random_query(rng: random.Random) -> dict[int, QueryKey]:
    keys: dict[int, QueryKey] = {0x00100010: QueryKey("PN", rng.choice(["", "", "DOE*", "s*"]))}
    roll = rng.random()
    if roll < 0.3:
        keys[PATIENT_ID] = QueryKey("LO", f"P{rng.randrange(45):03d}")
    elif roll < 0.4:
        keys[PATIENT_ID] = QueryKey(
            "LO", f"P{rng.randrange(40):03d}\\P{rng.randrange(40):03d}")
    elif roll < 0.5:
        keys[PATIENT_ID] = QueryKey("LO", rng.choice(["P00*", "P0?1", "*", ""]))
    roll = rng.random()
    if roll < 0.25:
        keys[ACCESSION] = QueryKey("SH", rng.choice([f"A{rng.randrange(60):03d}", "A001 "]))
    elif roll < 0.35:
        keys[ACCESSION] = QueryKey("SH", rng.choice(["A00*", ""]))
    sub: dict[int, QueryKey] = {}
    if rng.random() < 0.4:
        sub[MODALITY] = QueryKey("CS", rng.choice(MODALITIES + ["", "C*", "CT\\MR"]))
    if rng.random() < 0.4:
        sub[STATION_AE] = QueryKey("AE", rng.choice(STATIONS + ["", "CT*", "CT01\\MR01"]))
    roll = rng.random()
    if roll < 0.25:
        sub[START_DATE] = QueryKey("DA", rng.choice(DATES + ["20261231"]))
    elif roll < 0.6:
        low, high = sorted(rng.sample(DATES, 2))
        sub[START_DATE] = QueryKey("DA", rng.choice([f"{low}-{high}", f"-{high}", f"{low}-"]))
    if START_DATE in sub and rng.random() < 0.3:
        sub[START_TIME] = QueryKey("TM", rng.choice(["0800-1200", "2200-0600", "-1000", "1400-"]))
    elif rng.random() < 0.2:
        sub[START_TIME] = QueryKey("TM", rng.choice(["", "0930", "0800-1200"]))
    if sub or rng.random() < 0.5:
        keys[SPS] = QueryKey("SQ", [sub] if sub or rng.random() < 0.5 else [])
    return keys


def test_indexed_matching_equals_linear_filter(tmp_path: Path) -> None:
    rng = random.Random(20261130)
    for number in range(300):
        write(tmp_path, f"item{number:04d}.json", random_document(rng))
    directory = WorklistDirectory(tmp_path, quiet=True)
    directory.load()
    assert directory.invalid() == {}
    assert len(directory) == 300
    snapshot = directory.snapshot()
    items = directory.items()
    answered = 0
    for _ in range(1500):
        query = compile_query(random_query(rng))
        indexed = [item.name for item in snapshot.matching(query)]
        linear = [item.name for item in items if query.matches(item.tree)]
        assert indexed == linear, query.keys
        answered += bool(linear)
    assert answered > 300  # the generated queries are not all empty-handed


def test_index_narrows_candidates(tmp_path: Path) -> None:
    for number in range(50):
        write(tmp_path, f"{number:02d}.json", {"PatientID": f"P{number}"})
    directory = WorklistDirectory(tmp_path, quiet=True)
    directory.load()
    query = compile_query({PATIENT_ID: QueryKey("LO", "P7")})
    assert [item.name for item in directory.snapshot().candidates(query)] == ["07.json"]
    everyone = compile_query({PATIENT_ID: QueryKey("LO", "P*")})
    assert len(list(directory.snapshot().candidates(everyone))) == 50


# -- the watcher -----------------------------------------------------------------------


def wait_for(condition: Any, seconds: float = 1.0) -> bool:
    deadline = time.monotonic() + seconds
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)


def test_watcher_sees_files_renamed_in_and_removed(tmp_path: Path) -> None:
    write(tmp_path, "a.json", patient(1))
    directory = WorklistDirectory(tmp_path, quiet=True)
    directory.load()
    watcher = WorklistWatcher(directory)
    watcher.start()
    try:
        rename_in(tmp_path, "b.json", patient(2))
        assert wait_for(lambda: names(directory) == ["a.json", "b.json"])
        assert directory.items()[1].tree[PATIENT_ID] == "P2"
        (tmp_path / "b.json").unlink()
        assert wait_for(lambda: names(directory) == ["a.json"])
        rename_in(tmp_path, "a.json", {"PatientsName": "X"})
        assert wait_for(lambda: names(directory) == [] and "a.json" in directory.invalid())
    finally:
        watcher.stop()


def test_watcher_ignores_reads_of_the_folder(tmp_path: Path, parses: list[str]) -> None:
    """Reading worklist files (``cat``, ``echoes worklist``, the watcher's own parse)
    raises open and close-no-write events; refreshing on those fed itself forever."""
    write(tmp_path, "a.json", patient(1))
    write(tmp_path, "bad.json", {"PatientsName": "X"})
    directory = WorklistDirectory(tmp_path, quiet=True)
    directory.load()
    watcher = WorklistWatcher(directory)
    watcher.start()
    try:
        del parses[:]
        for path in sorted(tmp_path.iterdir()):
            path.read_bytes()  # as cat does
        WorklistDirectory(tmp_path, quiet=True).load()  # as ``echoes worklist`` does
        assert sorted(parses) == ["a.json", "bad.json"]  # that load, nothing else
        rename_in(tmp_path, "b.json", patient(2))
        rename_in(tmp_path, "worse.json", b"{")  # an invalid file dropped in
        assert wait_for(lambda: names(directory) == ["a.json", "b.json"]
                        and "worse.json" in directory.invalid())
        time.sleep(0.5)  # what a loop would parse meanwhile is counted below
        assert sorted(parses[2:]) == ["b.json", "worse.json"], parses[:20]
    finally:
        watcher.stop()


# -- the worklist command --------------------------------------------------------------


def run_worklist(home: Path, capsys: pytest.CaptureFixture[str], *options: str
                 ) -> tuple[int, str, str]:
    """``echoes worklist`` in this process: exit code, stdout, stderr."""
    from helpers import write_offline_config as write_config

    from echoes import cli

    path = home / "etc" / "echoes.ini"
    if not path.exists():
        write_config(home)
    capsys.readouterr()
    code = cli.main(["--config", str(path), "worklist", *options])
    out, err = capsys.readouterr()
    return code, out, err


def scheduled(date: str | None, time_: str = "") -> dict:
    step = {"Modality": "CT", "ScheduledStationAETitle": "CT01"}
    if date is not None:
        step["ScheduledProcedureStepStartDate"] = date
    if time_:
        step["ScheduledProcedureStepStartTime"] = time_
    return {"PatientID": "P1", "ScheduledProcedureStepSequence": [step]}


def test_worklist_check_reports_on_stdout(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """A script reads one stream: the problems and the count, exit 1 on a problem."""
    folder = tmp_path / "var" / "worklist"
    folder.mkdir(parents=True)
    write(folder, "a.json", patient(1))
    code, out, err = run_worklist(tmp_path, capsys, "--check")
    assert (code, err) == (0, "")
    assert out == f"1 valid, 0 invalid worklist files in {folder}\n"
    write(folder, "bad.json", scheduled("2026-11-30"))
    code, out, err = run_worklist(tmp_path, capsys, "--check")
    assert (code, err) == (1, "")
    problem, summary = out.splitlines()
    assert problem.startswith(
        "bad.json: ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate: ")
    assert summary == f"1 valid, 1 invalid worklist files in {folder}"
    code, out, err = run_worklist(tmp_path, capsys, "--check", "--json")
    assert (code, err) == (1, "")
    assert [problem["file"] for problem in json.loads(out)] == ["bad.json"]


def test_worklist_in_order_of_scheduled_date_and_time(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "var" / "worklist"
    folder.mkdir(parents=True)
    write(folder, "a.json", scheduled("20261201", "0800"))
    write(folder, "b.json", scheduled("20261130", "1400"))
    write(folder, "c.json", scheduled("20261130", "0930"))
    write(folder, "d.json", scheduled(None))
    write(folder, "e.json", scheduled("20261130", "0930"))
    write(folder, "f.json", scheduled("20261130", "07"))
    expected = ["f.json", "c.json", "e.json", "b.json", "a.json", "d.json"]
    code, out, _ = run_worklist(tmp_path, capsys)
    assert code == 0
    assert [line.split()[-1] for line in out.splitlines()[1:-1]] == expected
    code, out, _ = run_worklist(tmp_path, capsys, "--json")
    assert [row["file"] for row in json.loads(out)] == expected
