"""The DICOM Upper Layer association state machine (PS3.8 section 9.2), as tables.

One explicit machine for both sides of an association: :data:`TRANSITIONS`
is PS3.8 Table 9-10 (state, event) -> action, and :data:`ACTIONS` says where
each action leads (Table 9-6 to 9-9).  The acceptor and the requestor feed
it an event for each PDU they read (:func:`event_for_pdu`) and for each
thing they decide to do, then do what the returned action says: send a PDU,
hand P-DATA to the DIMSE layer, abort.  Pure: no sockets, no timers (the
ARTIM timer is the socket timeout of the side that runs the machine).

The few (state, event) pairs the table leaves empty are local errors
(a primitive issued in a state where the standard has no use for it):
:class:`InvalidTransition`, a bug in echoes, never a peer's doing -- every
state has an entry for every PDU a peer can send.
"""

from __future__ import annotations

from dataclasses import dataclass

# -- states (PS3.8 Table 9-1) ------------------------------------------------------

STA1 = "Sta1"    # idle
STA2 = "Sta2"    # transport open, awaiting A-ASSOCIATE-RQ (acceptor)
STA3 = "Sta3"    # awaiting the local A-ASSOCIATE response (acceptor)
STA4 = "Sta4"    # awaiting transport connection to complete (requestor)
STA5 = "Sta5"    # awaiting A-ASSOCIATE-AC or -RJ (requestor)
STA6 = "Sta6"    # association established, ready for data transfer
STA7 = "Sta7"    # awaiting A-RELEASE-RP
STA8 = "Sta8"    # awaiting the local A-RELEASE response
STA9 = "Sta9"    # release collision, requestor: awaiting local A-RELEASE response
STA10 = "Sta10"  # release collision, acceptor: awaiting A-RELEASE-RP
STA11 = "Sta11"  # release collision, requestor: awaiting A-RELEASE-RP
STA12 = "Sta12"  # release collision, acceptor: awaiting local A-RELEASE response
STA13 = "Sta13"  # awaiting transport close (no association any more)
STATES = (STA1, STA2, STA3, STA4, STA5, STA6, STA7, STA8, STA9, STA10, STA11, STA12, STA13)

# -- events (PS3.8 Table 9-2) ------------------------------------------------------

ASSOCIATE_REQUEST = "Evt1"        # local user: A-ASSOCIATE request
CONNECTED = "Evt2"                # transport connection confirmed
ASSOCIATE_AC_RECEIVED = "Evt3"
ASSOCIATE_RJ_RECEIVED = "Evt4"
CONNECTION_INDICATION = "Evt5"    # a peer connected to us
ASSOCIATE_RQ_RECEIVED = "Evt6"
ASSOCIATE_ACCEPT = "Evt7"         # local user: accept
ASSOCIATE_REJECT = "Evt8"         # local user: reject
P_DATA_REQUEST = "Evt9"           # local user: send P-DATA
P_DATA_RECEIVED = "Evt10"
RELEASE_REQUEST = "Evt11"         # local user: A-RELEASE request
RELEASE_RQ_RECEIVED = "Evt12"
RELEASE_RP_RECEIVED = "Evt13"
RELEASE_RESPONSE = "Evt14"        # local user: A-RELEASE response
ABORT_REQUEST = "Evt15"           # local user: A-ABORT
ABORT_RECEIVED = "Evt16"
CONNECTION_CLOSED = "Evt17"
ARTIM_EXPIRED = "Evt18"
INVALID_PDU_RECEIVED = "Evt19"    # unrecognized or invalid PDU

#: PDU type -> the event of receiving it (anything else: INVALID_PDU_RECEIVED).
PDU_EVENTS = {0x01: ASSOCIATE_RQ_RECEIVED, 0x02: ASSOCIATE_AC_RECEIVED,
              0x03: ASSOCIATE_RJ_RECEIVED, 0x04: P_DATA_RECEIVED, 0x05: RELEASE_RQ_RECEIVED,
              0x06: RELEASE_RP_RECEIVED, 0x07: ABORT_RECEIVED}

# -- actions (PS3.8 Tables 9-6 to 9-9): what to do, and the next state -------------

#: action -> (what the side running the machine does, next state).  AR-8's next
#: state depends on the side (:meth:`Machine.on`).
ACTIONS: dict[str, tuple[str, str]] = {
    "AE-1": ("connect the transport", STA4),
    "AE-2": ("send A-ASSOCIATE-RQ", STA5),
    "AE-3": ("association accepted: confirm to the user", STA6),
    "AE-4": ("association rejected: confirm to the user, close the transport", STA1),
    "AE-5": ("accept the connection, start ARTIM", STA2),
    "AE-6": ("stop ARTIM, judge the A-ASSOCIATE-RQ", STA3),
    "AE-7": ("send A-ASSOCIATE-AC", STA6),
    "AE-8": ("send A-ASSOCIATE-RJ, start ARTIM", STA13),
    "DT-1": ("send P-DATA-TF", STA6),
    "DT-2": ("P-DATA to the user", STA6),
    "AR-1": ("send A-RELEASE-RQ", STA7),
    "AR-2": ("release requested: tell the user", STA8),
    "AR-3": ("release confirmed: close the transport", STA1),
    "AR-4": ("send A-RELEASE-RP, start ARTIM", STA13),
    "AR-5": ("stop ARTIM", STA1),
    "AR-6": ("P-DATA to the user (awaiting A-RELEASE-RP)", STA7),
    "AR-7": ("send P-DATA-TF (release requested by the peer)", STA8),
    "AR-8": ("release collision: tell the user", STA9),
    "AR-9": ("send A-RELEASE-RP (collision)", STA11),
    "AR-10": ("release confirmed (collision)", STA12),
    "AA-1": ("send A-ABORT, start ARTIM", STA13),
    "AA-2": ("close the transport", STA1),
    "AA-3": ("aborted by the peer: tell the user, close the transport", STA1),
    "AA-4": ("connection lost: tell the user", STA1),
    "AA-5": ("stop ARTIM", STA1),
    "AA-6": ("ignore the PDU", STA13),
    "AA-7": ("send A-ABORT", STA13),
    "AA-8": ("send A-ABORT (service-provider), tell the user, start ARTIM", STA13),
}

