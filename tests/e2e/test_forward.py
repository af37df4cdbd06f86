"""Forwarding and push end to end: echoes sends to dcmtk storescp destinations.

Objects go in with dcmtk storescu, come out of echoes' sender over real
associations, and are counted where storescp writes them.  One test uses a
pynetdicom SCP as the destination, because storescp cannot be told to answer
with a failure status.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import pydicom
import pytest
from helpers import (
    DCMTK_ENV,
    TEST_FILES,
    Server,
    echoes_cli,
    free_port,
    make_dataset,
    stop_server,
    wait_for,
    write_part10,
)
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import SecondaryCaptureImageStorage

from echoes.dicom.part10 import read_meta
from echoes.dicom.requestor import Requestor


@dataclass
class Destination:
    """A dcmtk storescp writing what it receives into ``folder``."""

    title: str
    port: int
    folder: Path
    log: Path
    process: subprocess.Popen | None = None

    def start(self, *options: str) -> Destination:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            ["storescp", "-v", "-aet", self.title, "-od", str(self.folder), *options,
             str(self.port)], env=DCMTK_ENV, stdout=open(self.log, "ab"),
            stderr=subprocess.STDOUT)
        wait_for(lambda: _listening(self.port), 10, f"storescp {self.title} did not start")
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def received(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir() if p.is_file()) if self.folder.exists() \
            else []

    def associations(self) -> int:
        return self.log.read_text(errors="replace").count("Association Received")

    def store_requests(self) -> int:
        """C-STORE requests received so far (objects sent again count again; an
        association the sender keeps open for what comes due meanwhile does not
        show in :meth:`associations`)."""
        return self.log.read_text(errors="replace").count("Received Store Request")


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def destination(tmp_path: Path, title: str) -> Destination:
    return Destination(title, free_port(), tmp_path / f"dest-{title}", tmp_path / f"{title}.log")


def ae_sections(*destinations: Destination, forward: bool = True) -> str:
    return "".join(f"\n[ae:{d.title}]\nhost = 127.0.0.1\nport = {d.port}\n"
                   f"forward = {'yes' if forward else 'no'}\n" for d in destinations)


def start_with(home: Path, sections: str, **extra: object) -> Server:
    """start_server, with [ae:*] sections appended to the config."""
    from helpers import write_config

    path = write_config(home, retry_interval=1, store_workers=1, **extra)
    path.write_text(path.read_text() + sections)
    return _start_existing(home)


def _start_existing(home: Path) -> Server:
    """Start echoes on the config already in ``home`` (a restart keeps ports)."""
    from echoes import config as config_module

    config_path = home / "etc" / "echoes.ini"
    config = config_module.load(config_path)
    out = open(home.with_name(home.name + ".out"), "ab")
    process = subprocess.Popen([sys.executable, "-m", "echoes", "--config", str(config_path),
                                "start"], stdout=out, stderr=subprocess.STDOUT)
    server = Server(home, config, process)
    from helpers import echo_ok

    wait_for(lambda: bool(server.children("sender")) and echo_ok(config.store_port), 30,
             "echoes did not start")
    return server


def queue(server: Server) -> dict:
    done = echoes_cli(server, "queue", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def study_files(folder: Path, count: int, study: str | None = None) -> list[Path]:
    study = study or generate_uid()
    series = generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    return [write_part10(make_dataset(study=study, series=series), folder / f"{n}.dcm")
            for n in range(count)]


def storescu(server: Server, files: list[Path], *options: str) -> None:
    done = subprocess.run(["storescu", *options, "127.0.0.1", str(server.config.store_port),
                           *map(str, files)], env=DCMTK_ENV, capture_output=True)
    assert done.returncode == 0, done.stderr.decode(errors="replace")


@pytest.fixture
def cleanup() -> Iterator[list]:
    things: list = []
    yield things
    for thing in reversed(things):
        if isinstance(thing, Destination):
            thing.stop()
        else:
            stop_server(thing)


def test_study_forwarded_to_two_destinations(tmp_path: Path, cleanup: list,
                                             dcmtk: None) -> None:
    first, second = destination(tmp_path, "DEST1"), destination(tmp_path, "DEST2")
    cleanup += [first.start("+xa"), second.start("+xa")]
    server = start_with(tmp_path / "home", ae_sections(first, second))
    cleanup.append(server)
    study = generate_uid()
    storescu(server, study_files(tmp_path / "in", 20, study))
    wait_for(lambda: len(first.received()) == 20 and len(second.received()) == 20, 30,
             f"forwarded: {len(first.received())}, {len(second.received())} of 20")
    state = queue(server)
    assert (state["DEST1"]["done"], state["DEST2"]["done"]) == (20, 20)
    assert first.associations() <= 5 and second.associations() <= 5
    # The log: a line per outbound association naming the study and its count
    # (not a line per object).
    for title in ("DEST1", "DEST2"):
        wait_for(lambda title=title: logged_sent(server, title, study) == 20, 10,
                 f"{title}: association lines for {study}")
    assert not re.search(r"job \w+ \S+ to DEST\d: done", server.config.log_file.read_text())


def logged_sent(server: Server, title: str, study: str) -> int:
    """Objects of ``study`` the sender's association lines to ``title`` say it sent."""
    pattern = re.compile(rf"{title}: \d+ sent, \d+ not, over one association .*; studies "
                         rf".*\b{re.escape(study)} \((\d+)\)")
    return sum(int(match.group(1)) for match in
               pattern.finditer(server.config.log_file.read_text(errors="replace")))


