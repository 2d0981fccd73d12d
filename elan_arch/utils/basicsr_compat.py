"""Compatibility shims that must run before ``import basicsr``.

basicsr 1.4.2 (the latest release) does
``from torchvision.transforms.functional_tensor import rgb_to_grayscale`` in
``basicsr/data/degradations.py``. torchvision 0.17 renamed that private module
to ``torchvision.transforms._functional_tensor`` and later releases removed the
old name, so ``import basicsr`` fails with ``ModuleNotFoundError`` on any
current torchvision. :func:`apply` registers the new module under the old name
in :data:`sys.modules`; nothing in basicsr or torchvision is patched on disk.

``import elan_arch`` does not import basicsr itself (it would load torch): it calls
:func:`before_basicsr_import`, which applies the alias, and then runs this package's
registration, when basicsr is imported. So user code only has to import ``elan_arch`` first
(the ``basicsr`` and ``elan`` commands do this for you).
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from typing import Any, Callable, Optional

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


class _Loaded(importlib.abc.Loader):
    """basicsr's own loader, then ``after()`` once its ``__init__`` has run."""

    def __init__(self, loader: Any, after: Callable[[], None]) -> None:
        self._loader, self._after = loader, after

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self._loader.exec_module(module)
        self._after()

    def __getattr__(self, name: str) -> Any:  # resources, get_filename, ... as basicsr's loader has them
        return getattr(self._loader, name)


class _BeforeBasicsr(importlib.abc.MetaPathFinder):
    """On the first ``import basicsr``: :func:`apply`, then basicsr as usual, then ``after()``."""

    def __init__(self, after: Callable[[], None]) -> None:
        self._after = after

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Optional[Any]:
        if name != 'basicsr':
            return None
        sys.meta_path.remove(self)  # once: the real finders do the rest
        apply()
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loaded(spec.loader, self._after)
        return spec


def before_basicsr_import(after: Callable[[], None]) -> None:
    """Arrange for :func:`apply` to run just before basicsr is first imported, and ``after()`` just after
    its package has loaded (what ``import elan_arch`` does while basicsr is not imported yet)."""
    if not any(isinstance(finder, _BeforeBasicsr) for finder in sys.meta_path):
        sys.meta_path.insert(0, _BeforeBasicsr(after))
