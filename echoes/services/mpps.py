"""Modality Performed Procedure Step SCP (PS3.4 Annex F) on the MWL port.

A modality that took its step from the worklist reports it here: N-CREATE
(IN PROGRESS) when the exam starts, N-SET as it goes, N-SET COMPLETED or
DISCONTINUED at the end.  Each instance is one DICOM JSON file in
``mpps_dir``, ``<SOP Instance UID>.json``, replaced atomically on every
change (the RIS picks them up; a reader sees the old or the new file,
whole).  The rules are :mod:`echoes.worklist.performed`'s; here a request is
decoded, judged, written, and the worklist told which steps are done.

One process serves the MWL port (the supervisor starts one ``mwl``), so the
instances are held in memory too, read from the folder at start; a lock
makes the check and the write of one request one step.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from pathlib import Path
from typing import Any

from pydicom.uid import generate_uid

from echoes.dicom import dataset, dimse, sopclasses, syntax
from echoes.dicom.service import Final, FunctionService, Request
from echoes.storage import durable
from echoes.worklist import performed

log = logging.getLogger("echoes.mpps")

#: A UID usable as a file name: digits and dots, at most 64 characters (PS3.5 9.1).
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
SOP_CLASS_UID, SOP_INSTANCE_UID = "00080016", "00080018"
SPECIFIC_CHARACTER_SET = "00080005"


class MppsStore:
    """The instances of ``mpps_dir``, in memory and on disk."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.lock = threading.Lock()
        self.instances: dict[str, performed.JsonDataset] = {}
        #: The worklist's view: steps performed (recomputed on each final N-SET).
        self.hidden: performed.Performed = frozenset()

    def load(self) -> None:
        """Read every instance file (a bad one is logged and left alone): at
        start, and on SIGHUP (a RIS that removed files un-hides their steps)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with self.lock:  # a request now waits: none is lost between the read and the swap
            instances: dict[str, performed.JsonDataset] = {}
            for path in sorted(self.folder.glob("*.json")):
                if path.name.startswith("."):
                    continue
                try:
                    instances[path.stem] = json.loads(path.read_text(encoding="utf-8"))
                except (OSError, ValueError) as exc:
                    log.error("MPPS file %s unreadable, ignored: %s", path, exc)
            self.instances = instances
            self.hidden = performed.hidden_steps(instances.values())
        log.info("MPPS %s: %d instances, %d performed-step keys hiding worklist items",
                 self.folder, len(self.instances), len(self.hidden))

    def state(self, uid: str) -> str:
        """The status of one instance ("" when unknown), for the Browser."""
        instance = self.instances.get(uid)
        return performed.status_of(instance) if instance else ""

    def _write(self, uid: str, instance: performed.JsonDataset) -> None:
        data = json.dumps(instance, indent=1, ensure_ascii=False).encode("utf-8")
        durable.atomic_write_bytes(self.folder / f"{uid}.json", data)

    def create(self, uid: str, attributes: performed.JsonDataset) -> performed.Verdict:
        """N-CREATE: judge, write, remember."""
        with self.lock:
            if uid in self.instances or (self.folder / f"{uid}.json").exists():
                return performed.Verdict(performed.DUPLICATE_SOP_INSTANCE,
                                         "MPPS instance exists already")
            verdict = performed.check_create(attributes)
            if not verdict.accepted:
                return verdict
            instance = performed.merged(attributes, {
                SOP_CLASS_UID: {"vr": "UI",
                                "Value": [sopclasses.MODALITY_PERFORMED_PROCEDURE_STEP]},
                SOP_INSTANCE_UID: {"vr": "UI", "Value": [uid]}})
            self._write(uid, instance)
            self.instances[uid] = instance
            return verdict

    def update(self, uid: str, changes: performed.JsonDataset) -> performed.Verdict:
        """N-SET: judge, merge, write, remember; the worklist's view follows."""
        with self.lock:
            current = self.instances.get(uid)
            verdict = performed.check_set(current, changes)
            if not verdict.accepted or current is None:
                return verdict
            instance = performed.merged(current, changes)
            self._write(uid, instance)
            self.instances[uid] = instance
            if performed.status_of(instance) in performed.FINAL_STATES:
                self.hidden = self.hidden | performed.hidden_steps([instance])
            return verdict


