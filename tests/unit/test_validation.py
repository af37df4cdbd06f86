"""UID checks and the structural walk that catches truncated data sets."""

import io

import pytest
from helpers import TEST_FILES, make_dataset, write_part10
from pydicom.uid import ExplicitVRBigEndian, ImplicitVRLittleEndian

from echoes.dicom.part10 import MalformedDataset, check_part10, uid_problem


@pytest.mark.parametrize("uid", ["1.2.3", "1.2.840.10008.5.1.4.1.1.2", "2.25.0", "1.02.3"])
def test_valid_uids(uid):
    assert uid_problem(uid) is None


@pytest.mark.parametrize("uid, problem", [
    ("", "missing"), (None, "missing"), ("1.2.3/../../etc", "not a valid"),
    ("1..2", "not a valid"), ("1.2.", "not a valid"), ("1.2 3", "not a valid"),
    ("1." + "2" * 70, "longer than 64"), ("..", "not a valid"),
])
def test_hostile_uids(uid, problem):
    assert problem in uid_problem(uid)


def _check(data: bytes) -> str:
    return check_part10(io.BytesIO(data), len(data))


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRBigEndian, None])
def test_whole_file_passes_and_truncation_is_caught(tmp_path, syntax):
    kwargs = {"syntax": syntax} if syntax else {}
    data = write_part10(make_dataset(rows=64), tmp_path / "x.dcm", **kwargs).read_bytes()
    assert _check(data)
    for cut in (1, 10, 1000, len(data) - 300):
        with pytest.raises(MalformedDataset):
            _check(data[:-cut])


@pytest.mark.parametrize("name", ["JPEG2000.dcm", "MR_small_RLE.dcm", "image_dfl.dcm",
                                  "nested_priv_SQ.dcm", "UN_sequence.dcm"])
def test_bundled_compressed_and_nested_files(name):
    data = (TEST_FILES / name).read_bytes()
    assert _check(data)
    with pytest.raises(MalformedDataset):
        _check(data[: len(data) - 50])


def test_never_closing_sequence_is_caught(tmp_path):
    data = write_part10(make_dataset(), tmp_path / "x.dcm").read_bytes()
    # an undefined-length SQ that never ends, appended at the end
    never_closed = b"\x09\x00\x10\x10SQ\x00\x00\xff\xff\xff\xff"
    hostile = data + never_closed + b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
    with pytest.raises(MalformedDataset):
        _check(hostile)


def test_deep_nesting_is_refused(tmp_path):
    data = write_part10(make_dataset(), tmp_path / "x.dcm").read_bytes()
    open_item = b"\x09\x00\x10\x10SQ\x00\x00\xff\xff\xff\xff\xfe\xff\x00\xe0\xff\xff\xff\xff"
    with pytest.raises(MalformedDataset, match="nested"):
        _check(data + open_item * 100)


def test_huge_declared_length(tmp_path):
    data = write_part10(make_dataset(), tmp_path / "x.dcm").read_bytes()
    with pytest.raises(MalformedDataset, match="declares"):
        _check(data + b"\x09\x00\x10\x10OB\x00\x00\xf0\xff\xff\x7f")


def test_no_prefix():
    with pytest.raises(MalformedDataset):
        _check(b"\x00" * 200)


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRBigEndian, None])
def test_walk_captures_top_level_values(tmp_path, syntax):
    kwargs = {"syntax": syntax} if syntax else {}
    ds = make_dataset(rows=8)
    data = write_part10(ds, tmp_path / "x.dcm", **kwargs).read_bytes()
    wanted = {0x00080018: b"", 0x0020000D: b"", 0x00100020: b"", 0x00101010: b""}
    check_part10(io.BytesIO(data), len(data), wanted)
    assert wanted[0x00080018].rstrip(b"\x00") == ds.SOPInstanceUID.encode()
    assert wanted[0x0020000D].rstrip(b"\x00") == ds.StudyInstanceUID.encode()
    assert wanted[0x00100020].rstrip(b" ") == ds.PatientID.encode()
    assert wanted[0x00101010] == b""  # absent: left as given
