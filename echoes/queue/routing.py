"""Routing rules: which forwarding destinations an object goes to, and when.

Pure functions (tested in ``tests/unit/test_routing.py`` without files or
sockets); the ingester calls :func:`destinations` where it writes forward
jobs, and :func:`release_stable` between batches.

Rules per ``[ae:TITLE]`` with ``forward = yes`` (SPEC.md, "Routing and
retention"):

- ``forward_modalities``: the object's own Modality must be one of them;
- ``forward_calling_aes``: the calling AE of the association that brought it
  (``calling_ae`` of its index record: the Source AE Title the store SCP
  writes into the spooled file's meta header) must be one of them;
- empty lists match everything; with both set, both must match.

``forward_when = study``: the object's job is written *held* (state
:data:`echoes.queue.jobs.HELD`: never due, so the sender leaves it).  The
held jobs themselves are the state that survives a restart, in whichever job
store backend: a study's held jobs for one destination are released together
(pending, due now) once the newest of them was created ``stable_study_seconds``
ago, so the sender, which sends every due job of a destination over one
association, sends the study in one.  An object of the study arriving later
is held again and goes the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace

from echoes.config import RemoteAE
from echoes.queue.jobs import HELD, PENDING, Job


def matches(remote: RemoteAE, modality: str, calling_ae: str) -> bool:
    """Whether an object of ``modality`` received from ``calling_ae`` goes to ``remote``.

    Only the rules: ``remote.forward`` is the caller's to check.
    """
    if remote.forward_modalities and modality.strip().upper() not in remote.forward_modalities:
        return False
    return not remote.forward_calling_aes or calling_ae.strip() in remote.forward_calling_aes


def destinations(remotes: Iterable[RemoteAE], modality: str,
                 calling_ae: str) -> list[RemoteAE]:
    """The ``forward = yes`` AEs an object of ``modality`` from ``calling_ae`` goes to."""
    return [remote for remote in remotes
            if remote.forward and matches(remote, modality, calling_ae)]


def hold(job: Job) -> Job:
    """``job`` held until its study is stable (written so by the ingester)."""
    return replace(job, state=HELD, next_attempt=0.0)


def release_stable(held: Iterable[Job], remotes: Mapping[str, RemoteAE],
                   now: float) -> tuple[list[Job], float | None]:
    """The held jobs to release now, and when to look again (None: nothing held).

    Jobs are grouped by (destination, study); a group goes when its newest job
    was created at least ``stable_study_seconds`` ago.  A destination set back
    to ``forward_when = instance`` (or no longer forwarding) releases at once;
    one no longer configured keeps its jobs held (as the jobs of an unknown AE
    wait until it is configured again).
    """
    newest: dict[tuple[str, str], float] = {}
    groups: dict[tuple[str, str], list[Job]] = {}
    for job in held:
        if job.state != HELD:
            continue
        key = (job.destination, job.study_instance_uid)
        groups.setdefault(key, []).append(job)
        newest[key] = max(newest.get(key, job.created), job.created)
    released: list[Job] = []
    next_look: float | None = None
    for key, group in groups.items():
        remote = remotes.get(key[0])
        if remote is None:
            continue
        wait = remote.stable_study_seconds if (
            remote.forward and remote.forward_when == "study") else 0
        due = newest[key] + wait
        if due <= now:
            released.extend(replace(job, state=PENDING, next_attempt=now, updated=now)
                            for job in group)
        elif next_look is None or due < next_look:
            next_look = due
    return released, next_look
