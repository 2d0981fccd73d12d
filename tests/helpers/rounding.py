"""Tolerances from floating-point rounding, not from one machine's results (docs/internals.md#tolerances).

Model: a computed sum of ``n`` rounded terms ``x_i`` differs from the exact one by about
``eps * sqrt(n) * sum|x_i|`` (the probabilistic bound of Higham & Mary, "A new approach to probabilistic
rounding error analysis", SIAM J. Sci. Comput. 2019: ``lambda * sqrt(n) * u * sum|x_i|`` with the unit
roundoff ``u = eps / 2``; ``lambda = 2`` here). It holds whatever order, blocking or vector width a
kernel sums in (pairwise and blocked sums do better), so it holds on every CPU and under every
``ATEN_CPU_CAPABILITY``. Relative to a result whose terms do not cancel, that is ``eps * sqrt(n)``;
a network result counts the terms along its longest chain of sums (:func:`elan_terms`).

Two computations of the same value (fast path and reference, ONNX and PyTorch, a fused kernel and
the module tree) each sit within the bound of the exact value, so they differ by at most twice it:
:func:`pair_bound`. Float64 checks use the same bound with ``EPS64``: they hold any formula to its
exact value, 2**29 times tighter than float32.
"""
from __future__ import annotations

import math
from typing import Dict, Sequence

import torch

EPS32 = torch.finfo(torch.float32).eps  # 2**-23, about 1.19e-7
EPS64 = torch.finfo(torch.float64).eps  # 2**-52, about 2.22e-16
EPS16 = torch.finfo(torch.float16).eps  # 2**-10, about 9.8e-4
EPS_BF16 = torch.finfo(torch.bfloat16).eps  # 2**-7: bfloat16 keeps 8 significant bits


def eps_of(dtype: torch.dtype) -> float:
    """Machine epsilon of ``dtype`` (float32 for anything that is not a floating type)."""
    return torch.finfo(dtype).eps if dtype.is_floating_point else EPS32


def sum_bound(abs_sum, terms: int, eps: float = EPS32):
    """Rounding bound of a sum of ``terms`` rounded terms whose absolute values add up to ``abs_sum``
    (a number or a tensor of them): ``eps * sqrt(terms) * abs_sum``."""
    return eps * math.sqrt(terms) * abs_sum


def relative_bound(terms: int, eps: float = EPS32) -> float:
    """Relative (norm-wise) rounding bound of a result accumulated from ``terms`` rounded terms that
    do not cancel: ``eps * sqrt(terms)``."""
    return eps * math.sqrt(terms)


def pair_bound(bound):
    """Two computations each within ``bound`` of the exact value are within twice it of each other."""
    return 2 * bound


def longest_product(c_elan: int, window_sizes: Sequence[int]) -> int:
    """Terms of ELAN's longest single product: a 3x3 convolution over ``c_elan`` channels (9 c_elan),
    an attention window's ``ws * ws`` keys, or the 1x1 shift convolutions' ``c_elan``."""
    return max(9 * c_elan, max(window_sizes) ** 2, c_elan)


def elan_terms(net, pixels: int) -> Dict[str, int]:
    """Terms along the longest chain of sums of ELAN's results, for ``pixels`` = batch x height x width of the
    (padded) input. Inference output: one layer's longest product K (errors of earlier layers pass through
    the residual connections at their own, equal, size). In training, BatchNorm's batch statistics are
    sums over every pixel, so the output adds N terms (K + N) and every gradient (input and parameters,
    sums over the N pixels of K-term products) counts N * K."""
    k = longest_product(net.head[0].out_channels, net.window_sizes)
    training = net.training and any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    return {'output': k + pixels if training else k, 'input_grad': pixels * k, 'param_grad': pixels * k}


def elan_bounds(net, pixels: int, eps: float = EPS32) -> Dict[str, float]:
    """:func:`relative_bound` for each of :func:`elan_terms`: how far one computation of ELAN's output,
    input gradient and parameter gradients may be from the exact values (relative, norm-wise); two
    computations compared with each other get :func:`pair_bound` of it."""
    return {name: relative_bound(terms, eps) for name, terms in elan_terms(net, pixels).items()}


def within(diffs: Dict[str, float], bounds: Dict[str, float]) -> bool:
    """Every difference below its bound (same keys)."""
    return all(diffs[name] < bounds[name] for name in diffs)


