"""Interoperability: dcmtk's storescu and echoscu against the real server."""

from __future__ import annotations

import subprocess
import sys

import pydicom
import pytest
from helpers import DCMTK_ENV, TEST_FILES

UNCOMPRESSED_FILES = ["CT_small.dcm", "MR_small.dcm", "MR_small_bigendian.dcm",
                      "MR_small_implicit.dcm", "rtplan.dcm", "rtdose.dcm", "waveform_ecg.dcm",
                      "test-SR.dcm", "examples_rgb_color.dcm", "liver_1frame.dcm"]
#: compressed test file -> the storescu option that proposes its transfer syntax
COMPRESSED_FILES = {
    "JPEG2000.dcm": "-xw", "MR_small_jp2klossless.dcm": "-xv", "MR_small_RLE.dcm": "-xr",
    "MR_small_jpeg_ls_lossless.dcm": "-xt", "SC_rgb_jpeg_gdcm.dcm": "-xs",
    "JPGExtended.dcm": "-xx", "SC_rgb_jpeg_dcmtk.dcm": "-xy", "image_dfl.dcm": "-xd",
}


def sop_uid(name: str) -> str:
    return pydicom.dcmread(TEST_FILES / name, stop_before_pixels=True).SOPInstanceUID


def storescu(port: int, flags: list[str], files: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(["storescu", "-aet", "MODALITY", "-aec", "WHATEVER", "-R", *flags,
                           "127.0.0.1", str(port), *files], env=DCMTK_ENV, capture_output=True,
                          text=True, timeout=60)


def test_echoscu(server, dcmtk):
    result = subprocess.run(["echoscu", "127.0.0.1", str(server.port)], env=DCMTK_ENV,
                            capture_output=True, timeout=30)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("flag", ["-xi", "-xe", "-xb"])
def test_storescu_uncompressed(server, dcmtk, flag):
    files = [str(TEST_FILES / name) for name in UNCOMPRESSED_FILES]
    result = storescu(server.port, [flag], files)
    assert result.returncode == 0, result.stderr
    expected = {sop_uid(name) for name in UNCOMPRESSED_FILES}
    server.wait_ingested(len(expected))
    assert expected <= set(server.indexed_sops())
    assert expected <= set(server.archived_sops())
    command = [sys.executable, "-m", "echoes", "--config", str(server.config.path), "studies",
               "--json"]
    listed = subprocess.run(command,
                            capture_output=True, text=True, check=True, timeout=30)
    assert all(s in listed.stdout for s in {pydicom.dcmread(TEST_FILES / n).StudyInstanceUID
                                            for n in UNCOMPRESSED_FILES})


def test_storescu_compressed_stored_as_received(server, dcmtk):
    for name, flag in COMPRESSED_FILES.items():
        result = storescu(server.port, [flag], [str(TEST_FILES / name)])
        assert result.returncode == 0, (name, result.stderr)
    # MR_small_* share one SOP Instance UID: the copy sent last must replace the others
    last_sent = {sop_uid(name): name for name in COMPRESSED_FILES}
    server.wait_ingested(len(last_sent))
    archived = list(server.config.archive_dir.rglob("*.dcm"))
    assert len(archived) == len(last_sent)
    for path in archived:
        stored = pydicom.dcmread(path)
        original = pydicom.dcmread(TEST_FILES / last_sent[stored.SOPInstanceUID])
        assert stored.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
        assert stored.file_meta.SourceApplicationEntityTitle.strip() == "MODALITY"
        if "PixelData" in original:
            assert stored.PixelData == original.PixelData