def test_destination_down_then_started_gets_everything(tmp_path: Path, cleanup: list,
                                                       dcmtk: None) -> None:
    late = destination(tmp_path, "LATE")
    server = start_with(tmp_path / "home", ae_sections(late))
    cleanup.append(server)
    storescu(server, study_files(tmp_path / "in", 5))
    wait_for(lambda: queue(server)["LATE"]["retrying"] == 5, 30, "jobs never went retrying")
    listing = echoes_cli(server, "queue").stdout
    assert "retrying" in listing and "cannot connect" in listing
    cleanup.append(late.start("+xa"))
    wait_for(lambda: len(late.received()) == 5, 30, f"arrived {len(late.received())} of 5")
    wait_for(lambda: queue(server)["LATE"]["done"] == 5, 10, "queue does not show done")


def _kill_everything(server: Server) -> None:
    victims = [server.process.pid] + [c.pid for c in psutil.Process(server.process.pid)
                                      .children(recursive=True)]
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    server.process.wait(10)
    psutil.wait_procs([psutil.Process(p) for p in victims if psutil.pid_exists(p)], timeout=10)


def test_kill9_while_jobs_wait_then_restart(tmp_path: Path, cleanup: list,
                                            dcmtk: None) -> None:
    later = destination(tmp_path, "LATER")
    home = tmp_path / "home"
    server = start_with(home, ae_sections(later))
    storescu(server, study_files(tmp_path / "in", 30))
    wait_for(lambda: queue(server)["LATER"]["retrying"] >= 1, 30, "no job attempted")
    _kill_everything(server)
    (home / "var" / "run" / "echoes.pid").unlink(missing_ok=True)

    server = _start_existing(home)
    cleanup.append(server)
    cleanup.append(later.start("+xa"))
    wait_for(lambda: len(later.received()) == 30, 40, f"arrived {len(later.received())} of 30")
    wait_for(lambda: queue(server)["LATER"]["done"] == 30, 10, "queue does not show done")
    state = queue(server)["LATER"]
    assert sum(state[s] for s in ("pending", "retrying", "failed", "done")) == 30


def test_push_to_an_ae_not_on_the_forwarding_list(tmp_path: Path, cleanup: list,
                                                  dcmtk: None) -> None:
    viewer = destination(tmp_path, "VIEWER")
    cleanup.append(viewer.start("+xa"))
    server = start_with(tmp_path / "home", ae_sections(viewer, forward=False))
    cleanup.append(server)
    study = generate_uid()
    storescu(server, study_files(tmp_path / "in", 4, study))
    server.wait_ingested(4)
    time.sleep(1.0)
    assert viewer.received() == []  # not on the forwarding list

    unknown_ae = echoes_cli(server, "push", study, "NOBODY")
    assert unknown_ae.returncode == 1 and "unknown AE 'NOBODY'" in unknown_ae.stderr
    unknown_study = echoes_cli(server, "push", "1.2.3.4", "VIEWER")
    assert unknown_study.returncode == 1 and "no archived study 1.2.3.4" in unknown_study.stderr
    pushed = echoes_cli(server, "push", study, "VIEWER")
    assert pushed.returncode == 0 and "queued 4 objects" in pushed.stdout
    wait_for(lambda: len(viewer.received()) == 4, 20, f"pushed {len(viewer.received())} of 4")


