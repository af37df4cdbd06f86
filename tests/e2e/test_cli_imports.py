"""``echoes studies`` (cron jobs, scripts, the 4c bench row) reads the index without
importing pydicom and numpy: they cost 0.37 s of a 0.5 s command here.  Run in a
fresh interpreter, since this test process has imported both long ago.
"""

from __future__ import annotations

import subprocess
import sys


def test_reading_the_index_imports_no_pydicom() -> None:
    code = ("import sys, echoes.cli, echoes.index, echoes.index.embedded; "
            "print(sorted(m for m in ('pydicom', 'numpy') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.strip() == "[]", done.stdout
