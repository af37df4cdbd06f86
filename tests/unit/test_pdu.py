"""echoes.dicom.pdu: our acceptor PDUs, cross-checked against pynetdicom's encoder and decoder."""

from __future__ import annotations

import io
import struct

import pytest
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import build_context
from test_encoding import COMMAND, DATA_SET, check_framing

from echoes.dicom import dimse, pdu

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
EXPLICIT = "1.2.840.10008.1.2.1"
IMPLICIT = "1.2.840.10008.1.2"
JPEG = "1.2.840.10008.1.2.4.70"


def pynetdicom_rq(contexts, calling="MODALITY", called="ECHOES", max_length=16384) -> bytes:
    primitive = A_ASSOCIATE()
    primitive.application_context_name = pdu.APPLICATION_CONTEXT_NAME
    primitive.calling_ae_title = calling
    primitive.called_ae_title = called
    built = []
    for number, (abstract, syntaxes) in enumerate(contexts):
        context = build_context(abstract, syntaxes)
        context.context_id = 2 * number + 1
        built.append(context)
    primitive.presentation_context_definition_list = built
    length = MaximumLengthNotification()
    length.maximum_length_received = max_length
    uid = ImplementationClassUIDNotification()
    uid.implementation_class_uid = "1.2.3.4"
    name = ImplementationVersionNameNotification()
    name.implementation_version_name = "TESTSCU"
    primitive.user_information = [length, uid, name]
    request = A_ASSOCIATE_RQ()
    request.from_primitive(primitive)
    return request.encode()


def test_parse_request_encoded_by_pynetdicom():
    data = pynetdicom_rq([(CT, [JPEG, EXPLICIT]), (MR, [IMPLICIT])])
    assert data[0] == pdu.ASSOCIATE_RQ
    request = pdu.parse_associate_rq(data[6:])
    assert (request.calling_ae, request.called_ae) == ("MODALITY", "ECHOES")
    assert request.application_context == pdu.APPLICATION_CONTEXT_NAME
    assert request.protocol_version == 1
    assert [(c.context_id, c.abstract_syntax, c.transfer_syntaxes) for c in request.contexts] == [
        (1, CT, [JPEG, EXPLICIT]), (3, MR, [IMPLICIT])]
    assert request.maximum_length == 16384
    assert request.implementation_class_uid == "1.2.3.4"
    assert request.implementation_version_name == "TESTSCU"


def test_negotiation_takes_first_proposed_syntax_we_accept():
    table = {CT: frozenset({EXPLICIT, IMPLICIT}), MR: frozenset({EXPLICIT})}
    contexts = [pdu.PresentationContextRequest(1, CT, [JPEG, IMPLICIT, EXPLICIT]),
                pdu.PresentationContextRequest(3, MR, [JPEG]),
                pdu.PresentationContextRequest(5, "1.2.3", [EXPLICIT])]
    results = pdu.negotiate(contexts, table)
    assert [(r.context_id, r.result, r.transfer_syntax) for r in results] == [
        (1, pdu.ACCEPTANCE, IMPLICIT),
        (3, pdu.TRANSFER_SYNTAXES_NOT_SUPPORTED, ""),
        (5, pdu.ABSTRACT_SYNTAX_NOT_SUPPORTED, ""),
    ]


def test_accept_decodes_with_pynetdicom():
    request = pdu.parse_associate_rq(pynetdicom_rq([(CT, [EXPLICIT]), ("1.2.3", [EXPLICIT])])[6:])
    results = pdu.negotiate(request.contexts, {CT: frozenset({EXPLICIT})})
    data = pdu.associate_ac(request, results, 262144, "2.25.1", "ECHOES_TEST")
    decoded = A_ASSOCIATE_AC()
    decoded.decode(data)
    primitive = decoded.to_primitive()
    assert primitive.calling_ae_title == "MODALITY"
    assert primitive.called_ae_title == "ECHOES"
    user = {type(item).__name__: item for item in primitive.user_information}
    assert user["MaximumLengthNotification"].maximum_length_received == 262144
    assert user["ImplementationClassUIDNotification"].implementation_class_uid == "2.25.1"
    assert (user["ImplementationVersionNameNotification"].implementation_version_name
            == "ECHOES_TEST")
    answers = {c.context_id: (c.result, c.transfer_syntax) for c in
               primitive.presentation_context_definition_results_list}
    assert answers[1] == (pdu.ACCEPTANCE, [EXPLICIT])
    assert answers[3][0] == pdu.ABSTRACT_SYNTAX_NOT_SUPPORTED


@pytest.mark.parametrize("reason", [pdu.REJECT_CALLING_AE, pdu.REJECT_CALLED_AE,
                                    pdu.REJECT_LOCAL_LIMIT, pdu.REJECT_PROTOCOL_VERSION])
def test_reject_bytes(reason):
    data = pdu.associate_rj(reason)
    assert data == bytes((0x03, 0, 0, 0, 0, 4, 0, *reason))


def test_release_and_abort_bytes():
    assert pdu.release_rp() == bytes((0x06, 0, 0, 0, 0, 4, 0, 0, 0, 0))
    assert pdu.abort((2, 6)) == bytes((0x07, 0, 0, 0, 0, 4, 0, 0, 2, 6))


def pdv(context: int, control: int, data: bytes) -> bytes:
    return struct.pack(">IBB", len(data) + 2, context, control) + data


def test_iter_pdvs_splits_several_pdvs():
    body = memoryview(pdv(1, 3, b"abcd") + pdv(1, 0, b"ef") + pdv(3, 2, b""))
    assert [(c, h, bytes(d)) for c, h, d in pdu.iter_pdvs(body)] == [
        (1, 3, b"abcd"), (1, 0, b"ef"), (3, 2, b"")]


