"""ELAN for BasicSR.

``import elan_arch`` first makes basicsr 1.4.2 importable with current
torchvision (:mod:`elan_arch.utils.basicsr_compat`), then registers this package's archs,
models and datasets into BasicSR's registries.
"""
from elan_arch.utils import basicsr_compat

basicsr_compat.apply()

from elan_arch import archs  # noqa: E402, F401  (registration happens on import)
from elan_arch import data  # noqa: E402, F401
from elan_arch import models  # noqa: E402, F401
from elan_arch.archs import ELAN, ELAN_VARIANTS  # noqa: E402

__version__ = '0.1.0'
__all__ = ['ELAN', 'ELAN_VARIANTS', '__version__']
