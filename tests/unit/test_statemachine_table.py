"""echoes.dicom.statemachine: PS3.8 Table 9-10 as data, checked against pynetdicom's
(independent) transcription and walked through the flows echoes uses."""

from __future__ import annotations

import time

import pytest
from pynetdicom import fsm

from echoes.dicom import statemachine as sm

RECEIVED = (sm.ASSOCIATE_AC_RECEIVED, sm.ASSOCIATE_RJ_RECEIVED, sm.ASSOCIATE_RQ_RECEIVED,
            sm.P_DATA_RECEIVED, sm.RELEASE_RQ_RECEIVED, sm.RELEASE_RP_RECEIVED,
            sm.ABORT_RECEIVED, sm.INVALID_PDU_RECEIVED)


def test_transition_table_is_pynetdicoms() -> None:
    ours = {(event, state): action for (state, event), action in sm.TRANSITIONS.items()}
    assert ours == fsm.TRANSITION_TABLE


def test_next_states_are_pynetdicoms() -> None:
    assert sm.ACTIONS.keys() == fsm.ACTIONS.keys()
    for action, (_what, following) in sm.ACTIONS.items():
        theirs = fsm.ACTIONS[action][2]
        # AE-6 and AR-8 have two outcomes; ours takes the first and decides AR-8 by side.
        assert following == (theirs[0] if isinstance(theirs, tuple) else theirs), action


@pytest.mark.parametrize("state", [s for s in sm.STATES if s not in (sm.STA1, sm.STA4)])
def test_every_state_with_a_connection_has_an_answer_to_every_pdu(state: str) -> None:
    for event in RECEIVED:
        assert (state, event) in sm.TRANSITIONS, (state, event)


def run(machine: sm.Machine, *events: str) -> list[str]:
    return [machine.on(event) for event in events]


def test_acceptor_flow() -> None:
    machine = sm.Machine(requestor=False)
    assert run(machine, sm.CONNECTION_INDICATION, sm.ASSOCIATE_RQ_RECEIVED,
               sm.ASSOCIATE_ACCEPT) == ["AE-5", "AE-6", "AE-7"]
    assert machine.state == sm.STA6
    assert run(machine, sm.P_DATA_RECEIVED, sm.P_DATA_REQUEST) == ["DT-2", "DT-1"]
    assert run(machine, sm.RELEASE_RQ_RECEIVED, sm.RELEASE_RESPONSE,
               sm.CONNECTION_CLOSED) == ["AR-2", "AR-4", "AR-5"]
    assert machine.state == sm.STA1


def test_requestor_flow_with_release_collision() -> None:
    machine = sm.Machine(requestor=True)
    assert run(machine, sm.ASSOCIATE_REQUEST, sm.CONNECTED, sm.ASSOCIATE_AC_RECEIVED,
               sm.P_DATA_REQUEST, sm.P_DATA_RECEIVED, sm.RELEASE_REQUEST,
               sm.RELEASE_RQ_RECEIVED) == ["AE-1", "AE-2", "AE-3", "DT-1", "DT-2", "AR-1",
                                           "AR-8"]
    assert machine.state == sm.STA9  # the requestor's side of a collision
    assert run(machine, sm.RELEASE_RESPONSE, sm.RELEASE_RP_RECEIVED) == ["AR-9", "AR-3"]
    assert machine.state == sm.STA1
    acceptor = sm.Machine(requestor=False, state=sm.STA7)
    assert acceptor.on(sm.RELEASE_RQ_RECEIVED) == "AR-8" and acceptor.state == sm.STA10


@pytest.mark.parametrize(("kind", "action", "reason"), [
    (0x01, "AA-8", (2, 2)),  # A-ASSOCIATE-RQ on an established association
    (0x06, "AA-8", (2, 2)),  # A-RELEASE-RP nobody asked for
    (0x09, "AA-8", (2, 1)),  # no such PDU type
    (0x07, "AA-3", None),    # A-ABORT: the peer ends it
])
def test_unexpected_pdus_in_sta6(kind: int, action: str, reason) -> None:
    machine = sm.Machine(requestor=False, state=sm.STA6)
    assert machine.on_pdu(kind) == action
    if reason is not None:
        assert sm.abort_reason(kind) == reason
        assert machine.state == sm.STA13


def test_first_pdu_other_than_a_request_is_aborted() -> None:
    for kind in (0x02, 0x04, 0x05, 0x09):
        machine = sm.Machine(requestor=False, state=sm.STA2)
        assert machine.on_pdu(kind) == "AA-1"
    assert sm.Machine(requestor=False, state=sm.STA2).on_pdu(0x07) == "AA-2"


def test_local_primitive_out_of_place_is_a_bug() -> None:
    machine = sm.Machine(requestor=True)
    with pytest.raises(sm.InvalidTransition):
        machine.on(sm.P_DATA_REQUEST)
    assert not machine.allows(sm.RELEASE_REQUEST)


def test_a_transition_costs_microseconds() -> None:
    machine = sm.Machine(requestor=False, state=sm.STA6)
    started = time.perf_counter()
    for _ in range(10_000):
        machine.on_pdu(0x04)
    assert (time.perf_counter() - started) / 10_000 < 20e-6
