"""The embedded index's walls (issue 18's table): build, restart, RSS, catalog reads, size.

For one archive shape (``--records`` instances, ``--per-study`` per study),
in a temporary folder (``--dir``, default the system temp folder: /tmp):

* build: ``ArchiveIndex.apply`` in batches of ``--batch`` (50, the
  ingester's), wall and CPU seconds, and the writer's RSS at the end (VmRSS;
  VmHWM beside it);
* restart after a clean stop: ``close()``, then a fresh ``ArchiveIndex()``
  as at ingester start (the process's RSS is not fresh: only the time);
* restart after a kill: the previous writer is dropped without ``close()``
  (its files are what kill -9 leaves: every write is in the page cache),
  then a fresh ``ArchiveIndex()``;
* ``read_studies`` (what ``echoes studies --json`` reads; a fresh reader),
  and ``study_page`` of 50 (what ``echoes studies --limit 50`` reads; a
  fresh reader);
* the Browser's catalog (:class:`echoes.web.catalog.StudyCatalog` over one
  long-lived reader): first load, then one more batch of ``--batch`` new
  studies' instances, then the time until its snapshot holds them;
* the index on disk: apparent bytes and allocated blocks (``du``);
* last, the row of issue 18's table for this archive (build, restart,
  writer RSS and its growth per instance over the second half of the build,
  ``read_studies``, index on disk), to paste beside the issue's figures.

Run ``--profile FILE`` to write a cProfile of the restart after a kill and of
the Browser's update to FILE.restart / FILE.browser (``python -m pstats``).
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

# bench/profile.py would shadow the standard library's profile, which cProfile imports.
_HERE = str(Path(__file__).resolve().parent)
sys.path[:] = [entry for entry in sys.path if entry not in (_HERE, "")]
import cProfile  # noqa: E402

sys.path.insert(0, _HERE)

from index_scale import ROOT, records  # noqa: E402

from echoes.index.embedded import ArchiveIndex, EmbeddedIndex, read_studies  # noqa: E402
from echoes.web import catalog as web_catalog  # noqa: E402


def rss_mb() -> tuple[float, float]:
    """(VmRSS, VmHWM) of this process in MB."""
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            name, kb = line.split()[:2]
            values[name] = int(kb) / 1024
    return values["VmRSS:"], values["VmHWM:"]


def disk_mb(folder: Path) -> tuple[float, float]:
    """(apparent MB, allocated MB) of every file under ``folder``."""
    apparent = allocated = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            stat = os.stat(os.path.join(root, name))
            apparent += stat.st_size
            allocated += stat.st_blocks * 512
    return apparent / 1e6, allocated / 1e6


def timed(action, profile: str | None = None):
    """(result, wall seconds) of ``action()``, profiled into ``profile`` if given."""
    profiler = cProfile.Profile() if profile else None
    started = time.perf_counter()
    if profiler:
        profiler.enable()
    result = action()
    if profiler:
        profiler.disable()
        profiler.dump_stats(profile)
    return result, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--per-study", type=int, default=1)
    parser.add_argument("--series", type=int, default=0,
                        help="series per study (default: 4, or 1 for one-image studies)")
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--dir", default=None, help="parent of the temporary folder")
    parser.add_argument("--profile", default=None, help="cProfile output prefix")
    args = parser.parse_args()
    series = args.series or (1 if args.per_study == 1 else 4)
    web_catalog.SYNC_LOAD_SECONDS = float("inf")  # measure the load, not the background
    print(f"archive: {args.records:,} instances, {args.per_study} per study, "
          f"batches of {args.batch}", flush=True)
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        path = Path(folder) / "index.json"
        index = ArchiveIndex(path)
        stream = records(args.records + args.batch, args.per_study, series)
        cpu, started = time.process_time(), time.perf_counter()
        batch = []
        half_rss = 0.0
        for n, record in enumerate(stream, 1):
            batch.append(record)
            if len(batch) == args.batch:
                index.apply(batch)
                batch = []
            if n == args.records // 2:
                gc.collect()
                half_rss = rss_mb()[0]
            if n == args.records:
                break
        if batch:
            index.apply(batch)
        build, build_cpu = time.perf_counter() - started, time.process_time() - cpu
        gc.collect()
        rss, hwm = rss_mb()
        growth = (rss - half_rss) * 2**20 / max(1, args.records - args.records // 2)
        print(f"  build: {build:.1f} s wall, {build_cpu:.1f} s CPU "
              f"({build / args.records * 1e6:.0f} us per instance); "
              f"writer RSS {rss:.0f} MB (peak {hwm:.0f} MB), growing {growth:.0f} B per "
              f"instance over the second half", flush=True)

        _, closing = timed(index.close)
        del index
        gc.collect()
        index, clean = timed(lambda: ArchiveIndex(path))
        print(f"  close: {closing:.2f} s; restart after a clean stop: {clean:.2f} s", flush=True)
        # A kill: the writer is dropped as it is, its files as kill -9 leaves them.
        index.apply([next(stream) for _ in range(args.batch)])
        index = None
        gc.collect()
        profile = f"{args.profile}.restart" if args.profile else None
        index, killed = timed(lambda: ArchiveIndex(path), profile)
        print(f"  restart after a kill (no close): {killed:.2f} s", flush=True)

        studies, read = timed(lambda: read_studies(path))
        print(f"  read_studies: {len(studies):,} studies in {read:.2f} s", flush=True)
        page, paged = timed(lambda: EmbeddedIndex(path).study_page("date", True, 50, 0))
        print(f"  study_page of 50 (echoes studies --limit 50), a fresh reader: "
              f"{paged:.2f} s ({len(page.studies)} of {page.total:,})", flush=True)

        reader = EmbeddedIndex(path)
        browser = web_catalog.StudyCatalog(reader)
        snapshot, first = timed(browser.current)
        before = len(snapshot)
        extra = records(args.records + 2 * args.batch + args.per_study * args.batch,
                        1, 1)
        fresh = [record for n, record in enumerate(extra)
                 if n >= args.records + 2 * args.batch][: args.batch]
        index.apply(fresh)
        profile = f"{args.profile}.browser" if args.profile else None
        snapshot, update = timed(browser.current, profile)
        assert f"{ROOT}.1.{args.records + 2 * args.batch}" in snapshot.by_uid
        print(f"  Browser catalog: first load {first:.2f} s ({before:,} studies), "
              f"after one batch of {args.batch} new studies {update:.3f} s "
              f"({len(snapshot):,} studies)", flush=True)
        index.close()
        apparent, allocated = disk_mb(Path(folder))
        print(f"  index on disk: {apparent:.0f} MB apparent, {allocated:.0f} MB allocated",
              flush=True)
    studies_in_all = -(-args.records // args.per_study)
    print("\nissue 18's table, this archive (archive | build | ingester restart | writer RSS "
          "| read_studies | index on disk):")
    print(f"| {args.records:,} instances, {args.per_study} per study ({studies_in_all:,} "
          f"studies) | {build:.0f} s ({build / studies_in_all * 1e3:.1f} ms per study) | "
          f"{killed:.1f} s after a kill, {clean:.1f} s after a clean stop | {rss:.0f} MB, "
          f"growing ~{growth:.0f} B per instance | {read:.2f} s | {apparent:.0f} MB |")
    print(f"  peak RSS of the whole run: "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
