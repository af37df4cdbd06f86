"""Part 10 files: the header echoes writes, and the checks on received data that
must hold before an object is acknowledged.

Pure functions over bytes and file objects, no sockets: the preamble and
File Meta written before a received data set (:func:`part10_header`), the
File Meta read back (:func:`read_meta`), UID syntax (a UID
becomes a path component in the archive, so it is checked strictly for
characters and length), and a structural walk of a Part 10 file that proves
every element, sequence and fragment it declares is really there, so a
truncated data set is refused instead of archived.  The walk seeks over
values, so a 1 GB object costs a handful of reads, not 1 GB of memory.
"""

from __future__ import annotations

import io
import re
import struct
import zlib
from typing import BinaryIO

from echoes.dicom.dataset import ITEM as _ITEM
from echoes.dicom.dataset import ITEM_END as _ITEM_END
from echoes.dicom.dataset import LONG_LENGTH_VRS
from echoes.dicom.dataset import SEQUENCE_END as _SEQUENCE_END
from echoes.dicom.syntax import DEFLATED, encoding_of

#: PS3.5 9.1: digits and dots, no empty component, at most 64 characters.
#: Components with a leading zero are tolerated (some modalities write them)
#: because they are still safe as file names.
_UID_PATTERN = re.compile(r"[0-9]+(\.[0-9]+)*\Z")
UID_MAX_LENGTH = 64

#: Nesting deeper than this is hostile, not clinical.
MAX_DEPTH = 32

_LONG_VRS = frozenset(vr.encode() for vr in LONG_LENGTH_VRS)
#: The other VRs of PS3.5 6.2 (2-byte length).  Anything else is refused:
#: readers disagree on its length field (dcmtk assumes 4 bytes), so such a
#: file could not be read back by every peer.
_SHORT_VRS = frozenset(b"AE AS AT CS DA DS DT FL FD IS LO LT PN SH SL SS ST TM UI UL US".split())
_UNDEFINED = 0xFFFFFFFF


class MalformedDataset(ValueError):
    """The bytes are not a complete, well-formed data set."""


def uid_problem(value: object) -> str | None:
    """Why ``value`` is not a usable UID, or None when it is one."""
    if value is None or value == "":
        return "missing"
    text = str(value)
    if len(text) > UID_MAX_LENGTH:
        return f"longer than {UID_MAX_LENGTH} characters"
    if not _UID_PATTERN.match(text):
        return "not a valid UID (only digits and dots allowed)"
    return None


class _Walker:
    """Walks encoded elements over a seekable file, checking declared lengths.

    The walker keeps the file position itself (``pos``) instead of asking
    the file: a buffered file's ``tell()`` is an lseek(2) every time, and a
    512x512 CT header walk made 83 of them (strace of the ingester, issue 16).
    """

    def __init__(self, fp: BinaryIO, end: int, implicit: bool, little: bool,
                 capture: frozenset[int] = frozenset(), pos: int = 0) -> None:
        self.fp = fp
        self.end = end
        #: Where ``fp`` is: the caller's position at the start, then kept here.
        self.pos = pos
        self.implicit = implicit
        self.endian = "<" if little else ">"
        #: Top-level tags whose (short) values the walk keeps, in ``captured``.
        self.capture = capture
        self.captured: dict[int, bytes] = {}

    def _read(self, size: int) -> bytes:
        data = self.fp.read(size)
        self.pos += len(data)
        if len(data) != size:
            raise MalformedDataset(f"truncated at byte {self.pos}")
        return data

    def _skip(self, length: int) -> None:
        target = self.pos + length
        if target > self.end:
            raise MalformedDataset(
                f"element at byte {self.pos} declares {length} bytes, "
                f"only {self.end - self.pos} remain"
            )
        self.fp.seek(target)
        self.pos = target

    def _rewind(self, to: int) -> None:
        self.fp.seek(to)
        self.pos = to

    def _tag(self) -> int:
        group, element = struct.unpack(self.endian + "HH", self._read(4))
        return group << 16 | element

    def _header(self, implicit: bool) -> tuple[int, bytes | None, int]:
        tag = self._tag()
        if tag >> 16 == 0xFFFE:  # item and delimiters have no VR
            return tag, None, struct.unpack(self.endian + "L", self._read(4))[0]
        if implicit:
            return tag, None, struct.unpack(self.endian + "L", self._read(4))[0]
        vr = self._read(2)
        if vr in _LONG_VRS:
            self._read(2)
            return tag, vr, struct.unpack(self.endian + "L", self._read(4))[0]
        if vr not in _SHORT_VRS:
            raise MalformedDataset(f"bad VR {vr!r} at byte {self.pos - 2}")
        return tag, vr, struct.unpack(self.endian + "H", self._read(2))[0]

    def walk_dataset(self, depth: int, implicit: bool, until_item_end: bool) -> None:
        """Walk elements to the end of the file, or to an item delimiter."""
        if depth > MAX_DEPTH:
            raise MalformedDataset(f"sequences nested deeper than {MAX_DEPTH}")
        while True:
            if not until_item_end and self.pos == self.end:
                return
            tag, vr, length = self._header(implicit)
            if tag == _ITEM_END:
                if until_item_end:
                    return
                raise MalformedDataset("item delimiter outside an item")
            if tag in (_ITEM, _SEQUENCE_END):
                raise MalformedDataset(f"unexpected delimiter {tag:08X}")
            if length != _UNDEFINED:
                if depth == 0 and tag in self.capture and length <= 1024:
                    self.captured[tag] = self._read(length)
                else:
                    self._skip(length)
                continue
            # Undefined length: a sequence, encapsulated pixel data, or UN
            # holding an implicit VR sequence (PS3.5 6.2.2).
            if vr is not None and vr not in (b"SQ", b"UN", b"OB", b"OW"):
                raise MalformedDataset(f"undefined length on VR {vr.decode()}")
            nested_implicit = True if vr == b"UN" else implicit
            self.walk_items(depth + 1, nested_implicit)

    def walk_items(self, depth: int, implicit: bool) -> None:
        """Walk items up to and including the sequence delimiter."""
        while True:
            tag, _vr, length = self._header(implicit)
            if tag == _SEQUENCE_END:
                return
            if tag != _ITEM:
                raise MalformedDataset(f"expected an item, found tag {tag:08X}")
            if length == _UNDEFINED:
                self.walk_dataset(depth + 1, implicit, until_item_end=True)
            else:
                self._skip(length)


