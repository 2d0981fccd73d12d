"""The fast path (elan_arch/archs/elan_fast.py) in inference computes the reference arithmetic's function."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import elan_arch  # noqa: F401  (before basicsr)
from elan_arch import ELAN, ELAN_VARIANTS
from elan_arch.archs import elan_arch as arch_module
from elan_arch.archs import elan_fast, window_ops
from elan_arch.archs.elan_blocks import window_partition
from helpers.inference import calibrated, photo, to_tensor
from helpers.rounding import (EPS16, EPS64, attention_max_bound, elan_output_max_bound, largest_of, max_sum_bound,
                              pair_bound, relative_bound)

SMALL = dict(c_elan=15, m_elan=4, n_share=1, r_expand=2, window_sizes=[2, 4, 8])


def both_paths(net: ELAN, x: torch.Tensor) -> tuple:
    """(fast path output, training-path arithmetic output) of ``net`` in eval mode."""
    with torch.no_grad():
        fast = net(x)
        net.fast_inference = False
        reference = net(x)
        net.fast_inference = True
    return fast, reference


@pytest.mark.parametrize('variant,scale,size', [('ELAN-light', 4, (21, 19)), ('ELAN-light', 3, (16, 35)),
                                                ('ELAN', 2, (13, 18))])
def test_fast_path_equals_training_path_in_float32(variant, scale, size):
    x = to_tensor(photo(*size))
    net = calibrated(ELAN(upscale=scale, **ELAN_VARIANTS[variant]), x)
    fast, reference = both_paths(net, x)
    assert fast.shape == reference.shape == (1, 3, size[0] * scale, size[1] * scale)
    assert 0.1 < reference.std() and reference.abs().max() < 3  # image-like output, not a constant
    bound = elan_output_max_bound(net, reference)  # eps32 sqrt(K) per element: tests/helpers/rounding.py
    assert (fast - reference).abs().max() < bound
    assert (fast.clamp(0, 1) - reference.clamp(0, 1)).abs().max() < bound


@pytest.mark.parametrize('variant', ['ELAN-light', 'ELAN'])
def test_fast_path_equals_training_path_in_float64_with_random_statistics(variant):
    # float64 and a batch of 2: any index, shift, roll or fold error shows far above rounding
    gen = torch.Generator().manual_seed(0)
    net = ELAN(upscale=2, **ELAN_VARIANTS[variant]).double().eval()
    for name, buf in net.named_buffers():
        if name.endswith('running_mean'):
            buf.copy_(torch.randn(buf.shape, generator=gen, dtype=torch.float64))
        elif name.endswith('running_var'):
            buf.copy_(torch.rand(buf.shape, generator=gen, dtype=torch.float64) * 50 + 50)
    for name, p in net.named_parameters():
        if 'project_inp.1' in name:
            p.data = torch.randn(p.shape, generator=gen, dtype=torch.float64)
    x = torch.rand(2, 3, 19, 22, generator=gen, dtype=torch.float64)
    fast, reference = both_paths(net, x)
    assert reference.abs().max() > 0.5
    assert (fast - reference).abs().max() < elan_output_max_bound(net, reference, EPS64)


def test_small_config_with_other_window_sizes_and_channel_split():
    # c_elan 15: shift groups of 3, attention groups of 10 (q 5, v 5) and 5 (v only)
    x = torch.rand(2, 3, 11, 9, generator=torch.Generator().manual_seed(1))
    net = calibrated(ELAN(upscale=2, **SMALL), x)
    fast, reference = both_paths(net, x)
    assert (fast - reference).abs().max() < elan_output_max_bound(net, reference)


def test_inference_dispatch_only_in_eval_mode_without_autograd(monkeypatch):
    calls = []
    original = elan_fast.forward_padded
    monkeypatch.setattr(arch_module.elan_fast, 'forward_padded', lambda net, x: calls.append(1) or original(net, x))
    net, x = ELAN(upscale=2, **SMALL), torch.rand(1, 3, 8, 8)
    net.train()
    net.fast_training = False
    with torch.no_grad():
        net(x)  # train mode (batch statistics): not inference
    net.eval()
    net(x).sum().backward()  # eval with autograd on: the training switch decides, gradients flow
    assert calls == [] and net.head[0].weight.grad is not None
    with torch.inference_mode():
        net(x)
    with torch.no_grad():
        net(x)
    assert calls == [1, 1]
    net.fast_inference = False
    with torch.no_grad():
        net(x)
    assert calls == [1, 1]


def test_no_stale_weights_when_training_resumes():
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    net = calibrated(ELAN(upscale=2, **SMALL), x)
    with torch.no_grad():
        before = net(x)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    net.train()
    for _ in range(2):  # changes the weights and the BatchNorm running statistics
        optimizer.zero_grad()
        F.l1_loss(net(x), torch.zeros(2, 3, 32, 32)).backward()
        optimizer.step()
    net.eval()
    fast, reference = both_paths(net, x)
    assert (before - reference).abs().max() > 1e-2
    assert (fast - reference).abs().max() < elan_output_max_bound(net, reference)


def test_fold_batchnorm_matches_conv_then_batchnorm():
    conv, bn = torch.nn.Conv2d(6, 8, 1), torch.nn.BatchNorm2d(8, eps=1e-3)
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.5, 2)
    bn.weight.data.normal_()
    bn.bias.data.normal_()
    x = torch.randn(2, 6, 5, 7)
    weight, bias = elan_fast.fold_batchnorm(conv, bn.eval())
    with torch.no_grad():
        # the folded product's terms, and the reference's (y - mean) * scale + beta: 6 + 3 terms
        scale = (bn.weight / (bn.running_var + bn.eps).sqrt()).view(1, -1, 1, 1)
        terms = (F.conv2d(x.abs(), weight.abs(), bias.abs()) + (bn.running_mean.view(1, -1, 1, 1) * scale).abs()
                 + bn.bias.abs().view(1, -1, 1, 1))
        assert ((F.conv2d(x, weight, bias) - bn(conv(x))).abs() <= pair_bound(max_sum_bound(terms, 6 + 3))).all()


@pytest.mark.parametrize('rolled', [False, True])
def test_window_order_is_roll_plus_partition(rolled):
    x = torch.randn(2, 3, 8, 12)
    shifted = torch.roll(x, shifts=(-2, -2), dims=(2, 3)) if rolled else x
    order = window_ops.window_order(2, 8, 12, 4, rolled, x.device)
    gathered = x.flatten(2).transpose(1, 2).reshape(-1, 3).index_select(0, order).reshape(-1, 16, 3)
    assert torch.equal(gathered, window_partition(shifted, 4))


def test_state_dict_and_parameters_unchanged():
    net = ELAN(upscale=4)
    assert 'fast_inference' not in str(list(net.state_dict()))
    assert sum(p.numel() for p in net.parameters()) == 601_488


@pytest.mark.parametrize('cv', [20, 40])  # values of a computing and of a sharing GMSA (ELAN-light)
def test_window_attention_materialised_maps_equal_fused_kernel(cv, monkeypatch):
    monkeypatch.setenv(window_ops.ATTENTION_ENV, 'sdpa')  # CPU inference measures its form; SDPA forced here
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(6, 64, 20, generator=gen, dtype=torch.float64)
    v = torch.randn(6, 64, cv, generator=gen, dtype=torch.float64)
    expected = torch.softmax(q @ q.transpose(1, 2), dim=-1) @ v  # unscaled, as ELAN's GMSA
    with torch.no_grad():  # CPU inference: SDPA, shared as queries
        fused, fused_state = window_ops.window_attention(v, q=q)
        fused_shared, _ = window_ops.window_attention(v.flip(1), shared=fused_state)
    with torch.enable_grad():  # CPU training: bmm with materialised maps, shared as maps
        maps, maps_state = window_ops.window_attention(v, q=q)
        maps_shared, _ = window_ops.window_attention(v.flip(1), shared=maps_state)
    assert fused_state.maps is None and maps_state.queries is None and maps_state.maps.shape == (6, 64, 64)
    assert fused.shape == maps.shape == (6, 64, cv)
    atol = pair_bound(attention_max_bound(q, v, EPS64))  # tests/helpers/rounding.py
    assert torch.allclose(fused, expected, rtol=0, atol=atol) and torch.allclose(maps, expected, rtol=0, atol=atol)
    assert torch.allclose(fused_shared, maps_shared, rtol=0, atol=atol)
    assert torch.allclose(maps_shared, torch.softmax(q @ q.transpose(1, 2), dim=-1) @ v.flip(1), rtol=0, atol=atol)


def test_window_attention_float16_logits_do_not_overflow():
    # 20 channels of magnitude 100: logits of 2e5, beyond float16's 65504
    gen = torch.Generator().manual_seed(4)
    q = 100 + torch.rand(2, 16, 20, generator=gen, dtype=torch.float64)
    v = torch.rand(2, 16, 20, generator=gen, dtype=torch.float64)
    expected = torch.softmax(q @ q.transpose(1, 2), dim=-1) @ v
    got, _ = window_ops.window_attention(v.half(), q=q.half())
    assert got.dtype == torch.float16 and torch.isfinite(got).all()
    # the values rounded to float16 and each output a sum over 16 keys of them (at most 1): eps16 sqrt(16)
    assert (got.double() - expected).abs().max() < pair_bound(relative_bound(16, EPS16)) * largest_of(got.numel())


def test_inference_with_materialised_maps_equals_training_path(monkeypatch):
    # the bmm form that training on CPU takes, exercised through the whole network in inference
    monkeypatch.setattr(window_ops, '_materialise_maps', lambda q: True)
    x = to_tensor(photo(21, 19))
    net = calibrated(ELAN(upscale=4, **ELAN_VARIANTS['ELAN-light']), x)
    fast, reference = both_paths(net, x)
    assert (fast.clamp(0, 1) - reference.clamp(0, 1)).abs().max() < elan_output_max_bound(net, reference)
