"""Optional dependencies: import them with a message that names the pip extra to install."""
from __future__ import annotations

import importlib
from types import ModuleType

from elan_arch.utils.errors import ElanError


def require(module: str, extra: str, feature: str) -> ModuleType:
    """Import ``module`` or raise :class:`ElanError` saying ``feature`` needs the pip extra ``extra``."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ElanError(f'{feature} needs the Python package {module.split(".")[0]!r}, which is not installed '
                        f"({err}); install it with: pip install -e '.[{extra}]' in a clone of this repository, "
                        f"or pip install {module.split('.')[0]}") from err
