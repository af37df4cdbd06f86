"""echoes.dicom names itself: the implementation UID and version name it sends.

(That it imports nothing else from echoes is checked with the other layer rules in
test_layers.py.)"""

from __future__ import annotations

import echoes
from echoes import dicom


def test_implementation_version_name_follows_the_version() -> None:
    assert dicom.IMPLEMENTATION_VERSION_NAME == f"ECHOES_{echoes.__version__}"[:16]
    assert echoes.IMPLEMENTATION_CLASS_UID == dicom.IMPLEMENTATION_CLASS_UID
