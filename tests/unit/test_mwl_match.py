"""Unit tests of the pure Modality Worklist matching rules (``echoes.worklist.match``).

No sockets, no files: worklist items are trees built with ``parse_bytes`` from
keyword-form JSON, queries are trees of ``QueryKey`` built from keywords.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydicom.datadict import dictionary_VR, tag_for_keyword

from echoes.worklist.files import parse_bytes
from echoes.worklist.match import Query, QueryKey, compile_query, normalize_time

SPS = "ScheduledProcedureStepSequence"
START_DATE = "ScheduledProcedureStepStartDate"
START_TIME = "ScheduledProcedureStepStartTime"


# -- helpers -------------------------------------------------------------------------


def tag(keyword: str) -> int:
    value = tag_for_keyword(keyword)
    assert value is not None, keyword
    return value


def query_keys(spec: dict[str, Any]) -> dict[int, QueryKey]:
    """Keyword -> value to a query tree; a sequence takes a dict of sub-keys
    (its one query item) or a list (given as is: ``[]`` is an empty sequence)."""
    keys: dict[int, QueryKey] = {}
    for keyword, value in spec.items():
        vr = dictionary_VR(tag(keyword)).split(" or ")[0]
        if vr == "SQ":
            items = [query_keys(value)] if isinstance(value, dict) else [
                query_keys(sub) for sub in value]
            keys[tag(keyword)] = QueryKey("SQ", items)
        else:
            keys[tag(keyword)] = QueryKey(vr, value)
    return keys


def query(spec: dict[str, Any]) -> Query:
    return compile_query(query_keys(spec))


def item(**fields: Any) -> dict[int, Any]:
    """A worklist item tree from keyword-form JSON fields."""
    return parse_bytes(json.dumps(fields).encode())


def sps(**fields: Any) -> dict[str, Any]:
    return {
        "Modality": "CT",
        "ScheduledStationAETitle": "CT1",
        START_DATE: "20261130",
        START_TIME: "0930",
        "ScheduledPerformingPhysicianName": "QUINN^MICHAELA",
        "ScheduledProcedureStepID": "SPS1",
    } | fields


def full_item(sps_items: list[dict[str, Any]] | None = None, **fields: Any) -> dict[int, Any]:
    base: dict[str, Any] = {
        "SpecificCharacterSet": "ISO_IR 192",
        "AccessionNumber": "ACC001",
        "ReferringPhysicianName": "WELBY^MARCUS",
        "PatientName": "DOE^JANE",
        "PatientID": "12345",
        "PatientBirthDate": "19800115",
        "PatientSex": "F",
        "StudyInstanceUID": "1.2.3",
        "RequestingPhysician": "HOUSE^GREGORY",
        "AdmissionID": "ADM42",
        "RequestedProcedureID": "RP7",
        "RequestedProcedurePriority": "HIGH",
        SPS: sps_items if sps_items is not None else [sps()],
    }
    return item(**(base | fields))


def matches(spec: dict[str, Any], tree: dict[int, Any]) -> bool:
    return query(spec).matches(tree)


def sps_item(**fields: Any) -> dict[int, Any]:
    """An item whose only content is one scheduled procedure step with ``fields``."""
    return item(PatientID="12345", **{SPS: [fields]})


# -- every matching key of the conformance statement -------------------------------


@pytest.mark.parametrize(
    ("keyword", "hit", "miss"),
    [
        ("AccessionNumber", "ACC001", "ACC002"),
        ("ReferringPhysicianName", "WELBY^MARCUS", "KILDARE^JAMES"),
        ("PatientName", "DOE^JANE", "DOE^JOHN"),
        ("PatientID", "12345", "12346"),
        ("PatientBirthDate", "19800115", "19800116"),
        ("PatientSex", "F", "M"),
        ("RequestingPhysician", "HOUSE^GREGORY", "WILSON^JAMES"),
        ("AdmissionID", "ADM42", "ADM43"),
        ("RequestedProcedureID", "RP7", "RP8"),
        ("RequestedProcedurePriority", "HIGH", "STAT"),
    ],
)
def test_top_level_matching_key(keyword: str, hit: str, miss: str) -> None:
    tree = full_item()
    assert matches({keyword: hit}, tree)
    assert not matches({keyword: miss}, tree)


@pytest.mark.parametrize(
    ("keyword", "hit", "miss"),
    [
        ("Modality", "CT", "MR"),
        ("ScheduledStationAETitle", "CT1", "CT2"),
        (START_DATE, "20261130", "20261201"),
        (START_TIME, "0930", "0931"),
        ("ScheduledPerformingPhysicianName", "QUINN^MICHAELA", "QUINN^COLLEEN"),
    ],
)
def test_sequence_matching_key(keyword: str, hit: str, miss: str) -> None:
    tree = full_item()
    assert matches({SPS: {keyword: hit}}, tree)
    assert not matches({SPS: {keyword: miss}}, tree)


def test_all_keys_together() -> None:
    spec = {
        "AccessionNumber": "ACC001",
        "PatientName": "DOE^JANE",
        "PatientID": "12345",
        "PatientSex": "F",
        SPS: {"Modality": "CT", "ScheduledStationAETitle": "CT1", START_DATE: "20261130"},
    }
    assert matches(spec, full_item())
    assert not matches(spec | {"PatientSex": "M"}, full_item())
    assert not matches(spec | {SPS: {"Modality": "CT", "ScheduledStationAETitle": "CT2"}},
                       full_item())


def test_empty_query_matches_everything() -> None:
    assert matches({}, full_item())
    assert matches({}, item(PatientID="1"))


def test_specific_character_set_is_never_matched() -> None:
    tree = full_item()  # ISO_IR 192
    assert matches({"SpecificCharacterSet": "ISO_IR 100"}, tree)
    assert matches({"SpecificCharacterSet": "ISO_IR 100"}, item(PatientID="1"))


# -- single value, wildcards, universal matching -------------------------------------


@pytest.mark.parametrize(
    ("keyword", "pattern", "stored", "expected"),
    [
        ("AccessionNumber", "*", "ACC001", True),
        ("AccessionNumber", "**", "ACC001", True),
        ("AccessionNumber", "ACC*", "ACC001", True),
        ("AccessionNumber", "*001", "ACC001", True),
        ("AccessionNumber", "*C0*", "ACC001", True),
        ("AccessionNumber", "AC*01", "ACC001", True),
        ("AccessionNumber", "AC*02", "ACC001", False),
        ("AccessionNumber", "ACC001*", "ACC001", True),  # * matches zero characters
        ("AccessionNumber", "B*", "ACC001", False),
        ("AccessionNumber", "A.C*", "ACC001", False),  # regex characters are literal
        ("AccessionNumber", "A.C*", "A.C001", True),
        ("AccessionNumber", "ACC(01)*", "ACC001", False),
        ("PatientID", "1234?", "12345", True),
        ("PatientID", "12?45", "12345", True),
        ("PatientID", "?????", "12345", True),
        ("PatientID", "????", "12345", False),  # ? is exactly one character
        ("PatientID", "??????", "12345", False),
        ("PatientID", "123?", "12345", False),
        ("PatientID", "1?45", "12345", False),
        ("PatientID", "1?3*", "12345", True),
        ("PatientID", "12345", "123456", False),  # single value: no prefix match
        ("PatientID", "1234", "12345", False),
        ("PatientID", "12345", "12345", True),
        ("PatientID", "12345 ", "12345", True),  # trailing padding is not significant
        ("PatientID", "abc", "ABC", False),  # case-sensitive outside person names
        ("PatientName", "DOE*", "DOE^JANE", True),
        ("PatientName", "*^JANE", "DOE^JANE", True),
        ("PatientName", "D?E^JANE", "DOE^JANE", True),
        ("PatientName", "D?E^JAN", "DOE^JANE", False),
        ("PatientName", "SMITH*", "DOE^JANE", False),
        ("PatientSex", "?", "F", True),
        ("RequestedProcedurePriority", "H*", "HIGH", True),
        ("RequestedProcedurePriority", "S*", "HIGH", False),
        ("AdmissionID", "ADM?2", "ADM42", True),
        ("RequestedProcedureID", "RP*", "RP7", True),
        ("ReferringPhysicianName", "WEL*", "WELBY^MARCUS", True),
        ("RequestingPhysician", "HOUSE^G*", "HOUSE^GREGORY", True),
        ("RequestingPhysician", "HOUSE^J*", "HOUSE^GREGORY", False),
    ],
)
def test_wildcards_and_single_value(keyword: str, pattern: str, stored: str,
                                    expected: bool) -> None:
    assert matches({keyword: pattern}, item(**{keyword: stored})) is expected


@pytest.mark.parametrize(
    ("keyword", "pattern", "stored", "expected"),
    [
        ("Modality", "C?", "CT", True),
        ("Modality", "C*", "CT", True),
        ("Modality", "M*", "CT", False),
        ("ScheduledStationAETitle", "CT*", "CT1", True),
        ("ScheduledStationAETitle", "CT?", "CT1", True),
        ("ScheduledStationAETitle", "CT?", "CT12", False),
        ("ScheduledStationAETitle", "*1", "CT1", True),
        ("ScheduledPerformingPhysicianName", "quinn*", "QUINN^MICHAELA", True),
        ("ScheduledPerformingPhysicianName", "*^M?CHAELA", "QUINN^MICHAELA", True),
    ],
)
def test_wildcards_inside_the_sequence(keyword: str, pattern: str, stored: str,
                                       expected: bool) -> None:
    assert matches({SPS: {keyword: pattern}}, sps_item(**{keyword: stored})) is expected


@pytest.mark.parametrize(
    "keyword",
    ["AccessionNumber", "ReferringPhysicianName", "PatientName", "PatientID",
     "PatientBirthDate", "PatientSex", "StudyInstanceUID", "RequestingPhysician",
     "AdmissionID", "RequestedProcedureID", "RequestedProcedurePriority"],
)
def test_universal_matching(keyword: str) -> None:
    tree = full_item()
    lacking = item(PatientID="1") if keyword != "PatientID" else item(AccessionNumber="A")
    assert matches({keyword: ""}, tree)
    assert matches({keyword: ""}, lacking)  # an empty key matches an item that lacks it
    assert not query({keyword: ""}).predicates


@pytest.mark.parametrize(
    "keyword",
    ["Modality", "ScheduledStationAETitle", START_DATE, START_TIME,
     "ScheduledPerformingPhysicianName"],
)
def test_universal_matching_inside_the_sequence(keyword: str) -> None:
    assert matches({SPS: {keyword: ""}}, full_item())
    assert matches({SPS: {keyword: ""}}, sps_item(ScheduledProcedureStepID="X"))


@pytest.mark.parametrize(
    "keyword",
    ["AccessionNumber", "ReferringPhysicianName", "PatientName", "RequestingPhysician",
     "AdmissionID", "RequestedProcedureID", "RequestedProcedurePriority", "PatientSex"],
)
def test_star_alone_is_universal(keyword: str) -> None:
    assert matches({keyword: "*"}, full_item())
    assert matches({keyword: "*"}, item(PatientID="1"))  # even when the item lacks it
    assert not query({keyword: "*"}).predicates


@pytest.mark.parametrize(
    ("keyword", "value"),
    [
        ("AccessionNumber", "ACC001"),
        ("ReferringPhysicianName", "WELBY^MARCUS"),
        ("PatientName", "DOE*"),
        ("PatientID", "12345"),
        ("PatientBirthDate", "19800115"),
        ("PatientBirthDate", "19800101-19801231"),
        ("PatientSex", "F"),
        ("StudyInstanceUID", "1.2.3"),
        ("RequestingPhysician", "HOUSE^GREGORY"),
        ("AdmissionID", "ADM?2"),
        ("RequestedProcedureID", "RP7"),
        ("RequestedProcedurePriority", "HIGH"),
    ],
)
def test_valued_key_does_not_match_an_item_lacking_it(keyword: str, value: str) -> None:
    lacking = item(PatientID="1") if keyword != "PatientID" else item(AccessionNumber="A")
    assert not matches({keyword: value}, lacking)
    assert not matches({keyword: value}, item(**{keyword: ""}))  # present but empty


@pytest.mark.parametrize(
    ("keyword", "value"),
    [
        ("Modality", "CT"),
        ("ScheduledStationAETitle", "CT*"),
        (START_DATE, "20261130"),
        (START_DATE, "20261101-20261231"),
        (START_TIME, "0930"),
        (START_TIME, "0900-1000"),
        ("ScheduledPerformingPhysicianName", "QUINN^MICHAELA"),
    ],
)
def test_valued_sequence_key_does_not_match_an_item_lacking_it(keyword: str,
                                                               value: str) -> None:
    assert not matches({SPS: {keyword: value}}, sps_item(ScheduledProcedureStepID="X"))
    assert not matches({SPS: {keyword: value}}, item(PatientID="12345"))  # no sequence


def test_multiple_values_in_a_text_key_match_any() -> None:
    assert matches({SPS: {"Modality": "MR\\CT"}}, full_item())
    assert not matches({SPS: {"Modality": "MR\\US"}}, full_item())


def test_a_multi_valued_item_value_matches_by_any_of_its_values() -> None:
    tree = item(PatientID="1", OtherPatientIDs=["A1", "B2"])
    assert matches({"OtherPatientIDs": "B2"}, tree)
    assert matches({"OtherPatientIDs": "A?"}, tree)
    assert not matches({"OtherPatientIDs": "C3"}, tree)


# -- dates and times ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "stored", "expected"),
    [
        ("19800101-19801231", "19800115", True),
        ("19800115-19800115", "19800115", True),
        ("19800115-19800120", "19800115", True),  # inclusive low bound
        ("19800110-19800115", "19800115", True),  # inclusive high bound
        ("19800116-19800120", "19800115", False),
        ("19800101-19800114", "19800115", False),
        ("-19800115", "19800115", True),
        ("-19800115", "19000101", True),
        ("-19800114", "19800115", False),
        ("19800115-", "19800115", True),
        ("19800115-", "20991231", True),
        ("19800116-", "19800115", False),
        ("19800115", "19800115", True),
        ("19800115", "19800116", False),
        ("1980.01.15", "19800115", True),  # ACR-NEMA form of a date
    ],
)
def test_date_matching(pattern: str, stored: str, expected: bool) -> None:
    assert matches({"PatientBirthDate": pattern}, item(PatientBirthDate=stored)) is expected


@pytest.mark.parametrize(
    ("pattern", "stored", "expected"),
    [
        ("-10", "1045", True),  # -10 is up to 10:59:59.999999
        ("-10", "104559.999", True),
        ("-10", "1100", False),
        ("-10", "0000", True),
        ("0930-1000", "0930", True),
        ("0930-1000", "1000", True),
        ("0930-1000", "100059", True),
        ("0930-1000", "1001", False),
        ("0930-1000", "0929", False),
        ("0930-1000", "092959.99", False),
        ("0930-", "2359", True),
        ("0930-", "0929", False),
        ("09-10", "0900", True),
        ("09-10", "0859", False),
        ("09:30-10:00", "0945", True),
        ("0930-1000", "094512.123456", True),
        ("0930", "0930", True),
        ("0930", "093000", True),
        ("0930", "0931", False),
    ],
)
def test_time_matching(pattern: str, stored: str, expected: bool) -> None:
    tree = sps_item(**{START_TIME: stored})
    assert matches({SPS: {START_TIME: pattern}}, tree) is expected


@pytest.mark.parametrize(
    ("date", "time", "expected"),
    [
        ("20261130", "2300", True),
        ("20261130", "2200", True),
        ("20261130", "2159", False),
        ("20261130", "1200", False),
        ("20261201", "0500", True),
        ("20261201", "0600", True),
        ("20261201", "0700", False),
        ("20261201", "0601", False),
        ("20261129", "2300", False),
        ("20261202", "0100", False),
        ("20261130", None, True),  # no time: the day must fall inside the range
        ("20261201", None, True),
        ("20261202", None, False),
        ("20261129", None, False),
    ],
)
def test_combined_date_range_and_time_range(date: str, time: str | None,
                                            expected: bool) -> None:
    fields = {START_DATE: date} | ({START_TIME: time} if time is not None else {})
    spec = {SPS: {START_DATE: "20261130-20261201", START_TIME: "2200-0600"}}
    assert matches(spec, sps_item(**fields)) is expected


def test_combined_range_excludes_daytime_inside_the_span_as_documented() -> None:
    # The combined range is one continuous span: 22:00 on the first day to
    # 06:00 on the last day. Midday on 30/11 is before the span starts.
    spec = {SPS: {START_DATE: "20261130-20261201", START_TIME: "2200-0600"}}
    assert not matches(spec, sps_item(**{START_DATE: "20261130", START_TIME: "1200"}))
    assert not matches(spec, sps_item(**{START_DATE: "20261201", START_TIME: "0700"}))


@pytest.mark.parametrize(
    ("date", "time", "expected"),
    [
        ("20261130", "0800", True),
        ("20261130", "0900", True),
        ("20261130", "1200", True),
        ("20261130", "120059", True),  # 1200 as a high bound is 12:00:59.999999
        ("20261130", "1201", False),
        ("20261130", "1300", False),
        ("20261130", "0759", False),
        ("20261201", "0900", False),
        ("20261129", "0900", False),
        ("20261130", None, True),
        ("20261130", "", True),
        ("20261201", None, False),
    ],
)
def test_single_date_with_time_range(date: str, time: str | None, expected: bool) -> None:
    fields = {START_DATE: date} | ({START_TIME: time} if time is not None else {})
    spec = {SPS: {START_DATE: "20261130", START_TIME: "0800-1200"}}
    assert matches(spec, sps_item(**fields)) is expected


@pytest.mark.parametrize(
    ("date_query", "time_query", "date", "time", "expected"),
    [
        ("20261130-", "2200-", "20261130", "2300", True),
        ("20261130-", "2200-", "20261130", "2100", False),
        ("20261130-", "2200-", "20990101", "0000", True),
        ("-20261201", "-0600", "20200101", "1200", True),
        ("-20261201", "-0600", "20261201", "0600", True),
        ("-20261201", "-0600", "20261201", "0601", False),
        ("20261130-20261201", "-", "20261130", "0000", True),
        ("20261130-20261201", "-", "20261201", "2359", True),
        ("20261130-20261201", "-", "20261202", "0000", False),
    ],
)
def test_combined_open_ranges(date_query: str, time_query: str, date: str, time: str,
                              expected: bool) -> None:
    spec = {SPS: {START_DATE: date_query, START_TIME: time_query}}
    assert matches(spec, sps_item(**{START_DATE: date, START_TIME: time})) is expected


def test_combined_range_needs_a_date_on_the_item() -> None:
    spec = {SPS: {START_DATE: "20261130-20261201", START_TIME: "2200-0600"}}
    assert not matches(spec, sps_item(**{START_TIME: "2300"}))


def test_date_range_with_empty_time_is_a_plain_date_range() -> None:
    spec = {SPS: {START_DATE: "20261130-20261201", START_TIME: ""}}
    assert matches(spec, sps_item(**{START_DATE: "20261130", START_TIME: "0000"}))
    assert matches(spec, sps_item(**{START_DATE: "20261201", START_TIME: "2359"}))
    assert matches(spec, sps_item(**{START_DATE: "20261201"}))
    assert not matches(spec, sps_item(**{START_DATE: "20261202", START_TIME: "0000"}))


def test_time_range_with_empty_date_is_a_plain_time_range() -> None:
    spec = {SPS: {START_DATE: "", START_TIME: "0900-1000"}}
    assert matches(spec, sps_item(**{START_DATE: "20261130", START_TIME: "0930"}))
    assert matches(spec, sps_item(**{START_DATE: "20300101", START_TIME: "1000"}))
    assert not matches(spec, sps_item(**{START_DATE: "20261130", START_TIME: "1100"}))


def test_end_date_and_time_are_combined_too() -> None:
    spec = {SPS: {"ScheduledProcedureStepEndDate": "20261130-20261201",
                  "ScheduledProcedureStepEndTime": "2200-0600"}}
    inside = sps_item(ScheduledProcedureStepEndDate="20261201",
                      ScheduledProcedureStepEndTime="0500")
    outside = sps_item(ScheduledProcedureStepEndDate="20261130",
                       ScheduledProcedureStepEndTime="1200")
    assert matches(spec, inside)
    assert not matches(spec, outside)


# -- UIDs ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "stored", "expected"),
    [
        ("1.2.3\\1.2.4", "1.2.3", True),
        ("1.2.3\\1.2.4", "1.2.4", True),
        ("1.2.3\\1.2.4", "1.2.5", False),
        ("1.2.3\\1.2.4", "1.2.34", False),
        ("1.2.3", "1.2.3", True),
        ("1.2.3", "1.2.3.4", False),
        ("1.2.*", "1.2.3", False),  # no wildcards in UIDs
    ],
)
def test_uid_list_matching(pattern: str, stored: str, expected: bool) -> None:
    assert matches({"StudyInstanceUID": pattern}, item(StudyInstanceUID=stored)) is expected


def test_item_time_with_colons_is_normalized() -> None:
    # parse_bytes rejects "09:45", but a tree from elsewhere may hold the old form.
    tree = {tag(SPS): [{tag(START_DATE): "20261130", tag(START_TIME): "09:45"}]}
    assert matches({SPS: {START_TIME: "0930-1000"}}, tree)
    assert not matches({SPS: {START_TIME: "1000-1100"}}, tree)
    assert matches({SPS: {START_DATE: "20261130", START_TIME: "0930-1000"}}, tree)


def test_uid_list_does_not_match_an_item_lacking_the_uid() -> None:
    assert not matches({"StudyInstanceUID": "1.2.3\\1.2.4"}, item(PatientID="1"))


# -- sequences ----------------------------------------------------------------------


def two_steps() -> dict[int, Any]:
    return full_item([
        sps(Modality="CT", ScheduledStationAETitle="CT1", ScheduledProcedureStepID="SPS1"),
        sps(Modality="MR", ScheduledStationAETitle="MR1", ScheduledProcedureStepID="SPS2",
            **{START_DATE: "20261201", START_TIME: "1400"}),
    ])


def test_select_returns_only_the_matching_sequence_item() -> None:
    q = query({SPS: {"Modality": "MR", "ScheduledStationAETitle": "MR1",
                     "ScheduledProcedureStepID": ""}})
    tree = two_steps()
    assert q.matches(tree)
    steps = q.select(tree)[tag(SPS)]
    assert steps == [{tag("Modality"): "MR", tag("ScheduledStationAETitle"): "MR1",
                      tag("ScheduledProcedureStepID"): "SPS2"}]


def test_sub_keys_must_match_in_the_same_sequence_item() -> None:
    tree = two_steps()
    # CT is on CT1 and MR on MR1: no single step has modality CT at MR1.
    assert not matches({SPS: {"Modality": "CT", "ScheduledStationAETitle": "MR1"}}, tree)
    assert not matches({SPS: {"Modality": "MR", START_DATE: "20261130"}}, tree)
    assert matches({SPS: {"Modality": "MR", START_DATE: "20261201"}}, tree)


def test_sequence_wildcard_selects_every_matching_item() -> None:
    q = query({SPS: {"ScheduledStationAETitle": "*1", "ScheduledProcedureStepID": ""}})
    steps = q.select(two_steps())[tag(SPS)]
    assert [step[tag("ScheduledProcedureStepID")] for step in steps] == ["SPS1", "SPS2"]


def test_sequence_with_only_universal_keys_returns_every_item_reduced() -> None:
    q = query({SPS: {"Modality": "", "ScheduledProcedureStepID": ""}})
    assert not q.predicates
    steps = q.select(two_steps())[tag(SPS)]
    assert steps == [
        {tag("Modality"): "CT", tag("ScheduledProcedureStepID"): "SPS1"},
        {tag("Modality"): "MR", tag("ScheduledProcedureStepID"): "SPS2"},
    ]


@pytest.mark.parametrize("empty", [{}, []], ids=["empty-item", "no-item"])
def test_empty_query_sequence_returns_the_whole_sequence(empty: Any) -> None:
    tree = two_steps()
    q = query({"PatientID": "", SPS: empty})
    assert q.matches(tree)
    assert q.select(tree)[tag(SPS)] == tree[tag(SPS)]
    assert len(q.select(tree)[tag(SPS)]) == 2
    assert q.matches(item(PatientID="1"))  # universal: even without a sequence
    assert q.select(item(PatientID="1"))[tag(SPS)] == []


def test_sequence_query_does_not_match_an_item_without_the_sequence() -> None:
    assert not matches({SPS: {"Modality": "CT"}}, item(PatientID="12345"))
    assert not matches({SPS: {"Modality": "CT"}}, item(PatientID="12345", **{SPS: []}))


def test_sequence_and_top_level_keys_must_all_match() -> None:
    tree = two_steps()
    assert matches({"PatientID": "12345", SPS: {"Modality": "MR"}}, tree)
    assert not matches({"PatientID": "99999", SPS: {"Modality": "MR"}}, tree)
    assert not matches({"PatientID": "12345", SPS: {"Modality": "US"}}, tree)


# -- person names -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "stored", "expected"),
    [
        ("doe^jane", "DOE^JANE", True),
        ("DOE^JANE", "doe^jane", True),
        ("Doe^Jane", "DOE^JANE", True),
        ("MÜLLER*", "Müller^Hans", True),
        ("müller^hans", "MÜLLER^HANS", True),
        ("MULLER*", "Müller^Hans", False),
        ("DOE^JANE^^", "DOE^JANE", True),
        ("DOE^JANE", "DOE^JANE^^", True),
        ("DOE^JANE^^^^", "DOE^JANE^", True),
        ("DOE^JANE^^", "DOE^JANET", False),
        ("DOE^JANE", "DOE^JANET", False),
        ("DOE", "DOE^JANE", False),
        ("DOE^", "DOE", True),
        ("DOE^JANE=", "DOE^JANE", True),  # an empty trailing group is ignored too
        ("DOE^JANE", "DOE^JANE==", True),
        ("doe^j*", "DOE^JANE^^", True),
    ],
)
def test_person_names(pattern: str, stored: str, expected: bool) -> None:
    assert matches({"PatientName": pattern}, item(PatientName=stored)) is expected


def test_person_name_rules_apply_to_every_pn_key() -> None:
    tree = full_item()
    assert matches({"ReferringPhysicianName": "welby^marcus^^"}, tree)
    assert matches({"RequestingPhysician": "house^gregory"}, tree)
    assert matches({SPS: {"ScheduledPerformingPhysicianName": "Quinn^Michaela^"}}, tree)


def test_other_vrs_stay_case_sensitive() -> None:
    tree = full_item()
    assert not matches({"AccessionNumber": "acc001"}, tree)
    assert not matches({SPS: {"Modality": "ct"}}, tree)
    assert not matches({SPS: {"ScheduledStationAETitle": "ct1"}}, tree)


def test_question_mark_matches_one_character_that_casefolds_to_two() -> None:
    assert matches({"PatientName": "STRA?E^HANS"}, item(PatientName="Straße^Hans"))


@pytest.mark.parametrize("empty_name", ["^", "^^^^", "^^^^=^^^^"])
def test_person_name_of_only_carets_is_universal(empty_name: str) -> None:
    assert matches({"PatientName": empty_name}, item(PatientName="DOE^JANE"))


# -- Query.select -------------------------------------------------------------------


def test_select_returns_exactly_the_queried_keys() -> None:
    q = query({
        "PatientName": "",
        "PatientID": "12345",
        "PatientWeight": "",  # the item lacks it
        "StudyInstanceUID": "",
        SPS: {"Modality": "", START_DATE: "", "ScheduledProcedureStepDescription": ""},
    })
    tree = full_item()
    assert q.matches(tree)
    assert q.select(tree) == {
        tag("PatientName"): "DOE^JANE",
        tag("PatientID"): "12345",
        tag("PatientWeight"): "",
        tag("StudyInstanceUID"): "1.2.3",
        tag(SPS): [{
            tag("Modality"): "CT",
            tag(START_DATE): "20261130",
            tag("ScheduledProcedureStepDescription"): "",
        }],
    }


def test_select_leaves_out_keys_not_queried() -> None:
    tree = full_item()
    response = query({"PatientID": ""}).select(tree)
    assert set(response) == {tag("PatientID")}
    assert tag("PatientName") not in response
    assert tag(SPS) not in response


def test_select_keeps_the_item_value_not_the_query_value() -> None:
    tree = full_item()
    response = query({"PatientName": "doe^jane", SPS: {"Modality": "C*"}}).select(tree)
    assert response[tag("PatientName")] == "DOE^JANE"
    assert response[tag(SPS)] == [{tag("Modality"): "CT"}]


def test_select_of_a_queried_sequence_the_item_lacks_is_empty() -> None:
    response = query({"PatientID": "", SPS: {"Modality": ""}}).select(item(PatientID="1"))
    assert response == {tag("PatientID"): "1", tag(SPS): []}


def test_select_of_a_non_sequence_key_holding_a_sequence_is_empty() -> None:
    tree = full_item()
    keys = {tag(SPS): QueryKey("LO", "")}  # asked with a wrong VR
    assert compile_query(keys).select(tree) == {tag(SPS): ""}


def test_select_with_an_empty_query_is_empty() -> None:
    assert query({}).select(full_item()) == {}


def test_select_does_not_alias_the_item_sequence_list() -> None:
    tree = two_steps()
    steps = query({SPS: []}).select(tree)[tag(SPS)]
    steps.clear()
    assert len(tree[tag(SPS)]) == 2


# -- Query.constraint ---------------------------------------------------------------


def in_constraint(constraint: tuple, value: str) -> bool:
    if constraint[0] == "values":
        return value in constraint[1]
    return constraint[1] <= value <= constraint[2]


@pytest.mark.parametrize(
    ("spec", "path", "expected"),
    [
        ({"PatientID": "12345"}, ("PatientID",), ("values", frozenset({"12345"}))),
        ({"PatientID": "12345 "}, ("PatientID",), ("values", frozenset({"12345"}))),
        ({"AccessionNumber": "A1\\A2"}, ("AccessionNumber",),
         ("values", frozenset({"A1", "A2"}))),
        ({"StudyInstanceUID": "1.2.3\\1.2.4"}, ("StudyInstanceUID",),
         ("values", frozenset({"1.2.3", "1.2.4"}))),
        ({SPS: {"Modality": "CT"}}, (SPS, "Modality"), ("values", frozenset({"CT"}))),
        ({SPS: {"ScheduledStationAETitle": "CT1"}}, (SPS, "ScheduledStationAETitle"),
         ("values", frozenset({"CT1"}))),
        ({SPS: {START_DATE: "20261130"}}, (SPS, START_DATE),
         ("values", frozenset({"20261130"}))),
        ({SPS: {START_DATE: "20261130-20261201"}}, (SPS, START_DATE),
         ("range", "20261130", "20261201")),
        ({"PatientBirthDate": "19800101-19801231"}, ("PatientBirthDate",),
         ("range", "19800101", "19801231")),
        ({SPS: {START_DATE: "20261130-20261201", START_TIME: "2200-0600"}},
         (SPS, START_DATE), ("range", "20261130", "20261201")),
        ({SPS: {START_DATE: "20261130", START_TIME: "0800-1200"}},
         (SPS, START_DATE), ("range", "20261130", "20261130")),
    ],
)
def test_constraint_for_exact_keys_and_date_ranges(spec: dict[str, Any],
                                                   path: tuple[str, ...],
                                                   expected: tuple) -> None:
    assert query(spec).constraint(tuple(tag(keyword) for keyword in path)) == expected


@pytest.mark.parametrize(
    ("spec", "path"),
    [
        ({"PatientID": "123*"}, ("PatientID",)),
        ({"PatientID": "123?5"}, ("PatientID",)),
        ({"AccessionNumber": "A1\\A*"}, ("AccessionNumber",)),
        ({"PatientID": "*"}, ("PatientID",)),
        ({"PatientID": ""}, ("PatientID",)),
        ({"PatientName": "DOE^JANE"}, ("PatientName",)),
        ({"PatientName": "DOE*"}, ("PatientName",)),
        ({SPS: {"ScheduledPerformingPhysicianName": "QUINN^MICHAELA"}},
         (SPS, "ScheduledPerformingPhysicianName")),
        ({SPS: {"Modality": "C*"}}, (SPS, "Modality")),
        ({SPS: {START_TIME: "0930"}}, (SPS, START_TIME)),
        ({SPS: {START_TIME: "0900-1000"}}, (SPS, START_TIME)),
        ({SPS: {START_DATE: "20261130-20261201", START_TIME: "2200-0600"}},
         (SPS, START_TIME)),
        ({SPS: {"Modality": "CT"}}, ("Modality",)),  # not at the top level
        ({"PatientID": "1"}, (SPS, "Modality")),  # sequence not queried
        ({SPS: {}}, (SPS, "Modality")),
        ({SPS: []}, (SPS, "Modality")),
        ({"SpecificCharacterSet": "ISO_IR 192"}, ("SpecificCharacterSet",)),
    ],
)
def test_no_constraint_for_wildcards_names_times_and_unqueried(spec: dict[str, Any],
                                                               path: tuple[str, ...]) -> None:
    assert query(spec).constraint(tuple(tag(keyword) for keyword in path)) is None


@pytest.mark.parametrize(
    ("spec", "path", "low_ok", "high_ok"),
    [
        ({"PatientBirthDate": "-19801231"}, ("PatientBirthDate",), "00000101", "19801231"),
        ({"PatientBirthDate": "19800101-"}, ("PatientBirthDate",), "19800101", "99991231"),
        ({SPS: {START_DATE: "20261130-", START_TIME: "2200-"}}, (SPS, START_DATE),
         "20261130", "99991231"),
        ({SPS: {START_DATE: "-20261201", START_TIME: "-0600"}}, (SPS, START_DATE),
         "00000101", "20261201"),
    ],
)
def test_open_date_range_constraint(spec: dict[str, Any], path: tuple[str, ...],
                                    low_ok: str, high_ok: str) -> None:
    constraint = query(spec).constraint(tuple(tag(keyword) for keyword in path))
    assert constraint is not None and constraint[0] == "range"
    assert in_constraint(constraint, low_ok)
    assert in_constraint(constraint, high_ok)


SOUNDNESS_ITEMS = [
    full_item(),
    two_steps(),
    full_item([sps(**{START_DATE: "20261201", START_TIME: "0500"})]),
    full_item([sps(**{START_DATE: "20261130", START_TIME: "2300"})]),
    full_item([sps(**{START_DATE: "20261201"})]),
    full_item([sps(Modality="MR", **{START_TIME: ""})], AccessionNumber="ACC002"),
]


@pytest.mark.parametrize(
    "spec",
    [
        {"PatientID": "12345"},
        {"AccessionNumber": "ACC001\\ACC002"},
        {SPS: {"Modality": "CT\\MR"}},
        {SPS: {"ScheduledStationAETitle": "CT1"}},
        {SPS: {START_DATE: "20261130"}},
        {SPS: {START_DATE: "20261130-20261201"}},
        {SPS: {START_DATE: "20261130-20261201", START_TIME: "2200-0600"}},
        {SPS: {START_DATE: "20261201", START_TIME: "0000-0600"}},
        {SPS: {START_DATE: "-20261201", START_TIME: "-0600"}},
    ],
)
def test_constraints_never_exclude_a_matching_item(spec: dict[str, Any]) -> None:
    """The worklist index narrows candidates by a constraint: it must be sound."""
    q = query(spec)
    paths = [("PatientID",), ("AccessionNumber",), (SPS, START_DATE),
             (SPS, "ScheduledStationAETitle"), (SPS, "Modality")]
    matched = [tree for tree in SOUNDNESS_ITEMS if q.matches(tree)]
    assert matched
    for keywords in paths:
        path = tuple(tag(keyword) for keyword in keywords)
        constraint = q.constraint(path)
        if constraint is None:
            continue
        for tree in matched:
            if len(path) == 1:
                values = [tree.get(path[0], "")]
            else:
                values = [child.get(path[1], "") for child in tree.get(path[0], [])]
            assert any(in_constraint(constraint, value) for value in values), keywords


# -- normalize_time -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "upper", "expected"),
    [
        ("", False, ""),
        ("  ", True, ""),
        ("10", False, "100000.000000"),
        ("10", True, "105959.999999"),
        ("1045", False, "104500.000000"),
        ("1045", True, "104559.999999"),
        ("104530", False, "104530.000000"),
        ("104530", True, "104530.999999"),
        ("104530.5", False, "104530.500000"),
        ("104530.5", True, "104530.599999"),
        ("104530.123456", False, "104530.123456"),
        ("104530.123456789", False, "104530.123456"),
        ("10:45", False, "104500.000000"),
        ("10:45:30", True, "104530.999999"),
        (" 0930 ", False, "093000.000000"),
        ("00", False, "000000.000000"),
        ("23", True, "235959.999999"),
    ],
)
def test_normalize_time(text: str, upper: bool, expected: str) -> None:
    assert normalize_time(text, upper) == expected


def test_normalize_time_defaults_to_the_lower_bound() -> None:
    assert normalize_time("0930") == "093000.000000"


def test_normalized_times_sort_chronologically() -> None:
    times = ["0000", "0001", "0930", "093000.5", "0931", "10", "1045", "235959.999999"]
    normalized = [normalize_time(text) for text in times]
    assert normalized == sorted(normalized)
    assert normalize_time("10", upper=True) < normalize_time("11")
