"""Validation and test modes of :class:`~elan_arch.models.elan_model.ELANModel`: tiled inference (through
:func:`elan_arch.inference.upscale.upscale_array`) and the x8 self-ensemble, on BasicSR's (B, C, h, w) tensors."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn

Network = Callable[[Tensor], Tensor]


def tiled_upscale(net: nn.Module, x: Tensor, scale: int, tile: int, overlap: int) -> Tensor:
    """``net(x)`` computed on ``tile`` x ``tile`` tiles (LR pixels) that overlap by ``overlap`` and are
    cross-faded, one image of the batch at a time (:func:`elan_arch.inference.upscale.upscale_array`).

    Peak memory is the network's for one tile. The output is clamped to [0, 1], as BasicSR's
    ``tensor2img`` would do. Shape: (B, C, h, w) -> (B, C, h*scale, w*scale).
    """
    from elan_arch.inference.upscale import upscale_array

    outputs = []
    for img in x:
        out = upscale_array(net, img.permute(1, 2, 0).float().cpu().numpy(), scale, getattr(net, 'pad_multiple', 1),
                            tile=tile, overlap=overlap, out_dtype=np.float32)
        outputs.append(torch.from_numpy(out).permute(2, 0, 1))
    return torch.stack(outputs).to(x.device)


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
