"""Direct DICOM encoding of C-FIND responses, checked by decoding with pydicom:
data sets in the three uncompressed transfer syntaxes, the C-FIND-RSP command
set, and its framing as P-DATA-TF PDUs."""

from __future__ import annotations

import io
import struct
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.multival import MultiValue

from echoes.dicom import dataset, dimse, part10, pdu, syntax
from echoes.dicom.dataset import encode_tree
from echoes.dicom.dimse import find_response_command
from echoes.dicom.pdu import p_data_pdus

#: The three uncompressed syntaxes -> (implicit VR, little endian).
SYNTAXES = {uid: syntax.encoding_of(uid) for uid in syntax.UNCOMPRESSED}

MWL_FIND = "1.2.840.10008.5.1.4.31"  # 22 characters
PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"  # 27 characters

CHARSET = 0x00080005
ACCESSION = 0x00080050
MODALITY = 0x00080060
PATIENT_NAME = 0x00100010
PATIENT_ID = 0x00100020
BIRTH_DATE = 0x00100030
SEX = 0x00100040
PATIENT_WEIGHT = 0x00101030
PREGNANCY_STATUS = 0x001021C0  # US
POSITION_IN_IMAGE = 0x00100028  # US, VM 3
SIMPLE_FRAME_LIST = 0x00081161  # UL, VM 1-n
BODY_THICKNESS = 0x00109431  # FL
TIME_RANGE = 0x00081163  # FD, VM 2
TAG_ANGLE = 0x00189219  # SS
STUDY_UID = 0x0020000D
SPS = 0x00400100
STATION_AE = 0x00400001
START_DATE = 0x00400002
START_TIME = 0x00400003
PERFORMER = 0x00400006
DESCRIPTION = 0x00400007  # LO
PROCEDURE_STEP_ID = 0x00400009  # SH
COMMENTS = 0x00104000  # LT

NUMBER_VRS = {"US": int, "SS": int, "UL": int, "SL": int, "FL": float, "FD": float}

TREE: dict[int, Any] = {
    ACCESSION: "A1001",  # even
    PATIENT_NAME: "DOE^JAN",  # odd: padded with a space
    PATIENT_ID: "",  # empty
    BIRTH_DATE: "19700101",
    SEX: "F",  # odd
    PATIENT_WEIGHT: "72.5",  # DS, even
    PREGNANCY_STATUS: "4",
    POSITION_IN_IMAGE: "1\\2\\65535",
    SIMPLE_FRAME_LIST: "1\\4000000000",
    BODY_THICKNESS: "12.5",
    TIME_RANGE: "0.25\\1.5",
    TAG_ANGLE: "-5",
    STUDY_UID: "1.2.826.0.1.3680043.10.1.17",  # odd: padded with NUL
    COMMENTS: "first line\r\nsecond \\ line.",
    SPS: [
        {MODALITY: "CT", STATION_AE: "CT01\\CT02", START_DATE: "20261130",
         START_TIME: "0930", PERFORMER: "RAD^ONE", DESCRIPTION: "CT HEAD"},
        {MODALITY: "MR", STATION_AE: "MR01", START_DATE: "", PROCEDURE_STEP_ID: "S2"},
        {},
        {PERFORMER: ""},
    ],
}


def decode(data: bytes, syntax: str) -> Dataset:
    implicit, little = SYNTAXES[syntax]
    return read_dataset(io.BytesIO(data), implicit, little)


def assert_same(dataset: Dataset, tree: dict[int, Any], vrs: dict[int, Any] | None = None) -> None:
    """Every value of ``tree`` is in ``dataset`` as pydicom reads it, and nothing more."""
    vrs = vrs or {}
    assert sorted(int(tag) for tag in dataset.keys()) == sorted(tree)
    for tag, value in tree.items():
        element = dataset[tag]
        given = vrs.get(tag)
        if isinstance(value, list) or given == "SQ" or isinstance(given, tuple):
            nested = given[1] if isinstance(given, tuple) else {}
            assert element.VR == "SQ"
            children = value if isinstance(value, list) else []
            assert len(element.value) == len(children)
            for item, child in zip(element.value, children, strict=True):
                assert_same(item, child, nested)
            continue
        if value == "":
            assert element.is_empty, hex(tag)
            continue
        if given:
            assert element.VR == given
        multiple = isinstance(element.value, MultiValue | list)
        got = list(element.value) if multiple else [element.value]
        convert = NUMBER_VRS.get(element.VR)
        if convert is not None:
            expected = [convert(part) for part in value.split("\\")]
            assert got == expected, hex(tag)
            assert all(type(number) is convert for number in got)
        elif element.VR in ("LT", "ST", "UT"):
            assert got == [value], hex(tag)
        else:
            assert [str(part) for part in got] == value.split("\\"), hex(tag)


