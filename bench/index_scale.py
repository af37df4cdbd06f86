"""Index write cost as the archive grows, and as one study grows.

Feeds ArchiveIndex.apply() in ingester-sized batches and prints the CPU cost
per 1,000 records at the start and at the end; the ratio must stay <= 1.5
(flat cost per object).  Two runs:

* the archive: --records (100,000) synthetic instances in studies of
  --per-study (100) instances in 4 series; then times reading the catalog
  the way ``echoes studies --json`` does;
* one big study: --big-study (10,000) instances of one study, one series, the
  shape of a long CT stream (0 skips it); then times reading that study.

CPU time of this process is measured (the machine may be shared), with wall
time beside it.  The index compacts a file when its journal has grown as big
as the file, so one window of 1,000 may hold a compaction of a whole study
(its cost is O(study), once per doubling): the ratio is taken on the mean of
the first and of the last tenth of the windows (at least 3 each), and the
single first and last windows and the worst are printed beside it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from echoes.index.embedded import ArchiveIndex, InstanceRecord, read_studies, read_study

ROOT = "1.2.826.0.1.3680043.99"
WINDOW = 1000


def records(total: int, per_study: int, series_per_study: int) -> Iterator[InstanceRecord]:
    for n in range(total):
        study, within = divmod(n, per_study)
        series = within % series_per_study
        yield InstanceRecord(
            SOPInstanceUID=f"{ROOT}.3.{n}", SOPClassUID="1.2.840.10008.5.1.4.1.1.2",
            SeriesInstanceUID=f"{ROOT}.2.{study}.{series}", StudyInstanceUID=f"{ROOT}.1.{study}",
            PatientID=f"P{study % 5000}", PatientName=f"DOE^PATIENT{study}", StudyDate="20261129",
            Modality="CT", InstanceNumber=str(within), TransferSyntaxUID="1.2.840.10008.1.2.1",
            path=f"{ROOT}.1.{study}/{ROOT}.2.{study}.{series}/{ROOT}.3.{n}.dcm", size=526000,
            received=f"2026-11-29T10:00:00.{n:09d}", calling_ae="CT01")


def feed(index: ArchiveIndex, stream: Iterator[InstanceRecord],
         batch_size: int) -> list[tuple[float, float]]:
    """(CPU s, wall s) per window of 1,000 records."""
    windows: list[tuple[float, float]] = []
    batch: list[InstanceRecord] = []
    cpu, wall = time.process_time(), time.perf_counter()
    for n, record in enumerate(stream, 1):
        batch.append(record)
        if len(batch) == batch_size or n % WINDOW == 0:
            index.apply(batch)
            batch = []
        if n % WINDOW == 0:
            now_cpu, now_wall = time.process_time(), time.perf_counter()
            windows.append((now_cpu - cpu, now_wall - wall))
            cpu, wall = now_cpu, now_wall
    if batch:
        index.apply(batch)
    return windows


def report(title: str, windows: list[tuple[float, float]]) -> bool:
    cpu = [w[0] * 1000 for w in windows]
    tenth = max(3, len(cpu) // 10)
    start, end = sum(cpu[:tenth]) / tenth, sum(cpu[-tenth:]) / tenth
    ratio = end / start
    ok = ratio <= 1.5
    print(title)
    print(f"  CPU ms per 1,000: first tenth {start:.0f}, last tenth {end:.0f}, "
          f"mean {sum(cpu) / len(cpu):.0f}; single windows first {cpu[0]:.0f}, "
          f"last {cpu[-1]:.0f}, max {max(cpu):.0f}   "
          f"(wall first {windows[0][1] * 1000:.0f}, last {windows[-1][1] * 1000:.0f})")
    print(f"  ratio last/first tenth {ratio:.2f} (target <= 1.5): {'PASS' if ok else 'FAIL'}")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--per-study", type=int, default=100)
    parser.add_argument("--big-study", type=int, default=10_000,
                        help="instances of the one-study run (0: skip it)")
    parser.add_argument("--batch", type=int, default=50, help="records per ingester batch")
    args = parser.parse_args()
    ok = True
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "index.json"
        index = ArchiveIndex(path)
        windows = feed(index, records(args.records, args.per_study, 4), args.batch)
        index.close()
        ok &= report(f"archive: {args.records} records, {args.per_study} per study, "
                     f"batches of {args.batch}", windows)
        started = time.perf_counter()
        studies = read_studies(path)
        print(f"  read_studies: {len(studies)} studies in "
              f"{(time.perf_counter() - started) * 1000:.0f} ms")
    if args.big_study:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "index.json"
            index = ArchiveIndex(path)
            stream = records(args.big_study, args.big_study, 1)
            windows = feed(index, stream, args.batch)
            index.close()
            ok &= report(f"one study: {args.big_study} records, batches of {args.batch}",
                         windows)
            started = time.perf_counter()
            study = read_study(path, f"{ROOT}.1.0")
            assert study is not None and len(study["instances"]) == args.big_study
            print(f"  read_study: {args.big_study} instances in "
                  f"{(time.perf_counter() - started) * 1000:.0f} ms")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
