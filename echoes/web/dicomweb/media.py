"""Accept negotiation for DICOMweb answers (PS3.18 8.7), pure.

Why its own module: which representation goes back (the stored bytes,
Explicit VR Little Endian, JSON) is decided from the Accept header before
anything is read or streamed, so that a type we cannot produce is a 406
with its reason rather than a broken answer half sent.
"""

from __future__ import annotations

import math
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


#: Rendered media types (PS3.18 8.7.4) -> the renderer's format; JPEG first: the
#: default when the client takes any image.
RENDERED_TYPES = {"image/jpeg": "jpeg", "image/png": "png"}
_RENDERED_WILDCARDS = {"*/*": "jpeg", "image/*": "jpeg"}
#: ``window`` functions PS3.18 8.3.5.1.3 names -> VOI LUT Function (PS3.3 C.11.2.1.3).
WINDOW_FUNCTIONS = {"linear": "LINEAR", "linear-exact": "LINEAR_EXACT", "sigmoid": "SIGMOID"}


def rendered_format(header: str | None) -> str | None:
    """``"jpeg"`` or ``"png"`` for a rendered answer, the first the Accept header allows;
    None when it allows neither (406)."""
    for media_range in parse_accept(header):
        chosen = RENDERED_TYPES.get(media_range.type) or _RENDERED_WILDCARDS.get(
            media_range.type)
        if chosen:
            return chosen
    return None


def parse_window(text: str | None) -> tuple[float, float, str] | None:
    """``window=center,width[,function]`` -> (center, width, VOI LUT Function); None if
    absent.  ValueError (a 400) for anything else: not numbers, width not > 0, an unknown
    function.  The values are in modality (rescaled) units, as the file's own window."""
    if text is None:
        return None
    pieces = [piece.strip() for piece in text.split(",")]
    if len(pieces) not in (2, 3):
        raise ValueError(f"window={text!r}: expected center,width[,function]")
    try:
        center, width = float(pieces[0]), float(pieces[1])
    except ValueError:
        raise ValueError(f"window={text!r}: center and width must be numbers") from None
    if not (math.isfinite(center) and math.isfinite(width)) or width <= 0:
        raise ValueError(f"window={text!r}: width must be > 0")
    function = WINDOW_FUNCTIONS.get(pieces[2].lower() if len(pieces) == 3 else "linear")
    if function is None:
        raise ValueError(f"window={text!r}: the function is one of "
                         f"{', '.join(WINDOW_FUNCTIONS)}")
    return center, width, function
