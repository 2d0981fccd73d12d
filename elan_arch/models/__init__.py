"""Models; importing this package registers ``ELANModel`` in BasicSR's ``MODEL_REGISTRY``."""
from elan_arch.models.elan_model import ELANModel

__all__ = ['ELANModel']
