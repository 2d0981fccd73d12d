"""The building blocks of :class:`~elan_arch.archs.elan_arch.ELAN`, as the authors' module tree has them.

* :class:`MeanShift`: the fixed mean subtraction/addition around the network;
* :class:`ShiftConv2d` (around :class:`ShiftConv1x1`): a fixed one-pixel shift of 5 channel groups and a
  1x1 convolution;
* :class:`LFE`: local feature extraction, two shift-convolutions with a ReLU between;
* :class:`GMSA`: group-wise multi-scale self-attention in non-overlapping windows (4, 8, 16);
* :class:`ELAB`: (1 + n_share) residual pairs of (LFE, GMSA), the later GMSAs reusing the first one's maps;
* :func:`pad_to_multiple`: the reflect padding that lets any input size meet the window grid.

Module names and parameters follow the reference exactly, so its state_dict keys load unchanged.
The faster formulas of the same arithmetic are in :mod:`~elan_arch.archs.elan_fast`.

The paper's ablations are options of the same modules, off by default (:data:`LFE_KINDS`,
:data:`ATTENTION_KINDS`): an LFE without the shift (``'conv1x1'``) or with plain 3x3 convolutions
(``'conv3x3'``), and standard window self-attention (``'sa'``) instead of ELAN's accelerated one
(``'asa'``). Those run this module tree's arithmetic only: the fast path assumes the defaults.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Mean RGB of DIV2K on [0, 1], subtracted at the start and added back at the end.
DIV2K_RGB_MEAN = (0.4488, 0.4371, 0.4040)
#: LFE kinds: ``'shift'`` (the reference: shift-convolutions), ``'conv1x1'`` (the same 1x1 convolutions
#: without the shift), ``'conv3x3'`` (plain 3x3 convolutions instead). The first is the default.
LFE_KINDS = ('shift', 'conv1x1', 'conv3x3')
#: GMSA attention kinds: ``'asa'`` (the reference's accelerated self-attention) or ``'sa'`` (standard
#: window self-attention, see :class:`GMSA`). The first is the default.
ATTENTION_KINDS = ('asa', 'sa')


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

    ``shift=False`` (the ``lfe: conv1x1`` ablation) drops the shift and its kernel buffer
    (``weight``): the 1x1 conv alone, under the same ``conv1x1`` key.
    Shape: (B, in_channels, H, W) -> (B, out_channels, H, W).
    """

    def __init__(self, in_channels: int, out_channels: int, shift: bool = True) -> None:
        super().__init__()
        self.shift = shift
        if shift:
            self.register_buffer('weight', shift_kernel(in_channels))
        self.conv1x1 = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        if self.shift:
            x = F.conv2d(x, self.weight, padding=1, groups=x.shape[1])
        return self.conv1x1(x)


class ShiftConv2d(nn.Module):
    """Holder of a :class:`ShiftConv1x1` named ``shift_conv``, as in the reference's key tree."""

    def __init__(self, in_channels: int, out_channels: int, shift: bool = True) -> None:
        super().__init__()
        self.shift_conv = ShiftConv1x1(in_channels, out_channels, shift)

    def forward(self, x: Tensor) -> Tensor:
        return self.shift_conv(x)


