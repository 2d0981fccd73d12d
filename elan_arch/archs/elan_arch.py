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
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from basicsr.utils.registry import ARCH_REGISTRY

from elan_arch.archs import elan_fast

#: Reference configurations (``upscale`` is chosen separately).
ELAN_VARIANTS: Dict[str, dict] = {
    'ELAN-light': dict(c_elan=60, m_elan=24, n_share=1, r_expand=2, window_sizes=[4, 8, 16]),
    'ELAN': dict(c_elan=180, m_elan=36, n_share=0, r_expand=2, window_sizes=[4, 8, 16]),
}

#: Mean RGB of DIV2K on [0, 1], subtracted at the start and added back at the end.
DIV2K_RGB_MEAN = (0.4488, 0.4371, 0.4040)


def pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Reflect-pad the bottom/right of ``x`` (B, C, H, W) to a multiple of ``multiple``.

    Identical to one ``F.pad(..., 'reflect')`` whenever that is legal (pad < size).
    For smaller inputs the reflection is repeated, each step padding by at most
    size - 1, which extends the image symmetrically instead of raising.
    """
    h, w = x.shape[-2:]
    target_h, target_w = math.ceil(h / multiple) * multiple, math.ceil(w / multiple) * multiple
    while x.shape[-2] < target_h or x.shape[-1] < target_w:
        cur_h, cur_w = x.shape[-2:]
        pad_h = min(target_h - cur_h, cur_h - 1)
        pad_w = min(target_w - cur_w, cur_w - 1)
        if pad_h == 0 and pad_w == 0:  # 1-pixel dimension: reflection is undefined, replicate
            x = F.pad(x, (0, target_w - cur_w, 0, target_h - cur_h), mode='replicate')
            break
        x = F.pad(x, (0, pad_w, 0, pad_h), mode='reflect')
    return x


class MeanShift(nn.Module):
    """Fixed 1x1 conv that adds ``sign * img_range * mean`` to each channel.

    The reference implements it as a frozen ``nn.Conv2d``; here ``weight`` and
    ``bias`` are buffers (no optimizer warnings) with the reference's key names.
    Shape: (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, img_range: float, mean: Sequence[float], sign: int) -> None:
        super().__init__()
        channels = len(mean)
        self.register_buffer('weight', torch.eye(channels).view(channels, channels, 1, 1))
        self.register_buffer('bias', sign * img_range * torch.tensor(mean, dtype=torch.float32))

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight, self.bias)


def shift_kernel(channels: int) -> Tensor:
    """Depthwise 3x3 kernel (channels, 1, 3, 3) of the reference's fixed shift.

    Channels split in 5 groups of ``g = channels // 5`` (the last takes the rest):
    output(y, x) of group 0 reads input(y, x+1), group 1 input(y, x-1), group 2
    input(y+1, x), group 3 input(y-1, x); group 4 is the identity.
    """
    g = channels // 5
    kernel = torch.zeros(channels, 1, 3, 3)
    kernel[0 * g:1 * g, 0, 1, 2] = 1.0  # shift left
    kernel[1 * g:2 * g, 0, 1, 0] = 1.0  # shift right
    kernel[2 * g:3 * g, 0, 2, 1] = 1.0  # shift up
    kernel[3 * g:4 * g, 0, 0, 1] = 1.0  # shift down
    kernel[4 * g:, 0, 1, 1] = 1.0  # identity
    return kernel


class ShiftConv1x1(nn.Module):
    """Fixed one-pixel channel-group shift (zero fill) followed by a 1x1 conv.

    Shape: (B, in_channels, H, W) -> (B, out_channels, H, W).
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.register_buffer('weight', shift_kernel(in_channels))
        self.conv1x1 = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.conv2d(x, self.weight, padding=1, groups=x.shape[1])
        return self.conv1x1(x)


class ShiftConv2d(nn.Module):
    """Holder of a :class:`ShiftConv1x1` named ``shift_conv``, as in the reference's key tree."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.shift_conv = ShiftConv1x1(in_channels, out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.shift_conv(x)


