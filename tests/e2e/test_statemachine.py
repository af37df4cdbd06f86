"""The acceptor follows the PS3.8 state table: unexpected PDUs on the real store port
are answered with the A-ABORT the table says (AA-1 before an association, AA-8 on
one), and the port keeps serving pynetdicom afterwards."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import pytest
from helpers import Server, make_dataset, start_server, stop_server
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE

from echoes.dicom import pdu, syntax

VERIFICATION = "1.2.840.10008.1.1"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start_server(tmp_path_factory.mktemp("statemachine") / "home", store_workers=1)
    yield running
    stop_server(running)


def read_pdu(sock: socket.socket) -> tuple[int, bytes]:
    header = b""
    while len(header) < 6:
        chunk = sock.recv(6 - len(header))
        assert chunk, "connection closed without a PDU"
        header += chunk
    kind, length = header[0], struct.unpack(">I", header[2:])[0]
    body = b""
    while len(body) < length:
        chunk = sock.recv(length - len(body))
        assert chunk
        body += chunk
    return kind, body


def associated(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    contexts = [pdu.PresentationContextRequest(1, VERIFICATION, [syntax.IMPLICIT_VR_LITTLE_ENDIAN])]
    sock.sendall(pdu.associate_rq("RAW", "ECHOES", contexts, 16384, "1.2.3", "RAW"))
    kind, _body = read_pdu(sock)
    assert kind == pdu.ASSOCIATE_AC
    return sock


def raw_pdu(kind: int, body: bytes = bytes(4)) -> bytes:
    return struct.pack(">BBI", kind, 0, len(body)) + body


@pytest.mark.parametrize(("sent", "reason"), [
    (pdu.associate_rq("RAW", "ECHOES", [], 16384, "1.2.3", "RAW"), (2, 2)),
    (raw_pdu(pdu.RELEASE_RP), (2, 2)),
    (raw_pdu(pdu.ASSOCIATE_AC, bytes(68)), (2, 2)),
    (raw_pdu(0x09), (2, 1)),  # unrecognized PDU type
])
def test_unexpected_pdu_on_an_association_is_aborted(server: Server, sent: bytes,
                                                     reason: tuple[int, int]) -> None:
    with associated(server.config.store_port) as sock:
        sock.sendall(sent)
        kind, body = read_pdu(sock)
        assert kind == pdu.ABORT
        assert (body[2], body[3]) == reason  # service-provider, unexpected/unrecognized
        assert sock.recv(1) == b""  # and the connection closes


@pytest.mark.parametrize("sent", [raw_pdu(pdu.P_DATA_TF, bytes(8)), raw_pdu(pdu.RELEASE_RQ),
                                  raw_pdu(0x09)])
def test_first_pdu_other_than_a_request_is_aborted(server: Server, sent: bytes) -> None:
    with socket.create_connection(("127.0.0.1", server.config.store_port), timeout=10) as sock:
        sock.sendall(sent)
        kind, body = read_pdu(sock)
        assert kind == pdu.ABORT and (body[2], body[3]) == (2, 2)


def test_port_still_serves_pynetdicom(server: Server) -> None:
    dataset = make_dataset()
    ae = AE(ae_title="AFTER")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(VERIFICATION)
    ae.add_requested_context(dataset.SOPClassUID, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", server.config.store_port, ae_title="ECHOES")
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0
    assert assoc.send_c_store(dataset).Status == 0
    assoc.release()
    assert assoc.is_released
