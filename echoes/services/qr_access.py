"""Who may query and retrieve on the store port: one rule for C-FIND, C-MOVE and C-GET.

Why a module of its own.  Storing is governed by the port's allow-lists
(checked at A-ASSOCIATE, :mod:`echoes.dicom.acceptor`); Query/Retrieve has
one more list, ``qr_allowed_calling_aes`` (SPEC "Query/Retrieve"), checked
per request so that a modality allowed to store on the same association is
not rejected outright.  FIND, MOVE and GET must apply the very same rule and
answer it with the very same status, so both live here.

Status: a refused request is answered 0xC124, in the "Failed: Unable to
process" range (0xC000-0xCFFF) that PS3.4 names for C-FIND (C.4.1.1.4),
C-MOVE (C.4.2.1.5) and C-GET (C.4.3.1.4) alike -- none of them has an
"not authorized" status of its own, and 0xA700 (out of resources) would send
a viewer's user looking at the wrong machine.  The low byte echoes PS3.7's
general 0x0124 "Refused: Not authorized", so it is recognizable in a log.
"""

from __future__ import annotations

from echoes.config import Config

#: The status of a Q/R request from a calling AE not in ``qr_allowed_calling_aes``.
NOT_ALLOWED = 0xC124


def qr_allowed(config: Config, calling_ae: str) -> bool:
    """Whether ``calling_ae`` may query and retrieve (an empty list: anyone the
    port's own allow-lists let in, which the acceptor checked already)."""
    allowed = config.qr_allowed_calling_aes
    return not allowed or calling_ae.strip() in allowed_titles(allowed)


def allowed_titles(entries: tuple[str, ...]) -> frozenset[str]:
    """The titles a configured list names.  SPEC calls the list space-separated,
    the configuration parser splits on commas: an entry counts whole and word by
    word, so ``A B``, ``A, B`` and ``A,B`` all allow A and B."""
    return frozenset(word for entry in entries for word in (entry, *entry.split()))


def refusal_comment(calling_ae: str) -> str:
    """The ErrorComment of a refused request (64 characters at most, LO)."""
    return f"{calling_ae.strip()[:16]} may not query or retrieve here"[:64]
