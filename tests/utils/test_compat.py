"""The torchvision shim that lets basicsr 1.4.2 import (elan_arch/utils/basicsr_compat.py)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from elan_arch.utils import basicsr_compat as compat


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_plain_basicsr_import_needs_the_shim_on_this_torchvision():
    probe = run_python('import torchvision.transforms.functional_tensor')
    if probe.returncode == 0:
        pytest.skip('this torchvision still ships functional_tensor; the shim is a no-op here')
    result = run_python('import basicsr')
    assert result.returncode != 0
    assert "No module named 'torchvision.transforms.functional_tensor'" in result.stderr


def test_import_elan_arch_makes_basicsr_importable_and_registers_elan():
    result = run_python('import elan_arch, basicsr\n'
                        'from basicsr.utils.registry import ARCH_REGISTRY\n'
                        'from basicsr.data.degradations import rgb_to_grayscale\n'
                        'from torchvision.transforms import _functional_tensor as ft\n'
                        'assert rgb_to_grayscale is ft.rgb_to_grayscale\n'
                        'print(ARCH_REGISTRY.get("ELAN").__name__)')
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == 'ELAN'


def test_apply_is_idempotent(monkeypatch):
    monkeypatch.delitem(sys.modules, compat.LEGACY_NAME, raising=False)
    first = compat.apply()
    assert compat.LEGACY_NAME in sys.modules
    assert compat.apply() is False  # second call: already in place
    assert first is (run_python('import torchvision.transforms.functional_tensor').returncode != 0)
