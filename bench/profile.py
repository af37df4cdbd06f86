"""Where one bench row's time goes in echoes, per object and per process role.

Usage::

    .venv/bin/python bench/profile.py ROW [--count N] [--syscalls] [--spy ROLE]

ROW is one of ``compare.py``'s ingest and forwarding rows: ``1a`` (CT, one
association), ``1b`` (tiny, one association), ``1c`` (CT, 4 associations),
``1d`` (tiny, one association per object), ``6a`` (CT forwarded to a
storescp), ``6c`` (an archived CT study pushed to a storescp, the sender
alone).  Same corpora, same server settings and the same clients as
``compare.py`` (it imports them); echoes only.

It prints, for every echoes process (each store worker, the ingester, the
sender; storescp for 6a/6c): user and system CPU per object from
``/proc/PID/stat`` over the row; with ``--syscalls`` the file-system calls
that cost here (fsync, fdatasync, rename, openat, write, mkdir, unlink) per
object, counted by ``strace -c`` (which slows the row and inflates system
CPU: read the CPU figures from a run without it); with ``--spy ROLE`` a
py-spy profile of that role's processes (``pip install py-spy``; 500
samples/s) summarised as the functions with
the most samples of their own.  For 6a it also times the direct run
(storescu straight to a storescp) with both tools' CPU, and prints the
CPU floor of forwarding on this machine's cores against 1.5x of it
(:func:`floor_report`).  Why per object and per role: a wall time
says whether a row passes, not which process to change, and on two cores
every process's CPU is time some other one waits for.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import compare
from pydicom import dcmread

ROWS = ("1a", "1b", "1c", "1d", "6a", "6c")
ROLES = ("store", "ingester", "sender")
TRACED = "fsync,fdatasync,rename,renameat2,openat,write,mkdir,unlink,unlinkat"
TICK = os.sysconf("SC_CLK_TCK")


def cpu(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process so far."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICK, int(fields[12]) / TICK


def files_for(row: str, count: int) -> list[Path]:
    files = compare.sc_corpus(2000) if row in ("1b", "1d") else compare.ct_studies(1000)
    files = files[: count or (500 if row == "1d" else len(files))]
    compare.warm(files)
    return files


@contextlib.contextmanager
def attached(processes: dict[str, int], syscalls: bool, spy: str,
             out: Path) -> Iterator[None]:
    """strace -c and py-spy attached to ``processes`` while the row runs."""
    tools: list[subprocess.Popen] = []
    for name, pid in processes.items():
        if syscalls:
            tools.append(subprocess.Popen(
                ["strace", "-f", "-c", "-e", f"trace={TRACED}", "-o", str(out / f"{name}.strace"),
                 "-p", str(pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        if spy and name.startswith(spy + ":"):
            py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
            tools.append(subprocess.Popen(
                [py_spy, "record", "-p", str(pid), "-r", "500", "-f", "raw", "--nonblocking",
                 "-o", str(out / f"{name}.spy")], stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL))
    if tools:
        time.sleep(1.0)  # attached before the first object
    try:
        yield
    finally:
        for tool in tools:
            tool.send_signal(2)
        for tool in tools:
            tool.wait()


def strace_counts(path: Path, objects: int) -> str:
    """'fsync 2.00, rename 1.00, ...' per object from an ``strace -c`` summary."""
    counts = {}
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            parts = line.split()
            if (len(parts) >= 5 and parts[-1].isidentifier() and parts[3].isdigit()
                    and parts[-1] != "total"):
                counts[parts[-1]] = int(parts[3])
    return ", ".join(f"{name} {calls / objects:.2f}" for name, calls in
                     sorted(counts.items(), key=lambda item: -item[1]))


def spy_summary(path: Path, top: int = 12) -> list[str]:
    """The functions with the most samples of their own, as percentages."""
    own: collections.Counter[str] = collections.Counter()
    total = 0
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            total += int(count)
            own[re.sub(r"^thread \(\w+\): ", "", stack.split(";")[-1])] += int(count)
    return [f"{100 * n / total:5.1f}% {name}" for name, n in own.most_common(top)] if total else []


def children_cpu() -> float:
    """CPU seconds (user + system) of this process's waited-for children so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def direct_run(files: list[Path], work: Path) -> tuple[float, float, float]:
    """storescu straight to a storescp, as 6a's reference run: (wall seconds,
    storescu's CPU seconds, storescp's CPU seconds)."""
    destination = compare.StoreSCP(work / "direct")
    try:
        client = children_cpu()
        started = time.perf_counter()
        compare.send(destination.port, files)
        compare.settle(destination, len(files))
        seconds = time.perf_counter() - started
        client = children_cpu() - client
        server = sum(cpu(destination.process.pid))
    finally:
        destination.stop()
    return seconds, client, server


