"""Models; importing this package registers ``ELANModel`` in BasicSR's ``MODEL_REGISTRY``.

* :mod:`~elan_arch.models.elan_model`: :class:`ELANModel`, BasicSR's ``SRModel`` with an EMA that also
  carries BatchNorm buffers, atomic checkpoints and the validation modes below;
* :mod:`~elan_arch.models.eval_modes`: tiled whole-image inference and the x8 self-ensemble used by
  validation and ``basicsr test``;
* :mod:`~elan_arch.models.realworld`: :class:`RealELANNetModel` and :class:`RealELANGANModel`, BasicSR's
  Real-ESRNet / Real-ESRGAN models on any device with a resumable degradation (and the fixes the ``basicsr``
  command installs into BasicSR's own two).
"""
from elan_arch.models.elan_model import ELANModel
from elan_arch.models.realworld import RealELANGANModel, RealELANNetModel

__all__ = ['ELANModel', 'RealELANGANModel', 'RealELANNetModel']

from elan_arch import register  # noqa: E402

register(loaded=__name__)  # the other rooms, if basicsr was first imported from this one
