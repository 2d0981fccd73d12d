"""``elan prepare``: image folders into BasicSR's training and test layouts (offline, multiprocess).

* :mod:`~elan_arch.prepare.div2k`: DIV2K (or any HR folder) -> bicubic LR, overlapping sub-images,
  LMDB pairs with ``meta_info.txt``;
* :mod:`~elan_arch.prepare.benchmark`: Set5/Set14/B100/Urban100/Manga109-style folders -> mod-cropped
  HR and bicubic LR PNGs;
* :mod:`~elan_arch.prepare.demo_data`: the demo set from the photographs in scikit-image's wheel;
* :mod:`~elan_arch.prepare.subimages`, :mod:`~elan_arch.prepare.lmdb_writer`, :mod:`~elan_arch.prepare.jobs`:
  the crops, the LMDB writer and the process pool they share.

Every output is written to a temporary path and renamed into place only when complete; the result
is checked with :func:`elan_arch.data.check_lmdb_pair`, the check training runs too.
"""
from elan_arch.prepare.benchmark import prepare_benchmark
from elan_arch.prepare.demo_data import prepare_demo
from elan_arch.prepare.div2k import prepare_div2k
from elan_arch.prepare.jobs import PrepareSummary

__all__ = ['PrepareSummary', 'prepare_benchmark', 'prepare_demo', 'prepare_div2k']
