"""Extended association negotiation against the real store port, pynetdicom as the peer:
SCP/SCU Role Selection is answered, SOP class (common) extended negotiation and
user identity are declined by silence, and the association works as usual.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from helpers import Server, common, extended, identity, make_dataset, start_server, stop_server
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, build_role

from echoes.dicom import pdu

VERIFICATION = "1.2.840.10008.1.1"
MR = "1.2.840.10008.5.1.4.1.1.4"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start_server(tmp_path_factory.mktemp("negotiation") / "home", store_workers=1)
    yield running
    stop_server(running)


def test_peer_proposing_roles_and_extended_negotiation(server: Server) -> None:
    dataset = make_dataset()
    archived = len(server.indexed_sops())
    ae = AE(ae_title="NEGOTIATOR")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(VERIFICATION)
    ae.add_requested_context(dataset.SOPClassUID, ExplicitVRLittleEndian)
    ae.add_requested_context(MR, ExplicitVRLittleEndian)
    ae.add_requested_context(STUDY_ROOT_MOVE, ExplicitVRLittleEndian)
    ext_neg = [build_role(dataset.SOPClassUID, scu_role=True, scp_role=True),
               build_role(MR, scu_role=False, scp_role=True),  # asks us to be the MR SCU
               build_role(STUDY_ROOT_MOVE, scu_role=False, scp_role=True),  # no role left
               extended(dataset.SOPClassUID), common(MR), identity()]
    assoc = ae.associate("127.0.0.1", server.config.store_port, ae_title="ECHOES",
                         ext_neg=ext_neg)
    assert assoc.is_established
    try:
        contexts = {str(cx.abstract_syntax): cx for cx in assoc.accepted_contexts}
        # Granted as asked for storage classes: the peer may store (SCU) and,
        # for C-GET (issue 17), take what we send it (SCP).
        stored_cx = contexts[dataset.SOPClassUID]
        assert (stored_cx.as_scu, stored_cx.as_scp) == (True, True)
        assert (contexts[MR].as_scu, contexts[MR].as_scp) == (False, True)
        # A Q/R class leaves the peer no role but SCU: only SCP asked, rejected.
        assert STUDY_ROOT_MOVE not in contexts
        rejected = {str(cx.abstract_syntax): cx.result for cx in assoc.rejected_contexts}
        assert rejected[STUDY_ROOT_MOVE] == pdu.USER_REJECTION
        answered = [type(item).__name__ for item in assoc.acceptor.user_information]
        assert "SOPClassExtendedNegotiation" not in answered
        assert "UserIdentityNegotiation" not in answered
        assert assoc.send_c_echo().Status == 0x0000
        assert assoc.send_c_store(dataset).Status == 0x0000
    finally:
        assoc.release()
    server.wait_ingested(archived + 1)
    assert dataset.SOPInstanceUID in server.indexed_sops()
