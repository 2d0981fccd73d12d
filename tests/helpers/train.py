"""Helpers of the end-to-end training tests: the demo LMDB in a fresh root, and subprocess runs as a user's."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from elan_arch.prepare import prepare_demo

REPO = Path(__file__).resolve().parents[2]
TRAIN_OPT = str(REPO / 'options' / 'train_ELAN_light_x4_demo.yml')
TEST_OPT = str(REPO / 'options' / 'test_ELAN_light_x4_demo.yml')


def demo_root(root: Path) -> Path:
    """``root`` with ``datasets/demo`` (x4 only) built by ``prepare_demo``, as ``elan prepare demo`` does."""
    prepare_demo(root / 'datasets' / 'demo', scales=(4, ), workers=1, progress=False)
    return root


def run_python(argv: List[str], cwd: Path, env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
    """``python ARGV`` in ``cwd`` (e.g. ``['-m', 'elan_arch.cli.basicsr_cmd', 'train', ...]``), output captured."""
    return subprocess.run([sys.executable, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def ok(result: subprocess.CompletedProcess) -> str:
    """The output of a run that must have succeeded (its tail is the assertion message otherwise)."""
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr

# A tiny ELAN (one block pair, 75K parameters) on 32-pixel HR patches: with batches of 24 an epoch of the
# demo's 129 training sub-images, each listed twice, is 10 iterations (5 per rank with two ranks), about
# 0.2 s each on a 2-core CPU, so a run is dominated by its start-up.
TINY = ['network_g:m_elan=2', 'datasets:train:gt_size=32', 'datasets:train:batch_size_per_gpu=24',
        'datasets:train:num_worker_per_gpu=0', 'datasets:train:dataset_enlarge_ratio=2', 'logger:print_freq=1',
        'val=~', 'logger:use_tb_logger=false']
TEST_ENV = dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1', CUDA_VISIBLE_DEVICES='')
DIST_WORKER = str(REPO / 'tests' / 'helpers' / 'dist_worker.py')


def worker_command(out: Path, train_args: List[str], torchrun_args: Optional[List[str]] = None,
                   option: str = TRAIN_OPT) -> List[str]:
    """``tests/helpers/dist_worker.py OUT train -opt OPTION ...`` (final weights to ``OUT/rank<R>.pth``), under
    ``torchrun TORCHRUN_ARGS`` with ``--launcher pytorch`` when those are given, else as one process."""
    launch = [] if torchrun_args is None else ['-m', 'torch.distributed.run', *torchrun_args]
    launcher = [] if torchrun_args is None else ['--launcher', 'pytorch']
    return [sys.executable, *launch, DIST_WORKER, str(out), 'train', '-opt', option, *launcher, *train_args]


def frozen_option(root: Path) -> str:
    """A copy of the demo option file in ``root``: the runs a test compares read the same file even if
    the repository's copy is edited meanwhile."""
    copy = root / Path(TRAIN_OPT).name
    copy.write_text(Path(TRAIN_OPT).read_text())
    return str(copy)


def same_parameters(a: Dict[str, Any], b: Dict[str, Any]) -> bool:
    """Whether two state_dicts hold bit-identical tensors under the same keys."""
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
