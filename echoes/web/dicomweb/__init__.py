"""DICOMweb (PS3.18) under ``/dicom-web``: QIDO-RS and WADO-RS.

Why a package of its own inside the Browser: it shares the Browser's process,
login and readers (the index seam, the object store), but its pure pieces
are tested without Flask or a socket: :mod:`qido` (query parameters ->
the index seam's level and filters), :mod:`dicom_json` (index documents ->
DICOM JSON, PS3.18 F.2), :mod:`media` (Accept negotiation) and
:mod:`multipart` (multipart/related framing that streams).  :mod:`routes`
is the thin Flask layer over them (``tests/unit/test_layers.py`` checks that
the pure modules import no web framework).
"""