def test_jpeg_lossless_arrives_uncompressed_with_same_pixels(tmp_path: Path, cleanup: list,
                                                             dcmtk: None) -> None:
    plain = destination(tmp_path, "PLAIN")
    cleanup.append(plain.start())  # storescp default: uncompressed syntaxes only
    server = start_with(tmp_path / "home", ae_sections(plain))
    cleanup.append(server)
    original = TEST_FILES / "SC_rgb_jpeg_gdcm.dcm"
    storescu(server, [original], "-xs", "-R")
    wait_for(lambda: len(plain.received()) == 1, 20, "the JPEG lossless object did not arrive")
    arrived = pydicom.dcmread(plain.received()[0])
    source = pydicom.dcmread(original)
    assert arrived.file_meta.TransferSyntaxUID in ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1",
                                                   "1.2.840.10008.1.2.2")
    assert arrived.SOPInstanceUID == source.SOPInstanceUID
    assert np.array_equal(arrived.pixel_array, source.pixel_array)


def send_as_stored(server: Server, path: Path) -> int:
    """C-STORE a Part 10 file's data set exactly as the file holds it (echoes'
    requestor, no re-encoding); the response status.
    """
    meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
    sop_class, syntax = str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)
    assoc = Requestor.connect("127.0.0.1", server.config.store_port, "MODALITY", "ECHOES",
                              [(sop_class, [syntax])], 16384, 30, 60)
    context = assoc.context_for(sop_class, syntax)
    assert context is not None
    with open(path, "rb") as handle:
        _meta, offset = read_meta(handle, path.stat().st_size)
        handle.seek(offset)
        result = assoc.send_c_store(context, str(meta.MediaStorageSOPInstanceUID), handle)
    assoc.release()
    assert result is not None
    return result.status


def test_odd_length_deflated_object_arrives_at_storescp(tmp_path: Path, cleanup: list,
                                                        dcmtk: None) -> None:
    """pydicom's image_dfl.dcm has a deflate stream of 4,303 bytes.  Forwarded as
    stored to a storescp that takes deflate, it went out as an odd-length PDV:
    storescp aborted ("DIMSE: Odd Fragment Length: 4303") and the job failed as
    "no response".  Padded with one 0x00 as dcmtk's storescu pads, it arrives and
    inflates to the same data set.
    """
    deflating = destination(tmp_path, "DEFLATING")
    cleanup.append(deflating.start("+xd"))  # accepts Deflated Explicit VR Little Endian
    server = start_with(tmp_path / "home", ae_sections(deflating))
    cleanup.append(server)
    original = TEST_FILES / "image_dfl.dcm"
    with open(original, "rb") as handle:
        _meta, offset = read_meta(handle, original.stat().st_size)
    assert (original.stat().st_size - offset) % 2 == 1  # the case under test
    assert send_as_stored(server, original) == 0x0000
    wait_for(lambda: len(deflating.received()) == 1 or queue(server)["DEFLATING"]["failed"],
             30, "the deflated object did not arrive")
    assert deflating.received(), echoes_cli(server, "queue").stdout
    arrived = pydicom.dcmread(deflating.received()[0])
    source = pydicom.dcmread(original)
    assert arrived.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1.99"  # sent as stored
    assert "Odd Fragment Length" not in deflating.log.read_text(errors="replace")
    assert arrived.SOPInstanceUID == source.SOPInstanceUID
    assert [element for element in arrived] == [element for element in source]
    assert np.array_equal(arrived.pixel_array, source.pixel_array)


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1",
                                    "1.2.840.10008.1.2.2"])
def test_uncompressed_object_goes_out_as_stored(tmp_path: Path, cleanup: list, dcmtk: None,
                                                syntax: str) -> None:
    """An object stored in any uncompressed syntax arrives in that syntax at a peer
    that accepts all three (storescp's default picks Explicit VR Little Endian out
    of a context offering the three: an Implicit VR object went out re-encoded).
    """
    peer = destination(tmp_path, "PEER")
    cleanup.append(peer.start())
    server = start_with(tmp_path / "home", ae_sections(peer))
    cleanup.append(server)
    original = write_part10(make_dataset(syntax=syntax), tmp_path / "in.dcm", syntax)
    assert send_as_stored(server, original) == 0x0000
    wait_for(lambda: len(peer.received()) == 1, 30, "the object did not arrive")
    arrived = pydicom.dcmread(peer.received()[0])
    assert arrived.file_meta.TransferSyntaxUID == syntax
    assert arrived.SOPInstanceUID == pydicom.dcmread(original).SOPInstanceUID