@pytest.mark.parametrize("syntax", list(SYNTAXES))
def test_encode_tree_decodes_to_the_same_values(syntax: str) -> None:
    data = encode_tree(TREE, {}, syntax, "ascii")
    assert len(data) % 2 == 0
    assert_same(decode(data, syntax), TREE)


@pytest.mark.parametrize("syntax", list(SYNTAXES))
def test_odd_lengths_are_padded(syntax: str) -> None:
    data = encode_tree(TREE, {}, syntax, "ascii")
    assert b"1.2.826.0.1.3680043.10.1.17\x00" in data
    assert b"DOE^JAN " in data
    assert b"F " in data
    dataset = decode(data, syntax)
    assert dataset[STUDY_UID].value == "1.2.826.0.1.3680043.10.1.17"
    assert str(dataset[PATIENT_NAME].value) == "DOE^JAN"
    assert dataset[SEX].value == "F"


@pytest.mark.parametrize("syntax", list(SYNTAXES))
def test_explicit_headers_and_lengths(syntax: str) -> None:
    """Walk the top level by hand: ascending tags, even lengths, VR headers."""
    implicit, little = SYNTAXES[syntax]
    order = "<" if little else ">"
    data = encode_tree(TREE, {}, syntax, "ascii")
    offset, tags = 0, []
    while offset < len(data):
        group, element = struct.unpack_from(order + "HH", data, offset)
        tag = group << 16 | element
        if implicit:
            (length,) = struct.unpack_from(order + "I", data, offset + 4)
            offset += 8
        else:
            vr = data[offset + 4:offset + 6].decode()
            assert vr == dataset.vr_for(tag)
            if vr in dataset.LONG_LENGTH_VRS:
                assert data[offset + 6:offset + 8] == b"\x00\x00"
                (length,) = struct.unpack_from(order + "I", data, offset + 8)
                offset += 12
            else:
                (length,) = struct.unpack_from(order + "H", data, offset + 6)
                offset += 8
        assert length % 2 == 0 and length != 0xFFFFFFFF
        tags.append(tag)
        offset += length
    assert offset == len(data)
    assert tags == sorted(TREE)


@pytest.mark.parametrize("syntax", list(SYNTAXES))
def test_utf8_text(syntax: str) -> None:
    tree = {
        CHARSET: "ISO_IR 192",
        PATIENT_NAME: "Müller^Jürgen=山田^太郎",
        COMMENTS: "Allergie: Jod — Ödem",
        SPS: [{PERFORMER: "Ångström^Ås", DESCRIPTION: "Schädel nativ"}, {PERFORMER: "É"}],
    }
    data = encode_tree(tree, {}, syntax, "utf-8")
    assert len(data) % 2 == 0
    dataset = decode(data, syntax)
    assert dataset.SpecificCharacterSet == "ISO_IR 192"
    assert str(dataset.PatientName) == "Müller^Jürgen=山田^太郎"
    assert dataset.PatientComments == "Allergie: Jod — Ödem"
    steps = dataset.ScheduledProcedureStepSequence
    assert str(steps[0].ScheduledPerformingPhysicianName) == "Ångström^Ås"
    assert steps[0].ScheduledProcedureStepDescription == "Schädel nativ"
    assert str(steps[1].ScheduledPerformingPhysicianName) == "É"


@pytest.mark.parametrize("syntax", list(SYNTAXES))
def test_query_vrs_are_used(syntax: str) -> None:
    tree = {PATIENT_ID: "P1", SPS: [{STATION_AE: "CT01"}, {STATION_AE: "MR01"}],
            0x00400275: ""}
    vrs = {PATIENT_ID: "LO", SPS: ("SQ", {STATION_AE: "AE"}), 0x00400275: "SQ"}
    data = encode_tree(tree, vrs, syntax, "ascii")
    assert_same(decode(data, syntax), tree, vrs)


