"""The sender and jobs that change under it (cancelled, file not archived yet),
over real associations to a pynetdicom SCP.

The SCP's C-STORE handler is where "meanwhile" happens: it cancels jobs on
disk (as ``echoes cancel`` or the Browser would, through another JobStore)
while the sender is in the middle of its batch.  The sender must not send a
job cancelled before its turn, and must not overwrite a cancel made while
that job's object was on the wire.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import free_port, make_dataset, write_config, write_part10
from pynetdicom import AE, evt
from pynetdicom.sop_class import SecondaryCaptureImageStorage

from echoes import config as config_module
from echoes.config import Config
from echoes.processes import sender
from echoes.queue import jobs
from echoes.storage import spool


class Peer:
    """A pynetdicom storage SCP that runs ``on_store(sop_instance_uid)`` per object."""

    def __init__(self, on_store: Callable[[str], None]) -> None:
        self.port = free_port()
        self.received: list[str] = []
        self.on_store = on_store
        ae = AE(ae_title="PEER")
        ae.add_supported_context(SecondaryCaptureImageStorage)
        self.server = ae.start_server(("127.0.0.1", self.port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._store)])

    def _store(self, event: evt.Event) -> int:
        uid = event.request.AffectedSOPInstanceUID
        self.received.append(uid)
        self.on_store(uid)
        return 0x0000


@pytest.fixture
def peer_factory() -> Iterator[Callable[[Callable[[str], None]], Peer]]:
    peers: list[Peer] = []

    def make(on_store: Callable[[str], None]) -> Peer:
        peers.append(Peer(on_store))
        return peers[-1]

    yield make
    for peer in peers:
        peer.server.shutdown()


def setup(tmp_path: Path, port: int, count: int) -> tuple[Config, jobs.JobStore, list[jobs.Job]]:
    """A config with [ae:PEER], ``count`` archived objects queued for it, oldest first."""
    path = write_config(tmp_path / "home")
    path.write_text(path.read_text() + f"\n[ae:PEER]\nhost = 127.0.0.1\nport = {port}\n")
    config = config_module.load(path)
    records = []
    for n in range(count):
        dataset = make_dataset()
        relative = f"study/{n}.dcm"
        (config.archive_dir / "study").mkdir(parents=True, exist_ok=True)
        write_part10(dataset, config.archive_dir / relative)
        records.append({"SOPInstanceUID": dataset.SOPInstanceUID,
                        "StudyInstanceUID": dataset.StudyInstanceUID,
                        "SOPClassUID": dataset.SOPClassUID,
                        "TransferSyntaxUID": dataset.file_meta.TransferSyntaxUID,
                        "path": relative})
    store = jobs.JobStore(spool.SpoolLayout(config.spool_dir).outgoing)
    now = time.time() - 10
    for n, record in enumerate(records):  # distinct created times: a known order
        store.queue("PEER", [record], "push", now + n)
    queued = sorted(store.all(), key=lambda job: job.created)
    return config, store, queued


def test_cancel_during_the_batch(tmp_path: Path, peer_factory) -> None:
    """Job 0 is cancelled while its object is on the wire, job 2 before its turn."""
    holder: dict[str, object] = {}

    def meanwhile(uid: str) -> None:
        if uid == holder["first"]:
            other = jobs.JobStore(holder["folder"])  # type: ignore[arg-type]
            other.cancel(holder["ids"][0], time.time())  # type: ignore[index]
            other.cancel(holder["ids"][2], time.time())  # type: ignore[index]

    peer = peer_factory(meanwhile)
    config, store, queued = setup(tmp_path, peer.port, 4)
    holder.update(first=queued[0].sop_instance_uid, folder=store.folder,
                  ids=[job.id for job in queued])
    worker = sender.Sender(config)
    assert worker.send_batch("PEER") == 3  # 0 was sent (then cancelled), 1 and 3 sent

    assert peer.received == [queued[0].sop_instance_uid, queued[1].sop_instance_uid,
                             queued[3].sop_instance_uid]
    states = [store.read(job.id).state for job in queued]
    assert states == [jobs.CANCELLED, jobs.DONE, jobs.CANCELLED, jobs.DONE]


def test_cancelled_jobs_are_never_sent(tmp_path: Path, peer_factory) -> None:
    peer = peer_factory(lambda uid: None)
    config, store, queued = setup(tmp_path, peer.port, 3)
    store.cancel(queued[1].id, time.time())
    worker = sender.Sender(config)
    worker.dispatch()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and len(peer.received) < 2:
        time.sleep(0.05)
    worker.stop(10)
    assert sorted(peer.received) == sorted([queued[0].sop_instance_uid,
                                            queued[2].sop_instance_uid])
    assert store.read(queued[1].id).state == jobs.CANCELLED


def test_failure_after_a_cancel_keeps_it_cancelled(tmp_path: Path) -> None:
    """The peer is down: the attempt's outcome (retrying) must not undo a cancel."""
    config, store, queued = setup(tmp_path, free_port(), 1)
    worker = sender.Sender(config)
    (job,) = worker.ready_jobs(config, "PEER")
    jobs.JobStore(store.folder).cancel(job.id, time.time())
    worker._record(jobs.attempt_failed(job, "peer down", time.time(), 30, 20))
    assert store.read(job.id).state == jobs.CANCELLED


