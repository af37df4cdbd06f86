"""echoes.dicom.service: the one interface of a port's services, without sockets."""

from __future__ import annotations

from echoes.dicom import dimse, pdu, sopclasses
from echoes.dicom.service import FunctionService, Port, Request
from echoes.services import verification

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"


def command(field: int, data_set: bool = False) -> dict[int, bytes]:
    return dimse.parse_command(dimse.command_set({
        dimse.COMMAND_FIELD: field, dimse.MESSAGE_ID: 1,
        dimse.DATA_SET_TYPE: dimse.DATA_SET_PRESENT if data_set else dimse.NO_DATA_SET}))


def context(abstract: str) -> pdu.ContextResult:
    return pdu.ContextResult(1, pdu.ACCEPTANCE, abstract, EXPLICIT)


def test_verification_answers_success_to_c_echo_only() -> None:
    echo = verification.service()
    assert set(echo.accepted) == {sopclasses.VERIFICATION}
    receiver = echo.receiver(None, context(sopclasses.VERIFICATION), command(dimse.C_ECHO_RQ))
    assert receiver is not None and receiver.finish() == (dimse.SUCCESS, "")
    assert echo.receiver(None, context(sopclasses.VERIFICATION),
                         command(dimse.C_FIND_RQ, True)) is None


def test_function_service_gets_the_whole_data_set_bounded() -> None:
    seen: list[Request] = []

    def handler(request: Request) -> tuple[int, str]:
        seen.append(request)
        return 0xB000, "warning"

    service = FunctionService({CT: frozenset({EXPLICIT})}, {dimse.N_CREATE_RQ: handler},
                              max_data_set=6)
    receiver = service.receiver("assoc", context(CT), command(dimse.N_CREATE_RQ, True))
    assert receiver is not None
    receiver.write(memoryview(b"abcd"))
    receiver.write(memoryview(b"efgh"))
    assert receiver.finish() == (0xB000, "warning")
    assert seen[0].data_set == b"abcdef" and seen[0].truncated
    assert seen[0].association == "assoc"


class Recorder:
    """A service that serves C-STORE and remembers what it was told."""

    accepted = {CT: frozenset({EXPLICIT})}

    def __init__(self) -> None:
        self.closed_with: list[str] = []

    def receiver(self, association, context, command):
        if dimse.command_us(command, dimse.COMMAND_FIELD) != dimse.C_STORE_RQ:
            return None
        return FunctionService({}, {dimse.C_STORE_RQ: lambda _r: (0, "")}).receiver(
            association, context, command)

    def closed(self, association, how: str) -> None:
        self.closed_with.append(how)


def test_port_routes_by_context_then_to_the_others() -> None:
    store = Recorder()
    port = Port(verification.service(), store)
    assert set(port.accepted) == {sopclasses.VERIFICATION, CT}
    assert port.receiver(None, context(CT), command(dimse.C_STORE_RQ, True)) is not None
    # A C-ECHO on a storage context is still answered, as echoes always has.
    echo = port.receiver(None, context(CT), command(dimse.C_ECHO_RQ))
    assert echo is not None and echo.finish() == (dimse.SUCCESS, "")
    assert port.receiver(None, context(CT), command(dimse.C_GET_RQ, True)) is None
    port.closed(None, "released")
    assert store.closed_with == ["released"]