@pytest.mark.parametrize("syntax", list(SYNTAXES))
def test_empty_values_and_sequences(syntax: str) -> None:
    tree = {PATIENT_NAME: "", PATIENT_ID: "", PREGNANCY_STATUS: "", STUDY_UID: "", SPS: []}
    data = encode_tree(tree, {}, syntax, "ascii")
    dataset = decode(data, syntax)
    assert_same(dataset, tree)
    assert len(dataset[SPS].value) == 0
    assert encode_tree({}, {}, syntax, "ascii") == b""


@pytest.mark.parametrize("syntax", list(SYNTAXES))
def test_nested_sequences(syntax: str) -> None:
    code = {0x00080100: "P1-001", 0x00080102: "99LOCAL", 0x00080104: "CT HEAD"}
    tree = {SPS: [{0x00400008: [code, {**code, 0x00080100: "P1-02"}], MODALITY: "CT"},
                  {0x00400008: [], MODALITY: "MR"}],
            PATIENT_ID: "P1"}
    data = encode_tree(tree, {}, syntax, "ascii")
    assert_same(decode(data, syntax), tree)


def long_headers(tree: dict[int, Any]) -> int:
    """How many elements of ``tree``, at any depth, have a 4-byte explicit length."""
    count = 0
    for tag, value in tree.items():
        if isinstance(value, list):
            count += 1 + sum(long_headers(child) for child in value)
        elif dataset.vr_for(tag) in dataset.LONG_LENGTH_VRS:
            count += 1
    return count


def test_header_sizes_of_the_three_syntaxes() -> None:
    implicit = encode_tree(TREE, {}, syntax.IMPLICIT_VR_LITTLE_ENDIAN, "ascii")
    explicit = encode_tree(TREE, {}, syntax.EXPLICIT_VR_LITTLE_ENDIAN, "ascii")
    big = encode_tree(TREE, {}, syntax.EXPLICIT_VR_BIG_ENDIAN, "ascii")
    assert len(explicit) == len(implicit) + 4 * long_headers(TREE)
    assert len(big) == len(explicit)
    text = {COMMENTS: "x", 0x00400275: [], 0x00080119: "LONG CODE"}  # LT, SQ, UC
    assert len(encode_tree(text, {}, syntax.EXPLICIT_VR_LITTLE_ENDIAN, "ascii")) == (
        len(encode_tree(text, {}, syntax.IMPLICIT_VR_LITTLE_ENDIAN, "ascii")) + 8)


# -- the command set -----------------------------------------------------------------


@pytest.mark.parametrize("sop_class", [MWL_FIND, PATIENT_ROOT_FIND])
@pytest.mark.parametrize(("message_id", "status", "has_identifier"), [
    (1, 0xFF00, True),
    (65535, 0xFF01, True),
    (7, 0x0000, False),
    (300, 0xA700, False),
    (2, 0xFE00, False),
])
def test_find_response_command(sop_class: str, message_id: int, status: int,
                               has_identifier: bool) -> None:
    command = find_response_command(sop_class, message_id, status, has_identifier)
    assert len(command) % 2 == 0
    dataset = read_dataset(io.BytesIO(command), True, True)
    assert [int(tag) for tag in dataset.keys()] == [
        0x00000000, 0x00000002, 0x00000100, 0x00000120, 0x00000800, 0x00000900]
    assert dataset.CommandGroupLength == len(command) - 12
    assert dataset.AffectedSOPClassUID == sop_class
    assert dataset.CommandField == 0x8020
    assert dataset.MessageIDBeingRespondedTo == message_id
    assert dataset.CommandDataSetType == (0x0001 if has_identifier else 0x0101)
    assert dataset.Status == status


# -- P-DATA-TF framing ----------------------------------------------------------------


