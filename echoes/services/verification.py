"""The Verification SOP class (C-ECHO SCP, PS3.4 Annex A) on every DICOM port.

A plain request/response service: one function behind
:class:`echoes.dicom.service.FunctionService`, the way a site-specific
service would be added.  It answers Success to every C-ECHO, whatever
presentation context it comes on (as echoes always has).
"""

from __future__ import annotations

from echoes.dicom import dimse, sopclasses, syntax
from echoes.dicom.service import FunctionService, Request


def echo(_request: Request) -> tuple[int, str]:
    """C-ECHO: the association works, and so does this port."""
    return dimse.SUCCESS, ""


def service() -> FunctionService:
    """Verification with the three uncompressed transfer syntaxes."""
    return FunctionService({sopclasses.VERIFICATION: frozenset(syntax.UNCOMPRESSED)},
                           {dimse.C_ECHO_RQ: echo})
