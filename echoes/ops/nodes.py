"""The nodes of one archive, judged from their heartbeats (pure: rows in, problems out).

Each node's supervisor writes a row to the ``nodes`` table every few seconds
(:mod:`echoes.database.nodes`); ``echoes check`` on any node reads every
row and says here what is wrong with the other nodes.  This node itself is
judged by the local probes (its processes and ports), which see more than
its row does.
"""

from __future__ import annotations

from collections.abc import Iterable

from echoes.database.nodes import NodeRow

#: A node whose last beat is older than this is down (its supervisor beats every 5 s).
SILENT_SECONDS = 30.0
OK, WARNING, CRITICAL = 0, 1, 2


def roles_state(children: Iterable[tuple[str, int | None, bool]],
                wanted: dict[str, int]) -> dict[str, dict]:
    """role -> {"wanted", "running", "pids"} from (role, pid, running) of each process
    slot (what a node's row says about its processes)."""
    state: dict[str, dict] = {role: {"wanted": count, "running": 0, "pids": []}
                              for role, count in wanted.items()}
    for role, pid, running in children:
        entry = state.setdefault(role, {"wanted": 0, "running": 0, "pids": []})
        if running and pid is not None:
            entry["running"] += 1
            entry["pids"].append(pid)
    return state


def ago(seconds: float) -> str:
    """A duration as an admin reads it: 47 s, 12 min, 3.5 h, 2.0 days."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def problems(rows: Iterable[NodeRow], here: str, optional_roles: frozenset[str],
             silent_after: float = SILENT_SECONDS,
             here_is: tuple[str, int] | None = None) -> list[tuple[int, str]]:
    """(severity, message) for every other node that is down, stopped, or short of
    processes; ``here`` (this node's name) is left to the local probes.

    A node silent for more than ``silent_after`` seconds without a clean stop
    is CRITICAL (killed, crashed, its machine or network gone): the objects
    acknowledged into its spool wait there until it runs again.  A node
    stopped with ``echoes stop`` is a WARNING: deliberate, but the archive
    runs on fewer nodes.  ``here_is``: this node's host and running supervisor's
    pid; this node's row naming another, fresh, means two nodes share a
    ``node_name`` (CRITICAL: their senders would take each other's jobs).
    """
    found: list[tuple[int, str]] = []
    for row in rows:
        if row.name == here:
            if (here_is is not None and (row.host, row.pid) != here_is and not row.stopped
                    and row.silent <= silent_after):
                found.append((CRITICAL, f"node_name {here} is used by another node too "
                                        f"({row.host}, pid {row.pid}): give each node "
                                        "its own node_name"))
            continue
        where = f"node {row.name} ({row.host}, pid {row.pid})"
        waiting = (f"; {row.spool_waiting} objects wait in its spool"
                   if row.spool_waiting else "")
        if row.stopped:
            found.append((WARNING, f"{where} stopped {ago(row.silent)} ago{waiting} "
                                   f"(echoes nodes --forget {row.name} if it is gone for good)"))
            continue
        if row.silent > silent_after:
            found.append((CRITICAL, f"{where} not seen for {ago(row.silent)}: down?{waiting}"))
            continue
        for role, entry in sorted(row.roles.items()):
            if entry.get("running", 0) < entry.get("wanted", 0):
                severity = WARNING if role in optional_roles else CRITICAL
                found.append((severity, f"node {row.name}: {role}: {entry['running']} of "
                                        f"{entry['wanted']} processes running"))
    return found