def parse_pdus(data: bytes) -> list[tuple[int, list[tuple[int, int, bytes]]]]:
    """(PDU length, [(context id, control header, fragment)]) for each PDU."""
    pdus = []
    offset = 0
    while offset < len(data):
        pdu_type, length = struct.unpack_from(">BxI", data, offset)
        assert pdu_type == 0x04
        body = data[offset + 6:offset + 6 + length]
        assert len(body) == length
        pdvs = []
        position = 0
        while position < length:
            (item_length,) = struct.unpack_from(">I", body, position)
            assert item_length >= 2
            context_id, control = body[position + 4], body[position + 5]
            pdvs.append((context_id, control, body[position + 6:position + 4 + item_length]))
            position += 4 + item_length
        assert position == length
        assert pdvs
        pdus.append((length, pdvs))
        offset += 6 + length
    return pdus


def check_framing(data: bytes, context_id: int, command: bytes, data_set: bytes,
                  max_pdu: int) -> list[tuple[int, list[tuple[int, int, bytes]]]]:
    pdus = parse_pdus(data)
    if max_pdu:
        assert all(length <= max_pdu for length, _ in pdus)
    pdvs = [pdv for _, items in pdus for pdv in items]
    assert all(pdv_context == context_id for pdv_context, _, _ in pdvs)
    assert all(control & ~0x03 == 0 for _, control, _ in pdvs)
    commands = [pdv for pdv in pdvs if pdv[1] & 0x01]
    data_sets = [pdv for pdv in pdvs if not pdv[1] & 0x01]
    # The whole command comes before the data set.
    assert pdvs == commands + data_sets
    assert b"".join(fragment for _, _, fragment in commands) == command
    assert b"".join(fragment for _, _, fragment in data_sets) == data_set
    for stream in (commands, data_sets):
        last = [pdv for pdv in stream if pdv[1] & 0x02]
        if stream:
            assert len(last) == 1
            assert stream[-1][1] & 0x02
        assert all(fragment for _, _, fragment in stream)
    if not data_set:
        assert data_sets == []
    return pdus


COMMAND = find_response_command(MWL_FIND, 5, 0xFF00, True)
DATA_SET = encode_tree(TREE, {}, syntax.IMPLICIT_VR_LITTLE_ENDIAN, "ascii")


@pytest.mark.parametrize("max_pdu", [
    0, 8, 9, 16, 17, 64, 100, len(COMMAND), len(COMMAND) + 6, len(COMMAND) + 7,
    len(COMMAND) + len(DATA_SET) + 11, len(COMMAND) + len(DATA_SET) + 12,
    len(COMMAND) + len(DATA_SET) + 13, 4096, 16384, 1 << 20,
])
@pytest.mark.parametrize("data_set", [b"", b"\x08\x00", DATA_SET, DATA_SET * 50],
                         ids=["none", "tiny", "one", "large"])
def test_p_data_pdus(max_pdu: int, data_set: bytes) -> None:
    check_framing(p_data_pdus(3, COMMAND, data_set, max_pdu), 3, COMMAND, data_set, max_pdu)


@pytest.mark.parametrize("max_pdu", [0, 64, 16384, 49152])
@pytest.mark.parametrize("size", [0, 1, 57, 58, 59, 16377, 16378, 16379, 262048, 262140, 262144,
                                  524288 + 6, 3 << 20])
def test_p_data_stream(max_pdu: int, size: int) -> None:
    """Streamed from a file (the sender's C-STORE): framed as p_data_pdus frames,
    whatever the data set's size against the fragment and the read size.
    """
    data_set = bytes(n % 251 for n in range(size))
    groups = list(pdu.p_data_stream(5, COMMAND, io.BytesIO(data_set), max_pdu,
                                         group_bytes=1 << 18))
    check_framing(b"".join(groups), 5, COMMAND, data_set, max_pdu)
    assert all(len(group) <= (1 << 18) + (1 << 20) for group in groups)


def test_small_response_is_one_pdu() -> None:
    pdus = check_framing(p_data_pdus(1, COMMAND, DATA_SET, 16384), 1, COMMAND, DATA_SET, 16384)
    assert len(pdus) == 1
    assert [control for _, control, _ in pdus[0][1]] == [0x03, 0x02]
    exact = len(COMMAND) + len(DATA_SET) + 12
    assert len(check_framing(p_data_pdus(1, COMMAND, DATA_SET, exact), 1, COMMAND, DATA_SET,
                             exact)) == 1
    assert len(check_framing(p_data_pdus(1, COMMAND, DATA_SET, exact - 1), 1, COMMAND,
                             DATA_SET, exact - 1)) == 2


