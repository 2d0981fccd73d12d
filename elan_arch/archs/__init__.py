"""Architectures; importing this package registers ``ELAN`` in BasicSR's ``ARCH_REGISTRY``.

* :mod:`~elan_arch.archs.elan_arch`: :class:`ELAN` (the registered network) and :data:`ELAN_VARIANTS`;
* :mod:`~elan_arch.archs.elan_blocks`: its modules (shift-conv, LFE, GMSA, ELAB), the authors' tree;
* :mod:`~elan_arch.archs.elan_fast`: the same arithmetic reorganised for speed, reading the modules'
  own parameters (training and inference), built from :mod:`~elan_arch.archs.fast_ops` (shift,
  1x1 convolutions as matrix products) and :mod:`~elan_arch.archs.window_ops` (window attention);
* :mod:`~elan_arch.archs.window_kernels`: the fused Triton window attention (CUDA, opt-in).

``ELAN.forward`` pads the input, then runs either the module tree or the fast path; both give the
same function, so checkpoints never depend on the path taken.
"""
from elan_arch.archs.elan_arch import ELAN, ELAN_VARIANTS

__all__ = ['ELAN', 'ELAN_VARIANTS']

from elan_arch import register  # noqa: E402

register(loaded=__name__)  # the other rooms, if basicsr was first imported from this one
