"""Comparing ELAN's fast path with its reference arithmetic: outputs, input and parameter gradients."""
from __future__ import annotations

import copy
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from elan_arch import ELAN, ELAN_VARIANTS
from helpers.inference import photo, to_tensor
from helpers.rounding import EPS64, elan_bounds, padded_pixels, pair_bound, within

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


def check_float32_against_float64(net: ELAN, x: torch.Tensor, gt: torch.Tensor) -> Tuple[Result, Result]:
    """Fast path and reference arithmetic of ``net`` in float64 equal within float64 rounding, and each in
    float32 within float32 rounding of the float64 result (bounds: :func:`helpers.rounding.elan_bounds`,
    from the terms each result sums). Returns the float32 (fast, reference) results."""
    pixels = padded_pixels(net, x)
    fast64, ref64 = run_both(copy.deepcopy(net).double(), x.double(), gt.double())
    exact, bounds64 = differences(fast64, ref64), elan_bounds(net, pixels, EPS64)
    assert within(exact, {name: pair_bound(b) for name, b in bounds64.items()}), (exact, bounds64)
    fast32, ref32 = run_both(copy.deepcopy(net).float(), x.float(), gt.float())
    bounds = elan_bounds(net, pixels)
    for path, result in (('fast path', fast32), ('reference', ref32)):
        single = differences(result, ref64)
        assert within(single, bounds), (path, single, bounds)
    return fast32, ref32
