"""MPPS rules of echoes.worklist.performed (PS3.4 F.7): pure, on DICOM JSON dicts."""

from __future__ import annotations

from echoes.worklist import performed as p


def _cs(value: str) -> dict:
    return {"vr": "CS", "Value": [value]} if value else {"vr": "CS"}


def created(status: str = "IN PROGRESS", step_id: str = "SPS1", study: str = "1.2.3",
            accession: str = "ACC1") -> dict:
    step = {p.STUDY_INSTANCE_UID: {"vr": "UI", "Value": [study]},
            p.ACCESSION_NUMBER: {"vr": "SH", "Value": [accession]} if accession else {"vr": "SH"},
            p.SCHEDULED_STEP_ID: {"vr": "SH", "Value": [step_id]} if step_id else {"vr": "SH"}}
    return {p.STATUS: _cs(status), "00400253": {"vr": "SH", "Value": ["PPS1"]},
            "00400241": {"vr": "AE", "Value": ["CT1"]},
            "00400244": {"vr": "DA", "Value": ["20261204"]},
            "00400245": {"vr": "TM", "Value": ["101500"]}, "00080060": _cs("CT"),
            p.SCHEDULED_STEP_ATTRIBUTES: {"vr": "SQ", "Value": [step]}}


def test_create_accepts_a_complete_in_progress_step() -> None:
    assert p.check_create(created()).accepted


def test_create_refuses_other_states_and_missing_status() -> None:
    assert p.check_create(created("COMPLETED")).status == 0x0106
    assert p.check_create(created("COMPLETED")).offending == (0x00400252,)
    data = created()
    del data[p.STATUS]
    assert p.check_create(data).status == 0x0120


def test_create_refuses_missing_or_empty_type1() -> None:
    data = created()
    del data["00080060"]
    verdict = p.check_create(data)
    assert (verdict.status, verdict.offending) == (0x0120, (0x00080060,))
    data = created()
    data["00400241"] = {"vr": "AE"}
    assert p.check_create(data).status == 0x0121
    data = created()
    del data[p.SCHEDULED_STEP_ATTRIBUTES]
    assert p.check_create(data).status == 0x0120
    assert p.check_create(created(study="")).status == 0x0121


def test_set_rules() -> None:
    current = created()
    assert p.check_set(None, {p.STATUS: _cs("COMPLETED")}).status == 0x0112
    assert p.check_set(current, {p.STATUS: _cs("COMPLETED")}).accepted
    assert p.check_set(current, {p.STATUS: _cs("DISCONTINUED")}).accepted
    assert p.check_set(current, {"00400250": {"vr": "DA", "Value": ["20261204"]}}).accepted
    assert p.check_set(current, {p.STATUS: _cs("SCHEDULED")}).status == 0x0106
    assert p.check_set(current, {"00100020": {"vr": "LO", "Value": ["X"]}}).status == 0x0106
    # a not-allowed attribute sent again unchanged is no change
    assert p.check_set(current, {"00080060": current["00080060"],
                                 p.STATUS: _cs("COMPLETED")}).accepted
    assert p.check_set(current, {"00080060": _cs("MR")}).offending == (0x00080060,)
    for final in ("COMPLETED", "DISCONTINUED"):
        done = p.merged(current, {p.STATUS: _cs(final)})
        assert p.check_set(done, {p.STATUS: _cs("IN PROGRESS")}).status == 0x0110
        assert p.check_set(done, {"00400250": {"vr": "DA"}}).status == 0x0110


def test_merge_replaces_whole_attributes() -> None:
    current = created()
    series = {"00400340": {"vr": "SQ", "Value": [{"0020000E": {"vr": "UI", "Value": ["9"]}}]}}
    after = p.merged(current, {p.STATUS: _cs("COMPLETED"), **series})
    assert p.status_of(after) == "COMPLETED"
    assert after["00400340"] == series["00400340"]
    assert after["00080060"] == current["00080060"]
    assert p.status_of(current) == "IN PROGRESS"  # the input is not changed


def _item(step_id: str, study: str = "", accession: str = "") -> dict:
    tree: dict = {0x00400100: [{0x00400009: step_id}]}
    if study:
        tree[0x0020000D] = study
    if accession:
        tree[0x00080050] = accession
    return tree


def test_hidden_steps_only_final_and_scheduled() -> None:
    assert p.hidden_steps([created()]) == frozenset()  # in progress hides nothing
    done = p.merged(created(), {p.STATUS: _cs("COMPLETED")})
    hidden = p.hidden_steps([done])
    assert p.is_performed(_item("SPS1", study="1.2.3"), hidden)
    assert p.is_performed(_item("SPS1", accession="ACC1"), hidden)
    assert not p.is_performed(_item("SPS2", study="1.2.3"), hidden)
    assert not p.is_performed(_item("SPS1", study="9.9"), hidden)
    assert not p.is_performed(_item("SPS1"), hidden)  # no study, no accession: no match
    unscheduled = p.merged(created(step_id=""), {p.STATUS: _cs("DISCONTINUED")})
    assert p.hidden_steps([unscheduled]) == frozenset()


def test_step_states_for_the_browser() -> None:
    running = created(step_id="SPS9", study="5.5", accession="A9")
    done = p.merged(created(), {p.STATUS: _cs("COMPLETED")})
    states = p.step_states([running, done, p.merged(created(), {p.STATUS: _cs("IN PROGRESS")})])
    assert p.state_of_step("SPS1", "1.2.3", "", states) == "COMPLETED"  # final wins
    assert p.state_of_step("SPS1", "", "ACC1", states) == "COMPLETED"
    assert p.state_of_step("SPS9", "5.5", "A9", states) == "IN PROGRESS"
    assert p.state_of_step("SPS2", "1.2.3", "ACC1", states) == ""
    assert p.state_of_step("", "1.2.3", "ACC1", states) == ""
