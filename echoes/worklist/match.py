"""Modality Worklist matching (PS3.4 C.2.2.2), on plain Python values.

No sockets, no files, no pydicom data sets: a worklist item and a query are
both *trees* -- ``dict[tag, value]`` where a value is a ``str`` (DICOM string
form, several values joined by backslash) or, for a sequence, a list of such
dicts.  The MWL SCP turns the C-FIND identifier into a query tree once; the
worklist index keeps every item as a tree.  Keeping this logic pure lets the
tests exercise every matching rule in microseconds.

What is implemented, per attribute of the query with a non-empty value:

- universal matching: an empty value (or an empty sequence) matches all;
- single value matching, and ``*``/``?`` wildcards for text VRs;
- person names (PN) compare case-insensitively (``casefold``), and trailing
  empty name components are ignored (``DOE^JANE^^`` equals ``DOE^JANE``);
- a list of UIDs (``1.2.3\\1.2.4``) matches any of them;
- date, time and datetime ranges ``A-B``, ``-B``, ``A-``;
- when a query item holds both a date and a time key of a pair in ``DATE_TIME_PAIRS``
  (Scheduled Procedure Step Start Date/Time) and the time is a range, the two
  are matched as one combined date-time range, as dcmtk's wlmscpfs does:
  ``20261130-20261201`` with ``2200-0600`` is the night from 22:00 to 06:00;
- sequence matching: an item of the query sequence matches when one item of
  the worklist sequence matches all its keys; only matching items come back.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Tree = dict[int, Any]
Predicate = Callable[[Tree], bool]

#: VRs whose values may carry ``*`` and ``?`` wildcards (PS3.4 C.2.2.2.4).
WILDCARD_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})
RANGE_VRS = frozenset({"DA", "TM", "DT"})

#: (date tag, time tag) pairs matched as one date-time when both are asked.
DATE_TIME_PAIRS: tuple[tuple[int, int], ...] = (
    (0x00400002, 0x00400003),  # Scheduled Procedure Step Start Date / Time
    (0x00400004, 0x00400005),  # Scheduled Procedure Step End Date / Time
)

#: Keys that describe the message rather than the worklist: never matched.
NOT_MATCHED = frozenset({0x00080005})  # Specific Character Set

_DATETIME_MIN = ""
_DATETIME_MAX = "\uffff"


@dataclass(frozen=True)
class QueryKey:
    """One attribute of the query: its VR and its value (str or list of trees)."""

    vr: str
    value: Any


@dataclass
class Query:
    """A compiled query: predicates plus the tree of keys to return."""

    keys: dict[int, QueryKey]
    predicates: list[Predicate] = field(default_factory=list)
    #: sequence tag -> compiled sub-query, for selecting matching items.
    sequences: dict[int, Query] = field(default_factory=dict)
    #: tag -> what an item's value must be, for keys an index can serve:
    #: ``("values", frozenset)`` (exact, case-sensitive) or ``("range", low, high)``.
    constraints: dict[int, tuple] = field(default_factory=dict)

    def matches(self, item: Tree) -> bool:
        """True when ``item`` satisfies every matching key."""
        return all(predicate(item) for predicate in self.predicates)

    def constraint(self, path: tuple[int, ...]) -> tuple | None:
        """The index constraint at ``path`` (a tag, or sequence tag then tag)."""
        query: Query | None = self
        for tag in path[:-1]:
            query = query.sequences.get(tag) if query else None
        return query.constraints.get(path[-1]) if query else None

    def select(self, item: Tree) -> Tree:
        """The response tree: exactly the queried keys, filled from ``item``.

        A key the item lacks comes back empty.  A queried sequence with keys
        returns the item's matching sequence items, each reduced to the
        keys of the query's sequence item; an empty queried sequence returns
        the item's whole sequence.
        """
        response: Tree = {}
        for tag, key in self.keys.items():
            value = item.get(tag)
            if key.vr != "SQ":
                response[tag] = "" if value is None or isinstance(value, list) else value
                continue
            sub = self.sequences.get(tag)
            children = value if isinstance(value, list) else []
            if sub is None:
                response[tag] = list(children)
            else:
                response[tag] = [sub.select(child) for child in children if sub.matches(child)]
        return response


def compile_query(keys: dict[int, QueryKey]) -> Query:
    """Turn a query tree into predicates (done once per C-FIND)."""
    query = Query(keys=keys)
    combined: set[int] = set()
    for date_tag, time_tag in DATE_TIME_PAIRS:
        date_key, time_key = keys.get(date_tag), keys.get(time_tag)
        if (date_key and time_key and _text(date_key.value) and "-" in _text(time_key.value)):
            date_text = _text(date_key.value)
            query.predicates.append(
                _combined_range(date_tag, time_tag, date_text, _text(time_key.value)))
            combined.update((date_tag, time_tag))
            low, _, high = date_text.partition("-") if "-" in date_text else (
                date_text, "", date_text)
            query.constraints[date_tag] = (
                "range", low.strip() or _DATETIME_MIN, high.strip() or _DATETIME_MAX)
    for tag, key in keys.items():
        if tag in combined or tag in NOT_MATCHED:
            continue
        if key.vr == "SQ":
            sub_trees = key.value if isinstance(key.value, list) else []
            sub_keys = sub_trees[0] if sub_trees else {}
            if not sub_keys:
                continue  # empty sequence: universal, whole sequence returned
            sub = compile_query(sub_keys)
            query.sequences[tag] = sub
            if sub.predicates:
                query.predicates.append(_sequence_predicate(tag, sub))
            continue
        text = _text(key.value)
        if not text.strip() or key.vr in WILDCARD_VRS and not _fold(key.vr, text).strip("*"):
            continue  # universal matching (also "*", "^^^^", "*^" for names)
        query.predicates.append(_value_predicate(tag, key.vr, text))
        constraint = _constraint(key.vr, text)
        if constraint is not None:
            query.constraints[tag] = constraint
    return query


def _constraint(vr: str, text: str) -> tuple | None:
    """What an index may assume about a key: exact values or a date range."""
    if vr == "DA":
        if "-" in text:
            return ("range", *_range_bounds(vr, text))
        return ("values", frozenset({_normalize(vr, text)}))
    if vr == "PN" or vr in RANGE_VRS or "*" in text or "?" in text:
        return None
    return ("values", frozenset(part.strip(" ") for part in text.split("\\")))


def name_prefix(key: QueryKey) -> str | None:
    """The folded prefix a person-name key asks for (``DOE*`` -> ``doe``), when
    its only wildcard is one trailing ``*``: an index of folded names
    (:func:`index_keys` with ``PN``) then finds every match among names that
    start with it.  None for any other value."""
    text = _text(key.value)
    if key.vr != "PN" or "\\" in text or "?" in text:
        return None
    folded = _fold("PN", text)
    head = folded[:-1]
    if not folded.endswith("*") or not head or "*" in head:
        return None
    return head


def index_keys(vr: str, stored: str) -> set[str]:
    """The forms of a stored value that :attr:`Query.constraints` compare with:
    an index keyed by them finds every item a constraint can match (a multi-valued
    value under each of its values too, as the predicates split it)."""
    parts = [stored, *(stored.split("\\") if "\\" in stored else [])]
    if vr == "DA":
        return {_normalize(vr, part) for part in parts}
    if vr == "PN":
        return {_fold(vr, part) for part in parts}
    return {part.strip(" ") for part in parts}


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _sequence_predicate(tag: int, sub: Query) -> Predicate:
    def predicate(item: Tree) -> bool:
        children = item.get(tag)
        return isinstance(children, list) and any(sub.matches(child) for child in children)

    return predicate


def _value_predicate(tag: int, vr: str, text: str) -> Predicate:
    """Single value, wildcard, list or range matching for one attribute."""
    if vr == "UI":
        wanted = frozenset(part.strip() for part in text.split("\\"))
        return lambda item: _item_text(item, tag) in wanted
    if vr in RANGE_VRS and "-" in text:
        low, high = _range_bounds(vr, text)
        return lambda item: _in_range(_normalize(vr, _item_text(item, tag)), low, high)
    if vr in RANGE_VRS:
        wanted_value = _normalize(vr, text)
        return lambda item: _normalize(vr, _item_text(item, tag)) == wanted_value
    alternatives = [_pattern(vr, part) for part in text.split("\\")]

    def predicate(item: Tree) -> bool:
        stored = _item_text(item, tag)
        if not stored:
            return False
        candidates = [stored] + (stored.split("\\") if "\\" in stored else [])
        return any(match(_fold(vr, candidate)) for candidate in candidates
                   for match in alternatives)

    return predicate


def _pattern(vr: str, text: str) -> Callable[[str], bool]:
    """A matcher for one query value: exact, or wildcard for text VRs."""
    value = _fold(vr, text)
    if vr in WILDCARD_VRS and ("*" in value or "?" in value):
        regex = "".join(
            ".*" if char == "*" else "." if char == "?" else re.escape(char) for char in value)
        compiled = re.compile(regex, re.DOTALL)
        return lambda candidate: compiled.fullmatch(candidate) is not None
    return lambda candidate: candidate == value


def _fold(vr: str, text: str) -> str:
    """The comparable form of a value: trimmed; names case-folded, tail carets dropped."""
    text = text.strip(" ")
    if vr != "PN":
        return text
    groups = [group.rstrip("^ ") for group in text.split("=")]
    while len(groups) > 1 and not groups[-1]:
        groups.pop()
    text = "=".join(groups)
    return text.lower() if text.isascii() else "".join(_fold_character(c) for c in text)


def _fold_character(character: str) -> str:
    """Case-fold one character without changing the length (``?`` is one
    character): ``ß`` stays ``ß`` where ``casefold`` would give ``ss``."""
    for folded in (character.casefold(), character.lower()):
        if len(folded) == 1:
            return folded
    return character


def _item_text(item: Tree, tag: int) -> str:
    value = item.get(tag)
    return value if isinstance(value, str) else ""


# -- dates and times ---------------------------------------------------------


def normalize_time(text: str, upper: bool = False) -> str:
    """``HHMMSS.FFFFFF`` from any DICOM TM (also ``HH:MM``); missing parts
    are filled with the lowest value, or the highest when ``upper``."""
    text = text.strip().replace(":", "")
    if not text:
        return ""
    whole, _, fraction = text.partition(".")
    filler = "235959" if upper else "000000"
    whole = (whole + filler[len(whole):])[:6]
    fraction = (fraction + ("999999" if upper else "000000"))[:6]
    return f"{whole}.{fraction}"


def _normalize(vr: str, text: str, upper: bool = False) -> str:
    text = text.strip()
    if not text:
        return ""
    if vr == "TM":
        return normalize_time(text, upper)
    if vr == "DT":
        core = re.split(r"[+-]", text, maxsplit=1)[0]  # the UTC offset is not compared
        return core[:8] + normalize_time(core[8:] or ("23" if upper else "00"), upper)
    if vr == "DA":
        return text.replace(".", "")  # ACR-NEMA YYYY.MM.DD
    return text


def _range_bounds(vr: str, text: str) -> tuple[str, str]:
    low, _, high = text.partition("-")
    return (
        _normalize(vr, low) if low.strip() else _DATETIME_MIN,
        _normalize(vr, high, upper=True) if high.strip() else _DATETIME_MAX,
    )


def _in_range(value: str, low: str, high: str) -> bool:
    return bool(value) and low <= value <= high


def _combined_range(date_tag: int, time_tag: int, date_text: str, time_text: str) -> Predicate:
    """One date-time range from a date (single or range) and a time range."""
    date_low, _, date_high = date_text.partition("-") if "-" in date_text else (
        date_text, "", date_text)
    time_low, _, time_high = time_text.partition("-")
    date_low, date_high = date_low.strip(), date_high.strip()
    low = (date_low + normalize_time(time_low or "00")) if date_low else _DATETIME_MIN
    high = (date_high + normalize_time(time_high or "23", upper=True)) if date_high else (
        _DATETIME_MAX)

    def predicate(item: Tree) -> bool:
        date = _item_text(item, date_tag).strip()
        if not date:
            return False
        time = _item_text(item, time_tag)
        if not time.strip():
            # No time scheduled: the day itself must fall inside the range.
            return low[:8] <= date <= high[:8]
        return low <= date + normalize_time(time) <= high

    return predicate
