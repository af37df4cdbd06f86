"""The sender when an association ends under an object (issue 14, items 3 and 4).

Real associations to real peers: pynetdicom SCPs that abort, or say nothing,
when they receive a chosen object, and a bare DICOM upper layer peer that
aborts in the middle of a data set (as dcmtk does on an odd-length PDV).
Only the object on the wire may lose an attempt; the jobs behind it go over
a new association at once, and the blamed object goes alone from then on.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import BinaryIO

import pytest
from helpers import free_port, make_dataset, write_config, write_part10
from pynetdicom import AE, evt
from pynetdicom.sop_class import SecondaryCaptureImageStorage

from echoes import config as config_module
from echoes.config import Config
from echoes.dicom import pdu
from echoes.dicom.part10 import read_meta
from echoes.dicom.transport import PDUReader
from echoes.processes import sender
from echoes.queue import jobs
from echoes.services import dicom_settings, outbound
from echoes.storage import spool

SC = "1.2.840.10008.5.1.4.1.1.7"
UNCOMPRESSED = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]


class Peer:
    """A pynetdicom storage SCP; ``on_store(event)`` runs first for each object and
    may keep the response back, or abort the association (then it returns True).
    """

    def __init__(self, on_store: Callable[[evt.Event], bool]) -> None:
        self.port = free_port()
        self.received: list[str] = []
        self.associations = 0
        self.on_store = on_store
        ae = AE(ae_title="PEER")
        ae.add_supported_context(SecondaryCaptureImageStorage, UNCOMPRESSED)
        self.server = ae.start_server(
            ("127.0.0.1", self.port), block=False,
            evt_handlers=[(evt.EVT_C_STORE, self._store), (evt.EVT_ACCEPTED, self._accepted)])

    def _accepted(self, event: evt.Event) -> None:
        self.associations += 1

    def _store(self, event: evt.Event) -> int:
        if self.on_store(event):
            return 0xA700  # never sent: the association is gone
        self.received.append(event.request.AffectedSOPInstanceUID)
        return 0x0000


@pytest.fixture
def peers() -> Iterator[list]:
    running: list = []
    yield running
    for peer in running:
        peer.server.shutdown()


def setup(tmp_path: Path, port: int, count: int, **extra: object,
          ) -> tuple[Config, jobs.JobStore, list[jobs.Job]]:
    """A config with [ae:PEER], ``count`` archived objects queued for it, oldest first."""
    path = write_config(tmp_path / "home", **extra)
    path.write_text(path.read_text() + f"\n[ae:PEER]\nhost = 127.0.0.1\nport = {port}\n")
    config = config_module.load(path)
    store = jobs.JobStore(spool.SpoolLayout(config.spool_dir).outgoing)
    (config.archive_dir / "study").mkdir(parents=True, exist_ok=True)
    now = time.time() - 10
    for n in range(count):
        dataset = make_dataset(rows=64)
        relative = f"study/{n}.dcm"
        write_part10(dataset, config.archive_dir / relative)
        record = {"SOPInstanceUID": dataset.SOPInstanceUID,
                  "StudyInstanceUID": dataset.StudyInstanceUID,
                  "SOPClassUID": dataset.SOPClassUID,
                  "TransferSyntaxUID": dataset.file_meta.TransferSyntaxUID, "path": relative}
        store.queue("PEER", [record], "push", now + n)  # distinct created times: a known order
    return config, store, sorted(store.all(), key=lambda job: job.created)


def data_set(path: Path) -> BinaryIO:
    """The file's data set, after its File Meta, as the sender streams it."""
    handle = open(path, "rb")
    _meta, offset = read_meta(handle, path.stat().st_size)
    handle.seek(offset)
    return handle


def aborting_on(uids: list[str]) -> Callable[[evt.Event], bool]:
    """An on_store that aborts on the objects whose SOP Instance UID is in ``uids``."""
    def on_store(event: evt.Event) -> bool:
        if event.request.AffectedSOPInstanceUID in uids:
            event.assoc.abort()
            return True
        return False
    return on_store


def test_abort_blames_the_object_on_the_wire_only(tmp_path: Path, peers: list) -> None:
    holder: list[str] = []
    peer = Peer(aborting_on(holder))
    peers.append(peer)
    config, store, queued = setup(tmp_path, peer.port, 6, max_attempts=3)
    holder.append(queued[2].sop_instance_uid)
    worker = sender.Sender(config)

    assert worker.send_batch("PEER") == 5
    states = [store.read(job.id) for job in queued]
    assert [job.state for job in states] == [jobs.DONE] * 2 + [jobs.RETRYING] + [jobs.DONE] * 3
    assert [job.attempts for job in states] == [1] * 6
    assert states[2].last_error == "peer aborted the association (source: service-user)"
    assert peer.associations == 2  # the three behind it went over a new association
    assert worker.isolated() == {queued[2].id}

    # Its retry goes on an association of its own, never in front of new jobs.
    assert outbound.plan_batch([store.read(job.id) for job in queued[2:]],
                             worker.isolated())[0] == [store.read(queued[2].id)]
    store.write(jobs.retried(store.read(queued[2].id), time.time()))
    holder.clear()  # the peer takes it now
    assert worker.send_batch("PEER") == 1
    assert (peer.associations, store.read(queued[2].id).state) == (3, jobs.DONE)
    assert worker.isolated() == frozenset()  # harmless from now on


