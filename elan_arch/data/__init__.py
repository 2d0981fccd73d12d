"""Datasets: preparation tools (``elan prepare``) and ``ELANPairedImageDataset``.

Importing this package registers ``ELANPairedImageDataset`` in BasicSR's ``DATASET_REGISTRY``.
"""
from elan_arch.data.check import LmdbPairSummary, check_lmdb_pair
from elan_arch.data.demo_data import prepare_demo
from elan_arch.data.jobs import PrepareSummary
from elan_arch.data.paired_image_dataset import ELANPairedImageDataset
from elan_arch.data.prepare_benchmark import prepare_benchmark
from elan_arch.data.prepare_div2k import prepare_div2k

__all__ = ['ELANPairedImageDataset', 'LmdbPairSummary', 'PrepareSummary', 'check_lmdb_pair', 'prepare_benchmark',
           'prepare_demo', 'prepare_div2k']
