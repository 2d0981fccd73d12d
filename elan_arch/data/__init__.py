"""Datasets: preparation tools (``elan prepare``) and ``ELANPairedImageDataset``.

Importing this package registers ``ELANPairedImageDataset`` in BasicSR's ``DATASET_REGISTRY``.
"""
from .check import LmdbPairSummary, check_lmdb_pair
from .demo_data import prepare_demo
from .jobs import PrepareSummary
from .paired_image_dataset import ELANPairedImageDataset
from .prepare_benchmark import prepare_benchmark
from .prepare_div2k import prepare_div2k

__all__ = ['ELANPairedImageDataset', 'LmdbPairSummary', 'PrepareSummary', 'check_lmdb_pair', 'prepare_benchmark',
           'prepare_demo', 'prepare_div2k']
