"""Forwarding latency and throughput: echoes relaying to storescp, beside storescu direct.

1. dcmtk ``storescu`` sends N CT-like objects straight to a ``storescp``
   (the reference: how fast dcmtk moves them over one association).
2. ``storescu -v`` sends the same N objects to echoes, whose config forwards
   to a second ``storescp``.  The time of every C-STORE response is taken
   (as storescu prints it),
   and the time every object appears in storescp's folder; the difference is
   the receive-to-arrival latency.  Forwarding throughput is N over the time
   from the first C-STORE sent to the last arrival.

Prints the median, 95th percentile and maximum latency (targets: median
< 1 s, every object < 2 s), both throughputs and their ratio, and how many
associations storescp received from echoes (target: a handful).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import ENV, OUT, free_port, storescu_acknowledged, tool  # bench/common.py
from ingest import corpus, wait_port  # bench/ingest.py
from pydicom import dcmread


def watch_arrivals(folder: Path, expected: int, stop: threading.Event) -> dict[str, float]:
    """name -> first time seen in ``folder``; polls every 5 ms until ``expected`` seen."""
    seen: dict[str, float] = {}
    while not stop.is_set() and len(seen) < expected:
        now = time.time()
        for name in os.listdir(folder):
            seen.setdefault(name, now)
        time.sleep(0.005)
    return seen


def start_storescp(folder: Path, log: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen([tool("storescp"), "-v", "-od", str(folder), str(port)], env=ENV,
                               stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    wait_port(port)
    return process, port


def direct(files: list[Path], work: Path) -> float:
    """Seconds for storescu to send ``files`` straight to storescp."""
    process, port = start_storescp(work / "direct", work / "direct.log")
    try:
        started = time.perf_counter()
        subprocess.run([tool("storescu"), "-xe", "127.0.0.1", str(port), *map(str, files)], env=ENV,
                       check=True, capture_output=True)
        return time.perf_counter() - started
    finally:
        process.terminate()
        process.wait()


def forwarded(files: list[Path], work: Path) -> tuple[list[float], float, int]:
    """Latencies (s), forwarding seconds and storescp associations, via echoes."""
    destination = work / "forwarded"
    scp, scp_port = start_storescp(destination, work / "forwarded.log")
    home = work / "home"
    (home / "etc").mkdir(parents=True)
    store_port = free_port()
    (home / "etc" / "echoes.ini").write_text(
        f"[echoes]\nbind = 127.0.0.1\nstore_port = {store_port}\nmwl_port = {free_port()}\n"
        f"http_port = {free_port()}\n"
        f"min_free_mb = 100\n\n[ae:DEST]\nhost = 127.0.0.1\nport = {scp_port}\nforward = yes\n")
    echoes = subprocess.Popen([sys.executable, "-m", "echoes", "--config",
                               str(home / "etc" / "echoes.ini"), "start"],
                              stdout=subprocess.DEVNULL, stderr=open(work / "echoes.out", "wb"))
    try:
        wait_port(store_port)
        time.sleep(1.0)  # let the sender and ingester settle
        stop = threading.Event()
        arrivals: dict[str, float] = {}
        watcher = threading.Thread(
            target=lambda: arrivals.update(watch_arrivals(destination, len(files), stop)))
        watcher.start()
        # storescu -v says "Sending file: X" then "Received Store Response": the
        # moment each response line arrives is the moment echoes acknowledged.
        sop_of = {str(path): dcmread(path, stop_before_pixels=True).SOPInstanceUID
                  for path in files}
        started = time.time()
        responses = storescu_acknowledged(store_port, files, sop_of)
        if len(responses) != len(files):
            raise SystemExit(f"echoes acknowledged {len(responses)} of {len(files)}")
        watcher.join(120)
        stop.set()
        if len(arrivals) < len(files):
            raise SystemExit(f"only {len(arrivals)} of {len(files)} arrived")
        latencies = [arrivals[name] - responses[name.split(".", 1)[1]] for name in arrivals]
        seconds = max(arrivals.values()) - started
        return latencies, seconds, (work / "forwarded.log").read_text().count(
            "Association Received")
    finally:
        echoes.send_signal(signal.SIGTERM)
        echoes.wait(60)
        scp.terminate()
        scp.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    args = parser.parse_args()
    files = corpus(args.count)
    OUT.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=OUT) as folder:
        work = Path(folder)
        direct_seconds = direct(files, work)
        latencies, forward_seconds, associations = forwarded(files, work)
    latencies.sort()
    median = statistics.median(latencies)
    p95 = latencies[int(0.95 * (len(latencies) - 1))]
    print(f"{args.count} CT 512x512 16-bit objects")
    print(f"  storescu -> storescp direct: {direct_seconds:6.2f} s "
          f"{args.count / direct_seconds:7.1f} objects/s")
    print(f"  SCU -> echoes -> storescp:   {forward_seconds:6.2f} s "
          f"{args.count / forward_seconds:7.1f} objects/s "
          f"(ratio {forward_seconds / direct_seconds:.2f})")
    print(f"  receive-to-arrival latency: median {median * 1000:.0f} ms, "
          f"p95 {p95 * 1000:.0f} ms, max {latencies[-1] * 1000:.0f} ms "
          f"({'PASS' if median < 1 and latencies[-1] < 2 else 'FAIL'}: median < 1 s, all < 2 s)")
    print(f"  associations echoes opened to storescp: {associations}")
    return 0 if median < 1 and latencies[-1] < 2 else 1


if __name__ == "__main__":
    sys.exit(main())
