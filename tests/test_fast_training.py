"""The fast training path (elan_arch/archs/elan_fast.py under autograd) equals the reference arithmetic:
outputs, input gradients, every parameter gradient, BatchNorm running statistics and optimizer steps."""
from __future__ import annotations

import copy
from types import SimpleNamespace
from typing import Dict, Optional, Tuple

import pytest
import torch
import torch.nn.functional as F

import elan_arch  # noqa: F401  (before basicsr)
from elan_arch import ELAN, ELAN_VARIANTS
from elan_arch.archs import elan_fast
from helpers_inference import photo, to_tensor

Grads = Dict[str, torch.Tensor]


def twin(net: ELAN) -> Tuple[ELAN, ELAN]:
    """(fast-path copy, reference-arithmetic copy) of ``net`` in train mode, identical weights."""
    fast, ref = copy.deepcopy(net).train(), copy.deepcopy(net).train()
    fast.fast_training, ref.fast_training = True, False
    return fast, ref


def forward_backward(net: ELAN, x: torch.Tensor, gt: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, Grads]:
    """Output, input gradient and parameter gradients of an L1 loss (as BasicSR's ``L1Loss``)."""
    net.zero_grad()
    x = x.clone().requires_grad_()
    out = net(x)
    F.l1_loss(out, gt).backward()
    return out.detach(), x.grad, {n: p.grad.clone() for n, p in net.named_parameters()}


def relative(a: torch.Tensor, b: torch.Tensor, scale: Optional[float] = None) -> float:
    """``||a - b|| / ||b||`` (Euclidean norms, in float64), or ``/ scale`` when given."""
    a, b = a.double(), b.double()
    return ((a - b).norm() / (b.norm() if scale is None else scale)).item()


def worst_relative_difference(a: Grads, b: Grads) -> Tuple[float, str]:
    """Largest :func:`relative` difference of ``b`` against ``a`` over the tensors, and its name.

    The biases of the 1x1 convs in front of a train-mode BatchNorm have a gradient of exactly
    zero (the normalisation subtracts any constant); both paths give rounding noise there, so
    they are measured against the largest gradient norm of the network instead of their own.
    """
    scale = max(g.double().norm().item() for g in a.values())
    worst = (0.0, '')
    for name, ga in a.items():
        own = scale if name.endswith('project_inp.0.bias') else None
        worst = max(worst, (relative(b[name], ga, own), name))
    return worst


Result = Tuple[torch.Tensor, torch.Tensor, Grads]


def run_both(net: ELAN, x: torch.Tensor, gt: torch.Tensor) -> Tuple[Result, Result]:
    """(fast path, reference arithmetic) results of :func:`forward_backward` from identical weights."""
    fast, ref = twin(net)
    result_f, result_r = forward_backward(fast, x, gt), forward_backward(ref, x, gt)
    out_r, dx_r, _ = result_r
    assert result_f[0].shape == out_r.shape == gt.shape
    assert out_r.std() > 0.05 and dx_r.abs().max() > 0  # a real signal, not a constant
    return result_f, result_r


def differences(a: Result, b: Result) -> Dict[str, float]:
    """Relative differences of output, input gradient and parameter gradients of ``a`` against ``b``."""
    return {'output': relative(a[0], b[0]), 'input_grad': relative(a[1], b[1]),
            'param_grad': worst_relative_difference(b[2], a[2])[0]}


def compare(net: ELAN, x: torch.Tensor, gt: torch.Tensor) -> Dict[str, float]:
    """Relative differences of the fast path against the reference arithmetic."""
    fast, ref = run_both(net, x, gt)
    return differences(fast, ref)


def photo_pair(scale: int, h: int, w: int, batch: int = 2) -> Tuple[torch.Tensor, torch.Tensor]:
    """A batch of LR crops of a real photograph and random-flip GT of the matching HR size."""
    lr = torch.cat([to_tensor(photo(h, w, top=40 + 30 * i, left=100 + 20 * i)) for i in range(batch)])
    gt = F.interpolate(lr, scale_factor=scale, mode='bicubic', align_corners=False).clamp(0, 1)
    return lr, gt


SMALL_LIGHT = dict(ELAN_VARIANTS['ELAN-light'], m_elan=4)  # 2 ELABs: one unshifted, one shifted; sharing GMSAs