def read_meta(fp: BinaryIO, end: int) -> tuple[dict[int, bytes], int]:
    """Read the File Meta group; return its values by tag and the data set offset."""
    fp.seek(0)
    preamble = fp.read(132)
    if len(preamble) != 132 or preamble[128:] != b"DICM":
        raise MalformedDataset("no DICM prefix")
    walker = _Walker(fp, end, implicit=False, little=True, pos=132)
    values: dict[int, bytes] = {}
    while walker.pos < end:
        start = walker.pos
        group = struct.unpack("<H", walker._read(2))[0]
        walker._rewind(start)
        if group != 0x0002:
            break
        tag, _vr, length = walker._header(implicit=False)
        if length == _UNDEFINED:
            raise MalformedDataset("undefined length in file meta")
        if length > end - walker.pos:
            raise MalformedDataset("file meta element runs past the end")
        values[tag] = walker._read(length)
    return values, walker.pos


def check_part10(fp: BinaryIO, size: int, capture: dict[int, bytes] | None = None) -> str:
    """Check a whole Part 10 file structurally; return its transfer syntax UID.

    Raises MalformedDataset when a declared length runs past the end, an
    undefined-length sequence never closes, or the data set stops mid-element.
    When ``capture`` is given, the raw values of its keys (top-level tags,
    values up to 1 KiB) replace its values on the way, so the caller needs no
    second parse of the file (not for deflated data sets).
    """
    meta, offset = read_meta(fp, size)
    raw_syntax = meta.get(0x00020010)
    if not raw_syntax:
        raise MalformedDataset("file meta has no transfer syntax")
    syntax = raw_syntax.rstrip(b"\x00 ").decode("ascii", "replace")
    if offset >= size:
        raise MalformedDataset("empty data set")
    if syntax in DEFLATED:  # checked by inflating, not by walking
        _check_deflated(fp, offset)
        return syntax
    implicit, little = encoding_of(syntax)
    walker = _Walker(fp, size, implicit=implicit, little=little,
                     capture=frozenset(capture or ()), pos=offset)
    fp.seek(offset)
    walker.walk_dataset(depth=0, implicit=walker.implicit, until_item_end=False)
    if capture is not None:
        capture.update(walker.captured)
    return syntax


def check_dataset(data: bytes, implicit: bool, little: bool) -> None:
    """Check a bare data set's structure (a C-FIND identifier, no File Meta):
    MalformedDataset when a length runs past the end or it stops mid-element.
    pydicom reads such bytes without complaint, keeping a truncated value."""
    walker = _Walker(io.BytesIO(data), len(data), implicit=implicit, little=little)
    walker.walk_dataset(depth=0, implicit=implicit, until_item_end=False)


def _check_deflated(fp: BinaryIO, offset: int) -> None:
    """A deflated data set is whole when its raw deflate stream ends."""
    fp.seek(offset)
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        while (data := fp.read(1 << 16)) and not inflater.eof:
            while data and not inflater.eof:
                inflater.decompress(data, 1 << 20)  # bounded output: no zip bomb
                data = inflater.unconsumed_tail
        while not inflater.eof and inflater.decompress(b"", 1 << 20):
            pass
    except zlib.error as exc:
        raise MalformedDataset(f"deflate stream broken: {exc}") from None
    if not inflater.eof:
        raise MalformedDataset("deflate stream truncated")


def part10_header(sop_class: str, sop_instance: str, syntax: str, implementation_uid: str,
                  implementation_version: str, source_ae: str = "") -> bytes:
    """Preamble, "DICM" and File Meta Information (PS3.10 7.1) for a received data set."""
    def element(tag_element: int, vr: bytes, value: bytes, pad: bytes) -> bytes:
        if len(value) % 2:
            value += pad
        if vr == b"OB":
            return struct.pack("<HH2s2xI", 0x0002, tag_element, vr, len(value)) + value
        return struct.pack("<HH2sH", 0x0002, tag_element, vr, len(value)) + value

    body = b"".join((
        element(0x0001, b"OB", b"\x00\x01", b""),
        element(0x0002, b"UI", sop_class.encode(), b"\x00"),
        element(0x0003, b"UI", sop_instance.encode(), b"\x00"),
        element(0x0010, b"UI", syntax.encode(), b"\x00"),
        element(0x0012, b"UI", implementation_uid.encode(), b"\x00"),
        element(0x0013, b"SH", implementation_version.encode()[:16], b" "),
        element(0x0016, b"AE", source_ae.encode("ascii", "replace")[:16], b" ")
        if source_ae else b"",
    ))
    group_length = struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(body))
    return bytes(128) + b"DICM" + group_length + body
