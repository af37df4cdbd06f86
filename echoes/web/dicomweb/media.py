"""Accept negotiation for DICOMweb answers (PS3.18 8.7), pure.

Why its own module: which representation goes back (the stored bytes,
Explicit VR Little Endian, JSON) is decided from the Accept header before
anything is read or streamed, so that a type we cannot produce is a 406
with its reason rather than a broken answer half sent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
#: ``transfer-syntax=*``: the stored syntax, byte for byte.
ANY_SYNTAX = "*"

JSON_TYPES = frozenset({"application/dicom+json", "application/json", "application/*", "*/*"})


@dataclass(frozen=True)
class MediaRange:
    """One media range of an Accept header."""

    type: str
    params: dict[str, str] = field(default_factory=dict)
    q: float = 1.0


_ITEM = re.compile(r'(?:[^,"]|"[^"]*")+')
_PARAM = re.compile(r'\s*([^=;\s]+)\s*=\s*("[^"]*"|[^;]*)')


def parse_accept(header: str | None) -> list[MediaRange]:
    """The ranges of ``header``, most preferred first (by q, then as written);
    q=0 ranges (refused) are left out.  An empty or absent header: ``*/*``."""
    if not header or not header.strip():
        return [MediaRange("*/*")]
    ranges = []
    for item in _ITEM.findall(header):
        pieces = item.split(";", 1)
        media = pieces[0].strip().lower()
        if not media:
            continue
        params: dict[str, str] = {}
        for name, value in _PARAM.findall(pieces[1] if len(pieces) > 1 else ""):
            params[name.lower()] = value.strip().strip('"')
        try:
            q = float(params.pop("q", "1"))
        except ValueError:
            q = 0.0
        if q > 0:
            ranges.append(MediaRange(media, params, q))
    return sorted(ranges, key=lambda r: -r.q)  # sorted() is stable: ties keep their order


def dicom_syntaxes(header: str | None) -> list[str]:
    """Transfer syntaxes acceptable for ``application/dicom`` parts, preferred first
    (``*``: as stored); [] when no range of ``header`` allows them (406).

    ``multipart/related; type="application/dicom"`` without a transfer-syntax,
    ``*/*`` and ``multipart/*`` mean Explicit VR Little Endian (PS3.18 8.7.3.5.2).
    """
    wanted: list[str] = []
    for media in parse_accept(header):
        if media.type in ("*/*", "multipart/*"):
            syntax = EXPLICIT_VR_LITTLE_ENDIAN
        elif media.type == "multipart/related" \
                and media.params.get("type", "application/dicom").lower() in (
                    "application/dicom", "application/*", "*/*"):
            syntax = media.params.get("transfer-syntax") or EXPLICIT_VR_LITTLE_ENDIAN
        else:
            continue
        if syntax not in wanted:
            wanted.append(syntax)
    return wanted


def octet_stream_syntaxes(header: str | None) -> list[str]:
    """Like :func:`dicom_syntaxes`, for ``application/octet-stream`` parts (bulk data,
    frames): uncompressed little endian bytes are what we send."""
    wanted: list[str] = []
    for media in parse_accept(header):
        if media.type in ("*/*", "multipart/*"):
            syntax = EXPLICIT_VR_LITTLE_ENDIAN
        elif media.type == "multipart/related" \
                and media.params.get("type", "application/octet-stream").lower() in (
                    "application/octet-stream", "application/*", "*/*"):
            syntax = media.params.get("transfer-syntax") or EXPLICIT_VR_LITTLE_ENDIAN
        elif media.type == "application/octet-stream":
            syntax = EXPLICIT_VR_LITTLE_ENDIAN
        else:
            continue
        if syntax not in wanted:
            wanted.append(syntax)
    return wanted


def json_acceptable(header: str | None) -> bool:
    """Whether ``application/dicom+json`` answers ``header`` (XML is not offered)."""
    return any(media.type in JSON_TYPES for media in parse_accept(header))