def test_pdus_are_full_when_fragmented() -> None:
    max_pdu = 100
    data = p_data_pdus(7, COMMAND, DATA_SET * 10, max_pdu)
    pdus = check_framing(data, 7, COMMAND, DATA_SET * 10, max_pdu)
    # Fragmenting is needed and does not waste PDUs.
    total = len(COMMAND) + len(DATA_SET) * 10
    assert len(pdus) <= total // (max_pdu - 6) + 2


@pytest.mark.parametrize("context_id", [1, 127, 255])
def test_context_id(context_id: int) -> None:
    check_framing(p_data_pdus(context_id, COMMAND, DATA_SET, 64), context_id, COMMAND,
                  DATA_SET, 64)


def test_max_pdu_zero_is_unlimited() -> None:
    large = bytes(range(256)) * (3 * 4096 + 17)  # about 3 MiB
    data = p_data_pdus(1, COMMAND, large, 0)
    pdus = check_framing(data, 1, COMMAND, large, 0)
    assert sum(len(fragment) for _, items in pdus for _, _, fragment in items) == (
        len(COMMAND) + len(large))
    small = check_framing(p_data_pdus(1, COMMAND, DATA_SET, 0), 1, COMMAND, DATA_SET, 0)
    assert len(small) == 1


def test_store_response_command_decodes_with_pydicom() -> None:
    data = dimse.response_command(0x8001, "1.2.840.10008.5.1.4.1.1.2", 7, 0xA900,
                                     "1.2.3.4", "SOPInstanceUID differs")
    command = read_dataset(io.BytesIO(data), is_implicit_VR=True, is_little_endian=True)
    assert command.CommandGroupLength == len(data) - 12
    assert command.AffectedSOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    assert command.CommandField == 0x8001
    assert command.MessageIDBeingRespondedTo == 7
    assert command.CommandDataSetType == 0x0101
    assert command.Status == 0xA900
    assert command.ErrorComment == "SOPInstanceUID differs"
    assert command.AffectedSOPInstanceUID == "1.2.3.4"


def test_parse_command_round_trip() -> None:
    data = dimse.store_request_command("1.2.840.10008.5.1.4.1.1.2", "1.2.345", 9)
    elements = dimse.parse_command(data)
    assert dimse.command_us(elements, dimse.COMMAND_FIELD) == 0x0001
    assert dimse.command_us(elements, dimse.MESSAGE_ID) == 9
    assert dimse.command_us(elements, dimse.DATA_SET_TYPE) == dimse.DATA_SET_PRESENT
    assert dimse.command_uid(elements, dimse.AFFECTED_SOP_INSTANCE) == "1.2.345"
    assert dimse.command_us(elements, 0x0900) == -1


@pytest.mark.parametrize("data", [b"\x00\x00\x00", struct.pack("<HHI", 0, 0x100, 9) + b"\x01",
                                  struct.pack("<HHI", 8, 0x10, 0)])
def test_parse_command_refuses_broken_sets(data: bytes) -> None:
    with pytest.raises(ValueError):
        dimse.parse_command(data)


def test_part10_header_reads_back_with_pydicom() -> None:
    from pydicom import dcmread

    header = part10.part10_header("1.2.840.10008.5.1.4.1.1.7", "1.2.3", "1.2.840.10008.1.2",
                                    "2.25.9", "ECHOES_X", "MODALITY")
    data_set = struct.pack("<HHI", 0x0010, 0x0020, 4) + b"P01 "
    ds = dcmread(io.BytesIO(header + data_set))
    meta = ds.file_meta
    assert meta.MediaStorageSOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    assert meta.MediaStorageSOPInstanceUID == "1.2.3"
    assert meta.TransferSyntaxUID == "1.2.840.10008.1.2"
    assert meta.ImplementationClassUID == "2.25.9"
    assert meta.ImplementationVersionName == "ECHOES_X"
    assert meta.SourceApplicationEntityTitle == "MODALITY"
    assert meta.FileMetaInformationGroupLength == len(header) - 132 - 12
    assert ds.PatientID == "P01"
