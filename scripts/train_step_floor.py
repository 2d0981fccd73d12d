#!/usr/bin/env python
"""How far the fast training path is from what its matrix products alone cost (a script, not a test).

One training step of ELAN-light x4 (``elan_arch.bench.training.make_step``: forward, L1 on [0, 255],
backward, Adam) is recorded op by op with a dispatch mode; every matrix product and convolution it
ran (``mm``, ``bmm``, ``addmm``, ``baddbmm``, oneDNN's fused linear, ``convolution``) is then timed
alone, on fresh inputs of the same shapes and strides, hot in cache (median of 9 after 3 warm-ups).
Their sum is a floor for a step that keeps these products as they are: the time left above it is the
rest (softmax, shift, gathers, element-wise passes, Python), and the products' own cache misses.
The fast and reference steps are timed round-robin in the same run (median of ``--runs``), with a third:
the fast step with every window attention replaced by the identity (``y = v``), which bounds what any
attention kernel, however fused, can bring.

Usage: ``python scripts/train_step_floor.py [--variant light|full] [--batch 8] [--patch 32] [--threads 2]``;
prints a markdown table (docs/performance.md quotes it).
"""
from __future__ import annotations

import argparse
import collections
import copy
import platform
import statistics
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import elan_arch  # noqa: F401  (before basicsr)
from elan_arch import ELAN
from elan_arch.utils.cpu_tuning import tune_process
from elan_arch.archs import window_ops
from elan_arch.bench.training import make_step

PRODUCTS = {'mm', 'bmm', 'addmm', 'addmm_', 'baddbmm', 'baddbmm_', '_linear_pointwise', 'convolution'}


def _signature(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return ('tensor', tuple(value.shape), tuple(value.stride()), value.dtype)
    if isinstance(value, (list, tuple)):
        return tuple(_signature(v) for v in value)
    return value


def _materialise(sig: Any) -> Any:
    if isinstance(sig, tuple) and sig and sig[0] == 'tensor':
        _, shape, stride, dtype = sig
        size = sum((d - 1) * s for d, s in zip(shape, stride)) + 1 if shape else 1
        return torch.randn(size, dtype=dtype).as_strided(shape, stride)
    if isinstance(sig, tuple):
        return [_materialise(s) for s in sig]
    return sig


class _Recorder(TorchDispatchMode):
    """Counts the matrix products and convolutions by (op, argument shapes/strides, keyword arguments)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.__name__.split('.')[0] in PRODUCTS:
            self.calls[(func, _signature(tuple(args)), tuple(sorted((kwargs or {}).items())))] += 1
        return func(*args, **(kwargs or {}))


def _identity_attention(v: torch.Tensor, q: Any = None, shared: Any = None) -> Tuple[torch.Tensor, Any]:
    return v.clone(), window_ops.SharedAttention(None, None)


def without_attention(step: Callable[[], None]) -> Callable[[], None]:
    """``step`` with :func:`window_ops.window_attention` (the bmm form's maps, softmax and their
    backward) replaced by the identity while it runs; gathers, scatters and projections stay."""
    def run() -> None:
        real = window_ops.window_attention
        window_ops.window_attention = _identity_attention
        try:
            step()
        finally:
            window_ops.window_attention = real
    return run


def _median_time(fn: Callable[[], Any], runs: int = 9, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def product_floor(step: Callable[[], None]) -> Dict[str, Tuple[int, float]]:
    """Per op name: (calls in one step, seconds of those calls timed alone)."""
    step()
    recorder = _Recorder()
    with recorder:
        step()
    per_op: Dict[str, List[float]] = collections.defaultdict(lambda: [0, 0.0])
    for (func, sig, kwargs), count in recorder.calls.items():
        name = func.__name__.split('.')[0]
        # in-place forms are timed out of place (same arithmetic, no input copy in the timing)
        op = getattr(torch, name[:-1]) if name.endswith('_') else func
        args = _materialise(sig)
        seconds = _median_time(lambda: op(*args, **dict(kwargs)))
        per_op[name.rstrip('_')][0] += count
        per_op[name.rstrip('_')][1] += seconds * count
    return {k: (int(v[0]), float(v[1])) for k, v in per_op.items()}


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--variant', choices=['light', 'full'], default='light')
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--patch', type=int, default=32, help='LR patch size')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--runs', type=int, default=7)
    parser.add_argument('--no-tune', action='store_true', help='leave malloc and denormals as they are')
    args = parser.parse_args(argv)
    if not args.no_tune:
        tune_process()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = {} if args.variant == 'light' else dict(c_elan=180, m_elan=36, n_share=0)
    base = ELAN(upscale=4, **config).train()
    steps = {}
    for key, fast in (('fast', True), ('reference', False), ('no attention', True)):
        net = copy.deepcopy(base)
        net.fast_training = fast
        step = make_step(net, args.batch, args.patch, 4, torch.device('cpu'), None)
        steps[key] = without_attention(step) if key == 'no attention' else step
    times: Dict[str, List[float]] = {k: [] for k in steps}
    for _ in range(2):
        for step in steps.values():
            step()
    for _ in range(args.runs):
        for key, step in steps.items():
            start = time.perf_counter()
            step()
            times[key].append(time.perf_counter() - start)
    median = {k: statistics.median(v) for k, v in times.items()}
    floor = product_floor(steps['fast'])
    total = sum(seconds for _, seconds in floor.values())
    name = 'ELAN-light' if args.variant == 'light' else 'ELAN'
    print(f'{name} x4, batch {args.batch} of {args.patch}x{args.patch} LR patches, {args.threads} threads, '
          f'{platform.processor() or platform.machine()}, torch {torch.__version__}\n')
    print('| | ms |\n|---|---:|')
    print(f'| reference step (median of {args.runs}) | {median["reference"] * 1e3:.0f} |')
    print(f'| fast step (median of {args.runs}) | {median["fast"] * 1e3:.0f} |')
    print(f'| 2x the reference, the target | {median["reference"] * 1e3 / 2:.0f} |')
    print(f'| the fast step\'s matrix products and convolutions, each timed alone | {total * 1e3:.0f} |')
    for op, (count, seconds) in sorted(floor.items(), key=lambda kv: -kv[1][1]):
        print(f'| - `{op}` ({count} calls) | {seconds * 1e3:.0f} |')
    print(f'| the rest of the fast step | {(median["fast"] - total) * 1e3:.0f} |')
    print(f'| fast step with window attention as the identity (median of {args.runs}) | '
          f'{median["no attention"] * 1e3:.0f} |')
    print(f'| reference / that: the most any attention kernel can bring | '
          f'{median["reference"] / median["no attention"]:.2f}x |')


if __name__ == '__main__':
    main()
