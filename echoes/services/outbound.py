"""Outbound: what the sender decides and prepares, without a socket or a job file.

The sender process (:mod:`echoes.processes.sender`) keeps the scheduler, the
associations and the job bookkeeping; everything here is a pure function of
its arguments (a job, the stored syntax, the contexts a peer accepted, an
archived file), so it is tested without a peer::

    plan_batch()      jobs that fit one association, and the contexts to propose
                      (syntaxes_for() per object)
    choose_route()    how one object goes over what the peer accepted: as
                      stored, .70 relabelled .57, re-encoded, or decompressed
    prepare()         the file, or the Dataset to encode (byte order matched
                      by VR: match_byte_order())
    payload()         the context's transfer syntax and the data set bytes
                      (PaddedDataSet for an odd-length deflate stream)
    outcome_of()      delivered, transient or permanent, from the response status
"""

from __future__ import annotations

import io
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol, TypeVar

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filewriter import correct_ambiguous_vr
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGLossless,
    JPEGLosslessSV1,
)

from echoes.dicom.dataset import encode_dataset
from echoes.dicom.part10 import read_meta

# ENCAPSULATED: only decompression makes these uncompressed; the others
# (uncompressed, deflate) pydicom re-encodes freely.  DEFLATED: the data set
# is a deflate stream, of any length (PS3.5 A.5).
from echoes.dicom.syntax import DEFLATED, ENCAPSULATED, UNCOMPRESSED
from echoes.queue import jobs

#: Objects per association at most, and presentation contexts (PS3.8: 128 ids).
BATCH_MAX = 1000
MAX_CONTEXTS = 120

DELIVERED, TRANSIENT, PERMANENT = "delivered", "transient", "permanent"
#: Not attempted: the job was cancelled (or re-queued elsewhere) after it was
#: planned, or its archived file is not there (yet).
SKIPPED = "skipped"

#: C-STORE response status ranges -> outcome, first match wins (PS3.4 B.2.3,
#: PS3.7 C).  Anything not listed is treated as transient.
STATUS_OUTCOMES: tuple[tuple[int, int, str, str], ...] = (
    (0x0000, 0x0000, DELIVERED, ""),
    (0xB000, 0xBFFF, DELIVERED, "warning"),
    (0x0001, 0x0001, DELIVERED, "warning"),
    (0x0107, 0x0107, DELIVERED, "warning: attribute list error"),
    (0x0116, 0x0116, DELIVERED, "warning: attribute value out of range"),
    (0xA700, 0xA7FF, TRANSIENT, "out of resources"),
    (0x0213, 0x0213, TRANSIENT, "resource limitation"),
    (0x0110, 0x0110, TRANSIENT, "processing failure"),
    (0xA900, 0xA9FF, PERMANENT, "data set does not match SOP class"),
    (0xC000, 0xCFFF, PERMANENT, "cannot understand"),
    (0x0122, 0x0122, PERMANENT, "SOP class not supported"),
    (0x0124, 0x0124, PERMANENT, "not authorized"),
    (0x0117, 0x0117, PERMANENT, "invalid SOP instance"),
    (0x0111, 0x0111, PERMANENT, "duplicate SOP instance"),
)


class Outbound(Protocol):
    """One object to send, as planning and encoding need it: a sender's job
    (:class:`echoes.queue.jobs.Job`) or a C-MOVE/C-GET sub-operation."""

    @property
    def id(self) -> str: ...
    @property
    def sop_class_uid(self) -> str: ...
    @property
    def sop_instance_uid(self) -> str: ...
    @property
    def transfer_syntax(self) -> str: ...


T = TypeVar("T", bound=Outbound)

#: Studies named in an association's log line at most.
STUDIES_LOGGED = 20


def studies_sent(by_study: Counter[str]) -> str:
    """The end of an association's log line: each study sent and its object count."""
    if not by_study:
        return ""
    named = [f"{uid} ({count})" for uid, count in by_study.most_common(STUDIES_LOGGED)]
    more = len(by_study) - len(named)
    return "; studies " + ", ".join(named) + (f" and {more} more" if more > 0 else "")


def outcome_of(status: int) -> tuple[str, str]:
    """(outcome, words) for a C-STORE response status."""
    for low, high, outcome, words in STATUS_OUTCOMES:
        if low <= status <= high:
            return outcome, words
    return TRANSIENT, "failure"


def syntaxes_for(stored: str) -> list[list[str]]:
    """The transfer syntax lists to propose for an object stored in ``stored``.

    The stored syntax in a context of its own, whatever it is (so the peer
    can accept it without giving up the uncompressed context, and an object
    stored uncompressed goes out as stored: a peer picks one syntax of a
    context by its own preference, and dcmtk's picks Explicit VR Little
    Endian out of the three, so an Implicit VR object was re-encoded),
    JPEG lossless SV1 (.70) also as .57 (an SV1 stream is a valid process 14
    stream), and one context with the three uncompressed syntaxes.
    """
    proposals: list[list[str]] = []
    if stored:
        proposals.append([stored])
    if stored == JPEGLosslessSV1:
        proposals.append([JPEGLossless])
    proposals.append(list(UNCOMPRESSED))
    return proposals


