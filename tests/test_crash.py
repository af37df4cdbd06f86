"""Kill -9 a store worker, then the ingester, while storescu streams 500 objects.

Every object storescu was told is stored must end up archived and indexed
exactly once.  Slow: run with ``bin/test -m slow``.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time

import pytest
from conftest import DCMTK_ENV, make_dataset, write_part10
from pydicom.uid import generate_uid

pytestmark = pytest.mark.slow

OBJECTS = 500
CLIENTS = 5


def make_corpus(folder) -> list:
    folder.mkdir()
    study = generate_uid()
    return [write_part10(make_dataset(study=study, rows=128), folder / f"{n:04d}.dcm")
            for n in range(OBJECTS)]


def send_counting(port: int, files: list) -> set[str]:
    """Send with storescu; return the SOP UIDs it reports as stored (Success)."""
    result = subprocess.run(["storescu", "-v", "-aet", "CRASHTEST", "127.0.0.1", str(port),
                             *map(str, files)], env=DCMTK_ENV, capture_output=True, text=True,
                            timeout=300)
    acknowledged = set()
    sending = None
    for line in (result.stdout + result.stderr).splitlines():
        match = re.search(r"Sending file: (\S+)", line)
        if match:
            sending = match.group(1)
        if "Received Store Response (Success)" in line and sending:
            acknowledged.add(os.path.basename(sending))
            sending = None
    return acknowledged


@pytest.mark.parametrize("victim", ["store", "ingester"])
def test_kill_during_transfer_loses_nothing(server, dcmtk, tmp_path, victim):
    import pydicom

    files = make_corpus(tmp_path / "corpus")
    uid_of = {f.name: pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files}
    acknowledged: set[str] = set()
    chunks = [files[i::CLIENTS] for i in range(CLIENTS)]

    def client(chunk):
        acknowledged.update(send_counting(server.port, chunk))

    threads = [threading.Thread(target=client, args=(c,)) for c in chunks]
    for thread in threads:
        thread.start()
    killed = 0
    for _ in range(3):
        time.sleep(0.7)
        pids = server.children(victim)
        if pids:
            os.kill(pids[0], signal.SIGKILL)
            killed += 1
    for thread in threads:
        thread.join()
    assert killed
    acked_uids = {uid_of[name] for name in acknowledged}
    assert len(acked_uids) > OBJECTS // 4, "too few objects got through to prove anything"
    server.wait_ingested(len(acked_uids), timeout=60)
    indexed = server.indexed_sops()
    archived = server.archived_sops()
    assert acked_uids <= set(indexed) and acked_uids <= set(archived)
    assert len(indexed) == len(set(indexed)), "an object is indexed twice"
    assert len(archived) == len(set(archived))
    assert not server.files_outside()
    print(f"\n{victim}: killed {killed}x, sent {OBJECTS}, acknowledged {len(acked_uids)}, "
          f"archived {len(set(archived))}, indexed {len(set(indexed))}")