def test_isolated_job_goes_alone_before_a_batch(tmp_path: Path, peers: list) -> None:
    holder: list[str] = []
    peer = Peer(aborting_on(holder))
    peers.append(peer)
    config, store, queued = setup(tmp_path, peer.port, 4, max_attempts=5)
    holder.append(queued[0].sop_instance_uid)
    worker = sender.Sender(config)
    assert worker.send_batch("PEER") == 3
    assert peer.associations == 2
    for job in queued[1:]:  # pushed again: they are due with the blamed one
        store.write(replace(job, updated=time.time()))
    store.write(jobs.retried(store.read(queued[0].id), time.time()))

    assert worker.send_batch("PEER") == 3
    assert peer.associations == 4  # the blamed one alone (aborted again), then the others
    states = [store.read(job.id) for job in queued]
    assert [job.state for job in states] == [jobs.RETRYING] + [jobs.DONE] * 3
    assert [job.attempts for job in states] == [1] * 4  # retried() counted from zero


def test_no_response_blames_the_object_on_the_wire(tmp_path: Path, peers: list) -> None:
    holder: list[str] = []
    released = threading.Event()

    def silent(event: evt.Event) -> bool:
        if event.request.AffectedSOPInstanceUID in holder:
            released.wait(10)  # no response while echoes waits
            event.assoc.abort()
            return True
        return False

    peer = Peer(silent)
    peers.append(peer)
    config, store, queued = setup(tmp_path, peer.port, 4, dimse_timeout=1)
    holder.append(queued[1].sop_instance_uid)
    try:
        assert sender.Sender(config).send_batch("PEER") == 3
    finally:
        released.set()
    states = [store.read(job.id) for job in queued]
    assert [job.state for job in states] == [jobs.DONE, jobs.RETRYING, jobs.DONE, jobs.DONE]
    assert [job.attempts for job in states] == [1] * 4
    assert states[1].last_error == "no response within 1 s (timed out)"


def test_a_peer_that_aborts_everything_is_not_hammered(tmp_path: Path, peers: list) -> None:
    peer = Peer(lambda event: event.assoc.abort() or True)
    peers.append(peer)
    config, store, queued = setup(tmp_path, peer.port, 7)
    assert sender.Sender(config).send_batch("PEER") == 0
    assert peer.associations == sender.LOST_IN_A_ROW
    states = [store.read(job.id) for job in queued]
    assert {job.state for job in states} == {jobs.RETRYING}
    assert [job.attempts for job in states] == [1] * 7
    assert states[-1].last_error.endswith(f"({sender.LOST_IN_A_ROW} associations in a row)")


# -- a peer that aborts while the data set is still coming ---------------------------


class MidStreamAborter:
    """A bare DICOM upper layer acceptor: accepts every context, then answers the
    first P-DATA-TF with an A-ABORT (service-provider, unexpected PDU) and
    closes, the rest of the data set unread.
    """

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        connection, _address = self.listener.accept()
        with connection:
            reader = PDUReader(connection)
            _kind, body = reader.read()
            request = pdu.parse_associate_rq(body)
            results = [pdu.ContextResult(cx.context_id, pdu.ACCEPTANCE, cx.abstract_syntax,
                                         cx.transfer_syntaxes[0]) for cx in request.contexts]
            connection.sendall(pdu.associate_ac(request, results, 16384, "1.2.3.4", "ABORTER"))
            reader.read()
            connection.sendall(pdu.abort(pdu.ABORT_UNEXPECTED_PDU))
            time.sleep(0.2)


def test_abort_in_the_middle_of_a_data_set_is_named(tmp_path: Path) -> None:
    peer = MidStreamAborter()
    config, _store, _queued = setup(tmp_path, peer.port, 0)
    dataset = make_dataset(rows=1024)  # 2 MiB: far more than the socket buffers hold
    path = write_part10(dataset, tmp_path / "big.dcm")
    assoc = dicom_settings.associate(config, config.remote_aes["PEER"], [(SC, UNCOMPRESSED)])
    context = assoc.context_for(SC, UNCOMPRESSED[0])
    with data_set(path) as handle:
        assert assoc.send_c_store(context, dataset.SOPInstanceUID, handle) is None
    assert not assoc.is_established
    assert assoc.lost == ("peer aborted the association (source: service-provider, "
                          "reason: unexpected PDU)")
    peer.thread.join(5)


def test_peer_left_sees_an_abort_on_an_idle_association(tmp_path: Path, peers: list) -> None:
    def abort_soon(event: evt.Event) -> bool:
        threading.Timer(0.2, event.assoc.abort).start()
        return False

    peer = Peer(abort_soon)
    peers.append(peer)
    config, _store, queued = setup(tmp_path, peer.port, 1)
    assoc = dicom_settings.associate(config, config.remote_aes["PEER"], [(SC, UNCOMPRESSED)])
    with data_set(config.archive_dir / queued[0].path) as handle:
        response = assoc.send_c_store(assoc.context_for(SC, UNCOMPRESSED[0]),
                                      queued[0].sop_instance_uid, handle)
    assert response is not None and response.status == 0
    assert not assoc.peer_left()  # nothing said yet
    deadline = time.monotonic() + 10
    while not assoc.peer_left() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not assoc.is_established
    assert assoc.lost == "peer aborted the association (source: service-user)"