def _attributes(request: Request) -> performed.JsonDataset:
    """The request's data set as DICOM JSON (ValueError when it cannot be read)."""
    implicit, little = syntax.encoding_of(request.context.transfer_syntax)
    decoded = dataset.decode_dataset(request.data_set, implicit, little)
    result: dict[str, Any] = decoded.to_json_dict()
    # The text is Unicode now and the file UTF-8 (PS3.18 F.2): the request's
    # Specific Character Set no longer describes it.
    result.pop(SPECIFIC_CHARACTER_SET, None)
    return result


class MppsService(FunctionService):
    """N-CREATE and N-SET of the MPPS SOP class, over an :class:`MppsStore`."""

    def __init__(self, store: MppsStore) -> None:
        super().__init__({sopclasses.MODALITY_PERFORMED_PROCEDURE_STEP:
                          frozenset(syntax.UNCOMPRESSED)},
                         {dimse.N_CREATE_RQ: self.n_create, dimse.N_SET_RQ: self.n_set})
        self.store = store

    def _refused(self, request: Request, what: str, uid: str,
                 verdict: performed.Verdict) -> Final:
        log.warning("MPPS %s %s from %s refused: 0x%04X %s", what, uid,
                    request.association.calling_ae, verdict.status, verdict.comment)
        return Final(verdict.status, verdict.comment, sop_instance=uid,
                     offending=verdict.offending)

    def _decode(self, request: Request) -> performed.JsonDataset | None:
        if request.truncated:
            return None
        try:
            return _attributes(request)
        except Exception as exc:  # noqa: BLE001 -- whatever pydicom raises on bad bytes
            log.warning("MPPS request from %s: data set unreadable: %s",
                        request.association.calling_ae, exc)
            return None

    def n_create(self, request: Request) -> Final:
        """N-CREATE: a new instance, IN PROGRESS (PS3.4 F.7.2.1)."""
        if dimse.request_sop_class(request.command) != \
                sopclasses.MODALITY_PERFORMED_PROCEDURE_STEP:
            return Final(dimse.NO_SUCH_SOP_CLASS, "not the MPPS SOP class")
        uid = dimse.command_uid(request.command, dimse.AFFECTED_SOP_INSTANCE) or generate_uid()
        if len(uid) > 64 or not _UID.match(uid):
            return Final(dimse.INVALID_OBJECT_INSTANCE, "invalid Affected SOP Instance UID")
        attributes = self._decode(request)
        if attributes is None:
            return Final(dimse.PROCESSING_FAILURE, "data set unreadable", sop_instance=uid)
        verdict = self.store.create(uid, attributes)
        if not verdict.accepted:
            return self._refused(request, "N-CREATE", uid, verdict)
        log.info("MPPS %s created by %s: IN PROGRESS", uid, request.association.calling_ae)
        return Final(dimse.SUCCESS, sop_instance=uid)

    def n_set(self, request: Request) -> Final:
        """N-SET: changes to an IN PROGRESS instance (PS3.4 F.7.2.2)."""
        if dimse.request_sop_class(request.command) != \
                sopclasses.MODALITY_PERFORMED_PROCEDURE_STEP:
            return Final(dimse.NO_SUCH_SOP_CLASS, "not the MPPS SOP class")
        uid = dimse.request_sop_instance(request.command)
        attributes = self._decode(request)
        if attributes is None:
            return Final(dimse.PROCESSING_FAILURE, "data set unreadable", sop_instance=uid)
        verdict = self.store.update(uid, attributes)
        if not verdict.accepted:
            return self._refused(request, "N-SET", uid, verdict)
        log.info("MPPS %s set by %s: %s", uid, request.association.calling_ae,
                 self.store.state(uid))
        return Final(dimse.SUCCESS, sop_instance=uid)
