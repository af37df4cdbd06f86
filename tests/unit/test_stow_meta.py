"""STOW-RS's reading of a part's File Meta (services/stow.py), from chunks of any size."""

from __future__ import annotations

import io

import pytest
from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from echoes.services.storage import StoreRefused
from echoes.services.stow import read_part_meta


def part10() -> tuple[bytes, Dataset]:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.7", generate_uid()
    ds.PatientName = "META^TEST"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue(), ds


@pytest.mark.parametrize("size", [1, 5, 131, 4096])
def test_the_meta_is_read_and_the_rest_handed_back(size: int) -> None:
    data, ds = part10()
    chunks = iter([data[i:i + size] for i in range(0, len(data), size)])
    rest, uids = read_part_meta(chunks)
    assert uids == (ds.SOPClassUID, ds.SOPInstanceUID, ExplicitVRLittleEndian)
    body = rest + b"".join(chunks)
    assert data.endswith(body) and b"META^TEST" in body and b"\x02\x00\x10\x00" not in body


@pytest.mark.parametrize("cut", [b"", b"\x00" * 200, "preamble-but-no-meta", "cut-meta"])
def test_what_is_not_part10_is_cannot_understand(cut: bytes | str) -> None:
    data, _ = part10()
    chunk = {"preamble-but-no-meta": data[:132] + b"\x08\x00\x16\x00UI\x02\x001\x00",
             "cut-meta": data[:160]}.get(cut, cut)  # type: ignore[call-overload]
    with pytest.raises(StoreRefused, match="Cannot understand") as refused:
        read_part_meta(iter([chunk]))
    assert refused.value.status == 0xC000
