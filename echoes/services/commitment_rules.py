"""Storage Commitment Push Model (PS3.4 Annex J) decisions, as pure functions.

A commitment is a promise echoes can keep: an instance counts as committed
once it is in the index with the SOP class the requester named AND its file
is in the archive.  An instance that is not there yet but may still be on
its way (an object acknowledged before the N-ACTION, still in
``spool/incoming`` for the ingester) is waited for, not failed; once the
spool holds nothing that arrived before the request, what is still missing
has failed (FailureReason 0x0112, SPEC: every failed item).

What a pending request looks like on disk (:class:`Pending`, one JSON file
in ``commitment_dir``), when its report is due again after a failed
delivery, and the report's content are decided here, without a socket, a
file or a clock of their own.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

#: FailureReason of every failed item (PS3.4 J.3.3.1.2: "No such object instance").
NO_SUCH_OBJECT_INSTANCE = 0x0112
#: Event Type ID of the N-EVENT-REPORT (PS3.4 J.3.3.1): all committed / some failed.
ALL_COMMITTED, SOME_FAILED = 1, 2

#: (Referenced SOP Class UID, Referenced SOP Instance UID)
Item = tuple[str, str]


@dataclass
class Pending:
    """One Storage Commitment request not reported yet (its file's content)."""

    transaction_uid: str
    #: The calling AE of the N-ACTION: where a report on a new association goes.
    requester: str
    #: When it arrived (time.time_ns(), the clock the spool's names sort by).
    received_ns: int
    items: list[Item]
    #: Decided once (then kept: a restart re-sends the same answer).
    committed: list[Item] | None = None
    failed: list[Item] | None = None
    #: Deliveries tried on a new association, when the next is due (time.time()).
    attempts: int = 0
    next_attempt: float = 0.0
    last_error: str = ""
    history: list[str] = field(default_factory=list)

    @property
    def decided(self) -> bool:
        return self.committed is not None and self.failed is not None

    @property
    def event_type(self) -> int:
        return SOME_FAILED if self.failed else ALL_COMMITTED

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), indent=1).encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes) -> Pending:
        raw = json.loads(data.decode("utf-8"))
        for key in ("items", "committed", "failed"):
            if raw.get(key) is not None:
                raw[key] = [tuple(item) for item in raw[key]]
        return cls(**raw)


def spool_settled(received_ns: int, oldest_incoming: str | None) -> bool:
    """Whether every object acknowledged before the request has left the spool
    (``oldest_incoming``: the first name in ``spool/incoming``, named
    ``<time_ns>-<pid>-<seq>.dcm``; None when it is empty)."""
    if oldest_incoming is None:
        return True
    head = oldest_incoming.split("-", 1)[0]
    return not head.isdigit() or int(head) > received_ns


def decide(items: list[Item], found: Mapping[str, tuple[str, bool]],
           settled: bool) -> tuple[list[Item], list[Item]] | None:
    """(committed, failed), or None to wait.

    ``found``: SOP Instance UID -> (its SOP class in the index, its file is
    in the archive).  A wrong SOP class fails at once; a missing instance
    (or one indexed but not yet moved into the archive) fails only once the
    spool has ``settled``.
    """
    committed: list[Item] = []
    failed: list[Item] = []
    for sop_class, uid in items:
        hit = found.get(uid)
        if hit is not None and hit[0] != sop_class:
            failed.append((sop_class, uid))
        elif hit is not None and hit[1]:
            committed.append((sop_class, uid))
        elif not settled:
            return None
        else:
            failed.append((sop_class, uid))
    return committed, failed


def retry_at(attempts: int, now: float, interval: float) -> float:
    """When a report that could not be delivered ``attempts`` times is tried
    again: ``interval`` apart (the sender's retry_interval), as outbound jobs."""
    return now + interval if attempts else now


def exhausted(attempts: int, max_attempts: int) -> bool:
    """Whether a report has been tried as often as an outbound job may be."""
    return attempts >= max_attempts