class LFE(nn.Module):
    """Local feature extraction: shift-conv (C -> C*r), ReLU, shift-conv (C*r -> C).

    ``kind`` (:data:`LFE_KINDS`): ``'shift'`` (the reference); ``'conv1x1'``, the same
    :class:`ShiftConv2d` modules without the shift (keys ``conv{0,1}.shift_conv.conv1x1.*``, no
    ``shift_conv.weight``); ``'conv3x3'``, ``conv0``/``conv1`` plain 3x3 convolutions with bias and
    zero padding (keys ``conv{0,1}.{weight,bias}``).

    Shape: (B, C, H, W) -> (B, C, H, W); the caller adds the residual.
    """

    def __init__(self, channels: int, r_expand: int, kind: str = 'shift') -> None:
        super().__init__()
        self.kind = kind

        def conv(cin: int, cout: int) -> nn.Module:
            if kind == 'conv3x3':
                return nn.Conv2d(cin, cout, kernel_size=3, padding=1)
            return ShiftConv2d(cin, cout, shift=(kind == 'shift'))

        self.conv0 = conv(channels, channels * r_expand)
        self.act = nn.ReLU(inplace=True)
        self.conv1 = conv(channels * r_expand, channels)

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

    ``attention='asa'`` (the reference's accelerated self-attention):

    * ``calc_attn=True``: 1x1 conv C -> 2C + BatchNorm; each of the groups holds Q (= K, symmetric
      embedding) in its first half and V in its second; inside ws x ws windows ``softmax(Q Q^T) V``
      (no scaling, no LayerNorm). Returns the attention maps.
    * ``calc_attn=False``: 1x1 conv C -> C + BatchNorm gives V only and the attention maps of the
      previous GMSA are reused.

    ``attention='sa'`` (the paper's standard self-attention baseline; reference arithmetic only):
    a LayerNorm over the channels of each pixel (``norm``, affine) comes first; ``project_inp`` is
    one 1x1 conv with bias and no BatchNorm, C -> 3C for a computing GMSA, split by groups like ASA's
    (group g gets 3C/G channels: Q, K and V of C/G channels each, one head per group), and inside the
    windows ``softmax(Q K^T / sqrt(C/G)) V``. A sharing GMSA has its own LayerNorm and a C -> C
    projection to V, and reuses the computing GMSA's maps, as in ASA. Same windows, groups, shifted
    windows and ``project_out`` as ASA.

    With ``shift`` each group is rolled by -ws/2 before and +ws/2 after attention (cyclic, no mask).

    Shape: (B, C, H, W) -> (B, C, H, W); H and W must be multiples of every window size, C of the
    number of groups.
    """

    def __init__(self, channels: int, window_sizes: Sequence[int], shift: bool, calc_attn: bool,
                 attention: str = 'asa') -> None:
        super().__init__()
        self.window_sizes = list(window_sizes)
        self.shift = shift
        self.calc_attn = calc_attn
        self.attention = attention
        per_pixel = (3 if attention == 'sa' else 2) if calc_attn else 1  # (Q, K, V), (Q, V) or V
        inner = channels * per_pixel
        self.split_chns = [inner // len(self.window_sizes)] * len(self.window_sizes)
        if attention == 'sa':
            self.norm = nn.LayerNorm(channels)
            self.project_inp = nn.Sequential(nn.Conv2d(channels, inner, kernel_size=1))
        else:
            self.project_inp = nn.Sequential(nn.Conv2d(channels, inner, kernel_size=1), nn.BatchNorm2d(inner))
        self.project_out = nn.Conv2d(channels, channels, kernel_size=1)

    def attention_maps(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """(N, L, per-group channels) window tokens of a computing GMSA -> (N, L, L) maps, (N, L, C/G) values."""
        if self.attention == 'sa':
            q, k, v = tokens.chunk(3, dim=-1)
            return ((q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5).softmax(dim=-1), v
        q, v = tokens.chunk(2, dim=-1)
        return (q @ q.transpose(-2, -1)).softmax(dim=-1), v

    def forward(self, x: Tensor, prev_atns: Optional[List[Tensor]] = None) -> tuple[Tensor, List[Tensor]]:
        b, _, h, w = x.shape
        if self.attention == 'sa':
            x = self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        xs = torch.split(self.project_inp(x), self.split_chns, dim=1)
        ys, atns = [], []
        for idx, x_ in enumerate(xs):
            ws = self.window_sizes[idx]
            if self.shift:
                x_ = torch.roll(x_, shifts=(-ws // 2, -ws // 2), dims=(2, 3))
            tokens = window_partition(x_, ws)
            if prev_atns is None:
                atn, v = self.attention_maps(tokens)
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

    The first GMSA computes attention, the next ``n_share`` reuse it. ``lfe`` and ``attention``
    choose the kinds of :class:`LFE` and :class:`GMSA` (:data:`LFE_KINDS`, :data:`ATTENTION_KINDS`).
    Shape: (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, channels: int, r_expand: int, shift: bool, window_sizes: Sequence[int], n_share: int,
                 lfe: str = 'shift', attention: str = 'asa') -> None:
        super().__init__()
        self.modules_lfe = nn.ModuleDict(
            {f'lfe_{i}': LFE(channels, r_expand, lfe) for i in range(1 + n_share)})
        self.modules_gmsa = nn.ModuleDict({
            f'gmsa_{i}': GMSA(channels, window_sizes, shift=shift, calc_attn=(i == 0), attention=attention)
            for i in range(1 + n_share)
        })

    def forward(self, x: Tensor) -> Tensor:
        atns = None
        for lfe, gmsa in zip(self.modules_lfe.values(), self.modules_gmsa.values()):
            x = lfe(x) + x
            y, atns = gmsa(x, atns)
            x = y + x
        return x
