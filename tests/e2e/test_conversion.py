"""The sender's transfer syntax conversions, compared element by element with dcmtk's dcmconv.

Every big-endian file and every file with a word-valued element (OW, OF, OL,
OD, OV: pixel data, palette LUTs, overlays, waveforms, curves) among
pydicom's test files and pydicom-data's (a test extra) is converted the way
the sender converts it for a peer that accepted one uncompressed syntax
(choose_route, prepare, payload), into each uncompressed syntax it is not
stored in, and compared with what ``dcmconv +te``/``+ti``/``+tb`` makes of
the same file.  A file stored compressed is first decompressed by pydicom
(pylibjpeg, as the sender does), saved as Explicit VR Little Endian, and
that file is what dcmconv converts: dcmtk has no JPEG 2000 decoder, and what
is compared here is the encoding of the values, not the decoders.

Files echoes would refuse on receipt (``validation.check_part10``: a
truncated one) are left out: they are never sent.  Pure logic and a
subprocess per conversion; no sockets.
"""

from __future__ import annotations

import io
import struct
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from helpers import TEST_FILES
from pydicom import datadict
from pydicom.dataset import FileMetaDataset
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom.dsutils import decode

from echoes.dicom import part10
from echoes.dicom import part10 as validation
from echoes.dicom.part10 import MalformedDataset
from echoes.queue import jobs
from echoes.services import outbound

try:  # pydicom-data (a test extra) installs its files as the package data_store
    import data_store

    DATA_STORE: Path | None = Path(data_store.__file__).parent / "data"
except ImportError:
    DATA_STORE = None

UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian)
DCMCONV_OPTION = {ExplicitVRLittleEndian: "+te", ImplicitVRLittleEndian: "+ti",
                  ExplicitVRBigEndian: "+tb"}
#: VRs of values that are words in the syntax's byte order (the files to look at).
WORD_VRS = {"OW", "OF", "OL", "OD", "OV"}
#: VR -> size of the number or word whose bytes a change of byte order reverses.
NUMBER_WIDTHS = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8, "US": 2, "SS": 2, "UL": 4,
                 "SL": 4, "FL": 4, "FD": 8, "AT": 2, "SV": 8, "UV": 8}
#: VRs with a 4-byte length in explicit VR (PS3.5 7.1.2).
LONG_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT", "SV", "UV"}
ITEM, ITEM_END, SEQUENCE_END, UNDEFINED = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD, 0xFFFFFFFF


# -- which files ---------------------------------------------------------------


def _has_words(dataset: pydicom.Dataset) -> bool:
    for element in dataset:
        if element.VR == "SQ":
            if any(_has_words(item) for item in element.value):
                return True
        elif any(vr in WORD_VRS for vr in str(element.VR).split(" or ")):
            return True
    return False


def _sources() -> list[Path]:
    """Big-endian and word-bearing files of pydicom's and pydicom-data's test data."""
    folders = [TEST_FILES] + ([DATA_STORE] if DATA_STORE else [])
    found = []
    for path in sorted(p for folder in folders for p in folder.rglob("*") if p.is_file()):
        try:
            with open(path, "rb") as handle:
                syntax = validation.check_part10(handle, path.stat().st_size)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                dataset = pydicom.dcmread(path)
                if syntax == ExplicitVRBigEndian or _has_words(dataset):
                    found.append(path)
        except (MalformedDataset, OSError, ValueError, KeyError, TypeError, struct.error):
            continue  # not Part 10, or refused on receipt: never sent
    return found


def _cases() -> list[tuple[Path, str]]:
    cases = []
    for path in _sources():
        stored = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
        cases += [(path, target) for target in UNCOMPRESSED if target != stored]
    return cases


CASES = _cases()


def _case_id(case: tuple[Path, str]) -> str:
    path, target = case
    folder = TEST_FILES if path.is_relative_to(TEST_FILES) else DATA_STORE
    return f"{path.relative_to(folder)}->{DCMCONV_OPTION[target]}"


def test_every_big_endian_and_word_file_is_compared() -> None:
    names = {path.name for path, _target in CASES}
    assert {"SC_rgb_small_odd_big_endian.dcm", "MR_small_bigendian.dcm", "rtdose_expb.dcm",
            "rtdose.dcm", "waveform_ecg.dcm", "examples_palette.dcm"} <= names
    assert DATA_STORE is not None, "pydicom-data (a test extra) is missing: run bin/setup --test"
    if DATA_STORE is not None:
        assert {"OBXXXX1A_expb.dcm", "emri_small_big_endian.dcm", "SC_rgb_expb_32bit.dcm",
                "gdcm-US-ALOKA-16_big.dcm"} <= names
    assert "MR_truncated.dcm" not in names  # refused on receipt


# -- the two conversions -------------------------------------------------------


