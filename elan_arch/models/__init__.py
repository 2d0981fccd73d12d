"""Models; importing this package registers ``ELANModel`` in BasicSR's ``MODEL_REGISTRY``.

* :mod:`~elan_arch.models.elan_model`: :class:`ELANModel`, BasicSR's ``SRModel`` with an EMA that also
  carries BatchNorm buffers, atomic checkpoints and the validation modes below;
* :mod:`~elan_arch.models.eval_modes`: tiled whole-image inference and the x8 self-ensemble used by
  validation and ``basicsr test``.
"""
from elan_arch.models.elan_model import ELANModel

__all__ = ['ELANModel']