def test_failure_status_shows_as_failed_with_reason(tmp_path: Path, cleanup: list,
                                                    dcmtk: None) -> None:
    port = free_port()

    def refuse(event: evt.Event) -> Dataset:
        status = Dataset()
        status.Status = 0xA900
        status.ErrorComment = "Patient ID missing here"
        return status

    scp = AE(ae_title="PICKY")
    scp.add_supported_context(SecondaryCaptureImageStorage)
    scp.add_supported_context("1.2.840.10008.5.1.4.1.1.7", ["1.2.840.10008.1.2.1",
                                                             "1.2.840.10008.1.2"])
    server_scp = scp.start_server(("127.0.0.1", port), block=False,
                                  evt_handlers=[(evt.EVT_C_STORE, refuse)])
    try:
        sections = f"\n[ae:PICKY]\nhost = 127.0.0.1\nport = {port}\nforward = yes\n"
        server = start_with(tmp_path / "home", sections)
        cleanup.append(server)
        storescu(server, study_files(tmp_path / "in", 2))
        wait_for(lambda: queue(server)["PICKY"]["failed"] == 2, 20, "jobs did not fail")
        listing = echoes_cli(server, "queue").stdout
        assert "failed" in listing and "0xA900" in listing and "Patient ID missing here" in listing
        health = echoes_cli(server, "check")
        assert health.returncode != 0 and "2 failed jobs to PICKY" in health.stdout
    finally:
        server_scp.shutdown()


def test_forwarding_list_reloaded_without_restart(tmp_path: Path, cleanup: list,
                                                  dcmtk: None) -> None:
    archive = destination(tmp_path, "ARCHIVE")
    cleanup.append(archive.start("+xa"))
    server = start_with(tmp_path / "home", ae_sections(archive, forward=False))
    cleanup.append(server)
    storescu(server, study_files(tmp_path / "before", 2))
    server.wait_ingested(2)
    config_path = server.config.path
    config_path.write_text(config_path.read_text().replace("forward = no", "forward = yes"))
    server.process.send_signal(signal.SIGHUP)  # the file change alone would do within 2 s
    time.sleep(0.5)
    storescu(server, study_files(tmp_path / "after", 3))
    wait_for(lambda: len(archive.received()) == 3, 20,
             f"after the reload {len(archive.received())} of 3 forwarded")
    time.sleep(1.0)
    assert len(archive.received()) == 3  # the two from before the change stay put


def test_retry_sends_failed_jobs_again(tmp_path: Path, cleanup: list, dcmtk: None) -> None:
    flaky = destination(tmp_path, "FLAKY")
    server = start_with(tmp_path / "home", ae_sections(flaky), max_attempts=1)
    cleanup.append(server)
    storescu(server, study_files(tmp_path / "in", 3))
    wait_for(lambda: queue(server)["FLAKY"]["failed"] == 3, 30, "jobs did not fail")
    health = echoes_cli(server, "check")
    assert health.returncode != 0 and "3 failed jobs to FLAKY" in health.stdout
    cleanup.append(flaky.start("+xa"))
    retried = echoes_cli(server, "retry", "--failed")
    assert retried.returncode == 0 and "3 jobs queued again" in retried.stdout
    wait_for(lambda: len(flaky.received()) == 3, 20, f"retried {len(flaky.received())} of 3")
    wait_for(lambda: queue(server)["FLAKY"]["done"] == 3, 10, "queue does not show done")


