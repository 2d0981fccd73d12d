"""CPU inference's window attention form (elan_arch/archs/window_ops.py, ``cpu_inference_maps``): materialised maps or
SDPA, measured once per window size, channels, dtype and threads, or forced by ``ELAN_CPU_ATTENTION``; both forms
give the reference's output."""
from __future__ import annotations

import pytest
import torch

import elan_arch  # noqa: F401  (before basicsr)
from elan_arch import ELAN, ELAN_VARIANTS
from elan_arch.archs import window_ops
from helpers.inference import calibrated, photo, to_tensor

SMALL_LIGHT = dict(ELAN_VARIANTS['ELAN-light'], m_elan=4)


@pytest.fixture(scope='module')
def net_and_input():
    torch.manual_seed(0)
    x = to_tensor(photo(21, 37))
    return calibrated(ELAN(upscale=2, **SMALL_LIGHT), x), x


@pytest.mark.parametrize('form', ['maps', 'sdpa', 'auto'])
def test_every_form_gives_the_reference_output(net_and_input, monkeypatch, form):
    net, x = net_and_input
    monkeypatch.setenv(window_ops.ATTENTION_ENV, form)
    monkeypatch.setattr(window_ops, '_CPU_FORMS', {})
    calls, sdpa = [], window_ops.F.scaled_dot_product_attention
    monkeypatch.setattr(window_ops.F, 'scaled_dot_product_attention', lambda *a, **k: calls.append(1) or sdpa(*a, **k))
    with torch.inference_mode():
        net.fast_inference = False
        reference = net(x)
        net.fast_inference = True
        fast = net(x)
    # float32 rounding of another operation order only (tests/archs/test_fast_path.py has the bound's derivation)
    assert (fast.clamp(0, 1) - reference.clamp(0, 1)).abs().max() < 1e-4
    if form == 'maps':
        assert not calls
    if form == 'sdpa':
        assert calls
    if form == 'auto':  # one decision per window size (4, 8, 16) at this thread count, 20 query channels
        assert sorted(key[0] for key in window_ops._CPU_FORMS) == [16, 64, 256]


def test_the_measured_choice_is_kept_and_follows_the_thread_count(monkeypatch):
    monkeypatch.delenv(window_ops.ATTENTION_ENV, raising=False)
    monkeypatch.setattr(window_ops, '_CPU_FORMS', {})
    q = torch.rand(8, 16, 20)
    first = window_ops.cpu_inference_maps(q)
    window_ops._CPU_FORMS[(16, 20, torch.float32, torch.get_num_threads())] = not first  # a kept decision is reused
    assert window_ops.cpu_inference_maps(q) is (not first)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1 if threads > 1 else 2)
        window_ops.cpu_inference_maps(q)
        assert len(window_ops._CPU_FORMS) == 2
    finally:
        torch.set_num_threads(threads)