@pytest.mark.parametrize('scale', [2, 3, 4])
@pytest.mark.parametrize('variant', ['ELAN-light', 'ELAN'])
def test_fast_training_path_equals_reference(variant, scale):
    """Relative differences (Euclidean norm of the difference over the norm, per tensor) of output,
    input gradient and every parameter gradient: float64 equal to rounding (1e-10), float32 within
    1e-4. ELAN is tested at full width (180 channels, no sharing) and a sixth of its depth
    (6 of 36 pairs, shifted and unshifted blocks), ELAN-light at full size."""
    torch.manual_seed(scale)
    net = ELAN(upscale=scale, **dict(ELAN_VARIANTS[variant], **({'m_elan': 6} if variant == 'ELAN' else {})))
    x, gt = photo_pair(scale, 19, 23)  # odd sizes: padded to 32 x 32 inside; shifted and unshifted blocks
    fast64, ref64 = run_both(net.double(), x.double(), gt.double())
    exact = differences(fast64, ref64)
    assert max(exact.values()) < 1e-10, exact
    fast32, ref32 = run_both(net.float(), x, gt)
    single = differences(fast32, ref32)
    assert max(single.values()) < 1e-4, single


def test_other_window_sizes_and_channel_split():
    # c_elan 15: shift groups of 3, attention groups of 10 (q 5, v 5) and 5 (v only); windows 2/4/8
    torch.manual_seed(1)
    net = ELAN(upscale=2, c_elan=15, m_elan=6, n_share=2, r_expand=3, window_sizes=[2, 4, 8]).double()
    x, gt = photo_pair(2, 11, 9)
    diffs = compare(net, x.double(), gt.double())
    assert max(diffs.values()) < 1e-11, diffs


@pytest.mark.parametrize('mutation', ['shift_backward_not_flipped', 'window_roll_ignored', 'no_map_sharing'])
def test_a_mutated_fast_path_is_caught(monkeypatch, mutation):
    torch.manual_seed(0)
    net = ELAN(upscale=2, **SMALL_LIGHT).double()
    x, gt = photo_pair(2, 16, 16)
    if mutation == 'shift_backward_not_flipped':  # the backward shifts the same way as the forward
        monkeypatch.setattr(elan_fast.Shift, 'backward',
                            staticmethod(lambda ctx, grad: (elan_fast.Shift.apply(grad, ctx.kernel), None)))
    elif mutation == 'window_roll_ignored':  # shifted blocks attend in unshifted windows
        # (rolling by +ws/2 instead of -ws/2 is no mutation: it gives the same windows)
        original = elan_fast._window_order
        monkeypatch.setattr(elan_fast, '_cached_window_order',
                            lambda h, w, ws, rolled, device: original(h, w, ws, False, device))
    else:  # sharing GMSAs attend with their own values as queries
        original_attention = elan_fast.window_attention
        monkeypatch.setattr(elan_fast, 'window_attention',
                            lambda v, q=None, shared=None: original_attention(v, q=v if q is None else q))
    diffs = compare(net, x.double(), gt.double())
    assert max(diffs.values()) > 1e-3, diffs


def test_batchnorm_statistics_and_adam_steps_match():
    torch.manual_seed(2)
    fast, ref = twin(ELAN(upscale=2, **SMALL_LIGHT))
    optimizers = [torch.optim.Adam(n.parameters(), lr=2e-4) for n in (fast, ref)]
    gen = torch.Generator().manual_seed(3)
    for step in range(4):
        x = torch.rand(4, 3, 16, 16, generator=gen)
        gt = F.interpolate(x, scale_factor=2, mode='bicubic', align_corners=False)
        for net, opt in zip((fast, ref), optimizers):
            opt.zero_grad()
            F.l1_loss(net(x), gt).mul(255).backward()
            opt.step()
    bn_f = {n: b for n, b in fast.named_buffers() if 'running' in n or 'num_batches' in n}
    bn_r = dict(ref.named_buffers())
    assert len(bn_f) == 3 * 4 and all(torch.equal(bn_r[n], b) if 'num_batches' in n else
                                      torch.allclose(bn_r[n], b, rtol=1e-5, atol=1e-6) for n, b in bn_f.items())
    assert int(bn_f['body.0.modules_gmsa.gmsa_0.project_inp.1.num_batches_tracked']) == 4
    moved = max((p - q).abs().max().item() for p, q in zip(ref.parameters(), ELAN(upscale=2, **SMALL_LIGHT).parameters()))
    assert moved > 1e-4  # the steps changed the weights
    for (name, p_f), p_r in zip(fast.named_parameters(), ref.parameters()):
        if name.endswith('project_inp.0.bias'):
            # gradient exactly zero (BatchNorm follows), rounding noise in both paths, which Adam
            # normalises into steps of up to lr each way: equal within the steps taken
            assert (p_f - p_r).abs().max() <= 4 * 2e-4 * 1.01, name
        else:
            assert torch.allclose(p_f, p_r, rtol=1e-4, atol=1e-6), name


