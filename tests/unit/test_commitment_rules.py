"""Storage Commitment decisions (echoes.services.commitment_rules): pure functions."""

from __future__ import annotations

from echoes.services import commitment_rules as rules

CT, MR = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4"


def test_spool_settled_compares_arrival_times() -> None:
    assert rules.spool_settled(1000, None)
    assert not rules.spool_settled(1000, "00000000000000000999-12-000001.dcm")
    assert not rules.spool_settled(1000, "00000000000000001000-12-000001.dcm")
    assert rules.spool_settled(1000, "00000000000000001001-12-000001.dcm")


def test_decide_waits_only_while_something_may_still_come() -> None:
    items = [(CT, "1.1"), (CT, "1.2")]
    found = {"1.1": (CT, True)}
    assert rules.decide(items, found, settled=False) is None
    assert rules.decide(items, found, settled=True) == ([(CT, "1.1")], [(CT, "1.2")])
    # indexed but not yet moved into the archive: not committed yet
    assert rules.decide([(CT, "1.1")], {"1.1": (CT, False)}, settled=False) is None
    assert rules.decide([(CT, "1.1")], {"1.1": (CT, False)}, settled=True) == (
        [], [(CT, "1.1")])


def test_wrong_sop_class_fails_at_once() -> None:
    assert rules.decide([(MR, "1.1")], {"1.1": (CT, True)}, settled=False) == (
        [], [(MR, "1.1")])


def test_pending_round_trip_and_event_type() -> None:
    pending = rules.Pending("1.2.3", "CT01", 5, [(CT, "1.1"), (CT, "1.2")])
    assert not pending.decided
    again = rules.Pending.from_bytes(pending.to_bytes())
    assert again == pending
    again.committed, again.failed = [(CT, "1.1")], [(CT, "1.2")]
    assert again.decided and again.event_type == rules.SOME_FAILED
    assert rules.Pending.from_bytes(again.to_bytes()) == again
    again.failed = []
    assert again.event_type == rules.ALL_COMMITTED


def test_retries_like_an_outbound_job() -> None:
    assert rules.retry_at(1, 100.0, 30) == 130.0
    assert not rules.exhausted(19, 20)
    assert rules.exhausted(20, 20)