def ours(path: Path, target: str, folder: Path) -> Path:
    """``path`` as the sender sends it over a context of ``target``, as a Part 10 file."""
    meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
    record = {"SOPInstanceUID": str(meta.MediaStorageSOPInstanceUID),
              "StudyInstanceUID": "1.2.3", "SOPClassUID": str(meta.MediaStorageSOPClassUID),
              "TransferSyntaxUID": str(meta.TransferSyntaxUID), "path": path.name}
    job = jobs.new_job("PEER", record, "forward", 0.0)
    accepted = {(job.sop_class_uid, target)}
    route = outbound.choose_route(job.sop_class_uid, job.transfer_syntax, accepted)
    assert route.kind in ("reencode", "decompress"), route
    syntax, data_set = outbound.payload(job, route, outbound.prepare(path, route), accepted)
    assert syntax == target
    converted = folder / "ours.dcm"
    converted.write_bytes(part10.part10_header(job.sop_class_uid, job.sop_instance_uid, syntax,
                                                 "1.2.3", "TEST") + data_set.read())
    return converted


def dcmconv(path: Path, target: str, folder: Path) -> Path:
    """``path`` converted to ``target`` by dcmtk (decompressed by pydicom first)."""
    stored = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
    if stored in outbound.ENCAPSULATED:
        dataset = pydicom.dcmread(path)
        dataset.decompress(generate_instance_uid=False)
        path = folder / "decompressed.dcm"
        dataset.save_as(path, enforce_file_format=True)
    converted = folder / "dcmconv.dcm"
    done = subprocess.run(["dcmconv", DCMCONV_OPTION[target], str(path), str(converted)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return converted


# -- reading both back: a parser of our own, not pydicom's -------------------


def elements(path: Path) -> tuple[dict, bool]:
    """The data set of a Part 10 file as {tag: (VR, bytes or [items])}, and its byte order."""
    data = path.read_bytes()
    meta, offset = validation.read_meta(io.BytesIO(data), len(data))
    syntax = meta[0x00020010].rstrip(b"\x00 ").decode()
    implicit, little = syntax == ImplicitVRLittleEndian, syntax != ExplicitVRBigEndian
    parsed, _end = _parse(data, offset, len(data), implicit, little)
    return parsed, little


def _parse(data: bytes, position: int, end: int, implicit: bool,
           little: bool) -> tuple[dict, int]:
    order = "<" if little else ">"
    found: dict = {}
    while position < end:
        group, element = struct.unpack_from(order + "HH", data, position)
        tag = group << 16 | element
        if tag == ITEM_END:
            return found, position + 8
        if implicit:
            vr, (length,) = None, struct.unpack_from(order + "I", data, position + 4)
            position += 8
        else:
            vr = data[position + 4:position + 6].decode()
            if vr in LONG_VRS:
                (length,), position = struct.unpack_from(order + "I", data, position + 8), \
                    position + 12
            else:
                (length,), position = struct.unpack_from(order + "H", data, position + 6), \
                    position + 8
        dictionary_vr = datadict.dictionary_VR(tag) if datadict.dictionary_has_tag(tag) else ""
        if vr == "SQ" or (implicit and (dictionary_vr == "SQ" or length == UNDEFINED)):
            items, position = _items(data, position, length, implicit, little)
            found[tag] = ("SQ", items)
        else:
            assert length != UNDEFINED, f"({group:04X},{element:04X}) undefined length"
            found[tag] = (vr, data[position:position + length])
            position += length
    return found, position


def _items(data: bytes, position: int, length: int, implicit: bool,
           little: bool) -> tuple[list, int]:
    order = "<" if little else ">"
    stop = None if length == UNDEFINED else position + length
    items = []
    while stop is None or position < stop:
        group, element, item_length = struct.unpack_from(order + "HHI", data, position)
        position += 8
        if group << 16 | element == SEQUENCE_END:
            break
        assert group << 16 | element == ITEM
        if item_length == UNDEFINED:
            item, position = _parse(data, position, len(data), implicit, little)
        else:
            item, _end = _parse(data, position, position + item_length, implicit, little)
            position += item_length
        items.append(item)
    return items, position


# -- comparing values ---------------------------------------------------------


def _little_endian(vr: str | None, value: bytes, little: bool) -> bytes:
    """A value's bytes with its numbers and words in little-endian order."""
    width = NUMBER_WIDTHS.get(vr or "")
    if little or width is None or len(value) % width:
        return value
    return np.frombuffer(value, dtype=f">u{width}").astype(f"<u{width}").tobytes()


def canonical(parsed: dict, little: bool) -> dict:
    """``parsed`` with every value in little-endian order (sequences included)."""
    return {tag: ("SQ", [canonical(item, little) for item in value]) if vr == "SQ"
            else (vr, _little_endian(vr, value, little))
            for tag, (vr, value) in parsed.items()}


def _un_sequence(value: bytes) -> list[dict]:
    """The items of a sequence held as UN (Implicit VR Little Endian, PS3.5 6.2.2)."""
    return [canonical(item, True) for item in _items(value, 0, len(value), True, True)[0]]


def differences(reference: dict, converted: dict, where: str = "") -> list[str]:
    """Where ``converted`` does not hold the values of ``reference`` (both canonical)."""
    found = []
    for tag in sorted(set(reference) | set(converted)):
        name = f"{where}({tag >> 16:04X},{tag & 0xFFFF:04X})"
        if tag & 0xFFFF == 0:
            continue  # group lengths: dcmconv may add or drop them
        if tag not in converted or tag not in reference:
            found.append(f"{name} only in {'dcmconv' if tag in reference else 'ours'}")
            continue
        (ref_vr, ref_value), (our_vr, our_value) = reference[tag], converted[tag]
        if "UN" in (ref_vr, our_vr):
            # The source holds it as UN: pydicom may give it its dictionary
            # VR (when it looked at it), dcmtk keeps UN and its value as it
            # came, little endian: compared by value.
            ref_vr = our_vr = None
        # A sequence one writer keeps as bytes (UN, or a private one in
        # Implicit VR): its items are Implicit VR Little Endian either way.
        if isinstance(ref_value, bytes) and isinstance(our_value, list):
            ref_value = _un_sequence(ref_value)
        elif isinstance(our_value, bytes) and isinstance(ref_value, list):
            our_value = _un_sequence(our_value)
        if ref_vr and our_vr and ref_vr != our_vr:
            found.append(f"{name} VR {our_vr}, dcmconv {ref_vr}")
        elif isinstance(our_value, list) and isinstance(ref_value, list):
            if len(ref_value) != len(our_value):
                found.append(f"{name} {len(our_value)} items, dcmconv {len(ref_value)}")
            for number, (ref_item, our_item) in enumerate(zip(ref_value, our_value, strict=False)):
                found += differences(ref_item, our_item, f"{name}[{number}]")
        elif ref_value != our_value:
            padded = (len(our_value) % 2 == 1 and ref_value[:-1] == our_value
                      and ref_value[-1:] in (b"\x00", b" "))
            if not padded:
                pairs = enumerate(zip(ref_value, our_value, strict=False))
                first = next((n for n, (a, b) in pairs if a != b),
                             min(len(ref_value), len(our_value)))
                found.append(f"{name} {our_vr or ''} differs from byte {first} "
                             f"({len(our_value)} bytes, dcmconv {len(ref_value)}): "
                             f"{our_value[first:first + 8].hex()} vs "
                             f"{ref_value[first:first + 8].hex()}")
    return found


@pytest.mark.filterwarnings("ignore")  # the test files' invalid values, on purpose
@pytest.mark.parametrize("case", CASES, ids=[_case_id(case) for case in CASES])
def test_conversion_holds_the_values_dcmconv_writes(case: tuple[Path, str], tmp_path: Path,
                                                    dcmtk: None) -> None:
    """The sender's conversion and dcmconv's agree on every element's value.

    Both files are read back by the parser above (not pydicom's, which the
    sender converts with) and compared element by element, into sequences:
    the same tags; the same VR (explicit syntaxes); the same value, where
    the words of OW/OF/OL/OD/OV and the numbers of US/SS/UL/SL/FL/FD/AT are
    compared in little-endian order (so a value swapped by the wrong width,
    or not at all, differs).  Not compared: bytes of the whole file, since
    group lengths (dropped), sequence and item lengths (defined or
    undefined) and a trailing pad byte that dcmtk adds to an odd-length
    value may legitimately differ.  An element the source holds as UN of a
    dictionary tag is compared by value: pydicom gives it its dictionary
    VR, dcmtk keeps UN.
    """
    path, target = case
    reference = canonical(*elements(dcmconv(path, target, tmp_path)))
    converted = canonical(*elements(ours(path, target, tmp_path)))
    assert differences(reference, converted) == []


def test_big_endian_8_bit_ow_pixels_arrive_as_the_little_endian_original() -> None:
    """pydicom's SC_rgb_small_odd_big_endian.dcm is SC_rgb_small_odd.dcm in Explicit VR Big
    Endian with 8-bit pixels in OW: converted to little endian, its pixels must be the
    original's (before the fix they differed by up to 158).
    """
    source = TEST_FILES / "SC_rgb_small_odd_big_endian.dcm"
    sop_class = str(pydicom.dcmread(source).SOPClassUID)
    accepted = {(sop_class, ExplicitVRLittleEndian)}
    route = outbound.choose_route(sop_class, ExplicitVRBigEndian, accepted)
    data = outbound.encode_dataset(outbound.prepare(source, route), False, True)
    arrived = decode(io.BytesIO(data), False, True)
    arrived.file_meta = FileMetaDataset()
    arrived.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    original = pydicom.dcmread(TEST_FILES / "SC_rgb_small_odd.dcm").pixel_array
    assert np.abs(arrived.pixel_array.astype(int) - original).max() == 0