def test_option_and_dispatch(monkeypatch):
    calls = []
    original = elan_fast.forward_padded
    monkeypatch.setattr(elan_fast, 'forward_padded', lambda net, x: calls.append(1) or original(net, x))
    x = torch.rand(1, 3, 8, 8)
    net = ELAN(upscale=2, c_elan=15, m_elan=2, window_sizes=[2, 4, 8])
    net(x).sum().backward()  # train mode with autograd: the fast path by default
    net.eval()
    net(x).sum().backward()  # eval mode with autograd: BatchNorm folded, gradients flow through it
    assert calls == [1, 1] and net.head[0].weight.grad is not None
    slow = ELAN(upscale=2, c_elan=15, m_elan=2, window_sizes=[2, 4, 8], fast_training=False)
    slow(x).sum().backward()
    assert calls == [1, 1]
    with torch.no_grad():
        slow.eval()(x)  # inference keeps its own switch
    assert calls == [1, 1, 1]
    assert 'fast' not in ' '.join(slow.state_dict())
    auto = ELAN(upscale=2, c_elan=15, m_elan=2, window_sizes=[2, 4, 8])
    assert auto.fast_training is None and auto.uses_fast_path(x)  # default: on for CPU tensors
    assert not auto.uses_fast_path(SimpleNamespace(is_cuda=True))  # not for CUDA: measured slower so far


def test_option_file_switch_builds_the_reference_arithmetic():
    from basicsr.archs import build_network
    net = build_network({'type': 'ELAN', 'upscale': 2, 'c_elan': 15, 'm_elan': 2, 'window_sizes': [2, 4, 8],
                         'fast_training': False})
    assert net.fast_training is False and not net.uses_fast_path(torch.zeros(1, 3, 8, 8))


def test_shift_backward_is_the_adjoint_shift():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 12, 5, 7, generator=gen, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    kernel = elan_arch.archs.elan_arch.shift_kernel(12).double()
    x.requires_grad_()
    y = elan_fast.Shift.apply(x, kernel)
    g = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    (y * g).sum().backward()
    expected, = torch.autograd.grad((F.conv2d(x, kernel, padding=1, groups=12) * g).sum(), x)
    assert torch.equal(x.grad, expected) and y.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize('device_type', ['cpu'])
def test_window_gather_and_scatter_are_inverse_permutations(device_type):
    x = torch.randn(2, 8 * 12, 9, dtype=torch.float64, requires_grad=True)
    orders = [elan_fast.window_order(8, 12, 4, rolled, torch.device(device_type)) for rolled in (False, True, True)]
    groups = elan_fast.pixels_to_windows(x, orders, [3, 4, 2])
    assert [g.shape[-1] for g in groups] == [3, 4, 2]
    back = elan_fast.windows_to_pixels(list(groups), orders)
    assert torch.equal(back, x)
    assert torch.autograd.gradcheck(lambda t: elan_fast.windows_to_pixels(
        list(elan_fast.pixels_to_windows(t, orders, [3, 4, 2])), orders) * 2, (x,))


def test_training_path_compiles_without_graph_breaks():
    net = ELAN(upscale=2, c_elan=15, m_elan=4, window_sizes=[2, 4, 8]).train()
    explanation = torch._dynamo.explain(lambda x: net(x).sum())(torch.rand(2, 3, 16, 16))
    assert (explanation.graph_count, explanation.graph_break_count) == (1, 0), explanation.break_reasons
