"""Index documents -> DICOM JSON (``application/dicom+json``, PS3.18 F.2).

Why our own and not pydicom's ``Dataset.to_json_dict``: QIDO answers are
built from the index's plain documents (DICOM string forms, several values
joined by backslash), not from data sets; making a pydicom Dataset of each
of 100,000 studies only to serialise it would cost more than the search.
The rules are few: each attribute is ``"GGGGEEEE": {"vr": VR, "Value":
[...]}`` in tag order; an empty attribute has no ``Value``; PN values are
objects with ``Alphabetic`` (and ``Ideographic``/``Phonetic`` groups after
``=``); IS, DS and the binary number VRs are JSON numbers (F.2.3).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from pydicom.datadict import dictionary_VR, tag_for_keyword

NUMBER_VRS = frozenset({"US", "SS", "UL", "SL", "FL", "FD", "UV", "SV"})
PN_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")


def _person_name(text: str) -> dict[str, str] | None:
    if not text:
        return None
    groups = text.split("=")
    return {name: value for name, value in zip(PN_GROUPS, groups, strict=False) if value}


def _number(vr: str, text: str) -> int | float | str | None:
    text = text.strip()
    if not text:
        return None
    try:
        if vr == "DS" or vr in ("FL", "FD"):
            number = float(text)
            return int(number) if number.is_integer() and "." not in text \
                and "e" not in text.lower() else number
        return int(text)
    except ValueError:
        return text  # a malformed number stays as received rather than vanish


def element(vr: str, value: object) -> dict[str, object]:
    """One attribute's JSON object from an index value (str, list of str, or int)."""
    if isinstance(value, list):
        items = [str(v) for v in value]
    elif isinstance(value, int | float) and not isinstance(value, bool):
        items = [str(value)]
    else:
        text = "" if value is None else str(value)
        items = text.split("\\") if text else []
    out: dict[str, object] = {"vr": vr}
    if not items:
        return out
    if vr == "PN":
        out["Value"] = [_person_name(item) for item in items]
    elif vr in NUMBER_VRS or vr in ("IS", "DS"):
        out["Value"] = [_number(vr, item) for item in items]
    else:
        out["Value"] = [item if item != "" else None for item in items]
    return out


def _vr(tag: int) -> str:
    vr = dictionary_VR(tag)
    return vr.split(" or ")[0] if " or " in vr else vr


def to_dicom_json(doc: Mapping[str, object], keywords: Iterable[str] | None = None
                  ) -> dict[str, dict[str, object]]:
    """The DICOM JSON object of ``doc`` (keys: DICOM keywords; others are skipped),
    restricted to ``keywords`` when given, in tag order."""
    wanted = doc.keys() if keywords is None else keywords
    tagged = []
    for keyword in wanted:
        tag = tag_for_keyword(keyword)
        if tag is None or keyword not in doc:
            continue
        tagged.append((tag, keyword))
    return {f"{tag:08X}": element(_vr(tag), doc[keyword]) for tag, keyword in sorted(tagged)}
