"""Models; importing this package registers ``ELANModel`` in BasicSR's ``MODEL_REGISTRY``."""
from .elan_model import ELANModel

__all__ = ['ELANModel']
