"""Architectures; importing this package registers them in BasicSR's ``ARCH_REGISTRY``."""
from elan_arch.archs.elan_arch import ELAN, ELAN_VARIANTS

__all__ = ['ELAN', 'ELAN_VARIANTS']
