"""SOP classes and transfer syntaxes, as data.

The store SCP's SOP class list is read from ``data/store_scp_sop_classes.tsv``,
a verbatim copy of section 3.1 of the conformance statement, so that the
statement and the code cannot disagree; every other storage SOP class that
pynetdicom knows is added to it (SPEC: "and every other storage SOP class
pynetdicom knows").  Transfer syntaxes are tuples of UIDs in preference order.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from pydicom import uid as pydicom_uid
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import _STORAGE_CLASSES, register_uid, uid_to_service_class

VERIFICATION = "1.2.840.10008.1.1"
MODALITY_WORKLIST_FIND = "1.2.840.10008.5.1.4.31"

#: The three uncompressed syntaxes of the conformance statement.
UNCOMPRESSED: tuple[str, ...] = (
    pydicom_uid.ExplicitVRLittleEndian,
    pydicom_uid.ImplicitVRLittleEndian,
    pydicom_uid.ExplicitVRBigEndian,
)

#: Compressed syntaxes accepted and stored as received (SPEC, DICOM behaviour).
COMPRESSED: tuple[str, ...] = (
    pydicom_uid.DeflatedExplicitVRLittleEndian,
    pydicom_uid.JPEGBaseline8Bit,
    pydicom_uid.JPEGExtended12Bit,
    pydicom_uid.JPEGLossless,
    pydicom_uid.JPEGLosslessSV1,
    pydicom_uid.JPEGLSLossless,
    pydicom_uid.JPEGLSNearLossless,
    pydicom_uid.JPEG2000Lossless,
    pydicom_uid.JPEG2000,
    pydicom_uid.HTJ2KLossless,
    pydicom_uid.HTJ2KLosslessRPCL,
    pydicom_uid.HTJ2K,
    pydicom_uid.RLELossless,
)

#: What the store SCP accepts for every storage SOP class.
STORE_TRANSFER_SYNTAXES: tuple[str, ...] = UNCOMPRESSED + COMPRESSED


def _read_table(name: str) -> tuple[tuple[str, str], ...]:
    text = resources.files("echoes.data").joinpath(name).read_text(encoding="utf-8")
    rows = []
    for line in text.splitlines():
        if line and not line.startswith("#"):
            label, uid = line.split("\t")
            rows.append((label.strip(), uid.strip()))
    return tuple(rows)


@cache
def conformance_store_labels() -> dict[str, str]:
    """UID -> the statement's name for it."""
    return {uid: label for label, uid in _read_table("store_scp_sop_classes.tsv")}


def register_retired_storage_classes() -> list[str]:
    """Teach pynetdicom the statement's retired and draft storage classes.

    pynetdicom drops a C-STORE for a SOP class it does not map to the
    Storage service (Stored Print, the draft SR and waveform classes...).
    """
    registered = []
    for uid in conformance_store_classes():
        if uid_to_service_class(uid) is not StorageServiceClass:
            label = conformance_store_labels()[uid]
            keyword = "".join(c for c in label if c.isalnum()) or f"Storage{len(registered)}"
            register_uid(uid, f"Echoes{keyword}", StorageServiceClass)
            registered.append(uid)
    return registered


@cache
def conformance_store_classes() -> tuple[str, ...]:
    """Storage SOP class UIDs of conformance statement 3.1 (no Verification)."""
    uids = [uid for _label, uid in _read_table("store_scp_sop_classes.tsv")]
    return tuple(dict.fromkeys(uid for uid in uids if uid != VERIFICATION))


@cache
def store_scp_classes() -> tuple[str, ...]:
    """Every storage SOP class the store SCP accepts: the statement's, then pynetdicom's."""
    known = list(conformance_store_classes())
    known.extend(str(uid) for uid in _STORAGE_CLASSES.values())
    return tuple(dict.fromkeys(known))
