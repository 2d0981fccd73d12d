"""Helpers of the end-to-end training tests: the demo LMDB in a fresh root, and subprocess runs as a user's."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

from elan_arch.data import prepare_demo

REPO = Path(__file__).resolve().parents[1]
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
