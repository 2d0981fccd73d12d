"""The package's commands as this interpreter's own: the console scripts installed beside ``sys.executable``
(``.venv/bin/elan``), or ``python -m`` of their modules where there are none, never whatever ``PATH`` finds
first (the suite must pass run as ``.venv/bin/python -m pytest`` without activating the environment)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import List

MODULES = {'elan': 'elan_arch', 'basicsr': 'elan_arch.cli.basicsr_cmd'}


def command(name: str) -> List[str]:
    """The argv prefix that runs ``name`` (``elan`` or ``basicsr``) for this interpreter."""
    script = Path(sys.executable).parent / name
    return [str(script)] if script.is_file() else [sys.executable, '-m', MODULES[name]]
