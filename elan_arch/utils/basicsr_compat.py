"""Compatibility shims that must run before ``import basicsr``.

basicsr 1.4.2 (the latest release) does
``from torchvision.transforms.functional_tensor import rgb_to_grayscale`` in
``basicsr/data/degradations.py``. torchvision 0.17 renamed that private module
to ``torchvision.transforms._functional_tensor`` and later releases removed the
old name, so ``import basicsr`` fails with ``ModuleNotFoundError`` on any
current torchvision. :func:`apply` registers the new module under the old name
in :data:`sys.modules`; nothing in basicsr or torchvision is patched on disk.

``import elan_arch`` calls :func:`apply` before it imports basicsr, so user code
only has to import ``elan_arch`` first (the ``basicsr`` and ``elan`` commands
do this for you).
"""
from __future__ import annotations

import importlib
import sys

LEGACY_NAME = 'torchvision.transforms.functional_tensor'
CURRENT_NAME = 'torchvision.transforms._functional_tensor'


def apply() -> bool:
    """Make ``torchvision.transforms.functional_tensor`` importable.

    Returns:
        True if the alias was installed by this call, False if the legacy module
        already imports (old torchvision, or the alias is already in place).
    """
    if LEGACY_NAME in sys.modules:
        return False
    try:
        importlib.import_module(LEGACY_NAME)
        return False
    except ModuleNotFoundError:
        pass
    sys.modules[LEGACY_NAME] = importlib.import_module(CURRENT_NAME)
    return True
