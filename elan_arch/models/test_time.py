"""Test-time helpers of :class:`~elan_arch.models.elan_model.ELANModel`: tiled inference and the x8 self-ensemble."""
from __future__ import annotations

from typing import Callable, List, Tuple

import torch
from torch import Tensor

Network = Callable[[Tensor], Tensor]


def tile_spans(length: int, tile: int, overlap: int) -> List[Tuple[int, int, int]]:
    """Cover ``range(length)`` with windows of ``tile`` pixels overlapping by at least ``overlap``.

    Returns ``(start, own_start, own_end)`` per window: the window is ``[start, start + tile)`` and
    it alone provides the output of ``[own_start, own_end)``; neighbours split their overlap in the
    middle, so every pixel is taken from the window where it lies farthest from a cut edge.
    """
    if length <= tile:
        return [(0, 0, length)]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride)) + [length - tile]
    cuts = [0] + [(nxt + cur + tile) // 2 for cur, nxt in zip(starts, starts[1:])] + [length]
    return [(start, cuts[i], cuts[i + 1]) for i, start in enumerate(starts)]


def tiled_forward(net: Network, x: Tensor, tile: int, overlap: int) -> Tensor:
    """``net(x)`` computed tile by tile on ``tile`` x ``tile`` windows of ``x`` (LR pixels).

    Each window is upscaled on its own (peak memory of one window); the output of each pixel
    comes from the window that owns it (:func:`tile_spans`). With ``overlap`` larger than the
    network's reach the result equals the whole-image output. The scale is read from the first
    window's output. Shape: (B, C, h, w) -> (B, C, h*s, w*s).
    """
    rows, cols = tile_spans(x.shape[-2], tile, overlap), tile_spans(x.shape[-1], tile, overlap)
    out = None
    scale = 1
    for top, own_top, own_bottom in rows:
        for left, own_left, own_right in cols:
            patch = x[..., top:top + tile, left:left + tile]
            y = net(patch)
            if out is None:
                scale = y.shape[-2] // patch.shape[-2]
                out = y.new_empty(*x.shape[:-2], x.shape[-2] * scale, x.shape[-1] * scale)
            out[..., own_top * scale:own_bottom * scale, own_left * scale:own_right * scale] = \
                y[..., (own_top - top) * scale:(own_bottom - top) * scale,
                  (own_left - left) * scale:(own_right - left) * scale]
    return out


def self_ensemble(net: Network, x: Tensor) -> Tensor:
    """Mean of ``net`` over the 8 flips/transposes of ``x``, each output transformed back.

    Shape: (B, C, h, w) -> whatever ``net`` returns for it, e.g. (B, C, h*s, w*s).
    """
    total = None
    for transpose in (False, True):
        for flip_dims in ((), (-1, ), (-2, ), (-2, -1)):
            y = x.transpose(-2, -1) if transpose else x
            y = net(torch.flip(y, flip_dims) if flip_dims else y)
            y = torch.flip(y, flip_dims) if flip_dims else y
            y = y.transpose(-2, -1) if transpose else y
            total = y if total is None else total + y
    return total / 8