def plan_batch(due: list[T], isolated: frozenset[str] = frozenset(),
               ) -> tuple[list[T], list[tuple[str, list[str]]]]:
    """Jobs that fit one association and the presentation contexts they need.

    A job in ``isolated`` (its object was on the wire when an association
    ended) goes alone: the batch is that job when it comes first, and it is
    left out of any other batch.
    """
    contexts: list[tuple[str, list[str]]] = []
    seen: set[tuple[str, tuple[str, ...]]] = set()
    batch: list[T] = []
    for job in due:
        if job.id in isolated:
            if batch:
                continue
            return [job], [(job.sop_class_uid, syntaxes)
                           for syntaxes in syntaxes_for(job.transfer_syntax)]
        wanted = [(job.sop_class_uid, syntaxes) for syntaxes in syntaxes_for(job.transfer_syntax)]
        new = [(cls, ts) for cls, ts in wanted if (cls, tuple(ts)) not in seen]
        if len(contexts) + len(new) > MAX_CONTEXTS or len(batch) >= BATCH_MAX:
            break
        for cls, ts in new:
            seen.add((cls, tuple(ts)))
            contexts.append((cls, ts))
        batch.append(job)
    return batch, contexts


def fits(job: jobs.Job, proposed: set[tuple[str, tuple[str, ...]]]) -> bool:
    """Whether an open association proposed every context ``job`` would want."""
    return all((job.sop_class_uid, tuple(syntaxes)) in proposed
               for syntaxes in syntaxes_for(job.transfer_syntax))


@dataclass(frozen=True)
class Route:
    """How one object goes over the accepted contexts."""

    kind: str  # "file" (as stored), "relabel" (.70 as .57), "reencode", "decompress"
    reason: str = ""  # for kind "refuse"
    #: for "reencode": the accepted uncompressed syntax it will travel in
    target: str = ""


def choose_route(sop_class: str, stored: str, accepted: set[tuple[str, str]]) -> Route:
    """Pick how to send: as stored if accepted, else .70 as .57, else uncompressed."""
    if (sop_class, stored) in accepted:
        return Route("file")
    if stored == JPEGLosslessSV1 and (sop_class, JPEGLossless) in accepted:
        return Route("relabel")
    usable = [ts for ts in UNCOMPRESSED if (sop_class, ts) in accepted]
    if usable:
        if stored in ENCAPSULATED:  # little endian first: the decoders' byte order
            return Route("decompress", target=usable[0])
        big = stored == ExplicitVRBigEndian
        usable.sort(key=lambda ts: (ts == ExplicitVRBigEndian) != big)  # same byte order first
        return Route("reencode", target=usable[0])
    if not any(cls == sop_class for cls, _ts in accepted):
        return Route("refuse", f"peer rejected SOP class {sop_class}")
    return Route("refuse", f"peer accepts no usable transfer syntax for {sop_class} "
                           f"(stored as {stored})")


def prepare(path: Path, route: Route) -> Path | Dataset:
    """The file itself (routes file, refuse), or the Dataset to encode (see payload()).

    For routes reencode and decompress the Dataset's word-valued elements
    already hold the byte order of ``route.target`` (see match_byte_order).
    """
    if route.kind == "file":
        return path
    dataset = dcmread(path)
    if route.kind == "relabel":
        dataset.file_meta.TransferSyntaxUID = JPEGLossless
        return dataset
    little = True  # decompressed pixels, and every encapsulated syntax, are little endian
    if route.kind == "decompress" and "PixelData" in dataset:
        # pylibjpeg plugins; Explicit VR Little Endian.  A new transfer syntax
        # is the same instance (PS3.5 10): keep the SOP Instance UID, which
        # pydicom would otherwise replace.
        dataset.decompress(generate_instance_uid=False)
    elif route.kind == "decompress":
        # A compressed syntax without Pixel Data (a document, a presentation
        # state labelled so by its sender): nothing to decompress, and the
        # data set of every encapsulated syntax is Explicit VR Little Endian.
        dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    else:
        # Uncompressed or deflated: label it as read; payload() encodes it
        # into whichever uncompressed syntax the peer accepted.
        implicit, little = dataset.original_encoding
        dataset.file_meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit
            else ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    if route.target:
        match_byte_order(dataset, little, route.target != ExplicitVRBigEndian)
    return dataset


#: VRs whose values pydicom keeps as raw bytes although they are words in the
#: transfer syntax's byte order (PS3.5 6.2): VR -> word size in bytes.  OW is
#: 16-bit words whatever the Bits Allocated (8-bit pixels in OW, 32-bit dose
#: grids), as dcmtk swaps it.
WORD_VRS = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}