@pytest.mark.parametrize("body", [
    b"\x00\x00",                                   # truncated header
    struct.pack(">IBB", 100, 1, 3) + b"x",         # length past the PDU
    struct.pack(">IBB", 1, 1, 3),                  # length below 2
])
def test_iter_pdvs_refuses_broken_lengths(body):
    with pytest.raises(pdu.PDUError):
        list(pdu.iter_pdvs(memoryview(body)))


@pytest.mark.parametrize("cut", [10, 67, 80])
def test_truncated_request_is_an_error_not_a_crash(cut):
    data = pynetdicom_rq([(CT, [EXPLICIT])])
    # Below 68 bytes the fixed fields are missing; past them, an item runs
    # past the end of the PDU.
    with pytest.raises(pdu.PDUError):
        pdu.parse_associate_rq(data[6:6 + cut])


def test_p_data_command_is_one_last_command_pdv():
    data = pdu.p_data_command(5, b"\x01\x02")
    assert data[0] == pdu.P_DATA_TF
    assert list(pdu.iter_pdvs(memoryview(data[6:]))) == [(5, 3, memoryview(b"\x01\x02"))]


def test_our_request_decodes_with_pynetdicom():
    contexts = [pdu.PresentationContextRequest(1, CT, [JPEG, EXPLICIT]),
                pdu.PresentationContextRequest(3, MR, [IMPLICIT])]
    data = pdu.associate_rq("ECHOES", "PACS", contexts, 49152, "2.25.7", "ECHOES_T")
    decoded = A_ASSOCIATE_RQ()
    decoded.decode(data)
    primitive = decoded.to_primitive()
    assert (primitive.calling_ae_title, primitive.called_ae_title) == ("ECHOES", "PACS")
    proposed = {c.context_id: (c.abstract_syntax, c.transfer_syntax)
                for c in primitive.presentation_context_definition_list}
    assert proposed == {1: (CT, [JPEG, EXPLICIT]), 3: (MR, [IMPLICIT])}
    # and our own acceptor reads it back the same
    request = pdu.parse_associate_rq(data[6:])
    assert [(c.context_id, c.transfer_syntaxes) for c in request.contexts] == [
        (1, [JPEG, EXPLICIT]), (3, [IMPLICIT])]
    assert request.maximum_length == 49152


def test_parse_accept_reads_results_and_length():
    request = pdu.parse_associate_rq(pynetdicom_rq([(CT, [JPEG, EXPLICIT]), (MR, [JPEG])])[6:])
    results = pdu.negotiate(request.contexts, {CT: frozenset({EXPLICIT})})
    accept = pdu.parse_associate_ac(pdu.associate_ac(request, results, 32768, "2.25.1", "X")[6:])
    assert accept.results[1] == (pdu.ACCEPTANCE, EXPLICIT)
    assert accept.results[3][0] == pdu.ABSTRACT_SYNTAX_NOT_SUPPORTED
    assert accept.maximum_length == 32768


def test_release_rq_bytes():
    assert pdu.release_rq() == bytes((0x05, 0, 0, 0, 0, 4, 0, 0, 0, 0))


# -- what a peer's Maximum Length Received makes us send (issue 14 item 9) ------------


#: offered Maximum Length Received -> the largest PDU variable field we may send then:
#: 0 is "no limit" (our own 1 MiB cap); 1-6 cannot hold a PDV (6 header bytes and
#: data), so dcmtk's smallest PDU, 4096, is sent instead; from 7 on the offer is kept.
SEND_LIMITS = {0: 1 << 20, 1: 4096, 2: 4096, 6: 4096, 7: 7, 8: 8, 13: 13, 16384: 16384,
               (1 << 20) + 1: 1 << 20, 0xFFFFFFFF: 1 << 20}


@pytest.mark.parametrize(("offered", "limit"), SEND_LIMITS.items())
def test_send_limit(offered: int, limit: int) -> None:
    assert pdu.send_limit(offered) == limit


@pytest.mark.parametrize("offered", [0, 1, 2, 5, 6, 7, 8, 16384])
@pytest.mark.parametrize("data_set", [b"", b"\x08\x00", DATA_SET, DATA_SET * 20],
                         ids=["none", "tiny", "one", "large"])
def test_p_data_pdus_for_any_offer(offered: int, data_set: bytes) -> None:
    """Every offer gives whole, correctly framed messages within the send limit
    (before: 1-5 gave no PDU at all, 6 raised "range() arg 3 must not be zero").
    """
    data = pdu.p_data_pdus(3, COMMAND, data_set, offered)
    check_framing(data, 3, COMMAND, data_set, pdu.send_limit(offered))


@pytest.mark.parametrize("offered", [0, 1, 6, 7, 16384])
@pytest.mark.parametrize("size", [0, 1, 1000, 70000])
def test_p_data_stream_for_any_offer(offered: int, size: int) -> None:
    """The sender's C-STORE stream, to a destination that accepted with a tiny maximum."""
    data_set = bytes(n % 251 for n in range(size))
    groups = pdu.p_data_stream(5, COMMAND, io.BytesIO(data_set), offered,
                                    group_bytes=1 << 16)
    check_framing(b"".join(groups), 5, COMMAND, data_set, pdu.send_limit(offered))


@pytest.mark.parametrize("offered", [0, 1, 7, 16384])
def test_p_data_command_within_the_peer_maximum(offered: int) -> None:
    command = dimse.response_command(0x8001, CT, 7, 0, "1.2.3.4", "")
    data = pdu.p_data_command(5, command, offered)
    check_framing(data, 5, command, b"", pdu.send_limit(offered))
    if pdu.send_limit(offered) >= len(command) + 6:
        assert len(data) == len(command) + 12  # one PDU, one PDV: the fast case stays


