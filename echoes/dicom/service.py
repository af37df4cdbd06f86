"""What a DICOM port offers, as services behind one small interface.

A :class:`Service` (Verification, Storage, Modality Worklist) declares the
presentation contexts it accepts and, for each request the acceptor
receives, returns a :class:`Receiver` that takes the request's data set
fragments as they arrive and decides the final status -- or None when it
does not serve that request.  Streaming services (the store writes each
fragment straight to its spool file; the worklist sends Pending responses
while it matches) implement the interface themselves.  Simple
request/response services are plain functions behind
:class:`FunctionService`, as pynetdicom's event handlers are: the function
gets the whole request and returns (status, error comment).

A :class:`Port` puts the services of one port together: one table for the
negotiation, and each request goes to the service of its context's abstract
syntax first, then to the others (so a C-ECHO on a storage context is still
answered, as echoes always has).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from echoes.dicom import dimse, pdu

if TYPE_CHECKING:
    from echoes.dicom.acceptor import Association


@dataclass(frozen=True)
class Final:
    """A final response that carries more than a status and a comment.

    C-MOVE and C-GET answer with sub-operation counts in the command set and,
    when some failed, an identifier with the Failed SOP Instance UID List
    (PS3.4 C.4.2.1.6); an N-CREATE the SCP chose the instance UID of names it
    in its response (PS3.7 10.1.5.1.4), and an N-service's refusal the
    offending tags; a receiver returns this instead of the plain pair.
    """

    status: int
    comment: str = ""
    #: Extra US elements of the response's command set (element -> value).
    elements: Mapping[int, int] = field(default_factory=dict)
    #: The response's data set, encoded in the context's syntax (empty: none).
    data_set: bytes = b""
    #: The Affected SOP Instance UID to answer with (empty: the request's, if any).
    sop_instance: str = ""
    #: Offending Element: the tags a refusal is about (PS3.7 C.4.2, C.4.20).
    offending: tuple[int, ...] = ()


class Receiver(Protocol):
    """Where the fragments of one request's data set go, and who decides its status."""

    def write(self, fragment: memoryview) -> None:
        """Take the next fragment (called as each PDV arrives)."""

    def finish(self) -> tuple[int, str] | Final:
        """The request is complete: return (DIMSE status, error comment), or a
        :class:`Final` for a response with counts or a data set.

        May send Pending responses first (:meth:`Association.send`)."""

    def discard(self) -> None:
        """The association ended before the last fragment: forget the request."""


class Service(Protocol):
    """One DIMSE service: its presentation contexts and a receiver per request."""

    #: abstract syntax -> transfer syntaxes accepted for it
    accepted: Mapping[str, frozenset[str]]
    #: SOP class -> (SCU, SCP) roles a requestor may take in SCP/SCU Role
    #: Selection (PS3.7 D.3.3.4), when not only SCU: C-GET's storage classes.
    #: Optional: a service without it leaves the requestor SCU only.
    # roles: Mapping[str, tuple[bool, bool]]

    def receiver(self, association: Association, context: pdu.ContextResult,
                 command: dict[int, bytes]) -> Receiver | None:
        """A receiver for this request, or None if the service does not serve it."""

    def closed(self, association: Association, how: str) -> None:
        """The association ended (``released``, ``aborted`` or ``dropped``)."""


@dataclass
class Request:
    """One complete request, for a :class:`FunctionService` handler."""

    association: Any
    context: pdu.ContextResult
    command: dict[int, bytes]
    #: The data set's bytes (empty for a request without one).
    data_set: bytes
    #: The data set was longer than the service takes; ``data_set`` holds its start.
    truncated: bool = False


#: A handler: the whole request in, (status, error comment) or a Final out.
Handler = Callable[[Request], "tuple[int, str] | Final"]


class _Collector:
    """Collects a (small) data set, then calls the handler."""

    __slots__ = ("data", "handler", "limit", "request")

    def __init__(self, handler: Handler, request: Request, limit: int) -> None:
        self.handler = handler
        self.request = request
        self.data = bytearray()
        self.limit = limit

    def write(self, fragment: memoryview) -> None:
        room = self.limit - len(self.data)
        if len(fragment) > room:
            self.request.truncated = True
            fragment = fragment[:max(room, 0)]
        self.data += fragment

    def finish(self) -> tuple[int, str] | Final:
        self.request.data_set = bytes(self.data)
        return self.handler(self.request)

    def discard(self) -> None:
        self.data.clear()


class FunctionService:
    """A request/response service made of plain functions, by command field."""

    def __init__(self, accepted: Mapping[str, frozenset[str]],
                 handlers: Mapping[int, Handler], max_data_set: int = 1 << 20) -> None:
        self.accepted = accepted
        self.handlers = handlers
        self.max_data_set = max_data_set

    def receiver(self, association: Association, context: pdu.ContextResult,
                 command: dict[int, bytes]) -> Receiver | None:
        """A collector for a request a handler serves."""
        handler = self.handlers.get(dimse.command_us(command, dimse.COMMAND_FIELD))
        if handler is None:
            return None
        return _Collector(handler, Request(association, context, command, b""),
                          self.max_data_set)

    def closed(self, association: Association, how: str) -> None:
        """Nothing kept per association."""


class Port:
    """The services of one port, seen by the acceptor as one service."""

    def __init__(self, *services: Service) -> None:
        self.services: Sequence[Service] = services
        self.accepted: dict[str, frozenset[str]] = {}
        #: Role Selection the services support, together (see Service.roles).
        self.roles: dict[str, tuple[bool, bool]] = {}
        for service in services:
            for sop_class, (scu, scp) in getattr(service, "roles", {}).items():
                had = self.roles.get(sop_class, (False, False))
                self.roles[sop_class] = (had[0] or scu, had[1] or scp)
        #: abstract syntax -> the port's services, its own service first
        self.routes: dict[str, tuple[Service, ...]] = {}
        for service in services:
            for abstract, syntaxes in service.accepted.items():
                self.accepted.setdefault(abstract, syntaxes)
                self.routes.setdefault(abstract, (service, *(
                    other for other in services if other is not service)))

    def receiver(self, association: Association, context: pdu.ContextResult,
                 command: dict[int, bytes]) -> Receiver | None:
        """The first receiver offered, asking the context's service first."""
        for service in self.routes.get(context.abstract_syntax, self.services):
            receiver = service.receiver(association, context, command)
            if receiver is not None:
                return receiver
        return None

    def closed(self, association: Association, how: str) -> None:
        """Tell every service."""
        for service in self.services:
            service.closed(association, how)
