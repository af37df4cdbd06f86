"""One archived object out over one C-STORE: the step the sender and C-MOVE/C-GET share.

Why here.  Forwarding (:mod:`echoes.processes.sender`), C-MOVE and C-GET
(:mod:`echoes.services.retrieve`) send an archived object the same way:
as stored when the peer accepted that syntax, else JPEG lossless relabelled
or converted to an uncompressed syntax (:func:`outbound.choose_route`), the
file streamed, never read whole (:func:`outbound.payload`), and the
response read into an outcome (:func:`outbound.outcome_of`).  Only the way
the C-STORE-RQ travels differs (an association we opened, or the C-GET
requester's own), so that is a function passed in, and what a caller does
with the result (a job record, a sub-operation count) stays with it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from echoes.services.outbound import (
    DELIVERED,
    PERMANENT,
    TRANSIENT,
    Outbound,
    PaddedDataSet,
    choose_route,
    outcome_of,
    payload,
    prepare,
)

#: Where an attempt ended.
ROUTE, MISSING, PREPARE, ENCODE, SENT = "route", "missing", "prepare", "encode", "sent"

#: (SOP class, transfer syntax of the context, SOP instance, data set) -> the
#: response's (status, comment), or None when none came (association lost).
SendStore = Callable[[str, str, str, BinaryIO | PaddedDataSet], tuple[int, str] | None]


@dataclass(frozen=True)
class Attempt:
    """How sending one object went."""

    #: DELIVERED (warnings too), TRANSIENT or PERMANENT (see outbound.outcome_of).
    outcome: str
    #: Where it ended: ROUTE (no usable context), MISSING (no archived file),
    #: PREPARE (cannot decode or decompress), ENCODE, or SENT (a response or none).
    stage: str
    #: Words for a job's error or a log line ("" when delivered without warning).
    detail: str = ""
    #: The C-STORE response's status (None before one came).
    status: int | None = None
    #: The route taken ("file", "relabel", "reencode", "decompress", "refuse").
    route: str = ""


def store_one(item: Outbound, path: Path, accepted: set[tuple[str, str]],
              send: SendStore) -> Attempt:
    """Send one archived object over the accepted (SOP class, syntax) pairs.

    Never raises for the object's own trouble (a missing or undecodable
    file): that is the attempt's outcome.  ``send`` returning None (no
    response: the association ended) is TRANSIENT.
    """
    route = choose_route(item.sop_class_uid, item.transfer_syntax, accepted)
    if route.kind == "refuse":
        return Attempt(PERMANENT, ROUTE, route.reason, route=route.kind)
    try:
        prepared = prepare(path, route)
    except FileNotFoundError:
        return Attempt(TRANSIENT, MISSING, f"archived file missing: {path}", route=route.kind)
    except Exception as exc:  # cannot decode or decompress: retrying will not help
        reason = f"cannot prepare for sending ({route.kind}): {type(exc).__name__}: {exc}"
        return Attempt(PERMANENT, PREPARE, reason[:300], route=route.kind)
    try:
        syntax, data_set = payload(item, route, prepared, accepted)
    except FileNotFoundError:
        return Attempt(TRANSIENT, MISSING, f"archived file missing: {path}", route=route.kind)
    except (ValueError, AttributeError, StopIteration, OSError) as exc:
        return Attempt(PERMANENT, ENCODE, f"cannot send: {exc}"[:300], route=route.kind)
    with data_set:
        response = send(item.sop_class_uid, syntax, item.sop_instance_uid, data_set)
    if response is None:
        return Attempt(TRANSIENT, SENT, "", route=route.kind)
    status, comment = response
    outcome, words = outcome_of(status)
    detail = f"0x{status:04X} {words}" + (f": {comment}" if comment else "")
    if outcome == DELIVERED and not words:
        detail = ""
    return Attempt(outcome, SENT, detail, status, route.kind)
