"""A 1 GiB object out over DICOMweb, and a 2 GiB one in over STOW-RS, with the web
process far below 200 MB of memory.

Slow (a gigabyte is stored over DICOM, then read back twice): ``-m slow``.
The object (2,048 frames of 512 x 512 16-bit pixels) is written to disk
frame by frame and sent by dcmtk's storescu; the test reads the answers as
streams, hashing them, and reads the web process's peak resident memory
(VmHWM) from /proc before and after.
"""

from __future__ import annotations

import hashlib
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from helpers import DCMTK_ENV, Server, start_server, stop_server, write_part10
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from werkzeug.security import generate_password_hash

pytestmark = pytest.mark.slow

PASSWORD = "large-secret"
SIDE, FRAMES = 512, 2048
FRAME_BYTES = SIDE * SIDE * 2
#: The web process may grow by this much while it sends the gigabyte (its
#: chunks, waitress's buffers); it must never approach the object's size.
GROWTH_LIMIT_MB = 100


def frame(n: int) -> bytes:
    return ((np.arange(SIDE * SIDE, dtype=np.uint32) + n * 7) % 65536).astype("<u2").tobytes()


def write_large(path: Path) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7.3"  # Multi-frame Grayscale Word SC
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = (
        generate_uid(), generate_uid(), generate_uid())
    ds.PatientName, ds.PatientID, ds.Modality = "LARGE^OBJECT", "PL", "OT"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows = ds.Columns = SIDE
    ds.NumberOfFrames = FRAMES
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    write_part10(ds, path)
    with open(path, "ab") as out:  # Pixel Data, OW, explicit VR little endian
        out.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, FRAME_BYTES * FRAMES))
        for n in range(FRAMES):
            out.write(frame(n))
    return ds


def peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@pytest.fixture(scope="module")
def large(tmp_path_factory: pytest.TempPathFactory, dcmtk: None
          ) -> Iterator[tuple[Server, Dataset, Path]]:
    root = tmp_path_factory.mktemp("large")
    server = start_server(root / "home", http_password_hash=generate_password_hash(
        PASSWORD, method="pbkdf2:sha256:1000"))
    try:
        path = root / "large.dcm"
        ds = write_large(path)
        result = subprocess.run(["storescu", "-aet", "MODALITY", "-aec", "ECHOES", "127.0.0.1",
                                 str(server.port), str(path)], env=DCMTK_ENV,
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr
        server.wait_ingested(1, timeout=120)
        yield server, ds, path
    finally:
        stop_server(server)


def test_a_gigabyte_streams_out_byte_for_byte_in_little_memory(large) -> None:
    server, ds, path = large
    [web] = server.children("web")
    before = peak_mb(web)
    base = f"http://127.0.0.1:{server.config.http_port}/dicom-web"
    url = f"{base}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}" \
          f"/instances/{ds.SOPInstanceUID}"
    stored_path = (server.config.archive_dir / ds.StudyInstanceUID / ds.SeriesInstanceUID
                   / f"{ds.SOPInstanceUID}.dcm")
    with requests.get(url, auth=("admin", PASSWORD), stream=True, timeout=120, headers={
            "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}) as got:
        assert got.status_code == 200
        boundary = got.headers["Content-Type"].split("boundary=")[1].split(";")[0]
        body = hashlib.sha256()
        head = b""
        tail = b""
        total = 0
        for chunk in got.iter_content(1 << 20):
            if len(head) < 4096:
                head += chunk[:4096]
            total += len(chunk)
            tail = (tail + chunk)[-200:]
            body.update(chunk)
    # The body is one part: its headers, the stored file byte for byte, the close delimiter.
    opening = head[:head.index(b"\r\n\r\n") + 4]
    closing = f"\r\n--{boundary}--\r\n".encode()
    assert tail.endswith(closing)
    assert total - len(opening) - len(closing) == stored_path.stat().st_size
    assert stored_path.stat().st_size > FRAMES * FRAME_BYTES
    check = hashlib.sha256(opening)
    with open(stored_path, "rb") as stored:
        while chunk := stored.read(1 << 20):
            check.update(chunk)
    check.update(closing)
    assert check.hexdigest() == body.hexdigest()
    print(f"web peak RSS {before:.0f} MB -> {peak_mb(web):.0f} MB for {total >> 20} MiB out")
    assert peak_mb(web) - before < GROWTH_LIMIT_MB


def test_frames_and_metadata_of_a_gigabyte_read_little(large) -> None:
    server, ds, _path = large
    [web] = server.children("web")
    before = peak_mb(web)
    base = f"http://127.0.0.1:{server.config.http_port}/dicom-web/studies/" \
           f"{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    meta = requests.get(f"{base}/metadata", auth=("admin", PASSWORD), timeout=60).json()
    assert meta[0]["7FE00010"]["BulkDataURI"].endswith("/bulkdata/7FE00010")
    answer = requests.get(f"{base}/frames/1,1000,2048", auth=("admin", PASSWORD), timeout=60)
    assert answer.status_code == 200
    for n in (0, 999, 2047):
        assert frame(n) in answer.content
    print(f"web peak RSS {before:.0f} MB -> {peak_mb(web):.0f} MB for metadata and 3 frames")
    assert peak_mb(web) - before < GROWTH_LIMIT_MB


STOW_FRAMES = 4096  # 4,096 x 512 KiB: a 2 GiB Pixel Data, the largest a 32-bit length allows


def meta_end(data: bytes) -> int:
    """Where a Part 10 file's data set starts: after the File Meta its group length gives."""
    return 144 + struct.unpack("<I", data[140:144])[0]


def stow_body(header: bytes, boundary: str, digest: Any) -> Iterator[bytes]:
    """The multipart body, made while it is sent (requests sends a generator chunked,
    with no Content-Length); ``digest`` sees the part's bytes."""
    yield f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    pixels = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, FRAME_BYTES * STOW_FRAMES)
    yield header
    digest.update(header[meta_end(header):])
    digest.update(pixels)
    yield pixels
    for n in range(STOW_FRAMES):
        data = frame(n)
        digest.update(data)
        yield data
    yield f"\r\n--{boundary}--\r\n".encode()


def test_two_gigabytes_in_over_stow_without_content_length_in_little_memory(
        large, tmp_path: Path) -> None:
    server, _, _ = large
    [web] = server.children("web")
    before = peak_mb(web)
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7.3"
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = (
        generate_uid(), generate_uid(), generate_uid())
    ds.PatientName, ds.PatientID, ds.Modality = "HUGE^UPLOAD", "PH", "OT"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows = ds.Columns = SIDE
    ds.NumberOfFrames = STOW_FRAMES
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    header = write_part10(ds, tmp_path / "header.dcm").read_bytes()
    sent = hashlib.sha256()
    boundary = "huge-upload-boundary"
    answer = requests.post(
        f"http://127.0.0.1:{server.config.http_port}/dicom-web/studies",
        data=stow_body(header, boundary, sent), auth=("admin", PASSWORD), timeout=900,
        headers={"Content-Type": f'multipart/related; type="application/dicom"; '
                                 f'boundary={boundary}', "Accept": "application/dicom+json"})
    assert answer.status_code == 200, answer.text
    assert answer.request.headers.get("Transfer-Encoding") == "chunked"
    assert "Content-Length" not in answer.request.headers
    server.wait_ingested(2, timeout=600)
    stored_path = (server.config.archive_dir / ds.StudyInstanceUID / ds.SeriesInstanceUID
                   / f"{ds.SOPInstanceUID}.dcm")
    assert stored_path.stat().st_size > STOW_FRAMES * FRAME_BYTES
    check = hashlib.sha256()
    with open(stored_path, "rb") as stored:
        stored.seek(meta_end(stored.read(144)))  # the File Meta is echoes's, as for C-STORE
        while chunk := stored.read(1 << 20):
            check.update(chunk)
    assert check.hexdigest() == sent.hexdigest()  # the data set archived as sent
    print(f"web peak RSS {before:.0f} MB -> {peak_mb(web):.0f} MB for "
          f"{stored_path.stat().st_size >> 20} MiB in")
    assert peak_mb(web) - before < GROWTH_LIMIT_MB
