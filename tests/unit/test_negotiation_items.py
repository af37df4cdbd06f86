"""Association negotiation beyond presentation contexts (PS3.7 D.3.3): SCP/SCU Role
Selection answered for what the services support, extended negotiation and user
identity read past.  Pure: PDUs built and read by pynetdicom as the independent side.
"""

from __future__ import annotations

import pytest
from helpers import common, extended, identity
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import build_context

from echoes.dicom import pdu

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
US = "1.2.840.10008.5.1.4.1.1.6.1"
EXPLICIT = "1.2.840.10008.1.2.1"
TABLE = {CT: frozenset({EXPLICIT}), MR: frozenset({EXPLICIT}), US: frozenset({EXPLICIT})}


def role(sop_class: str, scu: bool, scp: bool) -> SCP_SCU_RoleSelectionNegotiation:
    item = SCP_SCU_RoleSelectionNegotiation()
    item.sop_class_uid, item.scu_role, item.scp_role = sop_class, scu, scp
    return item


def request_bytes(extra: list) -> bytes:
    primitive = A_ASSOCIATE()
    primitive.application_context_name = pdu.APPLICATION_CONTEXT_NAME
    primitive.calling_ae_title, primitive.called_ae_title = "MODALITY", "ECHOES"
    contexts = []
    for number, abstract in enumerate((CT, MR, US)):
        context = build_context(abstract, [EXPLICIT])
        context.context_id = 2 * number + 1
        contexts.append(context)
    primitive.presentation_context_definition_list = contexts
    length = MaximumLengthNotification()
    length.maximum_length_received = 16384
    uid = ImplementationClassUIDNotification()
    uid.implementation_class_uid = "1.2.3.4"
    primitive.user_information = [length, uid, *extra]
    request = A_ASSOCIATE_RQ()
    request.from_primitive(primitive)
    return request.encode()


def answer(data: bytes) -> tuple[pdu.AssociateRequest, list[pdu.ContextResult],
                                  dict[str, tuple[bool, bool]]]:
    request = pdu.parse_associate_rq(data[6:])
    results, roles = pdu.negotiate_roles(pdu.negotiate(request.contexts, TABLE), request.roles)
    return request, results, roles


def test_role_selection_is_read_from_the_request() -> None:
    request, _results, _roles = answer(request_bytes(
        [role(CT, True, True), role(MR, True, False), role(US, False, True)]))
    assert request.roles == {CT: (True, True), MR: (True, False), US: (False, True)}


@pytest.mark.parametrize(("proposed", "granted"), [
    ((True, True), (True, False)),   # both asked: the requestor stays SCU only
    ((True, False), (True, False)),  # the default, said out loud
    ((False, True), None),           # only SCP asked: we are no SCU, context rejected
])
def test_roles_are_answered_as_pynetdicom_would(proposed, granted) -> None:
    _request, results, roles = answer(request_bytes([role(CT, *proposed)]))
    by_class = {r.abstract_syntax: r.result for r in results}
    assert by_class[MR] == by_class[US] == pdu.ACCEPTANCE  # not proposed: default roles
    if granted is None:
        assert by_class[CT] == pdu.USER_REJECTION
        assert roles == {}
    else:
        assert by_class[CT] == pdu.ACCEPTANCE
        assert roles == {CT: granted}


def test_no_role_at_all_rejects_the_context() -> None:
    """(0, 0) is invalid (pynetdicom refuses to send it); built by our requestor side."""
    data = pdu.associate_rq("MODALITY", "ECHOES", [pdu.PresentationContextRequest(1, CT, [
        EXPLICIT])], 16384, "1.2.3", "X", {CT: (False, False)})
    _request, results, roles = answer(data)
    assert [r.result for r in results] == [pdu.USER_REJECTION] and roles == {}


def test_accept_with_roles_decodes_with_pynetdicom() -> None:
    request, results, roles = answer(request_bytes([role(CT, True, True), role(US, False, True)]))
    data = pdu.associate_ac(request, results, 32768, "2.25.1", "ECHOES_T", roles)
    decoded = A_ASSOCIATE_AC()
    decoded.decode(data)
    primitive = decoded.to_primitive()
    replies = {str(item.sop_class_uid): (item.scu_role, item.scp_role)
               for item in primitive.user_information
               if isinstance(item, SCP_SCU_RoleSelectionNegotiation)}
    assert replies == {CT: (True, False)}
    results_by_id = {c.context_id: c.result
                     for c in primitive.presentation_context_definition_results_list}
    assert results_by_id == {1: 0, 3: 0, 5: pdu.USER_REJECTION}
    # and our requestor side reads the grant back
    assert pdu.parse_associate_ac(data[6:]).roles == {CT: (True, False)}


def test_extended_negotiation_and_user_identity_are_read_past() -> None:
    request, results, roles = answer(request_bytes(
        [extended(CT), common(MR), identity(), role(CT, True, False)]))
    assert request.extended == {CT: b"\x01\x00"}
    assert all(r.result == pdu.ACCEPTANCE for r in results)
    data = pdu.associate_ac(request, results, 32768, "2.25.1", "ECHOES_T", roles)
    decoded = A_ASSOCIATE_AC()
    decoded.decode(data)
    kinds = {type(item).__name__ for item in decoded.to_primitive().user_information}
    # No extended negotiation answered (no service supports any), no user identity response.
    assert not kinds & {"SOPClassExtendedNegotiation", "UserIdentityNegotiation"}


def test_our_request_proposes_roles_pynetdicom_reads() -> None:
    contexts = [pdu.PresentationContextRequest(1, CT, [EXPLICIT])]
    data = pdu.associate_rq("ECHOES", "PACS", contexts, 49152, "2.25.7", "ECHOES_T",
                            {CT: (False, True)})
    decoded = A_ASSOCIATE_RQ()
    decoded.decode(data)
    items = [item for item in decoded.to_primitive().user_information
             if isinstance(item, SCP_SCU_RoleSelectionNegotiation)]
    assert [(str(i.sop_class_uid), i.scu_role, i.scp_role) for i in items] == [
        (CT, False, True)]


@pytest.mark.parametrize("value", [b"", b"\x00\x10" + CT.encode(), b"\x00\x02" + b"12" + b"\x01"])
def test_malformed_role_item_is_a_pdu_error(value: bytes) -> None:
    user = bytes((pdu.ROLE_SELECTION_ITEM, 0)) + len(value).to_bytes(2, "big") + value
    body = (b"\x00\x01\x00\x00" + b"ECHOES".ljust(16) + b"MODALITY".ljust(16) + bytes(32)
            + bytes((pdu.USER_INFORMATION_ITEM, 0)) + len(user).to_bytes(2, "big") + user)
    with pytest.raises(pdu.PDUError):
        pdu.parse_associate_rq(body)
