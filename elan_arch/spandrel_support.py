"""``import elan_arch.spandrel_support``: the documented one-liner that lets spandrel open ELAN checkpoints.

The code lives in :mod:`elan_arch.deploy.spandrel_arch`; importing either registers ELAN in
``spandrel.MAIN_REGISTRY`` (idempotent).
"""
from elan_arch.deploy.spandrel_arch import ELANArch, install

__all__ = ['ELANArch', 'install']
