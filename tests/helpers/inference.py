"""Helpers of the fast-path / upscale / bench tests: real photo crops and realistically conditioned networks."""
from __future__ import annotations

import numpy as np
import skimage.data
import torch

import elan_arch  # noqa: F401  (before basicsr)
from elan_arch import ELAN


def photo(height: int, width: int, top: int = 60, left: int = 120) -> np.ndarray:
    """(height, width, 3) float32 RGB in [0, 1]: a crop of scikit-image's astronaut photograph (512 x 512)."""
    return skimage.data.astronaut()[top:top + height, left:left + width].astype(np.float32) / 255.


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """(H, W, C) array -> (1, C, H, W) tensor."""
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None]


def calibrated(net: ELAN, x: torch.Tensor) -> ELAN:
    """``net`` in eval mode with its BatchNorm statistics measured on ``x``, as training leaves them.

    With the default statistics (mean 0, variance 1) of an untrained network the
    un-scaled attention logits reach 1e5-1e6 on features in [0, 255], where float32
    rounding alone (even of the reference arithmetic against float64) moves the
    output by 0.1. Statistics that describe the data keep the logits in the range
    a trained network has, so float32 comparisons are meaningful.
    """
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average: one batch sets the statistics exactly
    net.train()
    with torch.no_grad():
        net(x)
    return net.eval()
