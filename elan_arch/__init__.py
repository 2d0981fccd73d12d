"""ELAN for BasicSR.

``import elan_arch`` is light (no torch, no basicsr): it arranges for basicsr 1.4.2 to import with current
torchvision (:mod:`elan_arch.utils.basicsr_compat`) and for this package's archs, models and datasets to be
registered into BasicSR's registries as soon as basicsr is imported, whichever is imported first:

- ``import elan_arch`` then ``import basicsr`` (or any ``basicsr.*`` module): registered when basicsr has
  loaded;
- ``import basicsr`` first (only works where torchvision still has ``functional_tensor``), then
  ``import elan_arch``: registered at once;
- ``from elan_arch.archs import ELAN`` (or any module that imports basicsr): registered once that
  module's room has loaded.

``elan_arch.ELAN`` and ``elan_arch.ELAN_VARIANTS`` load :mod:`elan_arch.archs` when first used. The
commands stay fast to start because nothing heavy is imported before it is needed (``elan --help`` loads
neither torch nor basicsr).
"""
from __future__ import annotations

import importlib
import sys
from typing import Any, Optional

from elan_arch.utils import basicsr_compat

__version__ = '0.1.0'
__all__ = ['ELAN', 'ELAN_VARIANTS', '__version__', 'register']

#: The rooms whose import registers into BasicSR's registries (archs, datasets, models).
REGISTERING = ('elan_arch.archs', 'elan_arch.data', 'elan_arch.models')


def _initializing(name: str) -> bool:
    module = sys.modules.get(name)
    return module is not None and bool(getattr(getattr(module, '__spec__', None), '_initializing', False))


def register(loaded: Optional[str] = None) -> None:
    """Import the rooms of :data:`REGISTERING` (idempotent). While one of them is still being imported
    (basicsr was first imported from inside it), nothing happens: that room calls this again, naming itself
    as ``loaded``, when it has finished."""
    if any(_initializing(name) for name in REGISTERING if name != loaded):
        return
    for name in REGISTERING:
        importlib.import_module(name)


def __getattr__(name: str) -> Any:
    if name in ('ELAN', 'ELAN_VARIANTS'):
        return getattr(importlib.import_module('elan_arch.archs'), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


if 'basicsr' in sys.modules:
    register()
else:
    basicsr_compat.before_basicsr_import(register)
