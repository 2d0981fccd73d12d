"""ELAN: Efficient Long-Range Attention Network for image super-resolution.

Zhang, Zeng, Guo, Zhang, ECCV 2022 (arXiv 2203.06697). This is a faithful
re-implementation of the authors' network: same module tree and state_dict keys
(so their checkpoints load after stripping DataParallel's ``module.`` prefix),
same arithmetic, same trainable parameter counts. Two deliberate differences,
both invisible to the authors' weights:

* BasicSR I/O: the network takes and returns float RGB in [0, 1] and multiplies
  by ``img_range`` (255 in the reference) internally.
* Inputs smaller than the padding work (the reference's single reflect pad
  raises for them); see :func:`pad_to_multiple`.

Named variants are in :data:`ELAN_VARIANTS`; the defaults give ELAN-light.
"""
from __future__ import annotations

import math
from functools import reduce
from typing import Dict, Optional, Sequence

import torch
from torch import Tensor, nn

from basicsr.utils.registry import ARCH_REGISTRY

from elan_arch.archs import elan_fast
from elan_arch.archs.elan_blocks import DIV2K_RGB_MEAN, ELAB, MeanShift, pad_to_multiple

#: Reference configurations (``upscale`` is chosen separately).
ELAN_VARIANTS: Dict[str, dict] = {
    'ELAN-light': dict(c_elan=60, m_elan=24, n_share=1, r_expand=2, window_sizes=[4, 8, 16]),
    'ELAN': dict(c_elan=180, m_elan=36, n_share=0, r_expand=2, window_sizes=[4, 8, 16]),
}


