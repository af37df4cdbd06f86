"""docs/conformance.md against the code: it claims nothing the server does not do.

A user of the repository reads the conformance tables there (the README links
them; SPEC.md and the 2010 statement are not in the repository), so every SOP
class and transfer syntax they list must be one the ports accept, and the
statement's classes must all be there.
"""

from __future__ import annotations

import re
from pathlib import Path

from echoes.dicom import sopclasses
from echoes.dicom.service import Port
from echoes.services import storage as store
from echoes.services import verification
from echoes.services import worklist as mwl

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "conformance.md"
UID_CELL = re.compile(r"^\|[^|]*\| `([0-9.]+)` \|", re.MULTILINE)


def section(text: str, heading: str) -> str:
    """The text under ``heading`` up to the next heading of the same or a higher level."""
    level = heading.split(" ")[0]
    start = text.index(heading + "\n") + len(heading)
    stop = re.compile(rf"^#{{1,{len(level)}}} ", re.MULTILINE).search(text, start)
    return text[start:stop.start() if stop else len(text)]


def uids(text: str) -> list[str]:
    return UID_CELL.findall(text)


def test_storage_sop_classes_are_what_the_store_port_accepts() -> None:
    doc = DOC.read_text()
    statement = uids(section(doc, "#### Storage SOP classes of the original statement"))
    further = uids(section(doc, "#### Further storage SOP classes (pynetdicom 3.0.4)"))
    assert statement == list(sopclasses.conformance_store_classes())
    accepted = store.accepted_contexts()
    claimed = set(statement) | set(further)
    assert not claimed - set(accepted), "listed but not accepted"
    assert len(further) == len(set(further)) and not set(further) & set(statement)
    assert sopclasses.VERIFICATION in verification.service().accepted


def test_transfer_syntaxes_are_what_the_ports_accept() -> None:
    doc = DOC.read_text()
    storage = section(doc, "## Storage SCP (store port)")
    listed = uids(section(storage, "### Transfer syntaxes"))
    assert sorted(listed) == sorted(sopclasses.STORE_TRANSFER_SYNTAXES)
    assert set(verification.service().accepted[sopclasses.VERIFICATION]) == set(listed[:3])

    worklist = section(doc, "## Modality Worklist SCP (worklist port)")
    service = mwl.WorklistService(None)  # type: ignore[arg-type]  # only its table is read
    port = Port(verification.service(), service)
    assert set(uids(section(worklist, "### SOP classes and transfer syntaxes"))) == set(
        port.accepted)
    assert all(syntaxes == frozenset(sopclasses.UNCOMPRESSED)
               for syntaxes in port.accepted.values())


def test_statuses_are_the_codes_sent() -> None:
    doc = DOC.read_text()
    storage = section(doc, "### Behaviour and statuses")
    for status in (store.SUCCESS, store.OUT_OF_RESOURCES, store.DOES_NOT_MATCH_SOP_CLASS,
                   store.CANNOT_UNDERSTAND):
        assert f"`0x{status:04X}`" in storage
    find = section(section(doc, "## Modality Worklist SCP (worklist port)"), "### Statuses")
    for status in (mwl.PENDING, mwl.SUCCESS, mwl.CANCEL, mwl.IDENTIFIER_DOES_NOT_MATCH):
        assert f"`0x{status:04X}`" in find


def test_readme_links_the_conformance_tables_not_files_users_lack() -> None:
    readme = (REPO / "README.md").read_text()
    assert "docs/conformance.md" in readme
    assert "SPEC.md" not in readme and "MEDSTRAT" not in readme


def test_query_retrieve_classes_are_what_the_store_port_accepts() -> None:
    from echoes.services.query import QueryService
    from echoes.services.retrieve import RetrieveService

    doc = DOC.read_text()
    listed = uids(section(section(doc, "## Query/Retrieve SCP (store port)"),
                          "### SOP classes and transfer syntaxes"))
    query = QueryService(None, reader=object())  # type: ignore[arg-type]  # its table only
    retrieve = RetrieveService(None, index=object())  # type: ignore[arg-type]
    accepted = {**query.accepted, **retrieve.accepted}
    assert sorted(listed) == sorted(accepted)
    assert all(set(syntaxes) == set(sopclasses.STORE_TRANSFER_SYNTAXES[:3])
               for syntaxes in accepted.values())


def test_mpps_and_commitment_classes_are_what_the_ports_accept(tmp_path: Path) -> None:
    from echoes.services.commitment import CommitmentService
    from echoes.services.mpps import MppsService, MppsStore

    doc = DOC.read_text()
    mpps = section(doc, "## Modality Performed Procedure Step SCP (worklist port)")
    service = MppsService(MppsStore(tmp_path))
    assert uids(section(mpps, "### SOP classes and transfer syntaxes")) == list(service.accepted)
    commitment = section(doc, "## Storage Commitment Push Model SCP (store port)")
    accepted = CommitmentService(None).accepted  # type: ignore[arg-type]  # its table only
    assert uids(section(commitment, "### SOP classes and transfer syntaxes")) == list(accepted)
    for status in (0x0106, 0x0110, 0x0111, 0x0112, 0x0120, 0x0121):
        assert f"`0x{status:04X}`" in section(mpps, "### Statuses")
