"""Datasets for training; importing this package registers ``ELANPairedImageDataset`` in BasicSR's
``DATASET_REGISTRY``.

* :mod:`~elan_arch.data.paired_image_dataset`: :class:`ELANPairedImageDataset`, BasicSR's
  ``PairedImageDataset`` with the up-front data check;
* :mod:`~elan_arch.data.lmdb_check`: that check of an LMDB GT/LQ pair (also ``elan prepare check``);
* :mod:`~elan_arch.data.sampler`: the resumable, seeded sampler the ``basicsr`` command trains with.

Making the data (DIV2K, benchmark sets, the demo set into LMDB) is offline work, in
:mod:`elan_arch.prepare`, which ``import elan_arch`` does not load.
"""
from elan_arch.data.lmdb_check import LmdbPairSummary, check_lmdb_pair
from elan_arch.data.paired_image_dataset import ELANPairedImageDataset

__all__ = ['ELANPairedImageDataset', 'LmdbPairSummary', 'check_lmdb_pair']

from elan_arch import register  # noqa: E402

register(loaded=__name__)  # the other rooms, if basicsr was first imported from this one