@pytest.mark.slow
@pytest.mark.parametrize("victim", ["sender", "ingester"])
def test_kill9_during_forwarding_loses_nothing(tmp_path: Path, cleanup: list, dcmtk: None,
                                               victim: str) -> None:
    """Every object acknowledged to the modality reaches the destination."""
    from test_crash import send_counting

    target = destination(tmp_path, "TARGET")
    cleanup.append(target.start("+xa"))
    server = start_with(tmp_path / "home", ae_sections(target))
    cleanup.append(server)
    files = study_files(tmp_path / "in", 300)
    uid_of = {f.name: pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files}
    acknowledged: set[str] = set()
    sending = threading.Thread(target=lambda: acknowledged.update(
        send_counting(server.config.store_port, files)))
    sending.start()
    killed = 0
    for _ in range(3):
        time.sleep(0.8)
        for pid in server.children(victim)[:1]:
            os.kill(pid, signal.SIGKILL)
            killed += 1
    sending.join()
    assert killed
    expected = {uid_of[name] for name in acknowledged}
    assert len(expected) > 100

    def arrived() -> set[str]:
        return {p.name.split(".", 1)[1] for p in target.received()}

    wait_for(lambda: expected <= arrived(), 90,
             f"{len(expected - arrived())} acknowledged objects never arrived")
    state = queue(server)["TARGET"]
    assert sum(state[s] for s in ("pending", "retrying", "failed", "done")) == len(expected)
    print(f"\n{victim}: killed {killed}x, acknowledged {len(expected)}, arrived "
          f"{len(arrived())}, jobs {state}")


class PoisonPeer:
    """A pynetdicom destination that aborts the association when it receives one
    chosen SOP Instance UID (as dcmtk receivers do on an object they cannot
    take, issue 14): a real peer, not a mocked network.  Everything else it
    stores is kept by SOP Instance UID.
    """

    def __init__(self, title: str, poison: str) -> None:
        self.title, self.poison, self.port = title, poison, free_port()
        self.received: set[str] = set()
        self.associations = 0
        scp = AE(ae_title=title)
        scp.add_supported_context(SecondaryCaptureImageStorage,
                                  ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
        self.server = scp.start_server(
            ("127.0.0.1", self.port), block=False,
            evt_handlers=[(evt.EVT_C_STORE, self.store), (evt.EVT_ACCEPTED, self.accepted)])

    def accepted(self, event: evt.Event) -> None:
        self.associations += 1

    def store(self, event: evt.Event) -> int:
        uid = event.request.AffectedSOPInstanceUID
        if uid == self.poison:
            event.assoc.abort()
            return 0xA700
        self.received.add(uid)
        return 0x0000

    def stop(self) -> None:
        self.server.shutdown()


def test_one_object_that_makes_the_peer_abort_fails_alone(tmp_path: Path, cleanup: list,
                                                          dcmtk: None) -> None:
    """A push of a study where the peer aborts on one object: every other object
    arrives with one attempt, the poisoned one fails alone after max_attempts
    with the peer's abort in its error (issue 14, items 3 and 4).
    """
    from echoes.queue import jobs

    files = study_files(tmp_path / "in", 8)
    uids = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files]
    # Jobs of one push share their creation time and go in job id order: the
    # poisoned one goes first, so every other object is behind it in the batch.
    poison = min(uids, key=lambda uid: jobs.job_id("POISONED", uid))
    peer = PoisonPeer("POISONED", poison)
    try:
        sections = f"\n[ae:POISONED]\nhost = 127.0.0.1\nport = {peer.port}\nforward = no\n"
        server = start_with(tmp_path / "home", sections, max_attempts=3)
        cleanup.append(server)
        storescu(server, files)
        server.wait_ingested(len(files))
        study = pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID
        pushed = echoes_cli(server, "push", study, "POISONED")
        assert pushed.returncode == 0, pushed.stderr
        wait_for(lambda: queue(server)["POISONED"]["failed"]
                 + queue(server)["POISONED"]["done"] == len(files), 60,
                 f"jobs did not finish: {queue(server)['POISONED']}")
        state = queue(server)["POISONED"]
        assert (state["done"], state["failed"]) == (len(files) - 1, 1), state
        assert peer.received == set(uids) - {poison}
        assert peer.associations == 4  # poisoned, the 7 others, the poisoned alone twice
        done = [json.loads(p.read_text()) for p in
                (server.config.spool_dir / "outgoing" / "done").glob("*.json")]
        assert all(job.get("attempts", 0) <= 1 for job in done), [
            (job["sop_instance_uid"], job["attempts"]) for job in done]
        [failed] = state["jobs"]
        assert failed["sop_instance_uid"] == poison and failed["attempts"] == 3
        assert "peer aborted the association (source: service-user" in failed["last_error"], \
            failed["last_error"]
    finally:
        peer.stop()
