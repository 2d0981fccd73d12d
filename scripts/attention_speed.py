#!/usr/bin/env python
"""Window attention alone, forward + backward (training) and forward alone (inference), at the paper recipes'
shapes: the ``bmm`` form against the fused Triton kernels (elan_arch/archs/window_kernels.py) at each block
size (a script, not a test: it is for tuning the kernels on a GPU; ``scripts/gpu_session.sh`` runs it).

One computing GMSA (queries and values of 3 groups, windows 4/8/16, shifted) and, for ELAN-light, its
sharing GMSA, as ``window_ops.gmsa_attention`` runs them in training; median of ``--iters`` after warm-up,
timed with CUDA events on a GPU. Prints a markdown table (ms per pass).
Usage: ``python scripts/attention_speed.py [--device cuda] [--iters 20]``.
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, List, Optional

import torch

import elan_arch  # noqa: F401  (before basicsr)
from elan_arch.archs import window_kernels, window_ops

#: (name, batch, LR patch, channels, sharing GMSA): the paper recipes' steps on one device.
SHAPES = [('ELAN-light x4', 64, 64, 60, True), ('ELAN x4', 32, 48, 180, False)]
WINDOWS = (4, 8, 16)


def _elapsed(fn: Callable[[], None], device: torch.device, iters: int) -> float:
    """Median seconds of ``fn`` over ``iters`` runs after 3 warm-ups."""
    for _ in range(3):
        fn()
    times: List[float] = []
    for _ in range(iters):
        if device.type == 'cuda':
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            begin = time.perf_counter()
            fn()
            times.append(time.perf_counter() - begin)
    return statistics.median(times)


def attention_step(batch: int, size: int, channels: int, sharing: bool, dtype: torch.dtype, device: torch.device,
                   fused: bool, train: bool) -> Callable[[], None]:
    """A computing GMSA's attention (and its sharing GMSA's): forward + backward with ``train``, else the
    forward under ``torch.inference_mode``."""
    gen = torch.Generator(device=device).manual_seed(0)
    pixels = batch * size * size
    computing = torch.randn(pixels, 2 * channels, device=device, dtype=dtype, generator=gen).requires_grad_(train)
    values = torch.randn(pixels, channels, device=device, dtype=dtype, generator=gen).requires_grad_(train)
    orders = [window_ops.window_order(batch, size, size, ws, True, device) for ws in WINDOWS]
    split = [2 * channels // len(WINDOWS)] * len(WINDOWS)

    def forward() -> torch.Tensor:
        out, state = window_ops.gmsa_attention(computing, orders, WINDOWS, split, None, fused)
        if sharing:
            out = torch.cat([out, window_ops.gmsa_attention(values, orders, WINDOWS, [s // 2 for s in split],
                                                            state, fused)[0]], 1)
        return out

    def step() -> None:
        if train:
            out = forward()
            out.backward(torch.ones_like(out))
        else:
            with torch.inference_mode():
                forward()

    return step


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--iters', type=int, default=20)
    parser.add_argument('--scale-down', type=int, default=1,
                        help='divide the batch and patch by this (a quick run on the CPU)')
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    fused_ok = window_kernels.available(torch.empty(0, device=device), WINDOWS)
    blocks = [16, 32, 64] if fused_ok else []
    print(f'Window attention (ms, median of {args.iters}), {device}, torch {torch.__version__}; blocks: the '
          f'fused kernels with MAX_BLOCK set to that (default {window_kernels.MAX_BLOCK})\n')
    print('| shape | dtype | pass | bmm form |' + ''.join(f' fused, blocks of {b} |' for b in blocks))
    print('|---|---|---|---:|' + '---:|' * len(blocks))
    default_block = window_kernels.MAX_BLOCK
    for name, batch, size, channels, sharing in SHAPES:
        batch, size = max(1, batch // args.scale_down), max(16, size // args.scale_down // 16 * 16)
        for dtype, train in [(d, t) for d in (torch.float32, torch.bfloat16) for t in (True, False)]:
            if dtype == torch.bfloat16 and device.type != 'cuda':
                continue
            cells = [_elapsed(attention_step(batch, size, channels, sharing, dtype, device, False, train), device,
                              args.iters)]
            for block in blocks:
                window_kernels.MAX_BLOCK = block
                try:
                    step = attention_step(batch, size, channels, sharing, dtype, device, True, train)
                    cells.append(_elapsed(step, device, args.iters))
                finally:
                    window_kernels.MAX_BLOCK = default_block
            print(f'| {name}, batch {batch} of {size}x{size}{", + sharing GMSA" if sharing else ""} | '
                  f'{str(dtype)[6:]} | {"forward + backward" if train else "forward (inference)"} | '
                  + ' | '.join(f'{c * 1e3:.2f}' for c in cells) + ' |', flush=True)


if __name__ == '__main__':
    main()