def floor_report(count: int, forwarded: float, echoes_cpu: float, client: float,
                 destination: float, direct: tuple[float, float, float]) -> list[str]:
    """What 6a's CPU says about its target (<= 1.5x the direct run) on this machine.

    Why.  On a machine with N cores a run cannot take less wall time than its
    processes' CPU time over N.  Forwarding does the direct run's two halves
    (a client sending, a storescp receiving) plus echoes' own (durable
    receive, ingest, send): if that sum over N is already above 1.5x the
    direct run's wall time, the target is out of reach by CPU alone,
    whatever the scheduling.
    """
    cores = os.cpu_count() or 1
    direct_wall, direct_client, direct_server = direct
    total = echoes_cpu + client + destination
    floor = total / cores
    return [
        f"direct: storescu -> storescp {direct_wall:.2f} s; CPU per object: storescu "
        f"{1000 * direct_client / count:.2f} ms, storescp {1000 * direct_server / count:.2f} ms",
        f"forwarded: {forwarded:.2f} s = {forwarded / direct_wall:.2f}x direct; CPU per object: "
        f"echoes {1000 * echoes_cpu / count:.2f} ms, storescu {1000 * client / count:.2f}, "
        f"destination storescp {1000 * destination / count:.2f}: {1000 * total / count:.2f} ms",
        f"CPU floor on {cores} cores: {floor:.2f} s = {floor / direct_wall:.2f}x direct "
        f"(the target: 1.5x = {1.5 * direct_wall:.2f} s)",
    ]


def run_row(row: str, files: list[Path], work: Path, syscalls: bool, spy: str) -> None:
    destination = compare.StoreSCP(work / "destination") if row in ("6a", "6c") else None
    extra = ""
    if destination is not None:
        extra = (f"\n[ae:DEST]\nhost = 127.0.0.1\nport = {destination.port}\n"
                 f"forward = {'yes' if row == '6a' else 'no'}\n")
    target = compare.Echoes(work / "home", extra=extra)
    try:
        if row == "6c":
            compare.ingest(target, files)
            compare.wait_idle(target.process.pid, timeout=60, window=1.0, busy=0.02)
        processes = {f"{role}:{pid}": pid for role in ROLES for pid in target.pids(role)}
        if destination is not None:
            processes["storescp"] = destination.process.pid
        before = {name: cpu(pid) for name, pid in processes.items()}
        started = time.perf_counter()
        with attached(processes, syscalls, spy, work):
            if row == "6c":
                studies = sorted({dcmread(path, stop_before_pixels=True).StudyInstanceUID
                                  for path in files})
                for study in studies:
                    subprocess.run([sys.executable, "-m", "echoes", "--config", str(target.ini),
                                    "push", study, "DEST"], check=True, capture_output=True)
                arrived = compare.settle(destination, len(files))
            elif row == "6a":
                client = children_cpu()
                compare.send(target.port, files, called=target.called)
                client = children_cpu() - client
                arrived = compare.settle(destination, len(files))
            else:
                cell = compare.ingest(target, files, associations=4 if row == "1c" else 1,
                                      per_association=row == "1d")
                arrived = len(files) if cell.ok else -1
            seconds = time.perf_counter() - started
        after = {name: cpu(pid) for name, pid in processes.items()}
    finally:
        target.stop()
        if destination is not None:
            destination.stop()
    count = len(files)
    note = " (wall time slowed by the attached tools)" if syscalls or spy else ""
    print(f"row {row}: {arrived} of {count} objects, {seconds:.2f} s{note}")
    print(f"{'process':18s} {'user ms/obj':>11s} {'sys ms/obj':>10s}")
    for name in processes:
        user = after[name][0] - before[name][0]
        system = after[name][1] - before[name][1]
        if user + system == 0 and not name.startswith(("ingester", "sender")):
            continue  # the idle store worker
        print(f"{name:18s} {1000 * user / count:11.3f} {1000 * system / count:10.3f}")
        if syscalls:
            print(f"{'':18s} calls per object: {strace_counts(work / f'{name}.strace', count)}")
        for line in spy_summary(work / f"{name}.spy"):
            print(f"{'':18s} {line}")
    if row == "6a" and not (syscalls or spy):
        used = {name: sum(after[name]) - sum(before[name]) for name in processes}
        echoes_cpu = sum(value for name, value in used.items() if name != "storescp")
        for line in floor_report(count, seconds, echoes_cpu, client, used["storescp"],
                                 direct_run(files, work)):
            print(line)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("row", choices=ROWS)
    parser.add_argument("--count", type=int, default=0, help="objects (default: the row's)")
    parser.add_argument("--syscalls", action="store_true", help="strace -c every process")
    parser.add_argument("--spy", default="", choices=("",) + ROLES, help="py-spy this role")
    args = parser.parse_args()
    files = files_for(args.row, args.count)
    work = Path(tempfile.mkdtemp(prefix="echoes-profile-"))
    try:
        run_row(args.row, files, work, args.syscalls, args.spy)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