def match_byte_order(dataset: Dataset, little: bool, target_little: bool) -> None:
    """Byte-swap every word-valued element for a change of byte order, sequences included.

    pydicom converts the numbers of US, SS, UL, SL, FL, FD, AT... by value
    when it writes another byte order, but writes OW, OF, OL, OD and OV
    values as the bytes it holds: left alone, a big-endian object arrives
    little-endian labelled with its pixels (8-bit ones in OW too), palette
    LUTs, overlays and waveforms byte-swapped.  Ambiguous VRs (OB or OW,
    US or OW, US or SS) are resolved first, from Bits Allocated, the LUT
    Descriptor and Pixel Representation, as pydicom would resolve them
    when writing, so the swap follows the VR the element goes out with.
    ``little`` is the byte order the dataset was read in.
    """
    if little == target_little:
        return
    correct_ambiguous_vr(dataset, little)
    _swap_words(dataset)


def _swap_words(dataset: Dataset) -> None:
    """Reverse the bytes of each word of every WORD_VRS value (see match_byte_order)."""
    import numpy as np

    for element in dataset:  # converts raw elements, by their own byte order
        if element.VR == "SQ":
            for item in element.value:
                _swap_words(item)
            continue
        width = WORD_VRS.get(element.VR)
        value = element.value
        if width is None or not isinstance(value, bytes | bytearray) or len(value) < width:
            continue
        whole = len(value) - len(value) % width  # a malformed odd tail stays as it is
        words = np.frombuffer(value, dtype=f"u{width}", count=whole // width)
        element.value = words.byteswap().tobytes() + bytes(value[whole:])


class PaddedDataSet:
    """A stored data set of odd length, read with one 0x00 byte after it.

    A deflate stream may end on an odd byte, but every PDV fragment must be
    even (PS3.8 9.3.5.1, PS3.5 7.1): dcmtk receivers (storescp, Orthanc)
    abort on "DIMSE: Odd Fragment Length".  dcmtk's own senders add one
    zero pad byte after the deflated stream (dimse.cc), which inflating
    ignores; so does this.  Reads return exactly what is asked until the
    padded end, so the pad byte joins the last fragment instead of making a
    one-byte one of its own.
    """

    def __init__(self, handle: BinaryIO, length: int) -> None:
        self.handle = handle
        self.left = length  # data set bytes not read yet; the pad byte follows them
        self.padded = False

    def read(self, size: int = -1) -> bytes:
        if self.padded:
            return b""
        wanted = self.left + 1 if size < 0 else min(size, self.left + 1)
        data = self.handle.read(min(wanted, self.left))
        self.left -= len(data)
        if self.left == 0 and len(data) < wanted:
            data += b"\x00"
            self.padded = True
        return data

    def close(self) -> None:
        self.handle.close()

    def __enter__(self) -> PaddedDataSet:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def uncompressed_target(sop_class: str, accepted: set[tuple[str, str]]) -> str:
    """The accepted uncompressed syntax a decompressed object travels in (little endian first)."""
    return next(ts for ts in UNCOMPRESSED if (sop_class, ts) in accepted)


def payload(job: Outbound, route: Route, prepared: Path | Dataset,
            accepted: set[tuple[str, str]]) -> tuple[str, BinaryIO | PaddedDataSet]:
    """(transfer syntax of the context to use, the data set bytes to send).

    A file goes as stored: its data set after the File Meta, streamed (the
    relabel route too: .70 and .57 data sets are encoded the same).  A
    prepared Dataset is encoded in the syntax of the context it goes over.
    """
    if isinstance(prepared, Path):
        handle = open(prepared, "rb")
        try:  # echoes' own meta reader: pynetdicom's split_dataset parsed it with
            # pydicom, ~20 small reads and seeks per object (strace, issue 7)
            size = os.fstat(handle.fileno()).st_size
            _meta, offset = read_meta(handle, size)
            handle.seek(offset)
        except BaseException:
            handle.close()
            raise
        if (size - offset) % 2 and job.transfer_syntax in DEFLATED:
            return job.transfer_syntax, PaddedDataSet(handle, size - offset)
        return job.transfer_syntax, handle
    if route.kind == "relabel":
        syntax = JPEGLossless
    elif route.target:  # reencode, decompress: prepare() matched its byte order
        syntax = route.target
    else:  # prepared without a target: match the byte order of the one chosen here
        syntax = uncompressed_target(job.sop_class_uid, accepted)
        match_byte_order(prepared, prepared.file_meta.TransferSyntaxUID != ExplicitVRBigEndian,
                         syntax != ExplicitVRBigEndian)
    try:
        data = encode_dataset(prepared, syntax == ImplicitVRLittleEndian,
                              syntax != ExplicitVRBigEndian)
    except Exception as exc:
        raise ValueError(f"cannot encode the data set in {syntax}") from exc
    return syntax, io.BytesIO(data)