_RECEIVED_IN_ASSOCIATION = (STA3, STA5, STA6, STA7, STA8, STA9, STA10, STA11, STA12)


def _row(default: str, **overrides: str) -> dict[str, str]:
    """One event's column: ``default`` for every state where a PDU is unexpected
    (Sta3, Sta5-Sta12), Sta2 -> AA-1 and Sta13 -> AA-6, then the overrides."""
    row = dict.fromkeys(_RECEIVED_IN_ASSOCIATION, default)
    row.update({STA2: "AA-1", STA13: "AA-6"})
    row.update({f"Sta{key[3:]}": value for key, value in overrides.items()})
    return row


#: event -> {state -> action}: PS3.8 Table 9-10.
_BY_EVENT: dict[str, dict[str, str]] = {
    ASSOCIATE_REQUEST: {STA1: "AE-1"},
    CONNECTED: {STA4: "AE-2"},
    ASSOCIATE_AC_RECEIVED: _row("AA-8", sta5="AE-3"),
    ASSOCIATE_RJ_RECEIVED: _row("AA-8", sta5="AE-4"),
    CONNECTION_INDICATION: {STA1: "AE-5"},
    ASSOCIATE_RQ_RECEIVED: _row("AA-8", sta2="AE-6", sta13="AA-7"),
    ASSOCIATE_ACCEPT: {STA3: "AE-7"},
    ASSOCIATE_REJECT: {STA3: "AE-8"},
    P_DATA_REQUEST: {STA6: "DT-1", STA8: "AR-7"},
    P_DATA_RECEIVED: _row("AA-8", sta6="DT-2", sta7="AR-6"),
    RELEASE_REQUEST: {STA6: "AR-1"},
    RELEASE_RQ_RECEIVED: _row("AA-8", sta6="AR-2", sta7="AR-8"),
    RELEASE_RP_RECEIVED: _row("AA-8", sta7="AR-3", sta10="AR-10", sta11="AR-3"),
    RELEASE_RESPONSE: {STA8: "AR-4", STA9: "AR-9", STA12: "AR-4"},
    ABORT_REQUEST: {**dict.fromkeys(_RECEIVED_IN_ASSOCIATION, "AA-1"), STA4: "AA-2"},
    ABORT_RECEIVED: {**dict.fromkeys(_RECEIVED_IN_ASSOCIATION, "AA-3"),
                     STA2: "AA-2", STA13: "AA-2"},
    CONNECTION_CLOSED: {**dict.fromkeys((STA3, STA4, *_RECEIVED_IN_ASSOCIATION), "AA-4"),
                        STA2: "AA-5", STA13: "AR-5"},
    ARTIM_EXPIRED: {STA2: "AA-2", STA13: "AA-2"},
    INVALID_PDU_RECEIVED: _row("AA-8", sta13="AA-7"),
}

#: (state, event) -> action: the transition table.
TRANSITIONS: dict[tuple[str, str], str] = {
    (state, event): action
    for event, row in _BY_EVENT.items() for state, action in row.items()
}
#: The same, state -> event -> action: a lookup per PDU without building a key.
_BY_STATE: dict[str, dict[str, str]] = {state: {} for state in STATES}
for (_state, _event), _action in TRANSITIONS.items():
    _BY_STATE[_state][_event] = _action


class InvalidTransition(RuntimeError):
    """A local primitive in a state that has no use for it (a bug, not the peer)."""


@dataclass
class Machine:
    """One association's state; :meth:`on` moves it and says what to do."""

    #: True for the side that sent the A-ASSOCIATE-RQ (decides AR-8's next state).
    requestor: bool
    state: str = STA1

    def on(self, event: str) -> str:
        """Take ``event``; return the action to carry out (its state is now current)."""
        action = _BY_STATE[self.state].get(event)
        if action is None:
            raise InvalidTransition(f"{event} in {self.state}")
        next_state = ACTIONS[action][1]
        if action == "AR-8" and not self.requestor:
            next_state = STA10
        self.state = next_state
        return action

    def allows(self, event: str) -> bool:
        """Whether ``event`` has a transition in the current state."""
        return event in _BY_STATE[self.state]

    def on_pdu(self, kind: int) -> str:
        """Take the event of receiving a PDU of type ``kind``."""
        return self.on(PDU_EVENTS.get(kind, INVALID_PDU_RECEIVED))


#: A-ABORT (source, reason) for an AA-8 on a received PDU: service-provider,
#: "unrecognized PDU" for Evt19, "unexpected PDU" for anything else (PS3.8 9.3.8).
def abort_reason(kind: int) -> tuple[int, int]:
    """The (source, reason) of the A-ABORT answering an unexpected PDU of type ``kind``."""
    return (0x02, 0x02) if kind in PDU_EVENTS else (0x02, 0x01)
