"""Transfer syntaxes (PS3.5 section 10, PS3.6 Annex A): one table for all of echoes.dicom.

Each row says how a data set in that syntax is encoded: implicit or
explicit VR, byte order, whether the whole data set is a deflate stream,
whether the pixel data is encapsulated (compressed), and whether echoes
accepts it on the store port and may propose it when forwarding.  Every
other module (data set encoding, the Part 10 walk, the store's
presentation contexts, the sender's proposals) reads this table instead of
keeping its own list.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TransferSyntax:
    """One transfer syntax and how its data sets are encoded."""

    uid: str
    name: str
    implicit: bool = False
    little_endian: bool = True
    #: The data set after the File Meta is one raw deflate stream.
    deflated: bool = False
    #: Pixel data is encapsulated: only decompression makes it uncompressed.
    encapsulated: bool = False
    #: Accepted by the store port (and stored as received).
    accepted: bool = True


IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"

#: In preference order: the three uncompressed syntaxes first (explicit little
#: endian preferred), then the compressed ones in the order the conformance
#: statement lists them.
TABLE: tuple[TransferSyntax, ...] = (
    TransferSyntax(EXPLICIT_VR_LITTLE_ENDIAN, "Explicit VR Little Endian"),
    TransferSyntax(IMPLICIT_VR_LITTLE_ENDIAN, "Implicit VR Little Endian", implicit=True),
    TransferSyntax(EXPLICIT_VR_BIG_ENDIAN, "Explicit VR Big Endian", little_endian=False),
    TransferSyntax(DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, "Deflated Explicit VR Little Endian",
                   deflated=True),
    TransferSyntax("1.2.840.10008.1.2.4.50", "JPEG Baseline (Process 1)", encapsulated=True),
    TransferSyntax("1.2.840.10008.1.2.4.51", "JPEG Extended (Process 2 and 4)",
                   encapsulated=True),
    TransferSyntax("1.2.840.10008.1.2.4.57", "JPEG Lossless, Non-Hierarchical (Process 14)",
                   encapsulated=True),
    TransferSyntax("1.2.840.10008.1.2.4.70", "JPEG Lossless, Non-Hierarchical, First-Order "
                   "Prediction (Process 14 [Selection Value 1])", encapsulated=True),
    TransferSyntax("1.2.840.10008.1.2.4.80", "JPEG-LS Lossless Image Compression",
                   encapsulated=True),
    TransferSyntax("1.2.840.10008.1.2.4.81", "JPEG-LS Lossy (Near-Lossless) Image Compression",
                   encapsulated=True),
    TransferSyntax("1.2.840.10008.1.2.4.90", "JPEG 2000 Image Compression (Lossless Only)",
                   encapsulated=True),
    TransferSyntax("1.2.840.10008.1.2.4.91", "JPEG 2000 Image Compression", encapsulated=True),
    TransferSyntax("1.2.840.10008.1.2.4.201", "High-Throughput JPEG 2000 Image Compression "
                   "(Lossless Only)", encapsulated=True),
    TransferSyntax("1.2.840.10008.1.2.4.202", "High-Throughput JPEG 2000 with RPCL Options "
                   "Image Compression (Lossless Only)", encapsulated=True),
    TransferSyntax("1.2.840.10008.1.2.4.203", "High-Throughput JPEG 2000 Image Compression",
                   encapsulated=True),
    TransferSyntax("1.2.840.10008.1.2.5", "RLE Lossless", encapsulated=True),
    # Not accepted; treated as a deflated data set wherever one is read
    # (the Part 10 walk, the sender), as echoes always has.
    TransferSyntax("1.2.840.10008.1.2.8.1", "Deflated Image Frame Compression",
                   deflated=True, accepted=False),
)

BY_UID: dict[str, TransferSyntax] = {ts.uid: ts for ts in TABLE}

#: The three uncompressed syntaxes of the conformance statement, preferred first.
UNCOMPRESSED: tuple[str, ...] = tuple(
    ts.uid for ts in TABLE if ts.accepted and not ts.deflated and not ts.encapsulated)
#: Compressed syntaxes accepted and stored as received (SPEC, DICOM behaviour).
COMPRESSED: tuple[str, ...] = tuple(
    ts.uid for ts in TABLE if ts.accepted and (ts.deflated or ts.encapsulated))
#: Syntaxes whose data set is a deflate stream, of any length (PS3.5 A.5).
DEFLATED: frozenset[str] = frozenset(ts.uid for ts in TABLE if ts.deflated)
#: Syntaxes whose pixel data is encapsulated.
ENCAPSULATED: frozenset[str] = frozenset(ts.uid for ts in TABLE if ts.encapsulated)


def encoding_of(uid: str) -> tuple[bool, bool]:
    """(implicit VR, little endian) of a syntax; an unknown one is read as
    explicit VR little endian, as PS3.5 A.4 has every encapsulated syntax.
    """
    ts = BY_UID.get(uid)
    return (ts.implicit, ts.little_endian) if ts is not None else (False, True)