class LFE(nn.Module):
    """Local feature extraction: shift-conv (C -> C*r), ReLU, shift-conv (C*r -> C).

    Shape: (B, C, H, W) -> (B, C, H, W); the caller adds the residual.
    """

    def __init__(self, channels: int, r_expand: int) -> None:
        super().__init__()
        self.conv0 = ShiftConv2d(channels, channels * r_expand)
        self.act = nn.ReLU(inplace=True)
        self.conv1 = ShiftConv2d(channels * r_expand, channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv1(self.act(self.conv0(x)))


def window_partition(x: Tensor, ws: int) -> Tensor:
    """(B, C, H, W) -> (B * H/ws * W/ws, ws*ws, C): non-overlapping ws x ws windows as token rows."""
    b, c, h, w = x.shape
    x = x.view(b, c, h // ws, ws, w // ws, ws)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(-1, ws * ws, c)


def window_reverse(y: Tensor, ws: int, b: int, h: int, w: int) -> Tensor:
    """Inverse of :func:`window_partition`: (B * H/ws * W/ws, ws*ws, C) -> (B, C, H, W)."""
    c = y.shape[-1]
    y = y.view(b, h // ws, w // ws, ws, ws, c)
    return y.permute(0, 5, 1, 3, 2, 4).reshape(b, c, h, w)


class GMSA(nn.Module):
    """Group-wise multi-scale self-attention (one group per window size).

    ``calc_attn=True``: 1x1 conv C -> 2C + BatchNorm; each of the groups holds Q
    (= K, symmetric embedding) in its first half and V in its second; inside
    ws x ws windows ``softmax(Q Q^T) V`` (no scaling). Returns the attention maps.
    ``calc_attn=False``: 1x1 conv C -> C + BatchNorm gives V only and the
    attention maps of the previous GMSA are reused. With ``shift`` each group is
    rolled by -ws/2 before and +ws/2 after attention (cyclic, no mask).

    Shape: (B, C, H, W) -> (B, C, H, W); H and W must be multiples of every window size.
    """

    def __init__(self, channels: int, window_sizes: Sequence[int], shift: bool, calc_attn: bool) -> None:
        super().__init__()
        self.window_sizes = list(window_sizes)
        self.shift = shift
        self.calc_attn = calc_attn
        inner = channels * 2 if calc_attn else channels
        self.split_chns = [inner // len(self.window_sizes)] * len(self.window_sizes)
        self.project_inp = nn.Sequential(nn.Conv2d(channels, inner, kernel_size=1), nn.BatchNorm2d(inner))
        self.project_out = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: Tensor, prev_atns: Optional[List[Tensor]] = None) -> tuple[Tensor, List[Tensor]]:
        b, _, h, w = x.shape
        xs = torch.split(self.project_inp(x), self.split_chns, dim=1)
        ys, atns = [], []
        for idx, x_ in enumerate(xs):
            ws = self.window_sizes[idx]
            if self.shift:
                x_ = torch.roll(x_, shifts=(-ws // 2, -ws // 2), dims=(2, 3))
            tokens = window_partition(x_, ws)
            if prev_atns is None:
                q, v = tokens.chunk(2, dim=-1)
                atn = (q @ q.transpose(-2, -1)).softmax(dim=-1)
            else:
                atn, v = prev_atns[idx], tokens
            y_ = window_reverse(atn @ v, ws, b, h, w)
            if self.shift:
                y_ = torch.roll(y_, shifts=(ws // 2, ws // 2), dims=(2, 3))
            ys.append(y_)
            atns.append(atn)
        return self.project_out(torch.cat(ys, dim=1)), atns


class ELAB(nn.Module):
    """Efficient long-range attention block: (1 + n_share) residual pairs of (LFE, GMSA).

    The first GMSA computes attention, the next ``n_share`` reuse it.
    Shape: (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, channels: int, r_expand: int, shift: bool, window_sizes: Sequence[int], n_share: int) -> None:
        super().__init__()
        self.modules_lfe = nn.ModuleDict(
            {f'lfe_{i}': LFE(channels, r_expand) for i in range(1 + n_share)})
        self.modules_gmsa = nn.ModuleDict({
            f'gmsa_{i}': GMSA(channels, window_sizes, shift=shift, calc_attn=(i == 0))
            for i in range(1 + n_share)
        })

    def forward(self, x: Tensor) -> Tensor:
        atns = None
        for lfe, gmsa in zip(self.modules_lfe.values(), self.modules_gmsa.values()):
            x = lfe(x) + x
            y, atns = gmsa(x, atns)
            x = y + x
        return x


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