def test_cancelled_while_association_is_being_made(tmp_path: Path, peer_factory) -> None:
    """Cancelled between planning and sending: nothing goes, nothing is recorded."""
    peer = peer_factory(lambda uid: None)
    config, store, queued = setup(tmp_path, peer.port, 2)
    worker = sender.Sender(config)
    original = worker.associate
    cancelled = threading.Event()

    def associate_then_cancel(*args, **kwargs):
        assoc = original(*args, **kwargs)
        for job in queued:
            jobs.JobStore(store.folder).cancel(job.id, time.time())
        cancelled.set()
        return assoc

    worker.associate = associate_then_cancel  # type: ignore[method-assign]
    assert worker.send_batch("PEER") == 0
    assert cancelled.is_set()
    assert peer.received == []
    assert {store.read(job.id).state for job in queued} == {jobs.CANCELLED}


def test_old_cancelled_jobs_are_pruned_like_done_ones(tmp_path: Path) -> None:
    config, store, queued = setup(tmp_path, free_port(), 3)
    now = time.time()
    hours = config.keep_done_hours * 3600
    store.write(jobs.cancelled(queued[0], now - hours - 60))
    store.write(jobs.cancelled(queued[1], now))
    worker = sender.Sender(config)
    worker._prune(config, now)
    assert sorted(job.id for job in worker.all_jobs()) == sorted([queued[1].id, queued[2].id])


def test_nothing_cancelled_everything_sent(tmp_path: Path, peer_factory) -> None:
    """Sanity: with nothing cancelled every job is sent and done (the check costs a stat)."""
    peer = peer_factory(lambda uid: None)
    config, store, queued = setup(tmp_path, peer.port, 5)
    assert sender.Sender(config).send_batch("PEER") == 5
    assert {store.read(job.id).state for job in queued} == {jobs.DONE}
    assert len(peer.received) == 5


def test_job_waits_for_its_file_without_writing(tmp_path: Path, peer_factory) -> None:
    """The ingester writes a batch's jobs before it moves the files: a job whose
    file is not there yet is not sent, not failed and its file not rewritten;
    it goes out once the file arrives.
    """
    peer = peer_factory(lambda uid: None)
    config, store, queued = setup(tmp_path, peer.port, 2)
    archived = config.archive_dir / queued[1].path
    parked = tmp_path / "not-moved-yet.dcm"
    archived.rename(parked)
    job_file = store.path_for(queued[1].id)
    before = (job_file.read_bytes(), job_file.stat().st_ino)
    worker = sender.Sender(config)
    assert worker.send_batch("PEER") == 1
    assert peer.received == [queued[0].sop_instance_uid]
    assert (job_file.read_bytes(), job_file.stat().st_ino) == before  # untouched
    assert worker.ready_jobs(config, "PEER") == []  # within MISSING_FILE_RECHECK
    parked.rename(archived)
    time.sleep(sender.MISSING_FILE_RECHECK)
    assert worker.send_batch("PEER") == 1
    assert peer.received == [queued[0].sop_instance_uid, queued[1].sop_instance_uid]
    assert store.read(queued[1].id).state == jobs.DONE


def test_file_missing_past_the_grace_fails_the_job(tmp_path: Path, peer_factory) -> None:
    peer = peer_factory(lambda uid: None)
    config, store, queued = setup(tmp_path, peer.port, 1)
    (config.archive_dir / queued[0].path).unlink()
    old = jobs.new_job("PEER", {"SOPInstanceUID": queued[0].sop_instance_uid,
                                "StudyInstanceUID": queued[0].study_instance_uid,
                                "SOPClassUID": queued[0].sop_class_uid,
                                "path": queued[0].path}, "forward",
                       time.time() - sender.MISSING_FILE_GRACE - 1)
    store.write(old)
    worker = sender.Sender(config)
    assert worker.send_batch("PEER") == 0
    failed = store.read(old.id)
    assert failed.state == jobs.FAILED
    assert failed.last_error == f"archived file missing: {old.path}"
    assert peer.received == []


def test_rename_while_on_the_wire_leaves_no_job_behind(tmp_path: Path, peer_factory) -> None:
    """The AE is renamed (its jobs moved) while the sender is sending one of them:
    the sender must not write the old job back, nor send the moved ones.
    """
    holder: dict[str, object] = {}

    def meanwhile(uid: str) -> None:
        if uid == holder["first"]:
            jobs.JobStore(holder["folder"]).rename_destination("PEER", "RENAMED")  # type: ignore[arg-type]

    peer = peer_factory(meanwhile)
    config, store, queued = setup(tmp_path, peer.port, 3)
    holder.update(first=queued[0].sop_instance_uid, folder=store.folder)
    assert sender.Sender(config).send_batch("PEER") == 1  # delivered, moved meanwhile
    assert peer.received == [queued[0].sop_instance_uid]
    assert all(store.read(job.id) is None for job in queued)  # nothing left under PEER
    moved = sorted(store.all(), key=lambda job: job.created)
    assert [(job.destination, job.state) for job in moved] == [("RENAMED", jobs.PENDING)] * 3