@ARCH_REGISTRY.register()
class ELAN(nn.Module):
    """ELAN super-resolution network (defaults: ELAN-light).

    Args:
        upscale: Upscaling factor (2, 3, 4, ...).
        colors: Image channels.
        c_elan: Feature channels (a multiple of ``len(window_sizes)``).
        m_elan: Number of (LFE, GMSA) pairs; a multiple of ``1 + n_share``.
        n_share: GMSAs per ELAB that reuse the first one's attention.
        r_expand: Channel expansion inside LFE.
        window_sizes: Attention window size of each channel group.
        img_range: The reference's pixel range; inputs in [0, 1] are scaled by it.
        rgb_mean: Per-channel mean on [0, 1] that the fixed ``sub_mean``/``add_mean`` shifts
            subtract and add back (the reference's DIV2K mean by default). ``None`` drops both
            modules (no ``sub_mean``/``add_mean`` keys): traiNNer-redux's ELAN default
            (``norm: false``), which also uses ``img_range: 1``.
        fast_training: Train (and run anything that needs gradients or BatchNorm batch
            statistics) on :mod:`~elan_arch.archs.elan_fast`, the same function with the same
            gradients, reorganised for speed. ``None`` (default): on the CPU, where it is measured
            faster, but neither on CUDA, where the one measurement so far (H200, paper recipes, before
            ``fused_attention`` and before its 1x1 convolutions went back to cuDNN's there) found it
            slower than the reference arithmetic (unless ``fused_attention`` asks for the fast path's
            kernels), nor under ``torch.compile``, which fuses the reference's rolls, partitions and
            concatenations itself (measured on the 2-core CPU: a compiled training step of the
            reference 0.79 s against 0.85 s for the eager fast path; the fast path's formulas
            compiled, 1.24 s against 0.89 s eager). True / False force it on / off
            (``network_g.fast_training`` in an option file).
        fused_attention: On the fast path, run each GMSA's window attention as the fused Triton
            kernels of :mod:`~elan_arch.archs.window_kernels` (forward and backward; CUDA, float32,
            float16 or bfloat16) instead of window gathers and ``bmm``: the windows and attention maps
            never reach memory. With ``fast_training: None`` it also puts CUDA training on the fast path.
            Off by default until measured on a GPU; where the kernels do not serve (no Triton, the CPU,
            2x2 windows, under ``torch.compile``) the fast path keeps the ``bmm`` form.

    Attribute ``fast_inference`` (default True): in eval mode with autograd off
    (``torch.no_grad``/``inference_mode``, as in BasicSR validation and testing), run the
    fast path too. None of these three attributes is part of the state_dict.

    Shape: (B, colors, H, W) in [0, 1] -> (B, colors, H*upscale, W*upscale), any H, W.
    """

    def __init__(self,
                 upscale: int = 4,
                 colors: int = 3,
                 c_elan: int = 60,
                 m_elan: int = 24,
                 n_share: int = 1,
                 r_expand: int = 2,
                 window_sizes: Sequence[int] = (4, 8, 16),
                 img_range: float = 255.,
                 rgb_mean: Optional[Sequence[float]] = DIV2K_RGB_MEAN,
                 fast_training: Optional[bool] = None,
                 fused_attention: bool = False) -> None:
        super().__init__()
        window_sizes = [int(ws) for ws in window_sizes]
        if upscale < 1:
            raise ValueError(f'ELAN: upscale must be >= 1, got {upscale}')
        if not window_sizes or any(ws < 1 for ws in window_sizes):
            raise ValueError(f'ELAN: window_sizes must be positive integers, got {window_sizes}')
        if c_elan % len(window_sizes) != 0:
            raise ValueError(f'ELAN: c_elan={c_elan} must be divisible by len(window_sizes)={len(window_sizes)} '
                             '(one channel group per window size)')
        if n_share < 0 or m_elan < 1 or m_elan % (1 + n_share) != 0:
            raise ValueError(f'ELAN: m_elan={m_elan} must be a positive multiple of 1 + n_share={1 + n_share}')
        self.upscale = upscale
        self.img_range = float(img_range)
        self.window_sizes = window_sizes
        self.pad_multiple = reduce(math.lcm, window_sizes)
        self.fast_inference = True
        self.fast_training = fast_training
        self.fused_attention = bool(fused_attention)

        self.sub_mean: nn.Module = nn.Identity()
        self.add_mean: nn.Module = nn.Identity()
        if rgb_mean is not None:
            mean = [float(m) for m in rgb_mean]
            if len(mean) == 3 and colors != 3:  # the DIV2K default for grey or other channel counts
                mean = [sum(mean) / 3] * colors
            if len(mean) != colors:
                raise ValueError(f'ELAN: rgb_mean has {len(mean)} values for colors={colors}')
            self.sub_mean = MeanShift(self.img_range, mean, sign=-1)
            self.add_mean = MeanShift(self.img_range, mean, sign=1)
        self.head = nn.Sequential(nn.Conv2d(colors, c_elan, kernel_size=3, padding=1))
        self.body = nn.Sequential(*[
            ELAB(c_elan, r_expand, shift=(i % 2 == 1), window_sizes=window_sizes, n_share=n_share)
            for i in range(m_elan // (1 + n_share))
        ])
        self.tail = nn.Sequential(
            nn.Conv2d(c_elan, colors * upscale * upscale, kernel_size=3, padding=1), nn.PixelShuffle(upscale))

    def uses_fast_path(self, x: Tensor) -> bool:
        """Whether a forward of ``x`` now runs :mod:`elan_fast`: ``fast_inference`` decides in eval mode
        with autograd off, ``fast_training`` in every other case (train mode, or gradients wanted; when
        it is None, see its entry in the class docstring)."""
        if not self.training and not torch.is_grad_enabled():
            return self.fast_inference
        if self.fast_training is None:
            return (not x.is_cuda or self.fused_attention) and not torch.compiler.is_compiling()
        return self.fast_training

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        x = pad_to_multiple(x, self.pad_multiple)
        if self.uses_fast_path(x):
            x = elan_fast.forward_padded(self, x)
        else:
            x = self.head(self.sub_mean(x * self.img_range))
            x = self.body(x) + x
            x = self.add_mean(self.tail(x)) / self.img_range
        return x[..., :h * self.upscale, :w * self.upscale]