def padded_pixels(net, x: torch.Tensor) -> int:
    """Batch x height x width of ``x`` once ELAN pads it to a multiple of every window size."""
    multiple = math.lcm(*net.window_sizes)
    return x.shape[0] * -(-x.shape[2] // multiple) * multiple * -(-x.shape[3] // multiple) * multiple


class BatchNormMagnitudes:
    """Per-channel rounding bounds of the running statistics of ELAN's ``project_inp`` BatchNorms
    (a 1x1 convolution ``y = W x + b`` over K channels, then ``BatchNorm2d``), gathered while a
    reference-arithmetic network (the module tree; hooks do not see the fast path) trains.

    Each step's batch mean of ``y_c`` sums N = batch x height x width values, each a K-term product, so
    its error is at most ``eps (sqrt(N) + sqrt(K)) M_c`` with ``M_c = mean_n sum_k |W_ck x_nk|``,
    whichever way the sums are grouped (the fast path forms ``W mean(x) + b``, the reference
    ``mean(W x + b)``). The inputs ``x`` of the two paths differ by earlier layers' rounding, itself
    ``eps sqrt(K) |x|``: a second ``sqrt(K)``. The biased variance ``mean_n (y_nc - mean_c)^2`` is a
    K x K form over N pixels (the fast path: ``diag(W cov(x) W^T)``): ``eps (sqrt(N) + 3 sqrt(K)) V_c``
    with ``V_c = mean_n (sum_k |W_ck x_nk|)^2``. The magnitudes are averaged with the BatchNorm's own
    momentum, as the running statistics are; :meth:`bounds` gives :func:`pair_bound` of each."""

    def __init__(self, net: torch.nn.Module, eps: float = EPS32):
        self.eps, self.bounds_by_name, self.handles = eps, {}, []
        modules = dict(net.named_modules())
        for name, bn in modules.items():
            conv = modules.get(name[:-1] + '0') if name.endswith('.1') else None  # Sequential(conv1x1, bn)
            if isinstance(bn, torch.nn.BatchNorm2d) and isinstance(conv, torch.nn.Conv2d):
                self.handles.append(conv.register_forward_hook(self._hook(name, bn)))
        self.magnitudes: Dict[str, Dict[str, torch.Tensor]] = {}

    def _hook(self, name: str, bn: torch.nn.BatchNorm2d):
        def hook(conv, inputs, _output):
            if not bn.training:
                return
            x = inputs[0].detach().double()
            k, pixels = x.shape[1], x.numel() // x.shape[1]
            w = conv.weight.detach().double().reshape(conv.weight.shape[0], k).abs()
            terms = torch.einsum('ck,bkhw->bchw', w, x.abs())  # sum_k |W_ck x_nk| per pixel
            step = {'running_mean': self.eps * (math.sqrt(pixels) + 2 * math.sqrt(k)) * terms.mean((0, 2, 3)),
                    'running_var': self.eps * (math.sqrt(pixels) + 3 * math.sqrt(k)) * terms.pow(2).mean((0, 2, 3))
                    * pixels / (pixels - 1)}  # the running variance is the unbiased one
            old, m = self.magnitudes.get(name), bn.momentum  # running = (1 - m) running + m batch
            self.magnitudes[name] = {s: (1 - m) * (0 if old is None else old[s]) + m * step[s] for s in step}
        return hook

    def bounds(self) -> Dict[str, torch.Tensor]:
        """``{buffer name: per-channel bound}`` for the difference of two paths' running statistics
        (each within the bound of the exact value: twice it), after the steps seen."""
        self.close()
        return {f'{name}.{stat}': pair_bound(bound) for name, stats in self.magnitudes.items()
                for stat, bound in stats.items()}

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


class AdamStepBounds:
    """Per-element bounds of the difference between two runs of ``torch.optim.Adam`` whose gradients differ by
    rounding, accumulated step by step from the reference run's optimizer state.

    A gradient tensor within ``delta`` (relative, norm-wise) of the exact one is off by about
    ``e = delta ||g|| / sqrt(n)`` per element; two runs by twice that, summed over the steps so far (``E``).
    Adam's direction ``d = m^ / (sqrt(v^) + eps_adam)`` moves by at most ``4 E / (sqrt(v^) + eps_adam)``
    (``m^`` and ``sqrt(v^)`` each move by at most ``E``, and ``|m^| <= 3 sqrt(v^)`` in the first steps), and
    never by more than twice its largest size ``(1 - b1) / sqrt(1 - b2)`` (a gradient within rounding of zero
    may flip its sign). A step adds ``lr d`` to a weight, rounded: ``eps |p|`` per step for each run."""

    def __init__(self, optimizer: torch.optim.Adam, delta: float, eps: float = EPS32):
        self.optimizer, self.delta, self.eps = optimizer, delta, eps
        self.error: Dict[torch.Tensor, float] = {}
        self.bound: Dict[torch.Tensor, torch.Tensor] = {}

    def after_step(self) -> None:
        """Call after each ``optimizer.step()`` of the reference run."""
        for group in self.optimizer.param_groups:
            lr, (b1, b2), eps_adam = group['lr'], group['betas'], group['eps']
            for p in group['params']:
                if p.grad is None:
                    continue
                state = self.optimizer.state[p]
                t = float(state['step'])
                self.error[p] = self.error.get(p, 0.0) + pair_bound(self.delta * p.grad.norm().item()
                                                                    / math.sqrt(p.numel()))
                v_hat = (state['exp_avg_sq'] / (1 - b2 ** t)).sqrt() + eps_adam
                moved = (4 * self.error[p] / v_hat).clamp(max=2 * (1 - b1) / math.sqrt(1 - b2))
                step = lr * moved + pair_bound(self.eps * p.detach().abs())
                self.bound[p] = self.bound.get(p, 0) + step


def largest_of(count: int) -> float:
    """How many typical sizes the largest of ``count`` independent rounding errors reaches: ``sqrt(2 ln count)``
    (the largest of ``count`` normal deviates), at least 1."""
    return max(1.0, math.sqrt(2 * math.log(max(count, 1))))


def elan_output_max_bound(net, reference: torch.Tensor, eps: float = EPS32, pixels: int = 0) -> float:
    """Bound of the largest element-wise difference between two computations of ELAN's output ``reference``:
    :func:`pair_bound` of ``eps sqrt(terms)`` (:func:`elan_terms`: K in eval mode, K + N for a train-mode
    network given the input's ``pixels``) times the scale the network computes in (the image range, or the
    output's largest magnitude where larger), times :func:`largest_of` the number of elements. For
    image-like networks (``helpers.inference.calibrated``); random weights can make attention maps
    ill-conditioned beyond it (large logits)."""
    magnitude = max(1.0, reference.detach().abs().max().item())
    terms = elan_terms(net, pixels)['output'] if pixels else longest_product(net.head[0].out_channels,
                                                                               net.window_sizes)
    return pair_bound(relative_bound(terms, eps)) * magnitude * largest_of(reference.numel())


def attention_max_bound(q: torch.Tensor, v: torch.Tensor, eps: float = EPS32) -> float:
    """Bound of the largest element-wise error of ``softmax(q q^T) v`` over windows of ``q.shape[-2]`` tokens:
    a logit's absolute error (a sum of ``q.shape[-1]`` terms ``|q_i q_j|``) is the map's relative error, and
    ``maps @ v`` adds a sum over the keys of ``|v|``; times :func:`largest_of` the output's elements."""
    keys, channels = q.shape[-2], q.shape[-1]
    logits = sum_bound((q.abs() @ q.abs().transpose(-1, -2)).max().item(), channels, eps)
    return (logits + sum_bound(1.0, keys, eps)) * v.abs().max().item() * largest_of(v.numel())


def max_sum_bound(abs_sum: torch.Tensor, terms: int, eps: float = EPS32) -> torch.Tensor:
    """Element-wise :func:`sum_bound` for a tensor of sums (``abs_sum``: each element's sum of absolute
    terms), allowing for the largest of its elements' errors (:func:`largest_of`)."""
    return sum_bound(abs_sum, terms, eps) * largest_of(abs_sum.numel())


def float64_max_bound(magnitude: float, terms: int = 10 ** 4, count: int = 10 ** 6) -> float:
    """Largest element-wise difference of two float64 computations of one formula whose values and
    intermediate sums stay below ``magnitude``: :func:`pair_bound` of ``eps64 sqrt(terms) magnitude`` times
    :func:`largest_of` ``count`` elements. The defaults exceed every float64 check of the suite (its longest
    sums: 9 x 180-term convolutions, 256-key windows, 2048-pixel statistics; at most 10^6 elements compared),
    so only ``magnitude`` is the test's to state; a wrong term shows 10^6 times above the bound."""
    return pair_bound(sum_bound(magnitude, terms, EPS64)) * largest_of(count)
